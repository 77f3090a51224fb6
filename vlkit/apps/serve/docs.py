"""The API docs at ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served without any network.

FastAPI's own docs pages load their JavaScript and CSS from a CDN, so they are blank on
an offline machine. Here the assets come from the ``fastapi-offline`` package (in the
``serve`` extra), which ships Swagger UI 5 (the first major version that renders the
OpenAPI 3.1 documents FastAPI writes; ``swagger-ui-bundle`` 1.1.0 ships Swagger UI 4.15,
which refuses them) and ReDoc's standalone bundle. They are mounted at
``/docs/assets`` and the pages reference nothing outside this server.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs/assets"
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
MISSING = ("<!doctype html><title>vlkit serve: API docs</title><p>The API docs need the package "
           "<code>fastapi-offline</code> (it ships Swagger UI for offline use): <code>pip install "
           "'vlkit[serve]'</code>. The OpenAPI document itself is at <a href=\"/openapi.json\">/openapi.json</a>.")


def assets_folder() -> Path | None:
    """The folder holding Swagger UI's and ReDoc's files, or None when ``fastapi-offline`` is missing."""
    try:
        folder = Path(str(resources.files("fastapi_offline") / "static"))
    except ModuleNotFoundError:
        return None
    return folder if all((folder / name).is_file() for name in ASSETS) else None


def add_offline_docs(app: FastAPI, title: str) -> None:
    """Serve ``/docs`` and ``/redoc`` from local assets (create ``app`` with ``docs_url=None, redoc_url=None``)."""
    folder = assets_folder()
    if folder is not None:
        app.mount(ASSETS_URL, StaticFiles(directory=folder), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> Any:
        if folder is None:
            return HTMLResponse(MISSING, status_code=503)
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{title}: API docs",
                                   swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS_URL}/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> Any:
        if folder is None:
            return HTMLResponse(MISSING, status_code=503)
        return get_redoc_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{title}: API docs",
                              redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
                              redoc_favicon_url=f"{ASSETS_URL}/favicon.png", with_google_fonts=False)
