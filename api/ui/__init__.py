"""The operator dashboard: hand-written HTML, CSS and JavaScript modules, served as they are.

There is no build step (docs/dashboard.md says why): ``static/`` is what the browser gets.
:func:`install` serves ``/`` (the page) and ``/ui/`` (its assets). The page talks to the
``/v1`` routes with the operator's API key in the ``Authorization`` header, never a cookie,
so it adds no authentication of its own and no CSRF surface.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["STATIC", "install"]

STATIC = Path(__file__).parent / "static"

# Everything the page loads comes from this origin; no inline script, no framing.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def install(app: FastAPI) -> None:
    """Serve the dashboard at ``/`` and its assets under ``/ui/``."""

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=_HEADERS)

    app.mount("/ui", StaticFiles(directory=STATIC), name="ui")
