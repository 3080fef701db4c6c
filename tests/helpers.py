"""Helpers shared by the test packages: real PostgreSQL schemas, real Redis, a real MLflow
tracking server, free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from backend.db.engine import dispose_engines

POSTGRES_URL = os.environ.get(
    "FEDMOMENTUM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A URL whose connections use a fresh schema, dropped afterwards."""
    schema = f"fm_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(
        POSTGRES_URL, poolclass=sa.NullPool, connect_args={"connect_timeout": 5}
    )
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as e:
        pytest.fail(
            f"PostgreSQL is unreachable at {POSTGRES_URL} (set FEDMOMENTUM_TEST_POSTGRES_URL); "
            f"the API tests need it and are never skipped:\n{e}",
            pytrace=False,
        )
    url = sa.make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        dispose_engines()  # no pooled connection may outlive the schema
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


REDIS_URL = os.environ.get("FEDMOMENTUM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def require_redis() -> str:
    """The test Redis URL; fails (never skips) when Redis does not answer."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.exceptions.RedisError as e:
        pytest.fail(
            f"Redis is unreachable at {REDIS_URL} (set FEDMOMENTUM_TEST_REDIS_URL); "
            f"the service tests need it and are never skipped:\n{e}",
            pytrace=False,
        )
    return REDIS_URL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ROOT = Path(__file__).resolve().parents[1]
MLFLOW_REQUIREMENTS = ROOT / "requirements-mlflow-server.txt"
MLFLOW_VENV = ROOT / ".venv" / "mlflow-server"  # `make test` creates it too


def mlflow_bin() -> Path:
    """The ``mlflow`` command of the server's own virtual environment, created (once per
    requirements file) when missing."""
    stamp = MLFLOW_VENV / ".installed"
    wanted = MLFLOW_REQUIREMENTS.read_text()
    if not (stamp.is_file() and stamp.read_text() == wanted):
        subprocess.run([sys.executable, "-m", "venv", str(MLFLOW_VENV)], check=True)
        pip = [str(MLFLOW_VENV / "bin" / "pip"), "install", "-q"]
        subprocess.run([*pip, "-r", str(MLFLOW_REQUIREMENTS)], check=True)
        stamp.write_text(wanted)
    return MLFLOW_VENV / "bin" / "mlflow"


@contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend store and artifacts under
    ``folder``); yields its URL and stops it afterwards."""
    import httpx

    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        str(mlflow_bin()), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"),
    ]  # fmt: skip
    log = folder / "server.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.3)
        yield url
    finally:
        if proc.poll() is None:  # its store is thrown away: no graceful stop to wait for
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def byte_tokenizer() -> Any:
    """A byte-level BPE tokenizer without merges (one token per UTF-8 byte, plus <pad> and
    </s>), built offline, with no chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({"<pad>": len(vocab), "</s>": len(vocab) + 1})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")
