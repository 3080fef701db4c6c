"""API test fixtures: every test runs against SQLite and the real PostgreSQL.

PostgreSQL isolation: each test session creates its own schema ``fm_test_<random>`` and
points every connection at it through libpq's ``options=-csearch_path=...`` in the URL, so
parallel or interrupted runs never see each other's tables; the schema is dropped at the end.
An unreachable PostgreSQL fails the tests (it is never skipped).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backend.api.app import create_app
from backend.core.settings import Settings
from backend.db.engine import dispose_engines, get_engine, migrate
from backend.db.models import Base
from tests.helpers import free_port, postgres_schema

BACKENDS = ("sqlite", "postgresql")


@contextmanager
def fresh_database(backend: str, tmp: Path) -> Iterator[str]:
    """The URL of an empty database (no tables) of the given backend."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp / 'fedmomentum.db'}"
        dispose_engines()
    else:
        with postgres_schema() as url:
            yield url


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: Any) -> Iterator[str]:
    """A migrated database per backend, shared by the tests of a session."""
    with fresh_database(request.param, tmp_path_factory.mktemp(request.param)) as url:
        migrate(url)
        yield url


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An unmigrated database of each backend, for this test only."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A TestClient on a fresh app; every table is emptied after the test."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client
    with get_engine(settings.database_url).begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """``app`` served by a real uvicorn on a free loopback port (in a thread): responses
    really stream and a closed connection is really closed. Yields the base URL."""
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=free_port(),
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def session(settings: Settings, client: TestClient) -> Iterator[Session]:
    """A session on the same database as ``client`` (to write what workers will write)."""
    with Session(get_engine(settings.database_url)) as db:
        yield db


def _config(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "tiny",
        "model": "tiny-llama",
        "dataset": "arith",
        "strategy": "fedmomentum",
        "data": {"n_train": 40, "n_eval": 8, "partition": "iid"},
        "federation": {"num_clients": 4, "clients_per_round": 2, "rounds": 3},
    }
    return data | changes


@pytest.fixture
def make_config() -> Callable[..., dict[str, Any]]:
    """A small valid experiment config (tiny model, generated arithmetic) with changes."""
    return _config


@pytest.fixture
def create(client: TestClient) -> Callable[..., dict[str, Any]]:
    """POST a config (with changes); the created experiment as JSON."""

    def post(**changes: Any) -> dict[str, Any]:
        response = client.post("/api/v1/experiments", json=_config(**changes))
        assert response.status_code == 201, response.text
        return response.json()

    return post
