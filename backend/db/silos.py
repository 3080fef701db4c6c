"""Token silos: their credentials (one token per silo, stored as its sha256), and the train
tasks they claim over the API instead of a Celery queue.

A task is one client's training of one round attempt of one dispatch generation; it is
``pending`` until its silo claims it, ``claimed`` while the silo trains (every word from the
silo refreshes ``seen_at``), then ``done`` or ``failed``. Only tasks of the experiment's
current generation are handed out; a claimed task silent for a while may be claimed again
(its silo client restarted), and one silent past the timeout is that client's failure.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from backend.db.engine import dialect_insert, page
from backend.db.models import ACTIVE, ClientUpdate, Experiment, Round, Silo, SiloTask, utcnow

TOKEN_PREFIX = "fms_"  # tells a silo token from the API token at a glance


class SiloExists(ValueError):
    """A silo of that name already holds a token that is not revoked."""


def hash_token(token: str) -> str:
    """The stored form of a token: its sha256 (tokens are random, 256 bits: no salt needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_silo(session: Session, *, name: str) -> tuple[Silo, str]:
    """A new token for silo ``name`` (a revoked silo gets a fresh one); the token is only
    ever returned here. SiloExists while the silo holds a live token. Commits."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = session.scalar(select(Silo).where(Silo.name == name))
    if row is not None and row.revoked_at is None:
        raise SiloExists(f"silo {name!r} already has a token; revoke it first to issue another")
    if row is None:
        row = Silo(name=name)
        session.add(row)
    row.token_hash, row.created_at = hash_token(token), utcnow()
    row.revoked_at = row.last_used_at = None
    session.commit()
    return row, token


def revoke_silo(session: Session, *, name: str) -> Silo | None:
    """Revoke a silo's token (at once: every later request with it is refused). None when
    there is no such silo. Commits."""
    row = session.scalar(select(Silo).where(Silo.name == name))
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
        session.commit()
    return row


def list_silos(session: Session, *, offset: int = 0, limit: int = 500) -> tuple[list[Silo], int]:
    """The silos by name (one page) and how many there are."""
    return page(session, select(Silo).order_by(Silo.name), offset=offset, limit=limit)


def live_silos(session: Session, *, names: list[str]) -> list[Silo]:
    """The silos of ``names`` that hold a live (not revoked) token."""
    query = select(Silo).where(Silo.name.in_(names), Silo.revoked_at.is_(None))
    return list(session.scalars(query))


def authenticate(session: Session, *, token: str) -> Silo | None:
    """The silo whose live token this is (its last use recorded), else None. Commits."""
    digest = hash_token(token)
    row = session.scalar(select(Silo).where(Silo.token_hash == digest))
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.token_hash, digest):
        return None
    row.last_used_at = utcnow()
    session.commit()
    return row


# ---- tasks ---------------------------------------------------------------------------------------


def add_tasks(
    session: Session,
    *,
    experiment_id: str,
    round_num: int,
    attempt: int,
    generation: int,
    clients: Mapping[int, str],
) -> None:
    """A pending task per client (client -> silo name), once per dispatch. Commits."""
    rows = [
        {
            "experiment_id": experiment_id,
            "silo": silo,
            "round": round_num,
            "client": client,
            "attempt": attempt,
            "generation": generation,
            "status": "pending",
            "created_at": utcnow(),
        }
        for client, silo in clients.items()
    ]
    if rows:
        session.execute(dialect_insert(session)(SiloTask).values(rows).on_conflict_do_nothing())
    session.commit()


def _live() -> tuple[object, ...]:
    """Conditions of a task that may still be worked on: its experiment active, and the
    generation that created it still the experiment's."""
    return (
        Experiment.id == SiloTask.experiment_id,
        Experiment.status.in_([s.value for s in ACTIVE]),
        Experiment.generation == SiloTask.generation,
    )


def claim_next(session: Session, *, silo: str, reclaim_after_s: float) -> SiloTask | None:
    """Claim this silo's oldest pending task (or a claimed one silent for
    ``reclaim_after_s``); None when there is none. A conditional UPDATE: two silo clients
    never claim the same task. Commits."""
    cutoff = utcnow() - timedelta(seconds=reclaim_after_s)
    open_ = or_(
        SiloTask.status == "pending", and_(SiloTask.status == "claimed", SiloTask.seen_at < cutoff)
    )
    query = (
        select(SiloTask).join(Experiment, and_(*_live())).where(SiloTask.silo == silo, open_)
    ).order_by(SiloTask.id)
    for task in session.scalars(query.limit(10)).all():
        result = session.execute(
            update(SiloTask)
            .where(SiloTask.id == task.id, SiloTask.status == task.status, open_)
            .values(status="claimed", seen_at=utcnow())
        )
        session.commit()
        if result.rowcount == 1:  # type: ignore[attr-defined]
            session.refresh(task)
            return task
    return None


def get_task(session: Session, *, silo: str, task_id: int) -> SiloTask | None:
    """A task of this silo (another silo's is None, as if it did not exist)."""
    task = session.get(SiloTask, task_id)
    return task if task is not None and task.silo == silo else None


def is_live(session: Session, *, task: SiloTask) -> bool:
    """Whether the task's experiment still wants it (active, same generation)."""
    exp = session.get(Experiment, task.experiment_id)
    return exp is not None and exp.status in ACTIVE and exp.generation == task.generation


def touch(session: Session, *, task: SiloTask) -> None:
    """A word from the silo about this task. Commits."""
    task.seen_at = utcnow()
    session.commit()


def close_task(session: Session, *, task: SiloTask, ok: bool, error: str | None = None) -> bool:
    """Mark a claimed task done or failed; False when it was closed already. Commits."""
    result = session.execute(
        update(SiloTask)
        .where(SiloTask.id == task.id, SiloTask.status.in_(("pending", "claimed")))
        .values(status="done" if ok else "failed", seen_at=utcnow(), error=error)
    )
    session.commit()
    session.refresh(task)
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def silent_tasks(session: Session, *, timeout_s: float) -> list[SiloTask]:
    """Open tasks of live experiments whose silo has been silent for ``timeout_s``: a
    claimed task without a word on it, a pending one whose silo made no request at all (a
    silo busy training another task still long-polls and reports, so its queue waits)."""
    cutoff: datetime = utcnow() - timedelta(seconds=timeout_s)
    claimed = and_(SiloTask.status == "claimed", SiloTask.seen_at < cutoff)
    pending = and_(
        SiloTask.status == "pending",
        SiloTask.created_at < cutoff,
        or_(Silo.last_used_at.is_(None), Silo.last_used_at < cutoff),
    )
    query = (
        select(SiloTask)
        .join(Experiment, and_(*_live()))
        .outerjoin(Silo, Silo.name == SiloTask.silo)
        .where(or_(claimed, pending))
    )
    return list(session.scalars(query.order_by(SiloTask.id)))


@dataclass(frozen=True)
class SiloClient:
    """A silo client's newest state in an experiment: its token-silo task, or for a Celery
    silo its last attempt record (``sent`` while the running experiment's current attempt
    has no result for it yet).
    ``status`` is None before the client was first sampled."""

    silo: str
    token: bool
    client: int
    round: int | None = None
    attempt: int | None = None
    status: str | None = None
    seen_at: datetime | None = None
    error: str | None = None


def silo_clients(
    session: Session, *, experiment_id: str, silos: Mapping[str, list[int]], token_silos: list[str]
) -> list[SiloClient]:
    """Every client of ``silos`` (silo name -> its clients) by silo and client, with its
    newest state."""
    newest = (
        select(func.max(SiloTask.id))
        .where(SiloTask.experiment_id == experiment_id)
        .group_by(SiloTask.client)
    )
    tasks = {t.client: t for t in session.scalars(select(SiloTask).where(SiloTask.id.in_(newest)))}
    celery = [c for s, cs in silos.items() if s not in token_silos for c in cs]
    updates = session.scalars(
        select(ClientUpdate)
        .where(ClientUpdate.experiment_id == experiment_id, ClientUpdate.client.in_(celery))
        .order_by(ClientUpdate.round, ClientUpdate.attempt)
    )
    last = {u.client: u for u in updates}  # the newest attempt record wins
    current = session.scalar(
        select(Round)
        .where(Round.experiment_id == experiment_id)
        .order_by(Round.round.desc())
        .limit(1)
    )
    exp = session.get(Experiment, experiment_id)
    sent: set[int] = set()  # a stopped experiment's open round sends nothing any more
    if current is not None and current.status == "running" and exp and exp.status in ACTIVE:
        key = (current.round, current.attempt)
        sent = {
            c
            for c in current.clients or []
            if c in celery and (c not in last or _key(last[c]) < key)
        }
    rows: list[SiloClient] = []
    for silo in sorted(silos):
        token = silo in token_silos
        for client in sorted(silos[silo]):
            task, update = tasks.get(client), last.get(client)
            if token and task is not None:
                rows.append(SiloClient(silo, token, client, task.round, task.attempt,
                                       task.status, task.seen_at, task.error))  # fmt: skip
            elif not token and client in sent and current is not None:
                rows.append(SiloClient(silo, token, client, current.round, current.attempt,
                                       "sent"))  # fmt: skip
            elif not token and update is not None:
                status = "done" if update.ok else "failed"
                rows.append(SiloClient(silo, token, client, update.round, update.attempt,
                                       status, None, update.error))  # fmt: skip
            else:
                rows.append(SiloClient(silo, token, client))
    return rows


def _key(update: ClientUpdate) -> tuple[int, int]:
    return update.round, update.attempt
