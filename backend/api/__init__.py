"""REST routes under /api/v1: HTTP concerns only; the work is in the database layer (backend.db)."""

from __future__ import annotations

from fastapi import APIRouter

from backend.api import (
    catalog,
    downloads,
    events,
    experiments,
    health,
    results,
    silo_tasks,
    silos,
    sweeps,
)

# The groups of /docs, in this order.
TAGS = [
    {"name": "experiments", "description": "Submit an experiment config, list, read, cancel, "
     "clone and delete experiments."},
    {"name": "sweeps", "description": "Strategies x seeds x grid as one sweep of experiments, "
     "with its leaderboard and report."},
    {"name": "results", "description": "What an experiment produced so far: rounds, client "
     "attempts, metrics, diagnostics, its manifest and export."},
    {"name": "events", "description": "Live progress as server-sent events, resumable with "
     "Last-Event-ID."},
    {"name": "downloads", "description": "Exports and round adapters as zips, the HTML report "
     "(always behind the API token when the server has one)."},
    {"name": "datasets", "description": "Upload a dataset file (checked like any dataset, kept "
     "in the artifact store), list, read its summary and preview, delete."},
    {"name": "catalog", "description": "Strategies, models, datasets and export formats with "
     "descriptions; config defaults and JSON schema."},
    {"name": "silos", "description": "Silo credentials: issue, list and revoke the token of a "
     "silo that trains with `fedmomentum silo-client` (behind the API token)."},
    {"name": "silo", "description": "A token silo's own work: claim its train tasks, download "
     "their global state, report progress, upload updates (behind that silo's token)."},
    {"name": "health", "description": "Liveness, the database, and what needs the API token "
     "(always open)."},
]  # fmt: skip

api_router = APIRouter()
for module in (experiments, sweeps, results, events, downloads, catalog, health, silos):
    api_router.include_router(module.router)

# Silo uploads are larger than any other body: the app includes this router with its own
# limit (FEDMOMENTUM_MAX_UPLOAD_BYTES).
silo_router = silo_tasks.router
