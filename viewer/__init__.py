"""The web viewer: plain HTML, CSS and ES modules served by `wz serve` (`/` and `/viewer/...`), with no build step
and nothing fetched from the internet at run time (courtrooms and regulators' networks are closed). It uses only
the HTTP API under /api/v1, so it imports nothing from the rest of Wangzheng."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"


def mount(app: Starlette) -> None:
    """Serve the viewer at `/` beside the API. Its files live under /viewer/, so a path the API does not know
    still answers the API's own 404 problem, never the viewer's page."""

    async def index(_request: Request) -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})

    app.add_route("/", index, methods=["GET"], include_in_schema=False)
    app.mount("/viewer", StaticFiles(directory=STATIC_DIR), name="viewer")
