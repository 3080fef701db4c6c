"""Metrics: every number a run records (client step losses, client records, evaluations,
per-layer diagnostics, round summaries), written idempotently and read by page.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.runs import METRICS_ENVELOPE
from backend.db.engine import BATCH, dialect_insert, page
from backend.db.events import add_event
from backend.db.models import METRIC_KINDS, NO_INT, NO_LAYER, Metric

METRIC_KEY = ("experiment_id", "kind", "round", "client", "step", "layer")


def _metric_row(experiment_id: str, record: dict[str, Any]) -> dict[str, Any]:
    """A flat metrics.jsonl record (or one with an explicit ``values``) as a table row."""
    kind = record.get("kind")
    if kind not in METRIC_KINDS:
        raise ValueError(f"kind: unknown {kind!r}; allowed: {', '.join(METRIC_KINDS)}")
    if not isinstance(record.get("round"), int):
        raise ValueError(f"round: an integer is required (got {record.get('round')!r})")
    values = record.get("values")
    if values is None:
        values = {k: v for k, v in record.items() if k not in (*METRIC_KEY, *METRICS_ENVELOPE)}
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
    for start in range(0, len(rows), BATCH):
        stmt = insert(Metric).values(rows[start : start + BATCH])
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
        add_event(session, experiment_id=experiment_id, type="metrics", data={"records": public})
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
    return page(session, query, offset=offset, limit=limit)


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
    return page(session, query.order_by(Metric.round, Metric.layer), offset=offset, limit=limit)


def diagnostic_layers(session: Session, *, experiment_id: str) -> list[str]:
    """The layer names that have diagnostics, sorted."""
    query = (
        select(Metric.layer)
        .where(Metric.experiment_id == experiment_id, Metric.kind == "diagnostics")
        .distinct()
        .order_by(Metric.layer)
    )
    return list(session.scalars(query))


def has_metric(session: Session, *, experiment_id: str, kind: str, round_num: int) -> bool:
    """Whether a metric of this kind is stored for the round."""
    return (
        session.scalar(
            select(Metric.id)
            .where(
                Metric.experiment_id == experiment_id,
                Metric.kind == kind,
                Metric.round == round_num,
            )
            .limit(1)
        )
        is not None
    )


def round_records(
    session: Session, *, experiment_id: str, round_num: int, kinds: Sequence[str]
) -> list[dict[str, Any]]:
    """An experiment's records of ``kinds`` in round ``round_num``, flat as in metrics.jsonl,
    in (kind, client, step, layer) order."""
    query = select(Metric).where(
        Metric.experiment_id == experiment_id,
        Metric.kind.in_(kinds),
        Metric.round == round_num,
    )
    query = query.order_by(Metric.kind, Metric.client, Metric.step, Metric.layer)
    unset = {"client": NO_INT, "step": NO_INT, "layer": NO_LAYER}
    out = []
    for m in session.scalars(query):
        key = {"client": m.client, "step": m.step, "layer": m.layer}
        kept = {k: v for k, v in key.items() if v != unset[k]}
        out.append({"kind": m.kind, "round": m.round, **kept, **m.values})
    return out
