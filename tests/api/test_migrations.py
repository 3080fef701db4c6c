"""Migrations: upgrade, downgrade to nothing, upgrade again; the result matches the models."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from backend.cli import main
from backend.db.engine import downgrade, get_engine, migrate
from backend.db.models import Base

TABLES = {
    "experiments",
    "rounds",
    "client_updates",
    "metrics",
    "artifacts",
    "events",
    "clients",
    "sweeps",
    "silos",
    "silo_tasks",
}


def _tables(url: str) -> set[str]:
    return set(sa.inspect(get_engine(url)).get_table_names()) - {"alembic_version"}


def test_upgrade_downgrade_upgrade(empty_database_url):
    url = empty_database_url

    migrate(url)
    after_first = _tables(url)
    downgrade(url, "base")
    after_down = _tables(url)
    migrate(url)

    assert after_first == TABLES
    assert after_down == set()
    assert _tables(url) == TABLES
    with get_engine(url).connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_cli_migrate_works_from_any_directory(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'db' / 'cli.db'}"
    monkeypatch.chdir(tmp_path)  # no alembic.ini here

    code = main(["migrate", "--database-url", url])

    assert code == 0
    assert _tables(url) == TABLES
    assert "is at revision head" in capsys.readouterr().out


def _counts(url: str) -> tuple[int, int]:
    with get_engine(url).connect() as conn:
        return (
            conn.execute(sa.text("SELECT count(*) FROM experiments")).scalar_one(),
            conn.execute(sa.text("SELECT count(*) FROM metrics")).scalar_one(),
        )


def _sql(url: str, statement: str, **params: object) -> list[tuple]:
    with get_engine(url).begin() as conn:
        result = conn.execute(sa.text(statement), params)
        return [tuple(r) for r in result] if result.returns_rows else []


def test_sweeps_migration_keeps_rows_and_foreign_keys(empty_database_url):
    url = empty_database_url
    migrate(url, "0002")
    _sql(
        url,
        "INSERT INTO experiments (id, name, status, config, strategy, model, dataset, "
        "current_round, total_rounds, created_at, updated_at, generation) VALUES "
        "('e1', 'n', 'completed', '{}', 'fedit', 'm', 'd', 1, 1, :t, :t, 0)",
        t="2026-12-01 00:00:00+00:00",
    )
    _sql(
        url,
        'INSERT INTO metrics (experiment_id, kind, round, client, step, layer, "values") '
        "VALUES ('e1', 'eval', 0, -1, -1, '', '{}')",
    )

    migrate(url, "0003")
    kept_up = _counts(url)
    _sql(
        url,
        "INSERT INTO sweeps (id, name, spec, created_at) VALUES ('s1', 's', '{}', :t)",
        t="2026-12-01",
    )
    _sql(url, "UPDATE experiments SET sweep_id = 's1'")
    _sql(url, "DELETE FROM sweeps")
    after_sweep_delete = _sql(url, "SELECT sweep_id FROM experiments")
    downgrade(url, "0002")  # SQLite copies the table: its rows must not cascade away
    kept_down = _counts(url)
    _sql(url, "DELETE FROM experiments")

    assert kept_up == kept_down == (1, 1)
    assert after_sweep_delete == [(None,)]  # ON DELETE SET NULL
    assert _counts(url) == (0, 0)  # foreign keys are on again: the metric went by cascade
    columns = {c["name"] for c in sa.inspect(get_engine(url)).get_columns("experiments")}
    assert "sweep_id" not in columns
