"""Results of an experiment's rounds: round rows, every client attempt, the clients, and the
artifacts (committed folders) a run produced. Every write is keyed or guarded, so a
re-delivered task changes nothing twice.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db.engine import dialect_insert, page
from backend.db.events import add_event
from backend.db.models import Artifact, Client, ClientUpdate, Experiment, Round, utcnow


def list_rounds(
    session: Session, *, experiment_id: str, offset: int = 0, limit: int = 500
) -> tuple[list[Round], int]:
    """The rounds of an experiment in order."""
    query = select(Round).where(Round.experiment_id == experiment_id).order_by(Round.round)
    return page(session, query, offset=offset, limit=limit)


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
    return page(session, query.order_by(*order), offset=offset, limit=limit)


def start_round(
    session: Session, *, experiment_id: str, round_num: int, attempt: int, clients: list[int]
) -> None:
    """Create (or re-open for another attempt) a round's row and announce it. Commits."""
    row = session.scalar(
        select(Round).where(Round.experiment_id == experiment_id, Round.round == round_num)
    )
    if row is None:
        row = Round(experiment_id=experiment_id, round=round_num, started_at=utcnow())
        session.add(row)
    row.status, row.attempt, row.clients = "running", attempt, clients
    add_event(
        session,
        experiment_id=experiment_id,
        type="round_started",
        data={"round": round_num, "attempt": attempt, "clients": clients},
    )
    session.commit()


def get_round(session: Session, *, experiment_id: str, round_num: int) -> Round | None:
    """The row of one round, or None before it started."""
    return session.scalar(
        select(Round).where(Round.experiment_id == experiment_id, Round.round == round_num)
    )


def finish_round(
    session: Session, *, experiment_id: str, round_num: int, summary: dict[str, Any]
) -> None:
    """Close a round with its summary; update the experiment's progress. Commits."""
    row = get_round(session, experiment_id=experiment_id, round_num=round_num)
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
        experiment_id=experiment_id,
        type="round_finished",
        data={k: summary.get(k) for k in ("round", "accuracy", "eval_loss", "round_seconds")},
    )
    session.commit()


def record_client(
    session: Session, *, experiment_id: str, attempt: int, record: dict[str, Any]
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
        experiment_id=experiment_id,
        type="client_finished",
        data={k: row[k] for k in ("round", "client", "attempt", "ok", "seconds", "error")},
    )
    session.commit()


def exclude_clients(
    session: Session, *, experiment_id: str, round_num: int, excluded: dict[int, str]
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
                experiment_id=experiment_id,
                type="client_finished",
                data={
                    "round": round_num,
                    "client": client,
                    "attempt": row.attempt,
                    "ok": False,
                    "seconds": row.seconds,
                    "error": error,
                },
            )
    session.commit()


def latest_client_updates(
    session: Session, *, experiment_id: str, round_num: int
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


def record_clients(
    session: Session, *, experiment_id: str, sizes: list[int], ranks: list[int]
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
    session: Session,
    *,
    experiment_id: str,
    kind: str,
    path: str,
    round_num: int | None,
    size: int,
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
