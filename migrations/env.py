"""Alembic environment: the URL comes from Settings (or the caller, see backend.db.migrate)."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from backend.core.settings import Settings
from backend.db.engine import get_engine
from backend.db.models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    return config.attributes.get("database_url") or Settings().database_url


def _options(url: str) -> dict[str, object]:
    # SQLite cannot ALTER most things: batch mode copies the table instead.
    return {"target_metadata": target_metadata, "render_as_batch": url.startswith("sqlite")}


def run_migrations_offline() -> None:
    """Emit SQL for the URL without connecting (``alembic upgrade head --sql``)."""
    url = _url()
    context.configure(
        url=url, literal_binds=True, dialect_opts={"paramstyle": "named"}, **_options(url)
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Connect and migrate."""
    url = _url()
    with get_engine(url).connect() as connection:  # the app's engine: same pragmas
        context.configure(connection=connection, **_options(url))
        with context.begin_transaction():
            context.run_migrations()
        if connection.dialect.name == "sqlite":
            # A migration that copies a table turns foreign keys off (SQLite's procedure);
            # on again here, after its transaction, before the connection goes back to the
            # pool that the application shares.
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
