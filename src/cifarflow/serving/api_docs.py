"""The interactive API page, `/docs`, with Swagger UI's files served by this process, not a CDN.

FastAPI's own `/docs` page loads Swagger UI's script and style from
cdn.jsdelivr.net and its icon from fastapi.tiangolo.com (the defaults of
`get_swagger_ui_html` in fastapi/openapi/docs.py), which a cluster without
internet access cannot reach. The page here is built by that same function,
pointed at the copies of those files that the `fastapi-offline` package
ships (Swagger UI 5.32). Not `swagger-ui-bundle`: it ships Swagger UI 4.15,
whose bundle renders only `openapi: 3.0.n` descriptions and refuses the 3.1
that FastAPI writes ("Unable to render this definition").
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

# The installed package and its folder holding swagger-ui-bundle.js, swagger-ui.css, favicon.png.
SWAGGER_UI_FILES = ("fastapi_offline", "static")


def add_offline_docs(app: FastAPI, path: str = "/docs") -> None:
    """Serves Swagger UI over the app's OpenAPI description at `path`, its files under `path`/assets.

    Create the app with `docs_url=None`, so FastAPI adds no page of its own.

    Args:
        app: the application; its `openapi_url`, `title` and `swagger_ui_parameters` are used.
        path: where the page is served.
    """
    if app.openapi_url is None:
        raise ValueError("the API page needs the app's OpenAPI description (openapi_url)")
    openapi_url = app.openapi_url
    assets = f"{path}/assets"
    # StaticFiles answers HEAD, conditional requests (ETag) and the content type.
    app.mount(assets, StaticFiles(packages=[SWAGGER_UI_FILES]), name="docs-assets")

    async def docs(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", "")).rstrip("/")  # behind a path-prefixing proxy
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{assets}/swagger-ui.css",
            swagger_favicon_url=f"{root}{assets}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    app.add_route(path, docs, methods=["GET"], include_in_schema=False)
