"""Experiments: create, read, list, cancel, delete, clone. Keyword-only, no HTTP types.

Errors a caller can cause are ValueError with a message naming the problem; "not found"
is ``None`` from the getters.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.config import ExperimentConfig
from backend.db.engine import page
from backend.db.events import add_event
from backend.db.models import ACTIVE, Experiment, ExperimentStatus, utcnow

SORT_FIELDS = (
    "created_at",
    "updated_at",
    "name",
    "status",
    "strategy",
    "best_accuracy",
    "current_round",
)
SORTS = tuple(s for f in SORT_FIELDS for s in (f, f"-{f}"))


def new_experiment(config: ExperimentConfig, *, sweep_id: str | None = None) -> Experiment:
    """A queued experiment of a validated config, not yet added to a session."""
    return Experiment(
        name=config.name,
        status=ExperimentStatus.queued.value,
        config=config.model_dump(mode="json"),
        strategy=config.strategy,
        model=config.model,
        dataset=config.dataset,
        current_round=0,
        total_rounds=config.federation.rounds,
        sweep_id=sweep_id,
    )


def create_experiment(session: Session, *, config: ExperimentConfig) -> Experiment:
    """Store a validated config as a new queued experiment."""
    experiment = new_experiment(config)
    session.add(experiment)
    session.commit()
    session.refresh(experiment)
    return experiment


def get_experiment(session: Session, *, experiment_id: str) -> Experiment | None:
    """The experiment with this id, or None."""
    if "\x00" in experiment_id:  # no id has one, and PostgreSQL refuses it in a query
        return None
    return session.get(Experiment, experiment_id)


def experiment_status(session: Session, *, experiment_id: str) -> str | None:
    """The status of an experiment, or None when there is none (one column: event streams
    ask this several times a second)."""
    if "\x00" in experiment_id:
        return None
    return session.scalar(select(Experiment.status).where(Experiment.id == experiment_id))


def list_experiments(
    session: Session,
    *,
    status: str | None = None,
    strategy: str | None = None,
    sort: str = "-created_at",
    offset: int = 0,
    limit: int = 50,
) -> tuple[list[Experiment], int]:
    """A page of experiments, filtered and sorted (``-field`` descending), and the total."""
    if sort not in SORTS:
        raise ValueError(f"sort: unknown {sort!r}; allowed: {', '.join(SORTS)}")
    column = getattr(Experiment, sort.removeprefix("-"))
    order = column.desc() if sort.startswith("-") else column.asc()
    query = select(Experiment).order_by(order.nulls_last(), Experiment.id)  # id: stable pages
    if status is not None:
        query = query.where(Experiment.status == status)
    if strategy is not None:
        query = query.where(Experiment.strategy == strategy)
    return page(session, query, offset=offset, limit=limit)


def cancel_experiment(session: Session, *, experiment: Experiment) -> Experiment:
    """Mark a queued or running experiment cancelled; ValueError when it already finished."""
    if experiment.status not in ACTIVE:
        raise ValueError(
            f"experiment {experiment.id!r} is already {experiment.status}; "
            "only queued or running experiments can be cancelled"
        )
    experiment.status = ExperimentStatus.cancelled.value
    experiment.finished_at = utcnow()
    add_event(session, experiment_id=experiment.id, type="status", data={"status": "cancelled"})
    session.commit()
    session.refresh(experiment)
    return experiment


def delete_experiment(session: Session, *, experiment: Experiment) -> None:
    """Delete a finished experiment and (by cascade) all its rows; ValueError while active."""
    if experiment.status in ACTIVE:
        raise ValueError(
            f"experiment {experiment.id!r} is {experiment.status}; cancel it before deleting it"
        )
    session.delete(experiment)
    session.commit()


def clone_experiment(
    session: Session, *, experiment: Experiment, name: str | None = None
) -> Experiment:
    """A new queued experiment with the same config (and optionally another name)."""
    data = dict(experiment.config)
    data["name"] = name or f"{experiment.name} (copy)"[:200]
    return create_experiment(session, config=ExperimentConfig.model_validate(data))
