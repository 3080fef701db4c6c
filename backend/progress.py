"""What the workers and the reconciler write about a running experiment: status, dispatch
generation, heartbeats, rounds, client updates and live events. Torch-free; every write is
idempotent or guarded, so a re-delivered task changes nothing twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from backend.crud import dialect_insert
from backend.models import (
    ACTIVE,
    Artifact,
    Client,
    ClientUpdate,
    Event,
    Experiment,
    ExperimentStatus,
    Metric,
    Round,
    utcnow,
)

EVENT_TYPES = (
    "status",
    "round_started",
    "round_finished",
    "client_progress",
    "client_finished",
    "metrics",
)


def add_event(session: Session, experiment_id: str, type: str, data: dict[str, Any]) -> None:
    """Append a live event (committed with the caller's transaction)."""
    if type not in EVENT_TYPES:
        raise ValueError(f"type: unknown {type!r}; allowed: {', '.join(EVENT_TYPES)}")
    session.add(Event(experiment_id=experiment_id, type=type, data=data))


def events_after(
    session: Session, *, experiment_id: str, after: int, limit: int = 500
) -> list[Event]:
    """Events of an experiment with id > ``after``, oldest first."""
    query = (
        select(Event)
        .where(Event.experiment_id == experiment_id, Event.id > after)
        .order_by(Event.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def event_payload(event: Event) -> dict[str, Any]:
    """What a client sees of an event (SSE data, report): its data and when it happened."""
    return {**event.data, "created_at": event.created_at.isoformat()}


def all_events(session: Session, *, experiment_id: str) -> list[Event]:
    """Every event of an experiment, oldest first."""
    out: list[Event] = []
    while batch := events_after(
        session, experiment_id=experiment_id, after=out[-1].id if out else 0
    ):
        out += batch
    return out


# ---- experiment status and dispatch ----------------------------------------------------------


def current(session: Session, experiment_id: str, generation: int) -> Experiment | None:
    """The experiment if a task of this generation should still work on it, else None."""
    exp = session.get(Experiment, experiment_id)
    if exp is None or exp.status not in ACTIVE or exp.generation != generation:
        return None
    return exp


def heartbeat(session: Session, experiment_id: str) -> str | None:
    """Record a sign of life; returns the status (None: the experiment was deleted). Commits."""
    session.execute(
        update(Experiment).where(Experiment.id == experiment_id).values(heartbeat_at=utcnow())
    )
    session.commit()
    return session.scalar(select(Experiment.status).where(Experiment.id == experiment_id))


def mark_running(session: Session, exp: Experiment) -> None:
    if exp.status == ExperimentStatus.queued:
        exp.status = ExperimentStatus.running.value
        exp.started_at = utcnow()
        add_event(session, exp.id, "status", {"status": exp.status})
    exp.heartbeat_at = utcnow()
    session.commit()


def finish(session: Session, exp: Experiment, status: ExperimentStatus, error: str | None) -> None:
    """Mark an experiment completed or failed (with the reason). Commits."""
    exp.status = status.value
    exp.error = error
    exp.finished_at = utcnow()
    add_event(session, exp.id, "status", {"status": exp.status, "error": error})
    session.commit()


def claim_dispatch(session: Session, exp: Experiment) -> int | None:
    """Increment the generation of an active experiment; the new one, or None if another
    process claimed it first (a conditional UPDATE: several reconcilers cannot both win)."""
    new = exp.generation + 1
    result = session.execute(
        update(Experiment)
        .where(
            Experiment.id == exp.id,
            Experiment.generation == exp.generation,
            Experiment.status.in_([s.value for s in ACTIVE]),
        )
        .values(generation=new, heartbeat_at=utcnow())
    )
    session.commit()
    return new if result.rowcount == 1 else None  # type: ignore[attr-defined]


def stale_experiments(session: Session, *, stale_after_s: float | None) -> list[Experiment]:
    """Active experiments without a heartbeat for ``stale_after_s`` (None: every active one)."""
    query = select(Experiment).where(Experiment.status.in_([s.value for s in ACTIVE]))
    if stale_after_s is not None:
        cutoff: datetime = utcnow() - timedelta(seconds=stale_after_s)
        last = func.coalesce(Experiment.heartbeat_at, Experiment.created_at)
        query = query.where(last < cutoff)
    return list(session.scalars(query.order_by(Experiment.created_at)))


# ---- rounds and client updates -----------------------------------------------------------------


def start_round(
    session: Session, experiment_id: str, round_num: int, attempt: int, clients: list[int]
) -> None:
    """Create (or re-open for another attempt) a round's row and announce it. Commits."""
    row = session.scalar(
        select(Round).where(Round.experiment_id == experiment_id, Round.round == round_num)
    )
    if row is None:
        row = Round(experiment_id=experiment_id, round=round_num, started_at=utcnow())
        session.add(row)
    row.status, row.attempt = "running", attempt
    add_event(
        session,
        experiment_id,
        "round_started",
        {"round": round_num, "attempt": attempt, "clients": clients},
    )
    session.commit()


def get_round(session: Session, experiment_id: str, round_num: int) -> Round | None:
    return session.scalar(
        select(Round).where(Round.experiment_id == experiment_id, Round.round == round_num)
    )


def finish_round(
    session: Session, experiment_id: str, round_num: int, summary: dict[str, Any]
) -> None:
    """Close a round with its summary; update the experiment's progress. Commits."""
    row = get_round(session, experiment_id, round_num)
    if row is None:
        row = Round(experiment_id=experiment_id, round=round_num, started_at=utcnow())
        session.add(row)
    row.status, row.finished_at, row.summary = "completed", utcnow(), summary
    exp = session.get(Experiment, experiment_id)
    if exp is not None:
        exp.current_round = max(exp.current_round, round_num + 1)
        accuracy = summary.get("accuracy")
        if isinstance(accuracy, float | int) and (
            exp.best_accuracy is None or accuracy > exp.best_accuracy
        ):
            exp.best_accuracy = float(accuracy)
        exp.heartbeat_at = utcnow()
    add_event(
        session,
        experiment_id,
        "round_finished",
        {k: summary.get(k) for k in ("round", "accuracy", "eval_loss", "round_seconds")},
    )
    session.commit()


def record_client(
    session: Session, experiment_id: str, attempt: int, record: dict[str, Any]
) -> None:
    """Store one client attempt (keyed by experiment, round, client, attempt). Commits."""
    row = {
        "experiment_id": experiment_id,
        "round": record["round"],
        "client": record["client"],
        "attempt": attempt,
        "ok": record["ok"],
        "n_examples": record.get("n_examples", 0),
        "seconds": record.get("seconds", 0.0),
        "error": record.get("error"),
        "path": record.get("path"),
    }
    stmt = dialect_insert(session)(ClientUpdate).values(row).on_conflict_do_nothing()
    session.execute(stmt)
    add_event(
        session,
        experiment_id,
        "client_finished",
        {k: row[k] for k in ("round", "client", "attempt", "ok", "seconds", "error")},
    )
    session.commit()


def exclude_clients(
    session: Session, experiment_id: str, round_num: int, excluded: dict[int, str]
) -> None:
    """Mark the successful attempts of clients whose upload was excluded from aggregation as
    failed (``excluded: <reason>``), so a retry trains them again. Commits."""
    for client, reason in excluded.items():
        error = f"excluded: {reason}"
        rows = session.scalars(
            select(ClientUpdate).where(
                ClientUpdate.experiment_id == experiment_id,
                ClientUpdate.round == round_num,
                ClientUpdate.client == client,
                ClientUpdate.ok.is_(True),
            )
        )
        for row in rows:
            row.ok, row.error = False, error
            add_event(
                session,
                experiment_id,
                "client_finished",
                {"round": round_num, "client": client, "attempt": row.attempt, "ok": False,
                 "seconds": row.seconds, "error": error},
            )  # fmt: skip
    session.commit()


def latest_client_updates(
    session: Session, experiment_id: str, round_num: int
) -> dict[int, ClientUpdate]:
    """Each client's last attempt in a round (a success wins over a later failure)."""
    rows = session.scalars(
        select(ClientUpdate)
        .where(ClientUpdate.experiment_id == experiment_id, ClientUpdate.round == round_num)
        .order_by(ClientUpdate.attempt)
    )
    latest: dict[int, ClientUpdate] = {}
    for row in rows:
        if row.ok or not (row.client in latest and latest[row.client].ok):
            latest[row.client] = row
    return latest


def has_metric(session: Session, experiment_id: str, kind: str, round_num: int) -> bool:
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


def record_clients(
    session: Session, experiment_id: str, sizes: list[int], ranks: list[int]
) -> None:
    """The experiment's clients (examples and LoRA rank by client index), once. Commits."""
    rows = [
        {"experiment_id": experiment_id, "client": i, "n_examples": n, "rank": r}
        for i, (n, r) in enumerate(zip(sizes, ranks, strict=True))
    ]
    for start in range(0, len(rows), 500):  # under SQLite's bound-parameter limit
        stmt = dialect_insert(session)(Client).values(rows[start : start + 500])
        session.execute(stmt.on_conflict_do_nothing())
    session.commit()


def record_artifact(
    session: Session, experiment_id: str, kind: str, path: str, round_num: int | None, size: int
) -> None:
    """Register a file or folder an experiment produced (path relative to its run dir),
    once per (kind, round, path). Commits."""
    exists = session.scalar(
        select(Artifact.id).where(
            Artifact.experiment_id == experiment_id, Artifact.kind == kind, Artifact.path == path
        )
    )
    if exists is None:
        session.add(
            Artifact(experiment_id=experiment_id, kind=kind, path=path, round=round_num, bytes=size)
        )
    session.commit()
