"""Liveness, database reachability, and whether the API wants a token (always open)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from backend.api.deps import SessionDep, SettingsDep
from backend.api.schemas import HealthPublic
from backend.db.engine import database_ok

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthPublic)
def health(session: SessionDep, settings: SettingsDep, response: Response) -> HealthPublic:
    """ "ok" when the service runs and the database answers (503 otherwise); what needs a token."""
    auth = "none" if settings.api_token is None else "writes" if settings.open_reads else "all"
    if database_ok(session):
        return HealthPublic(status="ok", database="ok", auth=auth)
    response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthPublic(status="error", database="unreachable", auth=auth)
