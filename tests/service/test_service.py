"""The service end to end through the REST API, with real processes: a Celery worker, the
API, Redis and PostgreSQL (or the embedded filesystem broker and SQLite); crashes are
SIGKILLs of real processes."""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import signal
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.cli.serve import API_STOP_S
from tests.service.conftest import Service


def expected_counts(config: dict[str, Any], layers: int) -> dict[str, int]:
    """Metric rows a finished experiment must have, each exactly once."""
    fed, steps = config["federation"], config["training"]["local_steps"]
    rounds, clients = fed["rounds"], fed["clients_per_round"]
    return {
        "client_step": rounds * clients * steps,
        "client": rounds * clients,
        "eval": rounds + 1,  # before training, then after every round
        "round": rounds,
        "diagnostics": rounds * layers,
    }


def assert_complete_and_exactly_once(service: Service, exp: dict[str, Any]) -> None:
    assert exp["status"] == "completed", exp["error"]
    eid, config = exp["id"], exp["config"]
    layers = service.http.get(f"/experiments/{eid}/diagnostics").json()["layers"]
    assert len(layers) > 0
    for kind, count in expected_counts(config, len(layers)).items():
        rows = service.metrics(eid, kind)
        keys = [(m["round"], m["client"], m["step"], m["layer"]) for m in rows]
        assert len(rows) == count, (kind, len(rows), count)
        assert len(set(keys)) == count, kind  # and no key twice
    steps = service.metrics(eid, "client_step")
    rounds = config["federation"]["rounds"]
    assert {m["round"] for m in steps} == set(range(rounds))
    rows = service.http.get(f"/experiments/{eid}/rounds").json()
    assert [r["round"] for r in rows["data"]] == list(range(rounds))
    assert all(r["status"] == "completed" for r in rows["data"])
    assert exp["current_round"] == rounds
    assert exp["best_accuracy"] is not None


def download(service: Service, path: str) -> zipfile.ZipFile:
    response = service.http.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    return zipfile.ZipFile(io.BytesIO(response.content))


# ---- Redis + PostgreSQL, one API and one worker process ---------------------------------------


