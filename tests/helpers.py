"""Helpers shared by the test packages: real PostgreSQL schemas, real Redis, free ports."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
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
