"""Live events of an experiment (what the event stream and the report replay).

``add_event`` is the one writer of event rows: every other module of the database layer
appends through it, inside its own transaction, so an event exists exactly when the change
it announces was committed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.db.models import Event

EVENT_TYPES = (
    "status",
    "round_started",
    "round_finished",
    "client_progress",
    "client_finished",
    "metrics",
)


def add_event(session: Session, *, experiment_id: str, type: str, data: dict[str, Any]) -> None:
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


def latest_events(session: Session, *, experiment_id: str, limit: int) -> list[Event]:
    """The newest ``limit`` events of an experiment, oldest first."""
    query = (
        select(Event)
        .where(Event.experiment_id == experiment_id)
        .order_by(Event.id.desc())
        .limit(limit)
    )
    return list(reversed(session.scalars(query).all()))


def last_event_id(session: Session, *, experiment_id: str) -> int:
    """The id of the newest event of an experiment (0 when it has none)."""
    query = select(func.max(Event.id)).where(Event.experiment_id == experiment_id)
    return int(session.scalar(query) or 0)


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
