"""Dependencies injected into routes: settings, a database session, a looked-up experiment."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from backend.api.schemas import MAX_INT, MAX_LIMIT
from backend.core.settings import Settings
from backend.db import experiments, silos
from backend.db.engine import get_engine, session_for
from backend.db.models import Experiment


# Dependencies that do no I/O are ``async def``: FastAPI runs a plain ``def`` dependency in
# the thread pool, a hop (and a wait for the GIL under load) for each one on every request.
async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def database_slot(request: Request) -> AsyncIterator[None]:
    """Wait for one of the process's database slots (backend.api.limits.DB_CONCURRENCY) without
    holding a worker thread or a connection."""
    async with request.app.state.db_slots:
        yield


def get_session(
    settings: SettingsDep, _slot: Annotated[None, Depends(database_slot, scope="function")]
) -> Iterator[Session]:
    yield from session_for(settings.database_url)


# Function scope: the session closes (its connection back to the pool) and the slot is free
# as soon as the route has returned, not after a slow client has read the whole response.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_experiment(session: SessionDep, experiment_id: str) -> Experiment:
    experiment = experiments.get_experiment(session, experiment_id=experiment_id)
    if experiment is None:
        raise HTTPException(404, f"experiment {experiment_id!r} not found")
    return experiment


ExperimentDep = Annotated[Experiment, Depends(get_experiment)]
OffsetDep = Annotated[int, Query(ge=0, le=MAX_INT, description="rows to skip")]
LimitDep = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"rows per page (<= {MAX_LIMIT})")]


# The bearer scheme of the OpenAPI schema (the Authorize button of /docs). auto_error=False:
# the answer without a token, and whether one is needed at all, are the settings' to decide.
bearer = HTTPBearer(
    auto_error=False,
    description="FEDMOMENTUM_API_TOKEN of the server, when it has one (see GET /health)",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _check_token(credentials: HTTPAuthorizationCredentials | None, settings: Settings) -> None:
    """401 unless the request carries ``Authorization: Bearer <api_token>`` (when one is set)."""
    if settings.api_token is None:
        return
    given = credentials.credentials.encode() if credentials is not None else b""
    expected = settings.api_token.get_secret_value().encode()
    # compare_digest: the time taken does not depend on how much of the token matched.
    if credentials is None or not hmac.compare_digest(given, expected):
        raise HTTPException(
            401,
            "this server needs an API token: send `Authorization: Bearer <token>` "
            "(FEDMOMENTUM_API_TOKEN of the server)",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def require_token(credentials: Credentials, settings: SettingsDep) -> None:
    """Writes and downloads: always behind the token when one is set."""
    _check_token(credentials, settings)


async def require_read(credentials: Credentials, settings: SettingsDep) -> None:
    """Reads: behind the token too, unless FEDMOMENTUM_OPEN_READS says they may stay open."""
    if not settings.open_reads:
        _check_token(credentials, settings)


Write = Depends(require_token)
Read = Depends(require_read)


def require_silo(credentials: Credentials, settings: SettingsDep) -> str:
    """The name of the silo whose live token the request carries; 401 otherwise (no token,
    an unknown or revoked one: the same answer, so a token's state is not revealed). Its own
    short session: a long-polling route must not hold one while it waits."""
    name = None
    if credentials is not None:
        with Session(get_engine(settings.database_url)) as session:
            silo = silos.authenticate(session, token=credentials.credentials)
            name = silo.name if silo is not None else None
    if name is None:
        raise HTTPException(
            401,
            "this endpoint needs a silo token: send `Authorization: Bearer <token>` "
            "(issued by `fedmomentum silo create NAME`; a revoked token is refused)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return name


SiloDep = Annotated[str, Depends(require_silo)]
