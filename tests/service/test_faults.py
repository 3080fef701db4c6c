"""Faults with real processes on Redis and PostgreSQL: poisoned client updates, a worker
SIGKILLed in the middle of aggregation, Redis restarted mid-experiment, a disk that fills up,
and a pickled task message. In every case nothing is lost or duplicated and the experiment
completes, or fails with the reason. (A worker killed mid-round and the API killed mid-round
are in test_service.py.)"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load

from backend.settings import Settings
from tests.service.conftest import Service
from tests.service.test_service import assert_complete_and_exactly_once
from workers.celery_app import make_app


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
    service.api()
    service.worker(faults={"poison": ",".join(f"{c}:{h}" for c, h in POISONED.items())})
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
    service.api()
    service.worker(faults={"poison": ",".join(f"{c}:nan" for c in range(4))})
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


# ---- untrusted messages -------------------------------------------------------------------------


class Exploit:
    """Unpickling this creates a folder: proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.path,))


def test_a_pickled_task_message_is_refused_and_json_still_runs(redis_service: Service) -> None:
    service = redis_service
    service.api()  # migrates the database the worker's task reads
    worker = service.worker(queues="aggregate")
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
