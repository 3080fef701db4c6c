"""Database operations on experiments and their results: keyword-only, no HTTP types.

Errors a caller can cause are ValueError with a message naming the problem; "not found"
is ``None`` from the getters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from backend.config import ExperimentConfig
from backend.models import (
    ACTIVE,
    METRIC_KINDS,
    NO_INT,
    NO_LAYER,
    ClientUpdate,
    Event,
    Experiment,
    ExperimentStatus,
    Metric,
    Round,
    utcnow,
)

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
METRIC_KEY = ("experiment_id", "kind", "round", "client", "step", "layer")
_BATCH = 500  # rows per INSERT: stays under SQLite's bound-parameter limit


def _page(session: Session, query: Select[Any], offset: int, limit: int) -> tuple[list[Any], int]:
    """One page of ``query`` and the total count of its rows."""
    count = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    rows = list(session.scalars(query.offset(offset).limit(limit)))
    return rows, int(count or 0)


# ---- experiments --------------------------------------------------------------------------------


def create_experiment(session: Session, *, config: ExperimentConfig) -> Experiment:
    """Store a validated config as a new queued experiment."""
    experiment = Experiment(
        name=config.name,
        status=ExperimentStatus.queued.value,
        config=config.model_dump(mode="json"),
        strategy=config.strategy,
        model=config.model,
        dataset=config.dataset,
        current_round=0,
        total_rounds=config.federation.rounds,
    )
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
    return _page(session, query, offset, limit)


def cancel_experiment(session: Session, *, experiment: Experiment) -> Experiment:
    """Mark a queued or running experiment cancelled; ValueError when it already finished."""
    if experiment.status not in ACTIVE:
        raise ValueError(
            f"experiment {experiment.id!r} is already {experiment.status}; "
            "only queued or running experiments can be cancelled"
        )
    experiment.status = ExperimentStatus.cancelled.value
    experiment.finished_at = utcnow()
    session.add(Event(experiment_id=experiment.id, type="status", data={"status": "cancelled"}))
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


# ---- rounds and metrics -------------------------------------------------------------------------


def list_rounds(
    session: Session, *, experiment_id: str, offset: int = 0, limit: int = 500
) -> tuple[list[Round], int]:
    """The rounds of an experiment in order."""
    query = select(Round).where(Round.experiment_id == experiment_id).order_by(Round.round)
    return _page(session, query, offset, limit)


def list_attempts(
    session: Session,
    *,
    experiment_id: str,
    ok: bool | None = None,
    offset: int = 0,
    limit: int = 500,
) -> tuple[list[ClientUpdate], int]:
    """Every client training attempt (failures included) by round, client and attempt."""
    query = select(ClientUpdate).where(ClientUpdate.experiment_id == experiment_id)
    if ok is not None:
        query = query.where(ClientUpdate.ok == ok)
    order = (ClientUpdate.round, ClientUpdate.client, ClientUpdate.attempt)
    return _page(session, query.order_by(*order), offset, limit)


def _metric_row(experiment_id: str, record: dict[str, Any]) -> dict[str, Any]:
    """A flat metrics.jsonl record (or one with an explicit ``values``) as a table row."""
    kind = record.get("kind")
    if kind not in METRIC_KINDS:
        raise ValueError(f"kind: unknown {kind!r}; allowed: {', '.join(METRIC_KINDS)}")
    if not isinstance(record.get("round"), int):
        raise ValueError(f"round: an integer is required (got {record.get('round')!r})")
    values = record.get("values")
    if values is None:
        values = {k: v for k, v in record.items() if k not in METRIC_KEY}
    client, step, layer = record.get("client"), record.get("step"), record.get("layer")
    return {
        "experiment_id": experiment_id,
        "kind": kind,
        "round": record["round"],
        "client": NO_INT if client is None else int(client),
        "step": NO_INT if step is None else int(step),
        "layer": NO_LAYER if layer is None else str(layer),
        "values": values,
    }


def dialect_insert(session: Session) -> Any:
    """The dialect's INSERT construct (it has ON CONFLICT DO NOTHING)."""
    dialect = session.get_bind().dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
    if insert is None:
        raise ValueError(f"database: unsupported dialect {dialect!r}; allowed: postgresql, sqlite")
    return insert


