"""The service on an S3 artifact store: the API and a Celery worker process (Redis, PostgreSQL)
keep every run directory in a bucket of a real S3-compatible server (moto's server mode, its
own process), configured as a user would (FEDMOMENTUM_ARTIFACT_URL=s3://..., the standard
AWS_* variables). A reader polls the bucket all along: no object it lists is ever partial
or temporary. The server paused (an outage) or killed and restarted (moto keeps objects in
memory: the restart loses them) mid-round."""

from __future__ import annotations

import io
import json
import struct
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from tests.s3_server import S3Server
from tests.service.conftest import Service
from tests.service.test_service import LONG, _mid_round, assert_complete_and_exactly_once


def whole(key: str, body: bytes) -> bool:
    """Whether an object is a complete file of its kind (safetensors: the header's tensors
    end exactly at the end of the object; JSON parses)."""
    if key.endswith(".safetensors"):
        if len(body) < 8:
            return False
        (n,) = struct.unpack("<Q", body[:8])
        try:
            header = json.loads(body[8 : 8 + n])
        except ValueError:
            return False
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
        return 8 + n + max(ends, default=0) == len(body)
    if key.endswith(".json"):
        try:
            json.loads(body)
        except ValueError:
            return False
    return True


class Reader(threading.Thread):
    """Lists and reads every object of a bucket again and again (each listing at least 0.2 s
    apart) until stopped; records any partial or temporary object it saw. An unreachable
    server (paused, killed) or a lost bucket only makes it try again."""

    def __init__(self, server: S3Server, bucket: str) -> None:
        super().__init__(daemon=True)
        self.server, self.bucket = server, bucket
        self.bad: list[str] = []
        self.seen: set[str] = set()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.2):
            try:
                objects = self.server.objects(self.bucket)
            except (BotoCoreError, ClientError):
                continue
            self.seen |= set(objects)
            self.bad += [k for k, body in objects.items() if ".tmp" in k or not whole(k, body)]

    def stop(self) -> None:
        self._halt.set()
        self.join(60)


def on_s3(service: Service, server: S3Server) -> str:
    """Point the service's processes at a new bucket of ``server``; its name."""
    bucket = server.bucket()
    service.env |= server.env() | {"FEDMOMENTUM_ARTIFACT_URL": f"s3://{bucket}/runs"}
    return bucket


@pytest.fixture
def own_s3_server(tmp_path: Path) -> Iterator[S3Server]:
    """An S3 server of one test only (it gets killed or paused)."""
    server = S3Server(tmp_path / "moto.log")
    try:
        yield server
    finally:
        server.stop()


def zip_of(service: Service, path: str) -> zipfile.ZipFile:
    response = service.http.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    return zipfile.ZipFile(io.BytesIO(response.content))


