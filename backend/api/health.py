"""Liveness and database reachability."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from backend import crud
from backend.api.deps import SessionDep
from backend.schemas import HealthPublic

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthPublic)
def health(session: SessionDep, response: Response) -> HealthPublic:
    """ "ok" when the service runs and the database answers (503 otherwise)."""
    if crud.database_ok(session):
        return HealthPublic(status="ok", database="ok")
    response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthPublic(status="error", database="unreachable")
