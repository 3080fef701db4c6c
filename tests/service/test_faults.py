"""Faults with real processes on Redis and PostgreSQL: poisoned client updates, a worker
SIGKILLed in the middle of aggregation, Redis restarted mid-experiment, a disk that fills up,
and a pickled task message. In every case nothing is lost or duplicated and the experiment
completes, or fails with the reason. (A worker killed mid-round and the API killed mid-round
are in test_service.py.)"""

from __future__ import annotations

import io
import os
import pickle
import resource
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from safetensors.torch import load

from backend.core.broker import make_app
from backend.core.settings import Settings
from tests.helpers import free_port, postgres_schema
from tests.service.conftest import Proc, Service, _env, _redis_service
from tests.service.test_service import (
    LONG,
    _mid_round,
    assert_complete_and_exactly_once,
    expected_counts,
)


def run_dir(service: Service, experiment_id: str) -> Path:
    return service.tmp / "data" / "runs" / experiment_id


def assert_finite_states(service: Service, experiment_id: str) -> int:
    """Every committed global state (adapters, backbone deltas) and the exported adapter hold
    only finite numbers; returns how many tensors were checked."""
    files = sorted((run_dir(service, experiment_id) / "state").glob("round-*/*.safetensors"))
    archive = service.http.get(f"/experiments/{experiment_id}/download?format=adapter")
    assert archive.status_code == 200, archive.text
    exported = zipfile.ZipFile(io.BytesIO(archive.content))
    blobs = [f.read_bytes() for f in files] + [
        exported.read(n) for n in exported.namelist() if n.endswith(".safetensors")
    ]
    tensors = [t for blob in blobs for t in load(blob).values()]
    assert all(bool(torch.isfinite(t).all()) for t in tensors)
    return len(tensors)


# ---- poisoned client updates --------------------------------------------------------------------

POISONED = {"0": "nan", "1": "scale", "2": "shape"}  # clients 3 and 4 are honest
REASONS = {"0": "NaN or inf values", "1": "x the round's median", "2": "expected (8, 64)"}


def test_poisoned_updates_are_excluded_with_the_reason_and_the_model_stays_finite(
    redis_service: Service,
) -> None:
    service = redis_service
    service.api_and_worker(faults={"poison": ",".join(f"{c}:{h}" for c, h in POISONED.items())})
    exp = service.create(
        name="poisoned", federation={"num_clients": 5, "clients_per_round": 5, "rounds": 2}
    )

    done = service.wait_finished(exp["id"])

    assert_complete_and_exactly_once(service, done)
    rounds = service.http.get(f"/experiments/{exp['id']}/rounds").json()["data"]
    records = service.metrics(exp["id"], "round")
    for summary in [r["summary"] for r in rounds] + [m["values"] for m in records]:
        assert set(summary["excluded"]) == set(POISONED)
        for client, reason in REASONS.items():
            assert reason in summary["excluded"][client], summary["excluded"]
        assert set(summary["update_norms"]) == {"1", "3", "4"}  # the well-formed ones
        assert summary["failed"] == {}
    assert "update norm" in rounds[0]["summary"]["excluded"]["1"]
    assert assert_finite_states(service, exp["id"]) > 0


def test_a_round_whose_updates_are_all_excluded_is_retried_then_fails_with_the_reasons(
    redis_service: Service,
) -> None:
    service = redis_service
    service.env["FEDMOMENTUM_MAX_ROUND_ATTEMPTS"] = "2"
    service.api_and_worker(faults={"poison": ",".join(f"{c}:nan" for c in range(4))})
    exp = service.create(name="all-poisoned")

    failed = service.wait_finished(exp["id"])

    assert failed["status"] == "failed"
    assert "round 0: 0 of 2 clients succeeded after 2 attempts" in failed["error"]
    assert failed["error"].count("excluded: ") == 2  # each sampled client, with its reason
    assert "NaN or inf values" in failed["error"]
    attempts = service.http.get(f"/experiments/{exp['id']}/attempts").json()["data"]
    assert len(attempts) == 4  # 2 clients x 2 attempts: the excluded clients were retrained
    assert {a["attempt"] for a in attempts} == {0, 1}
    assert all(not a["ok"] and a["error"].startswith("excluded: ") for a in attempts)
    assert service.metrics(exp["id"], "round") == []
    assert not (run_dir(service, exp["id"]) / "state" / "round-0001").exists()


