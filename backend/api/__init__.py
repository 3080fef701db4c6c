"""REST routes under /api/v1: HTTP concerns only; the work is in the database layer (backend.db)."""

from __future__ import annotations

from fastapi import APIRouter

from backend.api import catalog, downloads, events, experiments, health, results, sweeps

api_router = APIRouter()
for module in (experiments, sweeps, results, events, downloads, catalog, health):
    api_router.include_router(module.router)
