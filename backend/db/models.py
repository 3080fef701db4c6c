"""SQLAlchemy models: experiments and what their rounds produce (rounds, client updates,
metrics, artifacts). The schema itself is created only by the Alembic migrations.

Metric key columns never hold NULL: NULLs are distinct in UNIQUE constraints (SQLite and
PostgreSQL), so a re-delivered task could insert a duplicate. "Not applicable" is stored as
``NO_INT`` (-1) for client/step and ``NO_LAYER`` ("") for layer.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NO_INT = -1
NO_LAYER = ""
METRIC_KINDS = ("client_step", "client", "eval", "diagnostics", "round")


class ExperimentStatus(StrEnum):
    queued = "queued"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


ACTIVE = (ExperimentStatus.queued, ExperimentStatus.running)


def new_id() -> str:
    """A short random hex id (48 bits)."""
    return uuid.uuid4().hex[:12]


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


JSONType = JSON().with_variant(JSONB(), "postgresql")
BigID = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER only

# Stable constraint names, so later migrations can refer to them on every backend.
NAMING = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _experiment_fk() -> Mapped[str]:
    return mapped_column(String(32), ForeignKey("experiments.id", ondelete="CASCADE"))


class Sweep(Base):
    """A sweep: one base config expanded over strategies, seeds and a grid (``spec``, a
    SweepSpec). Its status is derived from its experiments (backend.db.sweeps)."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class Experiment(Base):
    """One federated fine-tuning experiment; ``config`` is the validated ExperimentConfig."""

    __tablename__ = "experiments"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'completed', 'failed', 'cancelled')", name="status"
        ),
        Index("ix_experiments_status_created_at", "status", "created_at"),
        Index("ix_experiments_strategy_created_at", "strategy", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=ExperimentStatus.queued.value)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    strategy: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(500))
    dataset: Mapped[str] = mapped_column(String(500))
    current_round: Mapped[int] = mapped_column(Integer, default=0)
    total_rounds: Mapped[int] = mapped_column(Integer)
    best_accuracy: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Dispatch generation: every (re-)dispatch increments it, and a task carrying an older
    # generation does nothing, so a re-dispatched round never runs twice side by side.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # last sign of life
    # The sweep that created it. SET NULL: deleting a sweep row never deletes experiments
    # behind the API's back (the API deletes a sweep's experiments with their run dirs).
    sweep_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("sweeps.id", ondelete="SET NULL"), index=True
    )


class Client(Base):
    """One data holder of an experiment: its examples and LoRA rank (written at prepare)."""

    __tablename__ = "clients"
    __table_args__ = (UniqueConstraint("experiment_id", "client"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[str] = _experiment_fk()
    client: Mapped[int] = mapped_column(Integer)
    n_examples: Mapped[int] = mapped_column(Integer)
    rank: Mapped[int] = mapped_column(Integer)


class Round(Base):
    """One federated round of an experiment; ``summary`` is the runner's round record."""

    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("experiment_id", "round"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[str] = _experiment_fk()
    round: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="running")
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # The clients sent in the current attempt, and "<generation>/<attempt>" once that
    # attempt's aggregation was sent (rounds that wait on silo clients: no Celery chord).
    clients: Mapped[list[int] | None] = mapped_column(JSONType)
    aggregate_key: Mapped[str | None] = mapped_column(String(32))


class ClientUpdate(Base):
    """One client's training attempt in a round (a failure is a row with ok = false)."""

    __tablename__ = "client_updates"
    __table_args__ = (UniqueConstraint("experiment_id", "round", "client", "attempt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[str] = _experiment_fk()
    round: Mapped[int] = mapped_column(Integer)
    client: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    ok: Mapped[bool] = mapped_column(Boolean)
    n_examples: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    path: Mapped[str | None] = mapped_column(Text)


class Metric(Base):
    """One metrics record (a line of the runner's metrics.jsonl); key columns use sentinels."""

    __tablename__ = "metrics"
    __table_args__ = (
        UniqueConstraint("experiment_id", "kind", "round", "client", "step", "layer"),
    )

    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    experiment_id: Mapped[str] = _experiment_fk()
    kind: Mapped[str] = mapped_column(String(32))
    round: Mapped[int] = mapped_column(Integer)
    client: Mapped[int] = mapped_column(Integer, default=NO_INT)
    step: Mapped[int] = mapped_column(Integer, default=NO_INT)
    layer: Mapped[str] = mapped_column(String(300), default=NO_LAYER)
    values: Mapped[dict[str, Any]] = mapped_column(JSONType)


class Artifact(Base):
    """A file an experiment produced (adapter, residual, export), path relative to its run dir."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    round: Mapped[int | None] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Event(Base):
    """A live event (round started/finished, client progress, new metrics, status).

    The id orders the stream and is the SSE event id: a client resumes after Last-Event-ID.
    """

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_experiment_id_id", "experiment_id", "id"),)

    id: Mapped[int] = mapped_column(BigID, primary_key=True)
    experiment_id: Mapped[str] = _experiment_fk()
    type: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Silo(Base):
    """A silo that trains behind its own firewall and holds only a token: the sha256 of the
    token is stored, never the token. A revoked silo keeps its row (its name and last use)."""

    __tablename__ = "silos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


SILO_TASK_STATUSES = ("pending", "claimed", "done", "failed")


class SiloTask(Base):
    """One client's training of one round attempt, waiting for its silo to claim it over the
    API (instead of a Celery task); keyed like a dispatch: a re-dispatch adds new rows."""

    __tablename__ = "silo_tasks"
    __table_args__ = (
        UniqueConstraint("experiment_id", "round", "client", "attempt", "generation"),
        CheckConstraint("status IN ('pending', 'claimed', 'done', 'failed')", name="status"),
        Index("ix_silo_tasks_silo_status", "silo", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[str] = _experiment_fk()
    silo: Mapped[str] = mapped_column(String(64))
    round: Mapped[int] = mapped_column(Integer)
    client: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    generation: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the silo's last word
    error: Mapped[str | None] = mapped_column(Text)
