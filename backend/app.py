"""The FastAPI application: ``create_app(settings)``; routes under /api/v1, docs at /docs.

Serve it with ``uvicorn --factory backend.app:create_app``. Imports no torch.
"""

from __future__ import annotations

from fastapi import FastAPI

from backend.api import api_router
from backend.settings import Settings, get_settings

API_PREFIX = "/api/v1"


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app bound to ``settings`` (default: the environment's)."""
    app = FastAPI(
        title="FedMomentum",
        summary="Run and monitor federated LoRA fine-tuning of language models.",
        version="0.1.0",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url="/docs",
    )
    app.state.settings = settings or get_settings()
    app.include_router(api_router, prefix=API_PREFIX)
    return app
