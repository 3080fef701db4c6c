"""What an experiment produced: rounds, client attempts, its silo clients' state, metrics,
diagnostics, its manifest and what its export holds."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query

from backend.api.deps import ExperimentDep, LimitDep, OffsetDep, Read, SessionDep, SettingsDep
from backend.api.responses import errors
from backend.api.schemas import (
    MAX_INT,
    AttemptPublic,
    AttemptsPublic,
    DiagnosticPublic,
    DiagnosticsPublic,
    ExperimentSiloPublic,
    ExperimentSilosPublic,
    MetricPublic,
    MetricsPublic,
    RoundPublic,
    RoundsPublic,
    SiloClientPublic,
)
from backend.core.config import ExperimentConfig
from backend.core.runs import read_export_info, read_manifest
from backend.db import metrics, results, silos
from backend.db.models import METRIC_KINDS

router = APIRouter(
    prefix="/experiments/{experiment_id}",
    tags=["results"],
    dependencies=[Read],
    responses=errors(401, 404),
)

Kind = Literal[METRIC_KINDS]  # type: ignore[valid-type]
RoundQuery = Annotated[
    int, Query(ge=-1, le=MAX_INT, description="-1: the evaluation before training")
]


@router.get("/rounds", response_model=RoundsPublic)
def list_rounds(
    session: SessionDep, experiment: ExperimentDep, offset: OffsetDep = 0, limit: LimitDep = 500
) -> RoundsPublic:
    """The experiment's rounds in order, with their summaries."""
    rows, count = results.list_rounds(
        session, experiment_id=experiment.id, offset=offset, limit=limit
    )
    return RoundsPublic(data=[RoundPublic.model_validate(r) for r in rows], count=count)


@router.get("/attempts", response_model=AttemptsPublic)
def list_attempts(
    session: SessionDep,
    experiment: ExperimentDep,
    ok: bool | None = None,
    offset: OffsetDep = 0,
    limit: LimitDep = 500,
) -> AttemptsPublic:
    """Client training attempts, failures (``ok=false``, with the error) and retries included."""
    rows, count = results.list_attempts(
        session, experiment_id=experiment.id, ok=ok, offset=offset, limit=limit
    )
    return AttemptsPublic(data=[AttemptPublic.model_validate(r) for r in rows], count=count)


@router.get("/silos", response_model=ExperimentSilosPublic)
def list_experiment_silos(
    session: SessionDep, experiment: ExperimentDep, offset: OffsetDep = 0, limit: LimitDep = 500
) -> ExperimentSilosPublic:
    """The experiment's silos (``federation.silos``) by name, each client with its newest
    state, paginated by silo; none for an experiment without silos."""
    fed = ExperimentConfig.model_validate(experiment.config).federation
    every = fed.silos or {}
    names = sorted(every)[offset : offset + limit]
    rows = silos.silo_clients(
        session,
        experiment_id=experiment.id,
        silos={name: every[name] for name in names},
        token_silos=fed.token_silos or [],
    )
    data = [
        ExperimentSiloPublic(
            name=name,
            token=name in (fed.token_silos or []),
            clients=[SiloClientPublic.model_validate(r) for r in rows if r.silo == name],
        )
        for name in names
    ]
    return ExperimentSilosPublic(data=data, count=len(every))


@router.get("/metrics", response_model=MetricsPublic)
def list_metrics(
    session: SessionDep,
    experiment: ExperimentDep,
    kind: Kind | None = None,
    client: Annotated[int | None, Query(ge=0, le=MAX_INT)] = None,
    round_min: RoundQuery | None = None,
    round_max: RoundQuery | None = None,
    offset: OffsetDep = 0,
    limit: LimitDep = 100,
) -> MetricsPublic:
    """Metrics records (client steps, evaluations, diagnostics, rounds), filtered and paged."""
    rows, count = metrics.query_metrics(
        session,
        experiment_id=experiment.id,
        kind=kind,
        client=client,
        round_min=round_min,
        round_max=round_max,
        offset=offset,
        limit=limit,
    )
    return MetricsPublic(data=[MetricPublic.model_validate(m) for m in rows], count=count)


@router.get("/diagnostics", response_model=DiagnosticsPublic)
def list_diagnostics(
    session: SessionDep,
    experiment: ExperimentDep,
    layer: Annotated[str | None, Query(max_length=300, pattern=r"^[^\x00]*$")] = None,
    round: Annotated[int | None, Query(ge=0, le=MAX_INT)] = None,
    offset: OffsetDep = 0,
    limit: LimitDep = 100,
) -> DiagnosticsPublic:
    """Per-layer diagnostics by round: singular spectra, residual energy, exactness error."""
    rows, count = metrics.query_diagnostics(
        session, experiment_id=experiment.id, layer=layer, round=round, offset=offset, limit=limit
    )
    data = [
        DiagnosticPublic.model_validate({**m.values, "round": m.round, "layer": m.layer})
        for m in rows
    ]
    layers = metrics.diagnostic_layers(session, experiment_id=experiment.id)
    return DiagnosticsPublic(data=data, count=count, layers=layers)


@router.get("/manifest")
def read_experiment_manifest(experiment: ExperimentDep, settings: SettingsDep) -> dict[str, Any]:
    """What the run was made of: seed, model fingerprint, data split hash, package versions."""
    try:
        return read_manifest(settings.runs_store(), experiment.id)
    except FileNotFoundError as e:
        raise HTTPException(404, str(e)) from None


@router.get("/export")
def read_experiment_export(experiment: ExperimentDep, settings: SettingsDep) -> dict[str, Any]:
    """What the export holds: the base model it names, the final round, and the plain rank-N
    adapter with its relative error (``adapter_rank``) where one was written."""
    try:
        return read_export_info(settings.runs_store(), experiment.id)
    except FileNotFoundError as e:
        raise HTTPException(404, str(e)) from None
