"""Sweeps: create (every experiment stored and dispatched), list, read with the leaderboard,
cancel, delete."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse

from backend.api.deps import LimitDep, OffsetDep, Read, SessionDep, SettingsDep, Write
from backend.api.experiments import dispatch_stored
from backend.api.responses import errors
from backend.api.schemas import SweepCreate, SweepDetail, SweepPublic, SweepsPublic
from backend.api.sweep_report import render
from backend.core.checks import check_for_server
from backend.core.leaderboard import Row, from_records, leaderboard
from backend.core.runs import remove_run_dir
from backend.core.settings import Settings
from backend.core.sweeps import SweepError, SweepRun, expand, grid_keys, parse_run_name
from backend.db import sweeps as db
from backend.db.models import Experiment, Sweep

router = APIRouter(prefix="/sweeps", tags=["sweeps"], dependencies=[Read], responses=errors(401))


def _invalid(problems: list[tuple[tuple[Any, ...], str]]) -> RequestValidationError:
    return RequestValidationError(
        [
            {"type": "value_error", "loc": ("body", *loc), "msg": f"Value error, {msg}"}
            for loc, msg in problems
        ]
    )


def _expand(spec: SweepCreate, settings: Settings) -> list[SweepRun]:
    """The sweep's runs, each checked as POST /experiments checks a config (the server's
    roots, then its data); 422 naming the bad field, grid entry or cell."""
    try:
        runs = expand(spec)
    except SweepError as e:
        raise _invalid(e.problems) from None
    checked = []
    for run in runs:  # cached per dataset and seed: cheap for 200 runs
        config, problems = check_for_server(run.config, settings)
        for loc, msg in problems:
            path = ".".join(loc)
            where = ("grid", path) if path in grid_keys(spec) else ("base", *loc)
            # the first only: a bad base gives every run the same problem
            raise _invalid([(where, f"{run.label}, seed {run.seed}: {msg}")])
        checked.append(replace(run, config=config))
    return checked


def get_sweep(session: SessionDep, sweep_id: str) -> Sweep:
    sweep = db.get_sweep(session, sweep_id=sweep_id)
    if sweep is None:
        raise HTTPException(404, f"sweep {sweep_id!r} not found")
    return sweep


SweepDep = Annotated[Sweep, Depends(get_sweep)]


def _public(sweep: Sweep, counts: dict[str, int]) -> SweepPublic:
    return SweepPublic(
        id=sweep.id,
        name=sweep.name,
        spec=sweep.spec,
        created_at=sweep.created_at,
        status=db.sweep_status(counts),  # type: ignore[arg-type]
        counts=counts,
        n_experiments=sum(counts.values()),
    )


def _client_ranks(config: dict[str, Any]) -> list[int]:
    federation = config["federation"]
    return federation.get("client_ranks") or [config["lora"]["rank"]] * federation["num_clients"]


def summary(
    sweep: Sweep, experiments: list[Experiment], records: dict[str, list[dict[str, Any]]]
) -> list[Row]:
    """The leaderboard of a sweep's experiments from their stored metrics (experiments with
    no evaluation yet are left out)."""
    runs = []
    for e in experiments:
        cell = parse_run_name(sweep.name, e.name)
        if cell is not None and e.id in records:
            runs.append(from_records(*cell, records[e.id], _client_ranks(e.config)))
    return leaderboard(runs)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SweepPublic,
    dependencies=[Write],
    responses=errors(413),
)
def create_sweep(
    session: SessionDep,
    settings: SettingsDep,
    spec: SweepCreate,
    request: Request,
    response: Response,
) -> SweepPublic:
    """Expand a sweep into its experiments (at most 200), store them and start every one."""
    runs = _expand(spec, settings)
    sweep, experiments = db.create_sweep(session, spec=spec, configs=[r.config for r in runs])
    for experiment in experiments:
        dispatch_stored(settings, session, experiment)
    response.headers["Location"] = str(request.url_for("read_sweep", sweep_id=sweep.id))
    return _public(sweep, db.status_counts(session, sweep_ids=[sweep.id])[sweep.id])


@router.get("", response_model=SweepsPublic)
def list_sweeps(session: SessionDep, offset: OffsetDep = 0, limit: LimitDep = 50) -> SweepsPublic:
    """List sweeps, newest first, with their status and experiments per status."""
    rows, count = db.list_sweeps(session, offset=offset, limit=limit)
    counts = db.status_counts(session, sweep_ids=[s.id for s in rows])
    return SweepsPublic(data=[_public(s, counts[s.id]) for s in rows], count=count)


def _detail(session: SessionDep, sweep: Sweep) -> SweepDetail:
    experiments = db.sweep_experiments(session, sweep_id=sweep.id)
    counts = db.status_counts(session, sweep_ids=[sweep.id])[sweep.id]
    rows = summary(sweep, experiments, db.sweep_records(session, sweep_id=sweep.id))
    return SweepDetail(
        **_public(sweep, counts).model_dump(),
        experiments=experiments,  # type: ignore[arg-type]
        leaderboard=rows,
    )


@router.get("/{sweep_id}", response_model=SweepDetail, responses=errors(404))
def read_sweep(session: SessionDep, sweep: SweepDep) -> SweepDetail:
    """A sweep with its experiments and the leaderboard of their metrics so far."""
    return _detail(session, sweep)


@router.get(
    "/{sweep_id}/report",
    response_class=HTMLResponse,
    dependencies=[Write],
    responses=errors(404),
)
def download_sweep_report(session: SessionDep, sweep: SweepDep) -> HTMLResponse:
    """The sweep's leaderboard and curves as one self-contained HTML file (opens offline)."""
    page = render(_detail(session, sweep).model_dump(mode="json"))
    filename = f"fedmomentum-sweep-{sweep.id}-report.html"
    return HTMLResponse(page, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.post(
    "/{sweep_id}/cancel",
    response_model=SweepPublic,
    dependencies=[Write],
    responses=errors(404, 409),
)
def cancel_sweep(session: SessionDep, sweep: SweepDep) -> SweepPublic:
    """Cancel every queued or running experiment of a sweep (409 when none is)."""
    if not db.cancel_sweep(session, sweep_id=sweep.id):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"sweep {sweep.id!r} has no queued or running experiment; nothing to cancel",
        )
    return _public(sweep, db.status_counts(session, sweep_ids=[sweep.id])[sweep.id])


@router.delete(
    "/{sweep_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Write],
    responses=errors(404, 409),
)
def delete_sweep(session: SessionDep, settings: SettingsDep, sweep: SweepDep) -> None:
    """Delete a finished sweep, its experiments and their run directories (409 while any
    of them is queued or running)."""
    try:
        ids = db.delete_sweep(session, sweep=sweep)
    except ValueError as e:
        raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from None
    for experiment_id in ids:
        remove_run_dir(settings.runs_store(), experiment_id)
