"""Sweeps: one row per submitted sweep; experiments.sweep_id points at it.

On SQLite a foreign key can only be added by copying ``experiments`` (batch mode), and with
foreign keys on (the engine's pragma, also during migrations) dropping the original deletes
every round, metric and event of every experiment by cascade: the copy runs with foreign
keys off, as SQLite's documentation prescribes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIME = sa.DateTime(timezone=True)
FK = "fk_experiments_sweep_id_sweeps"


@contextmanager
def _sqlite_foreign_keys_off() -> Iterator[None]:
    """SQLite's procedure for a change ALTER TABLE cannot make (its 12 steps): foreign keys
    off while the table is copied, checked after, on again. Otherwise dropping the old
    ``experiments`` deletes every round, metric and event of every experiment by cascade."""
    bind = op.get_bind()
    bind.exec_driver_sql("PRAGMA foreign_keys=OFF")
    if bind.exec_driver_sql("PRAGMA foreign_keys").scalar() != 0:  # no-op inside a transaction
        raise RuntimeError("SQLite foreign keys cannot be turned off; experiments is not copied")
    try:
        yield
        broken = bind.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise RuntimeError(f"foreign keys broken by the copy: {broken[:5]}")
    finally:
        bind.exec_driver_sql("PRAGMA foreign_keys=ON")


@contextmanager
def _experiments_batch() -> Iterator[Any]:
    """Alter experiments: in place on PostgreSQL, by a copy with foreign keys off on SQLite."""
    if op.get_bind().dialect.name != "sqlite":
        with op.batch_alter_table("experiments") as batch:
            yield batch
        return
    with (
        _sqlite_foreign_keys_off(),
        op.batch_alter_table("experiments", recreate="always") as batch,
    ):
        yield batch


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sweeps"),
    )
    op.create_index("ix_sweeps_created_at", "sweeps", ["created_at"])
    with _experiments_batch() as batch:
        batch.add_column(sa.Column("sweep_id", sa.String(32), nullable=True))
        # SET NULL: deleting a sweep row never deletes experiments behind the API's back
        # (the API deletes a sweep's experiments itself, with their run directories).
        batch.create_foreign_key(FK, "sweeps", ["sweep_id"], ["id"], ondelete="SET NULL")
        batch.create_index("ix_experiments_sweep_id", ["sweep_id"])


def downgrade() -> None:
    with _experiments_batch() as batch:
        batch.drop_index("ix_experiments_sweep_id")
        batch.drop_constraint(FK, type_="foreignkey")
        batch.drop_column("sweep_id")
    op.drop_index("ix_sweeps_created_at", table_name="sweeps")
    op.drop_table("sweeps")
