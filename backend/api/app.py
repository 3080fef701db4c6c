"""The FastAPI application: ``create_app(settings)``; routes under /api/v1, docs at /docs,
the dashboard at /.

Serve it with ``fedmomentum up`` (or ``uvicorn --factory backend.api.app:create_app``). Imports
no torch. While it runs, a reconciler thread re-dispatches experiments whose workers went
silent (at start, then every ``reconcile_interval_s``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp

from backend.api import TAGS, api_router, datasets, silo_router
from backend.api.dashboard import mount_dashboard
from backend.api.errors import install_error_handlers
from backend.api.event_fanout import EventHub
from backend.api.limits import BodyLimitDetail, StreamSlots, body_limit_settings, database_slots
from backend.core.settings import Settings, get_settings

API_PREFIX = "/api/v1"
log = logging.getLogger(__name__)


def _reconcile_loop(settings: Settings, stop: threading.Event) -> None:
    from backend.db.lifecycle import reconcile

    while True:
        try:
            reconcile(settings)
        except Exception:  # noqa: BLE001 - the database may be away: try again later
            log.exception("reconcile failed")
        if stop.wait(settings.reconcile_interval_s):
            return


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    stop = threading.Event()
    thread = None
    if settings.reconcile_interval_s > 0:
        thread = threading.Thread(
            target=_reconcile_loop, args=(settings, stop), name="reconciler", daemon=True
        )
        thread.start()
    yield
    stop.set()
    if thread is not None:
        thread.join(timeout=10)


class _App(FastAPI):
    def build_middleware_stack(self) -> ASGIApp:
        # Outside FastAPI's own layers: its body limit's 413 is answered there.
        return BodyLimitDetail(
            super().build_middleware_stack(), body_limit_settings(self.state.settings)
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app bound to ``settings`` (default: the environment's)."""
    settings = settings or get_settings()
    app = _App(
        title="FedMomentum",
        summary="Run and monitor federated LoRA fine-tuning of language models.",
        version="0.1.0",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url="/docs",
        openapi_tags=TAGS,
        lifespan=_lifespan,
        max_body_size=settings.max_body_bytes,  # 413 beyond it (see BodyLimitDetail)
    )
    app.state.settings = settings
    app.state.event_slots = StreamSlots(settings.max_event_streams_per_client)
    app.state.db_slots = database_slots()
    app.state.event_hub = EventHub(settings.database_url, app.state.db_slots)
    install_error_handlers(app)
    app.include_router(api_router, prefix=API_PREFIX)
    app.include_router(datasets.router, prefix=API_PREFIX, max_body_size=settings.max_dataset_bytes)
    app.include_router(silo_router, prefix=API_PREFIX, max_body_size=settings.max_upload_bytes)
    mount_dashboard(app)
    return app
