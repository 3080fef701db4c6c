"""Uploaded datasets in the artifact store: a worker without the data-root copy (another
machine) restores it from the store, here an fsspec memory:// store standing in for S3."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pytest

from backend.core import uploads
from backend.core.data import load_dataset
from backend.core.settings import Settings

CONTENT = b"".join(b'{"prompt": "%d + 1 =", "response": "%d"}\n' % (i, i + 1) for i in range(10))


def _settings(tmp_path: Path, machine: str) -> Settings:
    """One machine's settings: its own disk, the artifact store every machine shares."""
    return Settings(data_dir=tmp_path / machine, artifact_url=f"memory://{_STORE}")


_STORE = f"/uploads-{uuid.uuid4().hex}"


def test_a_worker_without_the_file_restores_it_from_the_store(tmp_path):
    api = _settings(tmp_path, "api")
    summary = uploads.save(api, source=io.BytesIO(CONTENT), filename="sums.jsonl", name=None,
                           replace=False)  # fmt: skip
    config_path = str((api.data_root_dirs[0] / summary["path"]).resolve())
    worker = Settings(data_dir=api.data_dir, artifact_url=api.artifact_url)
    Path(config_path).unlink()  # the worker's machine has no copy

    uploads.restore(config_path, worker)

    assert Path(config_path).read_bytes() == CONTENT
    assert len(load_dataset(config_path).train) == 9
    assert api.datasets_store().read_bytes("sums.jsonl") == CONTENT


def test_restore_leaves_other_paths_alone(tmp_path):
    settings = _settings(tmp_path, "worker")
    settings.datasets_store().write_bytes("other.jsonl", CONTENT)
    elsewhere = tmp_path / "elsewhere" / "other.jsonl"
    missing = settings.data_root_dirs[0] / "missing.jsonl"

    for path in (elsewhere, missing, Path("arith")):
        uploads.restore(str(path), settings)

    assert not elsewhere.exists() and not missing.exists()


def test_a_file_over_the_limit_is_refused_while_streaming_and_nothing_is_kept(tmp_path):
    settings = _settings(tmp_path, "small").model_copy(update={"max_dataset_bytes": 100})

    with pytest.raises(uploads.TooLarge) as refused:
        uploads.save(settings, source=io.BytesIO(CONTENT), filename="big.jsonl", name=None,
                     replace=False)  # fmt: skip

    assert str(refused.value) == (
        "dataset upload: larger than the limit of 100 bytes (FEDMOMENTUM_MAX_DATASET_BYTES)"
    )
    assert uploads.get(settings, "big") is None
    assert list(settings.data_root_dirs[0].iterdir()) == []  # no scratch folder left