def test_an_experiment_on_s3_completes_and_every_download_reads_the_bucket(
    redis_service: Service, s3_server: S3Server
) -> None:
    service = redis_service
    bucket = on_s3(service, s3_server)
    service.api_and_worker()
    reader = Reader(s3_server, bucket)
    reader.start()
    try:
        exp = service.create(name="on-s3")
        done = service.wait_finished(exp["id"])
    finally:
        reader.stop()

    assert_complete_and_exactly_once(service, done)
    eid = exp["id"]
    run = f"runs/{eid}/"
    objects = {k.removeprefix(run): v for k, v in s3_server.objects(bucket, run).items()}
    assert reader.bad == [] and len(reader.seen) > 10  # it looked while the run wrote
    assert not [k for k in objects if ".tmp" in k]  # written in place: no temporary object
    # Every round's global adapter and every client upload is an object, committed whole.
    for t in (1, 2):
        assert f"state/.round-{t:04d}.committed" in objects
        assert whole(f"state/round-{t:04d}/adapter-r8.safetensors",
                     objects[f"state/round-{t:04d}/adapter-r8.safetensors"])  # fmt: skip
    uploads = [k for k in objects if k.startswith("rounds/")]
    assert len(uploads) == 4 and all(whole(k, objects[k]) for k in uploads), uploads
    assert not (service.tmp / "data" / "runs").exists()  # nothing on the local disk

    # Every download streams the bucket's objects.
    for t in (0, 1):
        archive = zip_of(service, f"/experiments/{eid}/rounds/{t}/adapter")
        state = f"state/round-{t + 1:04d}"
        expected = {k.replace("state/", "", 1): v for k, v in objects.items()
                    if k.startswith(f"{state}/")}  # fmt: skip
        assert {n: archive.read(n) for n in archive.namelist()} == expected
    for fmt, folder in [("adapter", "adapter"), ("merged", "merged"),
                        ("adapter-rank", "adapter-rank")]:  # fmt: skip
        archive = zip_of(service, f"/experiments/{eid}/download?format={fmt}")
        expected = {k.removeprefix("export/"): v for k, v in objects.items()
                    if k.startswith(f"export/{folder}/")}  # fmt: skip
        assert expected and {n: archive.read(n) for n in archive.namelist()} == expected
    delta = zip_of(service, f"/experiments/{eid}/download?format=delta")
    assert (
        delta.read("backbone_delta.safetensors")
        == objects["export/adapter/backbone_delta.safetensors"]
    )
    report = service.http.get(f"/experiments/{eid}/report")
    assert report.status_code == 200 and report.text.startswith("<!doctype html>")
    manifest = json.loads(objects["manifest.json"])
    assert manifest["split_hash"] in report.text  # read from the bucket
    assert service.http.get(f"/experiments/{eid}/manifest").json() == manifest
    export_info = service.http.get(f"/experiments/{eid}/export").json()
    assert export_info == json.loads(objects["export/export.json"])

    assert service.http.delete(f"/experiments/{eid}").status_code == 204
    assert s3_server.objects(bucket, run) == {}


def test_an_s3_outage_mid_round_delays_the_experiment_which_completes(
    redis_service: Service, own_s3_server: S3Server
) -> None:
    service = redis_service
    bucket = on_s3(service, own_s3_server)
    service.api_and_worker()
    reader = Reader(own_s3_server, bucket)
    reader.start()
    config = LONG | {"training": {"local_steps": 30}}
    try:
        exp = service.create(name="s3-outage", **config)
        _mid_round(service, exp["id"], 1)
        own_s3_server.pause()  # the client's upload, or the next read, waits on the server
        paused = time.monotonic()
        time.sleep(8)
        own_s3_server.resume()
        outage = time.monotonic() - paused
        done = service.wait_finished(exp["id"], timeout=300)
    finally:
        reader.stop()

    assert_complete_and_exactly_once(service, done)
    rounds = service.http.get(f"/experiments/{exp['id']}/rounds").json()["data"]
    took = [_seconds(r["finished_at"], r["started_at"]) for r in rounds]
    assert max(took) >= outage, took  # a round commits its state: it waited for the store
    assert reader.bad == []
    keys = set(own_s3_server.objects(bucket))
    assert not [k for k in keys if ".tmp" in k]
    assert {f"runs/{exp['id']}/state/.round-{t:04d}.committed" for t in (1, 2, 3)} <= keys


def _seconds(end: str, start: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def test_an_s3_server_killed_mid_round_fails_the_experiment_naming_the_store(
    redis_service: Service, own_s3_server: S3Server
) -> None:
    service = redis_service
    bucket = on_s3(service, own_s3_server)
    service.api_and_worker()
    reader = Reader(own_s3_server, bucket)
    reader.start()
    try:
        exp = service.create(name="s3-killed", **LONG)
        _mid_round(service, exp["id"], 1)
        own_s3_server.kill()  # SIGKILL; moto keeps objects in memory: they are gone
        own_s3_server.start()  # the same endpoint, answering again, without the bucket
        done = service.wait_finished(exp["id"], timeout=300)
    finally:
        reader.stop()

    assert done["status"] == "failed"
    lost = (
        f"FileNotFoundError: The specified bucket does not exist: 's3://{bucket}/runs/{exp['id']}/"
    )
    assert done["error"].startswith("round 1: 0 of 2 clients succeeded"), done["error"]
    assert lost in done["error"], done["error"]
    assert reader.bad == [] and reader.seen
    missing = service.http.get(f"/experiments/{exp['id']}/rounds/1/adapter")
    assert missing.status_code == 404
