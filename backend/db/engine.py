"""Database engines (one per URL), sessions, migrations run from code, and the query helpers
the other modules of the database layer share.

The schema is created only by Alembic (``migrate``); nothing here calls create_all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, Select, create_engine, event, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[2]  # alembic.ini and migrations/ live here


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")  # off by default: ON DELETE CASCADE needs it
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cursor.execute("PRAGMA busy_timeout=10000")  # API and workers write concurrently
    cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL, much faster commits
    cursor.close()


_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def get_engine(url: str) -> Engine:
    """The process-wide engine of one database URL."""
    with _lock:
        if url not in _engines:
            _engines[url] = _create(url)
        return _engines[url]


def _create(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def dispose_engines() -> None:
    """Close every pooled connection and forget the engines (tests, before dropping a schema)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def session_for(url: str) -> Iterator[Session]:
    """One session on ``url``, closed afterwards (the body of the FastAPI dependency)."""
    with Session(get_engine(url)) as session:
        yield session


def alembic_config(url: str) -> Config:
    """An Alembic Config that works from any working directory."""
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["database_url"] = url  # read by migrations/env.py (no % escaping needed)
    cfg.attributes["configure_logging"] = False  # keep the caller's logging as it is
    return cfg


def migrate(url: str, revision: str = "head") -> None:
    """``alembic upgrade <revision>`` on ``url``."""
    logging.getLogger("alembic").setLevel(logging.INFO)
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    """``alembic downgrade <revision>`` on ``url``."""
    command.downgrade(alembic_config(url), revision)


# ---- query helpers --------------------------------------------------------------------------

BATCH = 500  # rows per INSERT: stays under SQLite's bound-parameter limit


def page(session: Session, query: Select[Any], *, offset: int, limit: int) -> tuple[list[Any], int]:
    """One page of ``query`` and the total count of its rows."""
    count = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    rows = list(session.scalars(query.offset(offset).limit(limit)))
    return rows, int(count or 0)


def dialect_insert(session: Session) -> Any:
    """The dialect's INSERT construct (it has ON CONFLICT DO NOTHING)."""
    dialect = session.get_bind().dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
    if insert is None:
        raise ValueError(f"database: unsupported dialect {dialect!r}; allowed: postgresql, sqlite")
    return insert


def database_ok(session: Session) -> bool:
    """Whether the database answers ``SELECT 1``."""
    try:
        return session.execute(text("SELECT 1")).scalar() == 1
    except SQLAlchemyError:
        return False