# ---- crashes and outages ------------------------------------------------------------------------


def assert_unique_metrics(service: Service, experiment_id: str) -> dict[str, int]:
    """No metric key twice; returns the count of rows per kind."""
    counts = {}
    for kind in ("client_step", "client", "eval", "round", "diagnostics"):
        rows = service.metrics(experiment_id, kind)
        keys = {(m["round"], m["client"], m["step"], m["layer"]) for m in rows}
        assert len(keys) == len(rows), kind
        counts[kind] = len(rows)
    return counts


def hidden(service: Service, experiment_id: str) -> list[str]:
    """Temporary files and scratch folders anywhere in the run directory."""
    run = run_dir(service, experiment_id)
    return [str(p.relative_to(run)) for p in run.rglob(".*")]


def test_worker_killed_mid_aggregation_is_recovered_exactly_once(redis_service: Service) -> None:
    service = redis_service
    marker = service.tmp / "aggregating"
    worker = service.api_and_worker(faults={"hang_round": "1", "marker": str(marker)})
    exp = service.create(
        name="kill-aggregation",
        federation={"num_clients": 4, "clients_per_round": 2, "rounds": 3},
    )
    service._wait(marker.exists, worker, "the worker to be committing round 1's state")

    worker.kill()  # SIGKILL halfway through writing the aggregated state
    state = run_dir(service, exp["id"]) / "state"
    assert len(list(state.glob(".round-0002.*"))) == 1  # its half-written scratch folder...
    assert not (state / "round-0002").exists()  # ...never became the state
    assert service.get(exp["id"])["status"] == "running"
    service.worker()

    done = service.wait_finished(exp["id"])
    assert_complete_and_exactly_once(service, done)
    assert hidden(service, exp["id"]) == []  # the re-run commit swept the half folder


class PrivateRedis:
    """A redis-server of one test (no persistence: a restart loses every queued message,
    every unacknowledged task and the chord counters)."""

    def __init__(self, folder: Path) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed (Debian: redis-server)", pytrace=False)
        self.folder, self.port = folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            ["redis-server", *args, "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                return
            except redis.exceptions.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start on port {self.port}")
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: no save, no goodbye to the clients
            self.proc.wait(30)


@pytest.fixture
def private_redis_service(tmp_path: Path) -> Iterator[tuple[Service, PrivateRedis]]:
    """A service on its own Redis server (that the test may kill) and a PostgreSQL schema."""
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        with postgres_schema() as database_url:
            service = Service(
                tmp_path, _env(tmp_path, broker_url=server.url, database_url=database_url)
            )
            try:
                yield service, server
            finally:
                service.close()
    finally:
        server.kill()


def test_redis_restarted_mid_round_loses_nothing(
    private_redis_service: tuple[Service, PrivateRedis],
) -> None:
    service, server = private_redis_service
    service.api_and_worker()
    exp = service.create(name="redis-restart", **LONG)
    _mid_round(service, exp["id"], 1)

    server.kill()  # queued tasks, the running task's message and the chord state are gone
    server.start()

    done = service.wait_finished(exp["id"])
    assert_complete_and_exactly_once(service, done)


# A full disk, simulated with RLIMIT_FSIZE on the worker process: the kernel refuses a write
# once a file would grow past the limit, after a short write, as a full disk does (EFBIG rather
# than ENOSPC), in the real worker on the real filesystem, through every writer (fsspec,
# safetensors, Hugging Face's save_pretrained). No privileges are needed: a tmpfs that really
# fills needs root to mount, and a read-only folder does not stop root.
DISK_FULL = {  # file size limit, where the experiment fails
    "round-state": (32 * 1024, "round 0: "),  # round 0's backbone delta (~48 KiB) does not fit
    "export": (128 * 1024, "export: "),  # the exported merged model (~360 KiB) does not fit
}


@pytest.fixture(scope="module")
def disk_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Proc]]:
    """An API and a worker shared by the full-disk cases (each sets its own file size limit
    on the worker, then lifts it)."""
    for service in _redis_service(tmp_path_factory.mktemp("disk")):
        yield service, service.api_and_worker()


