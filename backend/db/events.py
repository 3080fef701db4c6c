"""Live events of an experiment (what the event stream and the report replay).

``add_event`` is the one writer of event rows: every other module of the database layer
appends through it, inside its own transaction, so an event exists exactly when the change
it announces was committed.

Readers follow an experiment's events by id (``id > last seen``), so ids must become visible
in id order. PostgreSQL hands out ids when a row is inserted but shows the row at commit: two
writers of one experiment could commit 11 before 10, and a reader at 11 would never see 10.
Every flush that inserts events therefore first takes a transaction-scoped advisory lock per
experiment (released at commit), so one experiment's event ids are taken and committed one
transaction at a time. SQLite already has one writer at a time.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, UOWTransaction

from backend.db.models import Event

EVENT_TYPES = (
    "status",
    "round_started",
    "round_finished",
    "client_progress",
    "client_finished",
    "metrics",
)
EVENT_LOCKS = 0x464D  # the advisory-lock namespace of event writers ("FM")


def add_event(session: Session, *, experiment_id: str, type: str, data: dict[str, Any]) -> None:
    """Append a live event (committed with the caller's transaction)."""
    if type not in EVENT_TYPES:
        raise ValueError(f"type: unknown {type!r}; allowed: {', '.join(EVENT_TYPES)}")
    session.add(Event(experiment_id=experiment_id, type=type, data=data))


@event.listens_for(Session, "before_flush")
def _one_writer_per_experiment(session: Session, _flush: UOWTransaction, _objects: object) -> None:
    experiments = sorted({o.experiment_id for o in session.new if isinstance(o, Event)})
    if not experiments or session.get_bind().dialect.name != "postgresql":
        return
    connection = session.connection()
    for experiment_id in experiments:  # sorted: two flushes never wait on each other's locks
        connection.execute(
            select(func.pg_advisory_xact_lock(EVENT_LOCKS, func.hashtext(experiment_id)))
        )


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


def latest_events(session: Session, *, experiment_id: str, limit: int) -> list[Event]:
    """The newest ``limit`` events of an experiment, oldest first."""
    query = (
        select(Event)
        .where(Event.experiment_id == experiment_id)
        .order_by(Event.id.desc())
        .limit(limit)
    )
    return list(reversed(session.scalars(query).all()))


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
