"""An experiment's lifecycle: status, dispatch generation, heartbeats, and the reconciler.

Every dispatch of an experiment claims a new *generation* here and sends ``advance`` by name
(backend.core.broker), which works out from the run directory and the database where the
experiment stands (prepare, finish an aggregated round, train the unfinished round, or
export). Tasks carry their generation and do nothing once it is outdated, so re-dispatching
is always safe; the reconciler re-dispatches experiments that show no sign of life.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from backend.core.broker import send_advance, send_aggregate
from backend.core.settings import Settings
from backend.db import results, silos
from backend.db.engine import get_engine
from backend.db.events import add_event
from backend.db.models import (
    ACTIVE,
    ClientUpdate,
    Experiment,
    ExperimentStatus,
    Round,
    SiloTask,
    utcnow,
)

log = logging.getLogger(__name__)


def current(session: Session, *, experiment_id: str, generation: int) -> Experiment | None:
    """The experiment if a task of this generation should still work on it, else None."""
    exp = session.get(Experiment, experiment_id)
    if exp is None or exp.status not in ACTIVE or exp.generation != generation:
        return None
    return exp


def heartbeat(session: Session, *, experiment_id: str) -> str | None:
    """Record a sign of life; returns the status (None: the experiment was deleted). Commits."""
    session.execute(
        update(Experiment).where(Experiment.id == experiment_id).values(heartbeat_at=utcnow())
    )
    session.commit()
    return session.scalar(select(Experiment.status).where(Experiment.id == experiment_id))


def mark_running(session: Session, *, experiment: Experiment) -> None:
    """A queued experiment starts running; every call beats its heart. Commits."""
    exp = experiment
    if exp.status == ExperimentStatus.queued:
        exp.status = ExperimentStatus.running.value
        exp.started_at = utcnow()
        add_event(session, experiment_id=exp.id, type="status", data={"status": exp.status})
    exp.heartbeat_at = utcnow()
    session.commit()


def finish(
    session: Session, *, experiment: Experiment, status: ExperimentStatus, error: str | None
) -> None:
    """Mark an experiment completed or failed (with the reason). Commits."""
    exp = experiment
    exp.status = status.value
    exp.error = error
    exp.finished_at = utcnow()
    add_event(
        session,
        experiment_id=exp.id,
        type="status",
        data={"status": exp.status, "error": error},
    )
    session.commit()


def claim_dispatch(session: Session, *, experiment: Experiment) -> int | None:
    """Increment the generation of an active experiment; the new one, or None if another
    process claimed it first (a conditional UPDATE: several reconcilers cannot both win)."""
    exp = experiment
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


def last_sign_of_life(session: Session) -> datetime | None:
    """The newest heartbeat (or creation) of any active experiment; None: none is active."""
    last = func.max(func.coalesce(Experiment.heartbeat_at, Experiment.created_at))
    query = select(last).where(Experiment.status.in_([s.value for s in ACTIVE]))
    return session.scalar(query)


def dispatch(settings: Settings, session: Session, *, experiment: Experiment) -> int | None:
    """Claim a new generation for an active experiment and send ``advance``.

    Returns the generation, or None when another process dispatched it at the same moment.
    """
    generation = claim_dispatch(session, experiment=experiment)
    if generation is not None:
        send_advance(settings, experiment.id, generation)
    return generation


def aggregate_when_complete(
    settings: Settings, session: Session, *, experiment_id: str, round_num: int, generation: int
) -> bool:
    """Send the round's aggregation once every client sent in its current attempt has a
    result of that attempt, or a success from an earlier one (rounds without a chord:
    Celery and token-silo clients mixed).
    Once per generation and attempt: a conditional UPDATE, so the two last clients arriving
    together send it once. True when this call sent it. Commits."""
    exp = current(session, experiment_id=experiment_id, generation=generation)
    row = results.get_round(session, experiment_id=experiment_id, round_num=round_num)
    if exp is None or row is None or row.status != "running" or row.clients is None:
        return False
    # A client is in: it has this attempt's result, or succeeded in an earlier attempt (a
    # re-dispatch sends every sampled client again; those skip).
    done = set(
        session.scalars(
            select(ClientUpdate.client).where(
                ClientUpdate.experiment_id == experiment_id,
                ClientUpdate.round == round_num,
                or_(ClientUpdate.attempt == row.attempt, ClientUpdate.ok.is_(True)),
            )
        )
    )
    if not set(row.clients) <= done:
        return False
    key = f"{generation}/{row.attempt}"
    claimed = session.execute(
        update(Round)
        .where(
            Round.id == row.id,
            Round.attempt == row.attempt,
            or_(Round.aggregate_key.is_(None), Round.aggregate_key != key),
        )
        .values(aggregate_key=key)
    )
    session.commit()
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return False
    send_aggregate(settings, experiment_id, round_num, row.attempt, generation)
    return True


def client_finished(
    settings: Settings, session: Session, *, task: SiloTask, record: dict[str, Any]
) -> None:
    """Store the client attempt of a token-silo task (its upload, or its failure) and
    aggregate the round if it was the last one. Commits."""
    experiment_id = task.experiment_id
    results.record_client(session, experiment_id=experiment_id, attempt=task.attempt, record=record)
    heartbeat(session, experiment_id=experiment_id)
    aggregate_when_complete(
        settings,
        session,
        experiment_id=experiment_id,
        round_num=record["round"],
        generation=task.generation,
    )


def fail_silent_silos(settings: Settings, session: Session) -> int:
    """Each token-silo task whose silo is silent past ``silo_timeout_s`` becomes its
    client's failure (then retried or failed with the round, as any failed client).
    Returns how many."""
    tasks = silos.silent_tasks(session, timeout_s=settings.silo_timeout_s)
    for task in tasks:
        reason = (
            f"silo {task.silo!r} was silent for {settings.silo_timeout_s:g} s with this task "
            "open (FEDMOMENTUM_SILO_TIMEOUT_S)"
        )
        fail_silo_task(settings, session, task=task, error=reason)
    return len(tasks)


def fail_silo_task(settings: Settings, session: Session, *, task: SiloTask, error: str) -> bool:
    """Close a token-silo task as its client's failure (then retried or failed with the
    round, as any failed client); False when it was closed already. Commits."""
    if not silos.close_task(session, task=task, ok=False, error=error):
        return False
    record = {"round": task.round, "client": task.client, "ok": False, "error": error}
    client_finished(settings, session, task=task, record=record)
    return True


def reconcile(settings: Settings, *, everything: bool = False) -> list[str]:
    """Re-dispatch active experiments that show no sign of life (``everything``: all active
    ones, for a start where no worker can be running). Returns the ids re-dispatched."""
    stale_after = None if everything else settings.stale_after_s
    done = []
    with Session(get_engine(settings.database_url)) as session:
        try:
            fail_silent_silos(settings, session)
        except Exception:  # noqa: BLE001 - the broker may be down: try again next time
            session.rollback()
            log.exception("reconcile: could not fail the silent silo tasks")
        for exp in stale_experiments(session, stale_after_s=stale_after):
            try:
                if dispatch(settings, session, experiment=exp) is not None:
                    done.append(exp.id)
            except Exception:  # noqa: BLE001 - the broker may be down: try again next time
                log.exception("reconcile: could not dispatch experiment %s", exp.id)
    if done:
        log.info("reconcile: re-dispatched %s", ", ".join(done))
    return done
