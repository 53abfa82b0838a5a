"""What requests pass through before a route: the runtime and model dependencies, the admin
token, the request body limit, and the error responses for bad input and an unavailable offer log.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from scorer.offer_log import OfferLogError
from scorer.runtime import ScorerRuntime
from scorer.schemas import SHOWN_CHARS, escape_markup
from scorer.serving import ServingModel


async def get_runtime(request: Request) -> ScorerRuntime:
    return request.app.state.runtime  # type: ignore[no-any-return]


RuntimeDep = Annotated[ScorerRuntime, Depends(get_runtime)]


async def get_model(runtime: RuntimeDep) -> ServingModel:
    """The model bundle this request will use from start to finish (503 when none is loaded)."""
    sm = runtime.current
    if sm is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"no model loaded: {runtime.not_ready_reason}",
            headers={"Retry-After": "5"},
        )
    return sm


ModelDep = Annotated[ServingModel, Depends(get_model)]
_bearer = HTTPBearer(auto_error=False)


def _token_digest(token: str) -> bytes:
    # Compared as fixed-length digests: `compare_digest` on the raw tokens returns early when the
    # lengths differ, which tells an attacker the token's length.
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


async def require_admin(
    runtime: RuntimeDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Admin routes need `Authorization: Bearer <PRICING_ADMIN_TOKEN>`; none without a token set."""
    expected = runtime.settings.admin_token
    if not expected:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail="admin token not configured: set PRICING_ADMIN_TOKEN to enable /admin routes",
        )
    if creds is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing bearer token (Authorization: Bearer <admin token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(_token_digest(creds.credentials), _token_digest(expected)):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="invalid admin token")


# --- request limits and error responses ----------------------------------------------------------

_MAX_ERRORS_SHOWN = 20
_MAX_ERROR_TEXT = 300


class InFlightLimitMiddleware:
    """Pure ASGI middleware: at most `limit` requests under `/v1/` in work in this worker; the next
    one is answered 503 with `Retry-After: 1` at once, before its body is read.

    Load shedding: past capacity, a queue only grows, every request waits longer than its client
    does, and the worker spends its time on answers nobody reads (it never recovers while the load
    lasts). With a bound, the requests it takes are answered in time and the rest learn at once
    that they should retry. Health, readiness, metrics and admin routes are never shed.
    """

    def __init__(self, app: Any, limit: int, on_shed: Any = None) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0
        self.shed = 0
        self._on_shed = on_shed

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            self.shed += 1
            if self._on_shed is not None:
                self._on_shed()
            response = JSONResponse(
                {
                    "detail": f"overloaded: {self.in_flight} requests in work in this worker "
                    f"(PRICING_MAX_IN_FLIGHT={self.limit}); retry shortly"
                },
                status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                headers={"Retry-After": "1"},
            )
            await response(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class BodyLimitMiddleware:
    """Pure ASGI middleware: refuse request bodies over `max_bytes` with 413, while reading them.

    A declared Content-Length over the limit is answered before a byte of the body is read; a
    chunked (or lying) body is counted as it arrives and cut off at the limit, so a 19 MB body
    never sits in memory or in the JSON parser on the event loop.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _detail(self) -> str:
        return (
            f"request body too large: the limit is {self.max_bytes} bytes (PRICING_MAX_BODY_BYTES)"
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    break
                if declared > self.max_bytes:
                    response = JSONResponse(
                        {"detail": self._detail()},
                        status_code=status.HTTP_413_CONTENT_TOO_LARGE,
                        headers={"Connection": "close"},
                    )
                    await response(scope, receive, send)
                    return
                break
        received = 0

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises an HTTPException from reading the body; its handler answers.
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=self._detail())
            return message

        await self.app(scope, limited_receive, send)


def _safe_text(value: Any, limit: int = _MAX_ERROR_TEXT) -> str:
    """`value` as short text that always encodes as UTF-8 JSON (lone surrogates escaped) and
    carries no markup (`<>&` escaped)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return escape_markup(text.encode("utf-8", "backslashreplace").decode("utf-8"))


def _safe_error(error: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": _safe_text(error.get("type", "")),
        "loc": [  # (a client's unknown key is a part: shown as a short prefix)
            part if isinstance(part, int) else _safe_text(part, SHOWN_CHARS)
            for part in error.get("loc", ())
        ],
        "msg": _safe_text(error.get("msg", "")),
    }
    ctx = error.get("ctx")
    if isinstance(ctx, dict) and ctx:
        out["ctx"] = {_safe_text(k): _safe_text(v) for k, v in ctx.items()}
    return out


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """422 with where and why, never the offending input.

    FastAPI's default echoes each error's `input`, and cannot encode a NaN or a lone surrogate
    (a 500 for a client's mistake); echoing a 1 MB body back is no help either.
    """
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    detail: list[Any] = [_safe_error(e) for e in errors[:_MAX_ERRORS_SHOWN]]
    if len(errors) > _MAX_ERRORS_SHOWN:
        detail.append({"msg": f"... and {len(errors) - _MAX_ERRORS_SHOWN} more errors"})
    return JSONResponse(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content={"detail": detail}
    )


async def offer_log_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """503 when the offer log cannot take a record: nothing was acknowledged, retry later."""
    assert isinstance(exc, OfferLogError)
    return JSONResponse(
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        content={"detail": f"offer log unavailable, nothing recorded; retry later: {exc.reason}"},
        headers={"Retry-After": "5"},
    )
