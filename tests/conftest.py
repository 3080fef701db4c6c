"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import mlflow_server
from tests.s3_server import S3Server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One moto S3 server for the session (each test makes its own bucket); a test that kills
    or pauses the server starts its own ``S3Server`` instead."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real MLflow tracking server for the session (a test finds its own runs by their
    experiment id or name)."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url
