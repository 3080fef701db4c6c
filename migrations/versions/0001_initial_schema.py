"""Initial schema: experiments, rounds, client_updates, metrics, artifacts.

Revision ID: 0001
Revises:
Create Date: 2026-11-24

Self-contained on purpose (no imports from backend.db.models): a migration is history and
must keep meaning what it meant when it was written.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIME = sa.DateTime(timezone=True)


def _experiment_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["experiment_id"],
        ["experiments.id"],
        name=f"fk_{table}_experiment_id_experiments",
        ondelete="CASCADE",
    )


def upgrade() -> None:
    """Create every table, constraint and index."""
    op.create_table(
        "experiments",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("strategy", sa.String(64), nullable=False),
        sa.Column("model", sa.String(500), nullable=False),
        sa.Column("dataset", sa.String(500), nullable=False),
        sa.Column("current_round", sa.Integer(), nullable=False),
        sa.Column("total_rounds", sa.Integer(), nullable=False),
        sa.Column("best_accuracy", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("started_at", TIME, nullable=True),
        sa.Column("finished_at", TIME, nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'completed', 'failed', 'cancelled')",
            name="ck_experiments_status",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_experiments"),
    )
    op.create_index("ix_experiments_created_at", "experiments", ["created_at"])
    op.create_index("ix_experiments_status_created_at", "experiments", ["status", "created_at"])
    op.create_index("ix_experiments_strategy_created_at", "experiments", ["strategy", "created_at"])

    op.create_table(
        "rounds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.String(32), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", TIME, nullable=True),
        sa.Column("finished_at", TIME, nullable=True),
        sa.Column("summary", JSON, nullable=True),
        _experiment_fk("rounds"),
        sa.PrimaryKeyConstraint("id", name="pk_rounds"),
        sa.UniqueConstraint("experiment_id", "round", name="uq_rounds_experiment_id_round"),
    )

    op.create_table(
        "client_updates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.String(32), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("client", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("n_examples", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("path", sa.Text(), nullable=True),
        _experiment_fk("client_updates"),
        sa.PrimaryKeyConstraint("id", name="pk_client_updates"),
        sa.UniqueConstraint(
            "experiment_id",
            "round",
            "client",
            "attempt",
            name="uq_client_updates_experiment_id_round_client_attempt",
        ),
    )

    # client/step = -1 and layer = "" mean "not applicable": NULLs would defeat the UNIQUE key.
    op.create_table(
        "metrics",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("experiment_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("client", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("layer", sa.String(300), nullable=False),
        sa.Column("values", JSON, nullable=False),
        _experiment_fk("metrics"),
        sa.PrimaryKeyConstraint("id", name="pk_metrics"),
        sa.UniqueConstraint(
            "experiment_id",
            "kind",
            "round",
            "client",
            "step",
            "layer",
            name="uq_metrics_experiment_id_kind_round_client_step_layer",
        ),
    )

    op.create_table(
        "artifacts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.String(32), nullable=False),
        sa.Column("round", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        _experiment_fk("artifacts"),
        sa.PrimaryKeyConstraint("id", name="pk_artifacts"),
    )
    op.create_index("ix_artifacts_experiment_id", "artifacts", ["experiment_id"])


def downgrade() -> None:
    """Drop everything, children first."""
    op.drop_index("ix_artifacts_experiment_id", table_name="artifacts")
    op.drop_table("artifacts")
    op.drop_table("metrics")
    op.drop_table("client_updates")
    op.drop_table("rounds")
    op.drop_index("ix_experiments_strategy_created_at", table_name="experiments")
    op.drop_index("ix_experiments_status_created_at", table_name="experiments")
    op.drop_index("ix_experiments_created_at", table_name="experiments")
    op.drop_table("experiments")
