"""``/docs``: Swagger UI served by the relay itself, so the API page works offline.

The assets (Swagger UI 5, which reads OpenAPI 3.1) come from the ``fastapi-offline``
package, a dependency; should they be missing, ``/docs`` says so and links the raw spec.
Swagger UI starts from ``/dashboard/static/docs.js``, not an inline script, so the page keeps
the relay's strict Content-Security-Policy.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from commander_os.relay.dashboard._format import e

__all__ = ["DOCS_ASSETS", "add_docs_routes", "swagger_assets"]

DOCS_ASSETS = "/docs/assets"

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} · API</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}/favicon.png">
</head><body><div id="swagger-ui" data-spec="/openapi.json"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="/dashboard/static/docs.js"></script>
</body></html>
"""
_MISSING = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} · API</title>
<link rel="icon" type="image/svg+xml" href="/dashboard/static/favicon.svg">
<link rel="stylesheet" href="/dashboard/static/dashboard.css"></head><body><main>
<h1>{title}</h1><p>The interactive API page needs Swagger UI's files, which this installation
lacks (reinstall the package <code>fastapi-offline</code>). The OpenAPI document itself is at
<a href="/openapi.json">/openapi.json</a>.</p></main></body></html>
"""


def swagger_assets() -> Path | None:
    """Where the installed Swagger UI files are (None if they are missing)."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    path = Path(fastapi_offline.__file__).parent / "static"
    return path if (path / "swagger-ui-bundle.js").is_file() else None


def add_docs_routes(app: FastAPI, assets: Path | None) -> None:
    """``GET /docs`` and its assets (open to all, as the spec is: it holds no records)."""
    if assets is not None:
        app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")
    title = e(app.title)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        if assets is None:
            return HTMLResponse(_MISSING.format(title=title))
        return HTMLResponse(_PAGE.format(title=title, assets=DOCS_ASSETS))
