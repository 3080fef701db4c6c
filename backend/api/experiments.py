"""Experiments: create, list, read, cancel, delete, clone."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Body, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy.orm import Session

from backend.api.deps import (
    ExperimentDep,
    LimitDep,
    OffsetDep,
    Read,
    SessionDep,
    SettingsDep,
    Write,
)
from backend.api.responses import errors
from backend.api.schemas import (
    ExperimentClone,
    ExperimentCreate,
    ExperimentPublic,
    ExperimentsPublic,
)
from backend.core.catalog import STRATEGIES
from backend.core.checks import check_for_server
from backend.core.config import ExperimentConfig
from backend.core.runs import remove_run_dir
from backend.core.settings import Settings
from backend.db import experiments as crud
from backend.db import silos as silo_credentials
from backend.db.lifecycle import dispatch
from backend.db.models import Experiment, ExperimentStatus

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/experiments", tags=["experiments"], dependencies=[Read], responses=errors(401)
)

Strategy = Literal[tuple(STRATEGIES)]  # type: ignore[valid-type]
Sort = Literal[crud.SORTS]  # type: ignore[valid-type]


def dispatch_stored(settings: Settings, session: SessionDep, experiment: Experiment) -> None:
    """Send the new experiment to the workers. If the broker is down it stays queued and the
    reconciler sends it later; the API does not fail a request it has stored."""
    try:
        dispatch(settings, session, experiment=experiment)
    except Exception:  # noqa: BLE001
        log.exception(
            "experiment %s stored but not dispatched; the reconciler retries", experiment.id
        )
    session.refresh(experiment)


def checked(config: ExperimentConfig, settings: Settings) -> ExperimentConfig:
    """The config as the server will run it (paths made absolute), or a 422 naming every
    field that names something outside the server's roots or cannot run on its data."""
    config, problems = check_for_server(config, settings)
    if problems:
        raise RequestValidationError(
            [
                {"type": "value_error", "loc": ("body", *loc), "msg": f"Value error, {msg}"}
                for loc, msg in problems
            ]
        )
    return config


def _check_token_silos(session: Session, config: ExperimentConfig) -> None:
    """422 for a token silo without a live token: its clients could never train."""
    names = config.federation.token_silos or []
    live = {s.name for s in silo_credentials.live_silos(session, names=names)}
    if missing := [n for n in names if n not in live]:
        msg = (
            f"Value error, no live token for silo(s) {', '.join(map(repr, missing))}; "
            "issue one with `fedmomentum silo create NAME` first"
        )
        loc = ("body", "federation", "token_silos")
        raise RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg}])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ExperimentPublic,
    dependencies=[Write],
    responses=errors(413),
)
def create_experiment(
    session: SessionDep,
    settings: SettingsDep,
    config: ExperimentCreate,
    request: Request,
    response: Response,
) -> Experiment:
    """Validate an experiment config, store it as a queued experiment and start it."""
    _check_token_silos(session, config)
    experiment = crud.create_experiment(session, config=checked(config, settings))
    dispatch_stored(settings, session, experiment)
    response.headers["Location"] = str(
        request.url_for("read_experiment", experiment_id=experiment.id)
    )
    return experiment


@router.get("", response_model=ExperimentsPublic)
def list_experiments(
    session: SessionDep,
    status: ExperimentStatus | None = None,
    strategy: Strategy | None = None,
    sort: Annotated[Sort, Query(description="field, '-' prefix for descending")] = "-created_at",
    offset: OffsetDep = 0,
    limit: LimitDep = 50,
) -> ExperimentsPublic:
    """List experiments, filtered by status and strategy, sorted and paginated."""
    rows, count = crud.list_experiments(
        session, status=status, strategy=strategy, sort=sort, offset=offset, limit=limit
    )
    return ExperimentsPublic(data=rows, count=count)


@router.get("/{experiment_id}", response_model=ExperimentPublic, responses=errors(404))
def read_experiment(experiment: ExperimentDep) -> Experiment:
    """One experiment with its config and progress."""
    return experiment


@router.post(
    "/{experiment_id}/cancel",
    response_model=ExperimentPublic,
    dependencies=[Write],
    responses=errors(404, 409),
)
def cancel_experiment(session: SessionDep, experiment: ExperimentDep) -> Experiment:
    """Cancel a queued or running experiment (409 when it has already finished)."""
    try:
        return crud.cancel_experiment(session, experiment=experiment)
    except ValueError as e:
        raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from None


@router.delete(
    "/{experiment_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Write],
    responses=errors(404, 409),
)
def delete_experiment(
    session: SessionDep, settings: SettingsDep, experiment: ExperimentDep
) -> None:
    """Delete a finished experiment, its results and its run directory (409 while active)."""
    experiment_id = experiment.id
    try:
        crud.delete_experiment(session, experiment=experiment)
    except ValueError as e:
        raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from None
    remove_run_dir(settings.runs_store(), experiment_id)


@router.post(
    "/{experiment_id}/clone",
    status_code=status.HTTP_201_CREATED,
    response_model=ExperimentPublic,
    dependencies=[Write],
    responses=errors(404),
)
def clone_experiment(
    session: SessionDep,
    settings: SettingsDep,
    experiment: ExperimentDep,
    request: Request,
    response: Response,
    body: Annotated[ExperimentClone | None, Body()] = None,
) -> Experiment:
    """A new experiment with the same config (optionally renamed), started."""
    clone = crud.clone_experiment(session, experiment=experiment, name=body and body.name)
    dispatch_stored(settings, session, clone)
    response.headers["Location"] = str(request.url_for("read_experiment", experiment_id=clone.id))
    return clone