def add_metrics(
    session: Session,
    *,
    experiment_id: str,
    records: Sequence[dict[str, Any]],
    emit: bool = False,
) -> int:
    """Insert metrics records; a record whose key is already stored is skipped (idempotent).

    With ``emit``, the rows that were new also go out as one live ``metrics`` event (in the
    same transaction: a re-delivered task emits nothing twice). Returns how many rows were
    new. Commits.
    """
    rows = [_metric_row(experiment_id, r) for r in records]
    insert = dialect_insert(session)
    new: list[dict[str, Any]] = []
    for start in range(0, len(rows), _BATCH):
        stmt = insert(Metric).values(rows[start : start + _BATCH])
        stmt = stmt.on_conflict_do_nothing(index_elements=METRIC_KEY).returning(
            Metric.id, Metric.kind, Metric.round, Metric.client, Metric.step, Metric.layer
        )  # rowcount is unreliable for ON CONFLICT
        new.extend(r._asdict() for r in session.execute(stmt))
    if emit and new:
        by_key = {(r["kind"], r["round"], r["client"], r["step"], r["layer"]): r for r in rows}
        public = [
            _public(m, by_key[m["kind"], m["round"], m["client"], m["step"], m["layer"]])
            for m in new
        ]
        session.add(Event(experiment_id=experiment_id, type="metrics", data={"records": public}))
    session.commit()
    return len(new)


def _public(key: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """A metric as the API shows it (null where client, step or layer do not apply)."""
    return {
        "id": key["id"],
        "kind": row["kind"],
        "round": row["round"],
        "client": None if row["client"] == NO_INT else row["client"],
        "step": None if row["step"] == NO_INT else row["step"],
        "layer": None if row["layer"] == NO_LAYER else row["layer"],
        "values": row["values"],
    }


def query_metrics(
    session: Session,
    *,
    experiment_id: str,
    kind: str | None = None,
    client: int | None = None,
    round_min: int | None = None,
    round_max: int | None = None,
    offset: int = 0,
    limit: int = 100,
) -> tuple[list[Metric], int]:
    """A page of an experiment's metrics in (round, kind, client, step, layer) order."""
    query = select(Metric).where(Metric.experiment_id == experiment_id)
    if kind is not None:
        query = query.where(Metric.kind == kind)
    if client is not None:
        query = query.where(Metric.client == client)
    if round_min is not None:
        query = query.where(Metric.round >= round_min)
    if round_max is not None:
        query = query.where(Metric.round <= round_max)
    query = query.order_by(Metric.round, Metric.kind, Metric.client, Metric.step, Metric.layer)
    return _page(session, query, offset, limit)


def query_diagnostics(
    session: Session,
    *,
    experiment_id: str,
    layer: str | None = None,
    round: int | None = None,
    offset: int = 0,
    limit: int = 100,
) -> tuple[list[Metric], int]:
    """A page of per-layer diagnostics (singular spectra, residual energy...) by round, layer."""
    query = select(Metric).where(
        Metric.experiment_id == experiment_id, Metric.kind == "diagnostics"
    )
    if layer is not None:
        query = query.where(Metric.layer == layer)
    if round is not None:
        query = query.where(Metric.round == round)
    return _page(session, query.order_by(Metric.round, Metric.layer), offset, limit)


def diagnostic_layers(session: Session, *, experiment_id: str) -> list[str]:
    """The layer names that have diagnostics, sorted."""
    query = (
        select(Metric.layer)
        .where(Metric.experiment_id == experiment_id, Metric.kind == "diagnostics")
        .distinct()
        .order_by(Metric.layer)
    )
    return list(session.scalars(query))


def database_ok(session: Session) -> bool:
    """Whether the database answers ``SELECT 1``."""
    try:
        return session.execute(text("SELECT 1")).scalar() == 1
    except SQLAlchemyError:
        return False
