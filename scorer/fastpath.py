"""The hot routes' fast path: plainly valid quote and event bodies answered without FastAPI's
routing and pydantic (same code and answers as the routes in `scorer.routes`)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import HTTPException
from fastapi.responses import JSONResponse, Response

from scorer.deps import get_model, offer_log_error_handler
from scorer.offer_log import OfferLogError
from scorer.routes import answer_quote, is_json, record_events, unsupported_media_type
from scorer.runtime import ScorerRuntime
from scorer.schemas import fast_events, fast_quote


class FastPath:
    """Pure ASGI: POST /v1/quote and /v1/events with a plainly valid JSON body, without FastAPI.

    Sits inside the body-limit and metrics middleware. A request not declared as JSON is answered
    415 here, as the routes' `require_json` answers it. It takes bodies with a Content-Length and
    a JSON content type, parses them with orjson and `fast_quote`/`fast_events`, and answers
    through the same `answer_quote`/`record_events` the routes call. Anything else (another route,
    a chunked body, a body the fast parsers refuse) goes on to FastAPI with the body replayed, and
    is answered exactly as it always was, errors included. What it skips per request: routing,
    dependency resolution and two pydantic models (about a fifth of a quote's CPU).
    """

    def __init__(self, app: Any, runtime: ScorerRuntime, router: Any) -> None:
        self.app = app
        self.runtime = runtime
        self.routes = {r.path: r for r in router.routes if getattr(r, "path", None) in _FAST_ROUTES}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.routes:
            await self.app(scope, receive, send)
            return
        length, content_type = None, None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"content-type":
                content_type = value
        if not is_json(content_type):
            scope["route"] = self.routes[scope["path"]]
            exc = unsupported_media_type(content_type or b"")
            await JSONResponse({"detail": exc.detail}, exc.status_code)(scope, receive, send)
            return
        if length is None:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            try:
                message = await receive()
            except HTTPException as exc:  # the body limit, while reading
                await JSONResponse({"detail": exc.detail}, exc.status_code)(scope, receive, send)
                return
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        response = await self._answer(scope, body)
        if response is None:
            replayed = False

            async def replay() -> Any:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
            return
        await response(scope, receive, send)

    async def _answer(self, scope: Any, body: bytes) -> Response | None:
        """The response for a plainly valid body; None to let FastAPI handle it."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        runtime, path = self.runtime, scope["path"]
        if path == "/v1/quote":
            parsed = fast_quote(data, runtime.settings.max_candidates)
            if parsed is None:
                return None
            scope["route"] = self.routes[path]
            try:
                sm = await get_model(runtime)
                return await answer_quote(runtime, sm, *parsed)
            except HTTPException as exc:
                return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
            except OfferLogError as exc:
                return await offer_log_error_handler(None, exc)  # type: ignore[arg-type]
        events = fast_events(data)
        if events is None:
            return None
        scope["route"] = self.routes[path]
        user_id, rows = events
        try:
            generation = await record_events(runtime, user_id, rows)
        except HTTPException as exc:
            return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
        out = {"user_id": user_id, "accepted": len(rows), "generation": generation}
        return Response(orjson.dumps(out), media_type="application/json")


_FAST_ROUTES = frozenset({"/v1/quote", "/v1/events"})
