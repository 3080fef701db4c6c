"""Scale-out with real processes on Redis and PostgreSQL: several worker processes consuming
``train`` together, and cross-silo clients pinned to their silo's queue, trained by the worker
that holds their data while the server side only ever sees adapters."""

from __future__ import annotations

import json
from pathlib import Path

from tests.service.conftest import Service
from tests.service.test_service import assert_complete_and_exactly_once


def test_parallel_workers_share_the_train_queue(redis_service: Service) -> None:
    service = redis_service
    started = [  # side by side, then the API
        service.worker("aggregate", name="server@fm", wait=False),
        service.worker("train", name="train-1@fm", wait=False),
        service.worker("train", name="train-2@fm", wait=False),
    ]
    service.api()
    server, *_ = service.ready(*started)
    exp = service.create(
        name="parallel",
        federation={"num_clients": 4, "clients_per_round": 4, "rounds": 2},
        training={"local_steps": 20},
    )

    done = service.wait_finished(exp["id"])

    assert_complete_and_exactly_once(service, done)
    trained_by = [m["values"]["worker"] for m in service.metrics(exp["id"], "client")]
    assert len(trained_by) == 8
    assert set(trained_by) == {"train-1@fm", "train-2@fm"}  # both took clients of the queue
    assert "Task fedmomentum.train_client[" not in server.output()  # it consumes `aggregate` only


def _silo_file(path: Path, silo: str, n: int) -> Path:
    rows = [
        {"prompt": f"[{silo}-private] {i} + 3 =", "response": f"#### {i + 3}"} for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cross_silo_clients_train_on_their_own_silos_worker(redis_service: Service) -> None:
    service = redis_service
    data_a = _silo_file(service.tmp / "a.jsonl", "hospital-a", 12)
    data_b = _silo_file(service.tmp / "b.jsonl", "hospital-b", 20)
    started = [  # side by side, then the API
        service.worker("aggregate", name="server@fm", wait=False),  # holds no silo data
        service.worker(
            "hospital-a", name="silo-a@fm", wait=False,
            silo_data=json.dumps({"hospital-a": str(data_a)}),
        ),
        service.worker(
            "hospital-b", name="silo-b@fm", wait=False,
            silo_data=json.dumps({"hospital-b": str(data_b)}),
        ),
    ]  # fmt: skip
    service.api()
    server, silo_a, silo_b = service.ready(*started)
    silos = {"hospital-a": [0], "hospital-b": [1, 2]}
    exp = service.create(
        name="cross-silo",
        federation={"num_clients": 3, "clients_per_round": 3, "rounds": 2, "silos": silos},
    )

    done = service.wait_finished(exp["id"])

    assert_complete_and_exactly_once(service, done)
    clients = service.metrics(exp["id"], "client")
    expected = {0: "silo-a@fm", 1: "silo-b@fm", 2: "silo-b@fm"}
    assert len(clients) == 6
    assert all(m["values"]["worker"] == expected[m["client"]] for m in clients)
    for round_num in (0, 1):
        sizes = {m["client"]: m["values"]["n_examples"] for m in clients if m["round"] == round_num}
        assert sizes[0] == 12 and sizes[1] + sizes[2] == 20 and min(sizes.values()) > 0
    assert "Task fedmomentum.train_client[" not in server.output()
    assert all("Task fedmomentum.train_client[" in w.output() for w in (silo_a, silo_b))
    # The server's side (run directory, experiment config) holds no trace of the silos' data.
    run = service.tmp / "data" / "runs" / exp["id"]
    assert json.loads((run / "split.json").read_text())["clients"] == [None, None, None]
    server_side = [f.read_bytes() for f in run.rglob("*") if f.is_file()]
    server_side.append(json.dumps(done["config"]).encode())
    assert len(server_side) > 10
    for secret in (b"-private]", str(data_a).encode(), str(data_b).encode()):
        assert not any(secret in blob for blob in server_side)
