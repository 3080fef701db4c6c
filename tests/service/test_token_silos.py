"""Token silos against a real ``fedmomentum up`` (embedded worker): silo clients that hold
only their silo's token and data, talk only HTTP to the API, and train next to the pooled
Celery clients of the same experiment."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.service.conftest import ROOT, Proc, Service, _env, _redis_service

TOKEN = "silo-test-admin-token"
SILOS = {"hospital-a": 12, "hospital-b": 20}  # silo -> records in its data file


def silo_config(**federation: Any) -> dict[str, Any]:
    """4 clients: 0 and 1 pooled (the Celery worker), 2 and 3 each a token silo's."""
    fed = {
        "num_clients": 4,
        "clients_per_round": 4,
        "rounds": 2,
        "silos": {"hospital-a": [2], "hospital-b": [3]},
        "token_silos": ["hospital-a", "hospital-b"],
    }
    return {
        "name": "token-silos",
        "model": "tiny-llama",
        "dataset": "arith",
        "data": {"n_train": 40, "n_eval": 8, "partition": "iid"},
        "federation": fed | federation,
        "training": {"local_steps": 3},
    }


def _start(service: Service) -> Service:
    service.env |= {
        "FEDMOMENTUM_API_TOKEN": TOKEN,
        "FEDMOMENTUM_STALE_AFTER_S": "120",
        "FEDMOMENTUM_SILO_RECLAIM_S": "3",
    }
    service.http.headers["Authorization"] = f"Bearer {TOKEN}"
    service.api(worker=True)
    return service


@pytest.fixture(scope="module", params=["embedded", "redis"])
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """``fedmomentum up`` with its worker: embedded (filesystem broker, SQLite), or on the
    real Redis and PostgreSQL."""
    tmp = tmp_path_factory.mktemp(f"silos-{request.param}")
    if request.param == "redis":
        for service in _redis_service(tmp):
            yield _start(service)
        return
    service = Service(tmp, _env(tmp))
    try:
        yield _start(service)
    finally:
        service.close()


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("silo-data")
    files = {}
    for silo, n in SILOS.items():
        rows = [{"prompt": f"{silo}: {i} + 2 =", "response": f"#### {i + 2}"} for i in range(n)]
        files[silo] = tmp / f"{silo}.jsonl"
        files[silo].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files


