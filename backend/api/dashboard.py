"""The browser dashboard: ``frontend/`` (no build step) at ``/`` and plotly.js from the
installed ``plotly`` package at ``/vendor/plotly.min.js``, so nothing comes from a CDN and
the dashboard works offline."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

FRONTEND_DIR = Path(__file__).resolve().parents[2] / "frontend"


@lru_cache
def plotly_js() -> Path:
    """plotly.min.js as shipped inside the plotly Python package (found without importing it)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the plotly package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the plotly package")
    return path


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard pages and their assets on ``app``."""

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(FRONTEND_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.api_route("/vendor/plotly.min.js", methods=["GET", "HEAD"], include_in_schema=False)
    def plotly() -> FileResponse:
        try:
            path = plotly_js()
        except FileNotFoundError as e:
            raise HTTPException(404, str(e)) from None
        # The file changes only with the pinned plotly version: let browsers keep it a day.
        return FileResponse(
            path, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"}
        )

    app.mount("/static", StaticFiles(directory=FRONTEND_DIR), name="static")