def test_two_experiments_complete_without_mixing(running_redis_service: Service) -> None:
    service = running_redis_service
    a = service.create(name="a", strategy="fedmomentum")
    b = service.create(name="b", strategy="fedit", seed=1)

    live = service.events(a["id"])  # follows the running experiment until it ends
    a, b = service.wait_finished(a["id"]), service.wait_finished(b["id"])

    for exp in (a, b):
        assert_complete_and_exactly_once(service, exp)
        archive = download(service, f"/experiments/{exp['id']}/download?format=adapter")
        names = archive.namelist()
        assert "adapter/adapter_model.safetensors" in names
        assert "adapter/adapter_config.json" in names
        assert (
            "merged/config.json"
            in download(service, f"/experiments/{exp['id']}/download?format=merged").namelist()
        )
        rank8 = download(service, f"/experiments/{exp['id']}/download?format=adapter-rank&rank=8")
        assert "adapter-rank/adapter_model.safetensors" in rank8.namelist()
        other = service.http.get(f"/experiments/{exp['id']}/download?format=adapter-rank&rank=3")
        assert other.status_code == 404 and "rank 8, not 3" in other.json()["detail"]
        assert any(
            n.endswith("adapter-r8.safetensors")
            for n in download(service, f"/experiments/{exp['id']}/rounds/1/adapter").namelist()
        )
    # No mixing: each experiment's client records point into its own run directory, and the
    # two differently configured runs learned different things.
    for exp in (a, b):
        paths = {m["values"]["path"] for m in service.metrics(exp["id"], "client")}
        assert all(f"/runs/{exp['id']}/" in p for p in paths), paths
    loss = {e["id"]: [m["values"]["loss"] for m in service.metrics(e["id"], "client_step")]
            for e in (a, b)}  # fmt: skip
    assert loss[a["id"]] != loss[b["id"]]

    # Live events: in order, both rounds announced and finished, metrics, the final status.
    kinds = [e["event"] for e in live]
    assert kinds[-1] == "end" and live[-1]["data"]["status"] == "completed"
    assert [e["data"]["round"] for e in live if e["event"] == "round_finished"] == [0, 1]
    assert [e["data"]["round"] for e in live if e["event"] == "round_started"] == [0, 1]
    assert "metrics" in kinds and "client_finished" in kinds
    ids = [e["id"] for e in live if "id" in e]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    streamed = [r for e in live if e["event"] == "metrics" for r in e["data"]["records"]]
    assert len({r["id"] for r in streamed}) == len(streamed)  # every new metric once
    assert len(streamed) == sum(len(service.metrics(a["id"], k)) for k in expected_counts(
        a["config"], 1))  # fmt: skip

    # Resumable: after Last-Event-ID, exactly the events that followed it.
    middle = ids[len(ids) // 2]
    resumed = service.events(a["id"], last_event_id=middle)
    assert [e["id"] for e in resumed if "id" in e] == [i for i in ids if i > middle]


def test_an_idle_connection_stays_open_longer_than_clients_reuse_one(
    running_redis_service: Service,
) -> None:
    """A client reuses an idle keep-alive connection for a while (httpx: 5 s); a server that
    closed it at that moment would make the request fail with a reset."""
    conn = http.client.HTTPConnection("127.0.0.1", running_redis_service.port, timeout=10)
    try:
        conn.request("GET", "/api/v1/health")
        first = conn.getresponse()
        first.read()
        sock = conn.sock
        time.sleep(6)  # past uvicorn's own default of 5 s
        conn.request("GET", "/api/v1/health")  # raises RemoteDisconnected if the server closed it
        second = conn.getresponse()
        second.read()
        reused = sock is not None and conn.sock is sock
    finally:
        conn.close()
    assert (first.status, second.status) == (200, 200)
    assert reused  # both requests went over the one connection


def test_round_below_min_clients_is_retried_then_fails_with_reason(
    redis_service: Service,
) -> None:
    service = redis_service
    service.api()  # no worker yet: the experiment waits in Redis
    exp = service.create(
        federation={"num_clients": 4, "clients_per_round": 2, "rounds": 2,
                    "min_clients_per_round": 2},
    )  # fmt: skip
    run = service.tmp / "data" / "runs" / exp["id"]
    run.mkdir(parents=True)
    (run / "rounds").write_text("not a directory")  # every client upload of round 0 fails
    service.worker()

    failed = service.wait_finished(exp["id"])

    assert failed["status"] == "failed"
    assert "round 0: 0 of 2 clients succeeded after 3 attempts" in failed["error"]
    assert "min_clients_per_round is 2" in failed["error"]
    assert "client " in failed["error"]
    attempts = service.http.get(f"/experiments/{exp['id']}/attempts").json()["data"]
    assert {(a["client"], a["attempt"]) for a in attempts} == {
        (c, k) for c in {a["client"] for a in attempts} for k in range(3)
    }  # each sampled client, three attempts
    assert len(attempts) == 6 and not any(a["ok"] for a in attempts)
    assert all("rounds" in a["error"] for a in attempts)
    assert service.metrics(exp["id"], "client") == []  # metrics hold only what a round used
    assert service.metrics(exp["id"], "round") == []


def test_cancel_stops_the_experiment(running_redis_service: Service) -> None:
    service = running_redis_service
    exp = service.create(
        name="long", federation={"num_clients": 4, "clients_per_round": 2, "rounds": 50}
    )
    service.wait_until(exp["id"], lambda e: e["current_round"] >= 1)

    response = service.http.post(f"/experiments/{exp['id']}/cancel")
    assert response.status_code == 200
    events = service.events(exp["id"])  # ends once the experiment is no longer active

    assert events[-1]["data"]["status"] == "cancelled"
    final = service.get(exp["id"])
    assert final["status"] == "cancelled"
    assert final["current_round"] < 50
    rounds_then = len(service.metrics(exp["id"], "round"))
    time.sleep(2.0)  # a running round may still finish; no further round may start
    assert len(service.metrics(exp["id"], "round")) <= rounds_then + 1
    assert service.get(exp["id"])["status"] == "cancelled"


# ---- crashes ------------------------------------------------------------------------------------

# Rounds of a few seconds: long enough to be caught mid-round by _mid_round (0.2 s polls).
LONG = {"training": {"local_steps": 40}, "federation": {"num_clients": 4,
        "clients_per_round": 2, "rounds": 3}}  # fmt: skip


def _mid_round(service: Service, eid: str, round_num: int) -> None:
    """Wait until a client of ``round_num`` has reported training steps."""
    service.wait_until(
        eid,
        lambda e: (
            e["status"] in ("completed", "failed")
            or bool(service.metrics(eid, "client_step", round_min=round_num))
        ),
    )
    assert service.get(eid)["status"] == "running", "the crash must come mid-experiment"


def test_worker_killed_mid_round_is_recovered_exactly_once(redis_service: Service) -> None:
    service = redis_service
    worker = service.api_and_worker()
    exp = service.create(name="crash-worker", **LONG)
    _mid_round(service, exp["id"], 1)

    worker.kill()  # SIGKILL: the running task is neither finished nor acknowledged
    service.worker()

    done = service.wait_finished(exp["id"])
    assert_complete_and_exactly_once(service, done)


def test_api_killed_mid_round_is_recovered_exactly_once(redis_service: Service) -> None:
    service = redis_service
    service.api_and_worker()
    api = service.api_proc
    assert api is not None
    exp = service.create(name="crash-api", **LONG)
    _mid_round(service, exp["id"], 1)

    api.kill()
    service.api()

    done = service.wait_finished(exp["id"])
    assert_complete_and_exactly_once(service, done)


# ---- embedded: fedmomentum up with its own worker, no server ------------------------------------


def test_embedded_mode_end_to_end(embedded_service: Service) -> None:
    service = embedded_service
    up = service.api(worker=True)
    assert f"running on http://127.0.0.1:{service.port}" in up.output()
    exp = service.create(name="embedded")

    done = service.wait_finished(exp["id"])

    assert_complete_and_exactly_once(service, done)
    assert (
        "adapter/backbone_delta.safetensors"
        in download(service, f"/experiments/{exp['id']}/download?format=adapter").namelist()
    )
    assert (service.tmp / "data" / "fedmomentum.db").exists()  # SQLite, no server
    assert (service.tmp / "data" / "broker").is_dir()  # the filesystem broker's queue


@pytest.mark.parametrize("kill", ["worker", "service"])
def test_embedded_crash_recovers(embedded_service: Service, kill: str) -> None:
    """The embedded worker killed (``up`` restarts it) or the whole service killed and
    started again: the experiment completes, every metric once."""
    service = embedded_service
    up = service.api(worker=True)
    exp = service.create(name=f"embedded-crash-{kill}", **LONG)
    _mid_round(service, exp["id"], 1)

    if kill == "worker":
        children = _children(up.popen.pid)
        assert len(children) == 1, "up runs one worker process"
        os.kill(children[0], signal.SIGKILL)
    else:
        up.kill()
        service.api(worker=True)

    done = service.wait_finished(exp["id"])
    assert_complete_and_exactly_once(service, done)


def _children(pid: int) -> list[int]:
    """Child process ids of ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_up_stops_on_sigterm_while_an_event_stream_is_open(embedded_service: Service) -> None:
    """A browser's live event stream never ends by itself: a stop cuts it after the grace
    period instead of waiting for the browser to go away."""
    service = embedded_service
    api = service.api()
    exp = service.create(name="followed")  # queued: no worker, its stream stays open
    opened = threading.Event()

    def follow() -> None:
        with (
            contextlib.suppress(httpx.HTTPError),
            service.http.stream("GET", f"/experiments/{exp['id']}/events") as response,
        ):
            for _ in response.iter_lines():
                opened.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert opened.wait(30)

    started = time.monotonic()
    api.popen.send_signal(signal.SIGTERM)
    assert api.popen.wait(API_STOP_S + 15) == 128 + signal.SIGTERM
    assert time.monotonic() - started < API_STOP_S + 15
    reader.join(10)
    assert not reader.is_alive()  # the stream was closed, not left hanging
