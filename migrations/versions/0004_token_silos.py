"""Token silos: per-silo credentials (hashed tokens), the train tasks they claim over the API,
and on rounds the clients of the current attempt with the key of its sent aggregation.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "silos",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("revoked_at", TIME, nullable=True),
        sa.Column("last_used_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_silos"),
        sa.UniqueConstraint("name", name="uq_silos_name"),
        sa.UniqueConstraint("token_hash", name="uq_silos_token_hash"),
    )
    op.create_table(
        "silo_tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.String(32), nullable=False),
        sa.Column("silo", sa.String(64), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("client", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("seen_at", TIME, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'claimed', 'done', 'failed')", name="ck_silo_tasks_status"
        ),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name="fk_silo_tasks_experiment_id_experiments",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_silo_tasks"),
        sa.UniqueConstraint(
            "experiment_id",
            "round",
            "client",
            "attempt",
            "generation",
            name="uq_silo_tasks_experiment_id_round_client_attempt_generation",
        ),
    )
    op.create_index("ix_silo_tasks_silo_status", "silo_tasks", ["silo", "status"])
    op.add_column("rounds", sa.Column("clients", JSON, nullable=True))
    op.add_column("rounds", sa.Column("aggregate_key", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("aggregate_key")
        batch.drop_column("clients")
    op.drop_index("ix_silo_tasks_silo_status", table_name="silo_tasks")
    op.drop_table("silo_tasks")
    op.drop_table("silos")