def fedmomentum(service: Service, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMOMENTUM_")}
    env |= {"FEDMOMENTUM_SERVER": service.url, "FEDMOMENTUM_API_TOKEN": TOKEN}
    return subprocess.run(
        [sys.executable, "-m", "backend.cli", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def issue(service: Service, name: str) -> str:
    """``fedmomentum silo create NAME``: the token it prints."""
    done = fedmomentum(service, "silo", "create", name)
    assert done.returncode == 0, done.stderr
    return re.findall(r"fms_\S+", done.stdout)[0]


def silo_client(service: Service, token: str, data: Path, work: Path, *extra: str) -> Proc:
    """``fedmomentum silo-client`` with none of the server's settings: its environment names
    an unreachable broker, database and store, which it must never need."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMOMENTUM_")}
    env |= {
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "FEDMOMENTUM_TORCH_THREADS": "1",
        "FEDMOMENTUM_SILO_TOKEN": token,
        "FEDMOMENTUM_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none",
        "FEDMOMENTUM_BROKER_URL": "redis://127.0.0.1:1/0",
        "FEDMOMENTUM_DATA_DIR": str(work / "not-the-server"),
    }
    args = ["silo-client", "--server", service.url, "--data", str(data), "--work-dir", str(work)]
    log = service.tmp / f"silo-client-{len(service.procs)}.log"
    proc = Proc([sys.executable, "-m", "backend.cli", *args, "--progress-interval", "0.2",
                 "--wait", "2", *extra], env, log)  # fmt: skip
    service.procs.append(proc)
    return proc


def attempts(service: Service, experiment_id: str) -> list[dict[str, Any]]:
    return service.http.get(f"/experiments/{experiment_id}/attempts", params={"limit": 500}).json()[
        "data"
    ]


def rounds(service: Service, experiment_id: str) -> list[dict[str, Any]]:
    return service.http.get(f"/experiments/{experiment_id}/rounds").json()["data"]


def test_pooled_and_token_silo_clients_complete_an_experiment_together(
    service: Service, data_files: dict[str, Path], tmp_path: Path
) -> None:
    tokens = {silo: issue(service, silo) for silo in SILOS}
    for silo in SILOS:
        silo_client(service, tokens[silo], data_files[silo], tmp_path / silo)

    exp = service.http.post("/experiments", json=silo_config()).json()
    done = service.wait_finished(exp["id"], timeout=400)

    assert done["status"] == "completed", done["error"]
    clients = {r["client"]: r for r in service.metrics(exp["id"], "client")}
    assert {clients[c]["values"]["worker"] for c in (2, 3)} == {
        "silo:hospital-a",
        "silo:hospital-b",
    }
    assert clients[2]["values"]["n_examples"] == SILOS["hospital-a"]  # its whole file
    assert clients[3]["values"]["n_examples"] == SILOS["hospital-b"]
    assert not clients[0]["values"]["worker"].startswith("silo:")
    for r in rounds(service, exp["id"]):  # every round aggregated all four clients
        assert r["status"] == "completed"
        assert sorted(r["summary"]["clients"]) == [0, 1, 2, 3]
        assert not r["summary"].get("excluded") and not r["summary"].get("failed")
    ok = [(a["round"], a["client"]) for a in attempts(service, exp["id"]) if a["ok"]]
    assert sorted(ok) == [(t, c) for t in range(2) for c in range(4)]  # each exactly once
    steps = service.metrics(exp["id"], "client_step")
    assert {(s["round"], s["client"]) for s in steps} >= {(t, c) for t in range(2) for c in (2, 3)}
    listed = fedmomentum(service, "silo", "list")
    assert listed.returncode == 0, listed.stderr
    for silo in SILOS:
        line = next(l for l in listed.stdout.splitlines() if l.startswith(silo))
        assert "active" in line and "never" not in line  # its last use is shown


def one_token_silo(silo: str, **changes: Any) -> dict[str, Any]:
    """Clients 0-2 pooled, client 3 the token silo ``silo``'s."""
    cfg = silo_config(silos={silo: [3]}, token_silos=[silo])
    return cfg | changes


def test_a_tampered_upload_is_excluded_with_the_reason(service: Service, tmp_path: Path) -> None:
    from backend.client.silo import SiloAPI

    token = issue(service, "hospital-c")
    exp = service.http.post("/experiments", json=one_token_silo("hospital-c")).json()
    reasons = []
    with SiloAPI(service.url, token) as api:
        for t, tamper in enumerate(("shape", "nan")):
            task = None
            while task is None:
                task = api.next_task(wait=5)
            assert (task["experiment_id"], task["round"], task["client"]) == (exp["id"], t, 3)
            api.download(task["id"], "adapter", tmp_path / "adapter.safetensors")
            tensors = load_file(tmp_path / "adapter.safetensors")
            name = sorted(k for k in tensors if ".lora_B." in k)[0]
            if tamper == "shape":
                tensors[name] = torch.zeros(tensors[name].shape[0] + 1, tensors[name].shape[1])
            else:
                tensors[name] = torch.full_like(tensors[name], float("nan"))
            save_file(tensors, tmp_path / "update.safetensors", {"n_examples": "7"})
            answer = api.upload(task["id"], tmp_path / "update.safetensors", seconds=1,
                                compute_seconds=1)  # fmt: skip
            assert answer == {"accepted": True, "n_examples": 7}
            reasons.append(name)
    done = service.wait_finished(exp["id"], timeout=300)

    assert done["status"] == "completed", done["error"]  # min_clients_per_round 1: 3 remain
    summaries = [r["summary"] for r in rounds(service, exp["id"])]
    shape = tuple(load_file(tmp_path / "adapter.safetensors")[reasons[0]].shape)
    wrong = (shape[0] + 1, shape[1])
    assert summaries[0]["excluded"] == {"3": f"{reasons[0]}: shape {wrong}, expected {shape}"}
    assert summaries[1]["excluded"] == {"3": f"{reasons[1]}: NaN or inf values"}
    assert all(sorted(s["clients"]) == [0, 1, 2, 3] for s in summaries)


def test_a_silo_client_killed_mid_task_and_restarted_completes_without_duplicates(
    service: Service, data_files: dict[str, Path], tmp_path: Path
) -> None:
    token = issue(service, "hospital-d")
    cfg = one_token_silo("hospital-d", training={"local_steps": 40})
    cfg["federation"]["rounds"] = 1
    exp = service.http.post("/experiments", json=cfg).json()
    first = silo_client(service, token, data_files["hospital-a"], tmp_path / "first")

    service.wait_until(  # it trains: its first step losses have arrived
        exp["id"], lambda _: bool(service.metrics(exp["id"], "client_step", client=3))
    )
    first.kill()  # SIGKILL mid-task: no failure report, the task stays claimed
    assert service.get(exp["id"])["status"] == "running"
    silo_client(service, token, data_files["hospital-a"], tmp_path / "second")
    done = service.wait_finished(exp["id"], timeout=300)

    assert done["status"] == "completed", done["error"]
    tries = [(a["client"], a["ok"]) for a in attempts(service, exp["id"])]
    assert sorted(tries) == [(0, True), (1, True), (2, True), (3, True)]  # once each, no failure
    steps = [s["step"] for s in service.metrics(exp["id"], "client_step", client=3)]
    assert sorted(steps) == list(range(40))  # the retrained task's losses, each step once
    assert sorted(rounds(service, exp["id"])[0]["summary"]["clients"]) == [0, 1, 2, 3]
