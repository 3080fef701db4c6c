"""The artifact store on a real S3-compatible server (moto's server mode, a separate process on
127.0.0.1) through s3fs, configured as a user would: the settings' storage options, or the
standard AWS_* variables. Objects are checked with boto3, not through the store."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from botocore.exceptions import EndpointConnectionError

from backend.core.settings import Settings
from backend.core.store import Store
from tests.s3_server import CuttingProxy, S3Server


def options(server: S3Server, endpoint: str | None = None) -> dict[str, object]:
    env = server.env()
    return {
        "endpoint_url": endpoint or server.endpoint,
        "key": env["AWS_ACCESS_KEY_ID"],
        "secret": env["AWS_SECRET_ACCESS_KEY"],
        "skip_instance_cache": True,  # a fresh client per store: no retries carried over
    }


def test_files_and_commits_land_as_whole_objects_under_their_keys(
    s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = s3_server.bucket()
    settings = Settings(artifact_url=f"s3://{bucket}/runs", artifact_options=options(s3_server))
    store = settings.runs_store()
    assert store.atomic_put and not store.local
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 40_000)  # more than one 4 MiB chunk

    store.write_json("exp/manifest.json", {"n": 1})
    store.write_bytes("exp/manifest.json", b'{"n": 2}')  # replaced
    store.put_file(big, "exp/rounds/0000/client-00000.safetensors")
    with store.commit_dir("exp/state/round-0001") as scratch:
        scratch.write_text("adapter-r8.safetensors", "v1")
        scratch.write_text("sub/summary.json", "{}")
        assert not store.committed("exp/state/round-0001")

    assert s3_server.objects(bucket) == {
        "runs/exp/manifest.json": b'{"n": 2}',
        "runs/exp/rounds/0000/client-00000.safetensors": big.read_bytes(),
        "runs/exp/state/.round-0001.committed": b"",
        "runs/exp/state/round-0001/adapter-r8.safetensors": b"v1",
        "runs/exp/state/round-0001/sub/summary.json": b"{}",
    }  # no temporary object, ever written or left
    assert store.committed("exp/state/round-0001")
    assert store.files("exp") == [
        "exp/manifest.json",
        "exp/rounds/0000/client-00000.safetensors",
        "exp/state/round-0001/adapter-r8.safetensors",
        "exp/state/round-0001/sub/summary.json",
    ]
    assert store.url("exp/manifest.json") == f"s3://{bucket}/runs/exp/manifest.json"
    assert store.sub("exp").read_json("manifest.json") == {"n": 2}

    assert store.remove("exp/state/round-0001") is True
    assert sorted(s3_server.objects(bucket)) == [
        "runs/exp/manifest.json",
        "runs/exp/rounds/0000/client-00000.safetensors",
    ]


def test_the_standard_aws_variables_reach_the_store(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.bucket()
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FEDMOMENTUM_ARTIFACT_URL", f"s3://{bucket}/fm")
    monkeypatch.setenv("FEDMOMENTUM_ARTIFACT_OPTIONS", '{"skip_instance_cache": true}')

    Settings().runs_store().write_text("hello.txt", "from the environment")

    assert s3_server.objects(bucket) == {"fm/hello.txt": b"from the environment"}


def test_a_put_cut_midway_leaves_the_old_object_whole(s3_server: S3Server) -> None:
    bucket = s3_server.bucket()
    proxy = CuttingProxy(s3_server.port, limit=1 << 20)
    store = Store(f"s3://{bucket}/runs", options(s3_server, proxy.endpoint))
    try:
        store.write_bytes("exp/manifest.json", b"old")  # small: passes the proxy
        new = uuid.uuid4().bytes * (1 << 18)  # 4 MiB: every attempt is cut after 1 MiB

        with pytest.raises(EndpointConnectionError, match="Could not connect"):
            store.write_bytes("exp/manifest.json", new)
        with pytest.raises(EndpointConnectionError, match="Could not connect"):
            store.write_bytes("exp/other.bin", new)
    finally:
        proxy.close()

    assert proxy.cuts >= 2
    assert s3_server.objects(bucket) == {"runs/exp/manifest.json": b"old"}


def test_a_multipart_upload_cut_midway_is_aborted_and_never_appears(
    s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = s3_server.bucket()
    big = tmp_path / "export.safetensors"
    with big.open("wb") as f:  # 101 MiB: s3fs uploads it in two parts of 50 MiB and more
        for _ in range(101):
            f.write(uuid.uuid4().bytes * (1 << 16))
    proxy = CuttingProxy(s3_server.port, limit=1 << 20, let_through=1)  # the second part dies
    store = Store(f"s3://{bucket}/runs", options(s3_server, proxy.endpoint))
    try:
        with pytest.raises(EndpointConnectionError, match="Could not connect"):
            store.put_file(big, "exp/export/merged/model.safetensors")
    finally:
        proxy.close()

    assert proxy.cuts >= 1
    assert s3_server.objects(bucket) == {}  # not half the object: none
    assert s3_server.multipart_uploads(bucket) == []  # and the upload was aborted


def test_a_lost_bucket_is_an_error_naming_the_object(s3_server: S3Server) -> None:
    store = Store("s3://fm-no-such-bucket/runs", options(s3_server))

    with pytest.raises(FileNotFoundError) as read:
        store.read_bytes("exp/state/round-0001/adapter-r8.safetensors")
    with pytest.raises(FileNotFoundError) as write:
        store.write_json("exp/manifest.json", {})

    assert str(read.value) == (
        "The specified bucket does not exist: "
        "'s3://fm-no-such-bucket/runs/exp/state/round-0001/adapter-r8.safetensors'"
    )
    assert str(write.value).endswith(": 's3://fm-no-such-bucket/runs/exp/manifest.json'")
    with pytest.raises(
        FileNotFoundError, match="does not exist: 's3://fm-no-such-bucket/runs/exp'"
    ):
        store.files("exp")
