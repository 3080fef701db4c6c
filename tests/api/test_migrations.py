"""Migrations: upgrade, downgrade to nothing, upgrade again; the result matches the models."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from backend.cli import main
from backend.db.engine import downgrade, get_engine, migrate
from backend.db.models import Base

TABLES = {"experiments", "rounds", "client_updates", "metrics", "artifacts", "events", "clients"}


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