@pytest.mark.parametrize(("limit", "stage"), DISK_FULL.values(), ids=DISK_FULL.keys())
def test_a_full_disk_fails_the_experiment_with_the_reason_and_no_partial_artifact(
    disk_service: tuple[Service, Proc], limit: int, stage: str
) -> None:
    service, worker = disk_service
    _, hard = resource.prlimit(worker.popen.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(worker.popen.pid, resource.RLIMIT_FSIZE, (limit, hard))  # the one enforced
    try:
        exp = service.create(name=f"disk-full-{stage}")
        failed = service.wait_finished(exp["id"])
    finally:
        if worker.alive():
            resource.prlimit(worker.popen.pid, resource.RLIMIT_FSIZE, (hard, hard))

    assert failed["status"] == "failed"
    assert failed["error"].startswith(stage) and "File too large" in failed["error"], failed
    eid, run = exp["id"], run_dir(service, exp["id"])
    assert hidden(service, eid) == []  # no temporary file, no scratch folder
    for blob in run.rglob("*.safetensors"):  # every file there is whole
        assert load(blob.read_bytes())
    assert not (run / "export").exists()
    assert service.http.get(f"/experiments/{eid}/download?format=adapter").status_code == 404
    counts = assert_unique_metrics(service, eid)
    if stage == "export: ":  # every round completed before the export failed
        layers = len(service.http.get(f"/experiments/{eid}/diagnostics").json()["layers"])
        assert counts == expected_counts(failed["config"], layers)
        assert service.http.get(f"/experiments/{eid}/rounds/1/adapter").status_code == 200
    else:  # nothing of round 0's aggregation is visible
        assert not (run / "state" / "round-0001").exists()
        assert service.http.get(f"/experiments/{eid}/rounds/0/adapter").status_code == 404
        assert counts == {"client_step": 6, "client": 2, "eval": 1, "round": 0, "diagnostics": 0}
    assert worker.alive()  # a refused write is an error, not a crash


# ---- untrusted messages -------------------------------------------------------------------------


class Exploit:
    """Unpickling this creates a folder: proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.path,))


def test_a_pickled_task_message_is_refused_and_json_still_runs(redis_service: Service) -> None:
    service = redis_service
    worker = service.api_and_worker(queues="aggregate")  # the API migrates the database
    env = service.env
    sender = make_app(
        Settings(
            broker_url=env["FEDMOMENTUM_BROKER_URL"],
            broker_key_prefix=env["FEDMOMENTUM_BROKER_KEY_PREFIX"],
        )
    )
    marker = service.tmp / "unpickled"
    armed = service.tmp / "armed"
    pickle.loads(pickle.dumps(Exploit(armed)))  # the payload works where pickles are loaded
    assert armed.is_dir()

    sender.send_task(
        "fedmomentum.advance", args=(Exploit(marker), 0), queue="aggregate", serializer="pickle"
    )
    sender.send_task("fedmomentum.advance", args=("no-such-experiment", 0), queue="aggregate")
    refused = "Refusing to deserialize untrusted content of type pickle"
    service._wait(
        lambda: refused in worker.output() and "succeeded in" in worker.output(),
        worker,
        "the worker to refuse the pickle and run the JSON task",
    )

    assert "'stale'" in worker.output()  # the JSON message ran: no such experiment, nothing to do
    assert not marker.exists()
    assert worker.alive()
