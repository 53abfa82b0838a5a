"""The scorer's /docs (Swagger UI) and /redoc (ReDoc) with their assets served by the scorer itself.

FastAPI's default pages load Swagger UI and ReDoc from a CDN, so offline (or behind a proxy that
blocks it) /docs is a blank page. The assets ship in the `fastapi-offline` wheel (pinned in
pyproject.toml); the pages are FastAPI's own, pointed at them, as FastAPI's "Self-hosting JavaScript
and CSS for docs" describes. ReDoc's Google Fonts link and Swagger UI's online validator badge are left out.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PATH = "/docs-assets"
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
REDOC_JS = "redoc.standalone.js"
FAVICON = "favicon.png"


def assets_dir() -> Path:
    """The folder of the pinned Swagger UI and ReDoc builds (inside the `fastapi_offline` package)."""
    return Path(str(files("fastapi_offline") / "static"))


def mount_docs(app: FastAPI, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve /docs, its OAuth2 redirect and /redoc from local assets (build the app with
    `docs_url=None, redoc_url=None` so FastAPI's CDN pages are not registered as well)."""
    app.mount(ASSETS_PATH, StaticFiles(directory=assets_dir()), name="docs-assets")
    oauth2_redirect = f"{docs_url}/oauth2-redirect"

    def urls(request: Request) -> tuple[str, str]:
        root = request.scope.get("root_path", "").rstrip("/")
        return root, f"{root}{app.openapi_url}"

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root, openapi = urls(request)
        return get_swagger_ui_html(
            openapi_url=openapi,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{oauth2_redirect}",
            swagger_js_url=f"{root}{ASSETS_PATH}/{SWAGGER_JS}",
            swagger_css_url=f"{root}{ASSETS_PATH}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/{FAVICON}",
            # no badge from the online validator (validator.swagger.io): offline it is a dead image
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root, openapi = urls(request)
        page = get_redoc_html(
            openapi_url=openapi,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/{REDOC_JS}",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/{FAVICON}",
            with_google_fonts=False,
        )
        # the 200 answers open, so every response field's description is on the page
        body = bytes(page.body).replace(
            b"<redoc ", b'<redoc expand-responses="200" schema-expansion-level="2" ', 1
        )
        return HTMLResponse(body)
