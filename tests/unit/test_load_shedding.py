"""Load shedding: past PRICING_MAX_IN_FLIGHT requests in work, a worker answers 503 at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from scorer.deps import InFlightLimitMiddleware


class Held:
    """An ASGI app whose requests stay in work until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.started += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def _call(app: Any, path: str) -> tuple[int, dict[str, str], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "path": path, "method": "POST", "headers": []}, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = {k.decode(): v.decode() for k, v in start.get("headers", [])}
    return start["status"], headers, body


def test_requests_past_the_limit_get_503_at_once_and_the_rest_are_served() -> None:
    async def scenario() -> None:
        inner = Held()
        shed: list[int] = []
        app = InFlightLimitMiddleware(inner, limit=3, on_shed=lambda: shed.append(1))
        held = [asyncio.create_task(_call(app, "/v1/quote")) for _ in range(3)]
        while inner.started < 3:
            await asyncio.sleep(0)
        status, headers, body = await asyncio.wait_for(_call(app, "/v1/quote"), timeout=5)
        assert status == 503 and headers["retry-after"] == "1"
        assert "PRICING_MAX_IN_FLIGHT=3" in json.loads(body)["detail"]
        assert app.shed == 1 and shed == [1]
        # health and admin routes are never shed
        probe = asyncio.create_task(_call(app, "/readyz"))
        while inner.started < 4:
            await asyncio.sleep(0)
        inner.release.set()
        assert [(await t)[0] for t in held] == [200, 200, 200]
        assert (await probe)[0] == 200
        assert app.in_flight == 0
        assert (await _call(app, "/v1/quote"))[0] == 200

    asyncio.run(scenario())


def test_a_failing_request_frees_its_place() -> None:
    async def boom(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    async def scenario() -> None:
        app = InFlightLimitMiddleware(boom, limit=1)
        for _ in range(3):
            with contextlib.suppress(RuntimeError):
                await _call(app, "/v1/quote")
        assert app.in_flight == 0 and app.shed == 0

    asyncio.run(scenario())
