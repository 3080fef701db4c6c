"""Sweeps in the database: the sweep row and the experiments it created (``sweep_id``).
Keyword-only, no HTTP types; a caller's mistake is a ValueError naming it.

A sweep's status is derived from its experiments' statuses, never stored: workers write
experiments only, so no second status has to be kept in step with them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.core.config import ExperimentConfig
from backend.core.sweeps import SweepSpec
from backend.db.experiments import cancel_experiment, new_experiment
from backend.db.models import ACTIVE, NO_LAYER, Experiment, ExperimentStatus, Metric, Sweep

# The metric kinds the leaderboard reads (client steps are the bulk and are not needed).
LEADERBOARD_KINDS = ("eval", "round", "diagnostics")


def sweep_status(counts: Mapping[str, int]) -> str:
    """A sweep's status from its experiments' status counts: ``queued`` while none has
    started, ``running`` while any is active, then ``failed`` if any failed, else
    ``cancelled`` if any was cancelled, else ``completed``; ``empty`` when none is left."""
    live = {s: n for s, n in counts.items() if n}
    if not live:
        return "empty"
    if set(live) == {ExperimentStatus.queued.value}:
        return ExperimentStatus.queued.value
    if any(s in live for s in ACTIVE):
        return ExperimentStatus.running.value
    for status in (ExperimentStatus.failed, ExperimentStatus.cancelled):
        if status.value in live:
            return status.value
    return ExperimentStatus.completed.value


def create_sweep(
    session: Session, *, spec: SweepSpec, configs: Sequence[ExperimentConfig]
) -> tuple[Sweep, list[Experiment]]:
    """Store a sweep and its experiments (queued) in one transaction."""
    sweep = Sweep(name=spec.name, spec=spec.model_dump(mode="json"))
    session.add(sweep)
    session.flush()  # the sweep's id
    experiments = [new_experiment(config, sweep_id=sweep.id) for config in configs]
    session.add_all(experiments)
    session.commit()
    session.refresh(sweep)
    return sweep, experiments


def get_sweep(session: Session, *, sweep_id: str) -> Sweep | None:
    """The sweep with this id, or None."""
    if "\x00" in sweep_id:  # no id has one, and PostgreSQL refuses it in a query
        return None
    return session.get(Sweep, sweep_id)


def list_sweeps(session: Session, *, offset: int = 0, limit: int = 50) -> tuple[list[Sweep], int]:
    """A page of sweeps, newest first, and the total."""
    count = session.scalar(select(func.count()).select_from(Sweep))
    query = select(Sweep).order_by(Sweep.created_at.desc(), Sweep.id).offset(offset).limit(limit)
    return list(session.scalars(query)), int(count or 0)


def status_counts(session: Session, *, sweep_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per sweep, how many of its experiments are in each status (one query for a page)."""
    query = (
        select(Experiment.sweep_id, Experiment.status, func.count())
        .where(Experiment.sweep_id.in_(list(sweep_ids)))
        .group_by(Experiment.sweep_id, Experiment.status)
    )
    counts: dict[str, dict[str, int]] = {s: {} for s in sweep_ids}
    for sweep_id, status, n in session.execute(query):
        counts[sweep_id][status] = int(n)
    return counts


def sweep_experiments(session: Session, *, sweep_id: str) -> list[Experiment]:
    """The experiments of a sweep, in the order they were created."""
    query = select(Experiment).where(Experiment.sweep_id == sweep_id)
    return list(session.scalars(query.order_by(Experiment.created_at, Experiment.name)))


def sweep_records(session: Session, *, sweep_id: str) -> dict[str, list[dict[str, Any]]]:
    """Per experiment of the sweep, its eval, round and diagnostics records as flat
    metrics.jsonl-style dicts (``{"kind", "round", "layer", ...values}``), by round."""
    query = (
        select(Metric)
        .join(Experiment, Metric.experiment_id == Experiment.id)
        .where(Experiment.sweep_id == sweep_id, Metric.kind.in_(LEADERBOARD_KINDS))
        .order_by(Metric.experiment_id, Metric.round, Metric.kind, Metric.layer)
    )
    out: dict[str, list[dict[str, Any]]] = {}
    for m in session.scalars(query):
        layer = None if m.layer == NO_LAYER else m.layer
        out.setdefault(m.experiment_id, []).append(
            {**m.values, "kind": m.kind, "round": m.round, "layer": layer}
        )
    return out


def cancel_sweep(session: Session, *, sweep_id: str) -> list[Experiment]:
    """Cancel every queued or running experiment of a sweep; returns those cancelled
    (none: everything had finished already)."""
    active = [e for e in sweep_experiments(session, sweep_id=sweep_id) if e.status in ACTIVE]
    return [cancel_experiment(session, experiment=e) for e in active]


def delete_sweep(session: Session, *, sweep: Sweep) -> list[str]:
    """Delete a finished sweep and its experiments (their rows by cascade); returns the
    experiment ids, whose run directories the caller removes. ValueError while any is
    active."""
    experiments = sweep_experiments(session, sweep_id=sweep.id)
    active = [e.id for e in experiments if e.status in ACTIVE]
    if active:
        raise ValueError(
            f"sweep {sweep.id!r} has {len(active)} queued or running experiments; "
            "cancel it before deleting it"
        )
    ids = [e.id for e in experiments]
    for e in experiments:
        session.delete(e)
    session.delete(sweep)
    session.commit()
    return ids
