"""Token silos over the API: credentials (issued once, stored hashed, listed with their last
use, revoked at once), and what each silo token may reach: its own tasks only (404 for any
other), no normal endpoint (401). Uploads are keyed by task: a retry counts once."""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.runs import RunPaths
from backend.core.settings import Settings
from backend.db import lifecycle, results, silos
from backend.db.models import ClientUpdate, Event, Experiment, Round, Silo, SiloTask

ADMIN = "admin-token"
API = "/api/v1"


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        api_token=ADMIN,
        reconcile_interval_s=0,
    )


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def safetensors_bytes(shapes: dict[str, list[int]], meta: dict[str, str]) -> bytes:
    """A float32 safetensors file of zeros (written by hand: no torch in the API tests)."""
    header: dict[str, Any] = {"__metadata__": meta}
    offset = 0
    for name, shape in shapes.items():
        n = 4 * int(__import__("math").prod(shape))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


ADAPTER = {"layer.lora_A.weight": [4, 8], "layer.lora_B.weight": [8, 4]}


def issue(client: TestClient, name: str) -> str:
    response = client.post(f"{API}/silos", json={"name": name}, headers=auth(ADMIN))
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


@pytest.fixture
def round0(
    client: TestClient, session: Session, settings: Settings, make_config: Callable[..., Any]
) -> dict[str, Any]:
    """An experiment whose round 0 waits on silo a (client 2) and silo b (client 3), with the
    round's global adapter in its run directory; the two silos' tokens."""
    fed = {"num_clients": 4, "clients_per_round": 2, "rounds": 1,
           "silos": {"a": [2], "b": [3]}, "token_silos": ["a", "b"]}  # fmt: skip
    tokens = {"a": issue(client, "a"), "b": issue(client, "b")}
    response = client.post(
        f"{API}/experiments", json=make_config(federation=fed), headers=auth(ADMIN)
    )
    assert response.status_code == 201, response.text
    eid = response.json()["id"]
    exp = session.get(Experiment, eid)
    assert exp is not None
    paths = RunPaths(settings.runs_store().sub(eid))
    adapter = safetensors_bytes(ADAPTER, {})
    paths.store.write_bytes(f"{paths.state(0)}/{paths.adapter_file(8)}", adapter)
    results.start_round(session, experiment_id=eid, round_num=0, attempt=0, clients=[2, 3])
    silos.add_tasks(session, experiment_id=eid, round_num=0, attempt=0,
                    generation=exp.generation, clients={2: "a", 3: "b"})  # fmt: skip
    return {"id": eid, "adapter": adapter, **tokens}


def claim(client: TestClient, token: str) -> dict[str, Any]:
    response = client.get(f"{API}/silo/tasks", params={"wait": 0}, headers=auth(token))
    assert response.status_code == 200, response.text
    return dict(response.json())


def aggregations_sent(settings: Settings) -> int:
    """aggregate_round messages in the embedded broker's folder."""
    files = [p for p in settings.broker_dir.rglob("*") if p.is_file()]
    return sum(b"fedmomentum.aggregate_round" in p.read_bytes() for p in files)


def test_a_silo_token_is_issued_once_stored_hashed_listed_and_revoked_at_once(
    client: TestClient, session: Session
) -> None:
    token = issue(client, "hospital-a")
    again = client.post(f"{API}/silos", json={"name": "hospital-a"}, headers=auth(ADMIN))
    bad = client.post(f"{API}/silos", json={"name": "a b"}, headers=auth(ADMIN))
    no_admin = client.post(f"{API}/silos", json={"name": "x"}, headers=auth(token))

    assert again.status_code == 409 and "already has a token" in again.json()["detail"]
    assert bad.status_code == 422 and "name" in json.dumps(bad.json()["detail"])
    assert no_admin.status_code == 401  # a silo token is no admin token
    row = session.scalar(select(Silo).where(Silo.name == "hospital-a"))
    assert row is not None and row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    listed = client.get(f"{API}/silos", headers=auth(ADMIN)).json()["data"]
    assert [(s["name"], s["last_used_at"], s["revoked_at"]) for s in listed] == [
        ("hospital-a", None, None)
    ]
    assert "token" not in listed[0]

    assert client.get(f"{API}/silo/tasks?wait=0", headers=auth(token)).status_code == 204
    used = client.get(f"{API}/silos", headers=auth(ADMIN)).json()["data"][0]
    assert used["last_used_at"] is not None
    assert client.delete(f"{API}/silos/hospital-a", headers=auth(ADMIN)).status_code == 204
    refused = client.get(f"{API}/silo/tasks?wait=0", headers=auth(token))
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    assert client.delete(f"{API}/silos/nowhere", headers=auth(ADMIN)).status_code == 404
    fresh = issue(client, "hospital-a")  # a revoked silo may get a new token
    assert client.get(f"{API}/silo/tasks?wait=0", headers=auth(fresh)).status_code == 204
    assert client.get(f"{API}/silo/tasks?wait=0", headers=auth(token)).status_code == 401


def test_an_experiment_needs_a_live_token_for_each_token_silo(
    client: TestClient, make_config: Callable[..., Any]
) -> None:
    fed = {"num_clients": 4, "clients_per_round": 2, "silos": {"a": [2], "b": [3]},
           "token_silos": ["a", "b"]}  # fmt: skip
    issue(client, "a")
    body = make_config(federation=fed)

    refused = client.post(f"{API}/experiments", json=body, headers=auth(ADMIN))
    assert refused.status_code == 422
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "federation", "token_silos"]
    assert "no live token for silo(s) 'b'" in error["msg"]
    issue(client, "b")
    assert client.post(f"{API}/experiments", json=body, headers=auth(ADMIN)).status_code == 201


def _silo_requests(task_id: int) -> list[tuple[str, str, dict[str, Any]]]:
    base = f"{API}/silo/tasks/{task_id}"
    update = safetensors_bytes(ADAPTER, {"n_examples": "3"})
    return [
        ("GET", base, {}),
        ("GET", f"{base}/adapter", {}),
        ("GET", f"{base}/backbone", {}),
        ("POST", f"{base}/progress", {"json": {"steps": [{"step": 0, "loss": 1.0}]}}),
        ("POST", f"{base}/failure", {"json": {"reason": "x"}}),
        ("POST", f"{base}/update", {"content": update}),
    ]


def test_each_silo_token_reaches_only_its_own_tasks(
    client: TestClient, session: Session, round0: dict[str, Any]
) -> None:
    mine = {s: claim(client, round0[s]) for s in ("a", "b")}
    assert (mine["a"]["client"], mine["b"]["client"]) == (2, 3)
    assert mine["a"]["config"]["federation"]["token_silos"] == ["a", "b"]
    assert client.get(f"{API}/silo/tasks?wait=0", headers=auth(round0["a"])).status_code == 204

    for me, other in (("a", "b"), ("b", "a")):
        token = round0[me]
        for method, url, kwargs in _silo_requests(mine[other]["id"]):  # the other silo's task
            answer = client.request(method, url, headers=auth(token), **kwargs)
            assert answer.status_code == 404, (me, method, url, answer.text)
        for method, url, kwargs in _silo_requests(999_999):  # no such task
            assert client.request(method, url, headers=auth(token), **kwargs).status_code == 404
        own = client.get(f"{API}/silo/tasks/{mine[me]['id']}/adapter", headers=auth(token))
        assert own.status_code == 200 and own.content == round0["adapter"]
        for method, url in (  # the normal endpoints: a silo token is not the API token
            ("GET", f"{API}/experiments"),
            ("GET", f"{API}/experiments/{round0['id']}"),
            ("GET", f"{API}/experiments/{round0['id']}/download"),
            ("GET", f"{API}/experiments/{round0['id']}/silos"),
            ("POST", f"{API}/experiments/{round0['id']}/cancel"),
            ("GET", f"{API}/silos"),
        ):
            assert client.request(method, url, headers=auth(token)).status_code == 401
    for method, url, kwargs in _silo_requests(mine["a"]["id"]):  # the API token, no token
        assert client.request(method, url, headers=auth(ADMIN), **kwargs).status_code == 401
        assert client.request(method, url, **kwargs).status_code == 401

    assert client.delete(f"{API}/silos/a", headers=auth(ADMIN)).status_code == 204
    for method, url, kwargs in _silo_requests(mine["a"]["id"]):  # revoked: refused at once
        answer = client.request(method, url, headers=auth(round0["a"]), **kwargs)
        assert answer.status_code == 401
    task = session.get(SiloTask, mine["a"]["id"])
    assert task is not None and task.status == "claimed"  # nothing the revoked token sent


def test_a_retried_upload_counts_once_and_the_last_client_sends_the_aggregation(
    client: TestClient, session: Session, settings: Settings, round0: dict[str, Any]
) -> None:
    tasks = {s: claim(client, round0[s]) for s in ("a", "b")}
    update = safetensors_bytes(ADAPTER, {"n_examples": "5"})
    before = aggregations_sent(settings)

    def upload(silo: str) -> dict[str, Any]:
        url = f"{API}/silo/tasks/{tasks[silo]['id']}/update"
        response = client.post(url, content=update, headers=auth(round0[silo]))
        assert response.status_code == 200, response.text
        return dict(response.json())

    first, retry = upload("a"), upload("a")
    assert (first, retry) == ({"accepted": True, "n_examples": 5},
                              {"accepted": False, "n_examples": 5})  # fmt: skip
    assert aggregations_sent(settings) == before  # client 3 has not answered yet
    assert upload("b")["accepted"] and upload("b") == {"accepted": False, "n_examples": 5}

    rows = session.scalars(
        select(ClientUpdate).where(ClientUpdate.experiment_id == round0["id"])
    ).all()
    assert sorted((r.client, r.ok, r.n_examples) for r in rows) == [(2, True, 5), (3, True, 5)]
    finished = session.scalars(
        select(Event).where(Event.experiment_id == round0["id"], Event.type == "client_finished")
    ).all()
    assert sorted(e.data["client"] for e in finished) == [2, 3]
    assert aggregations_sent(settings) == before + 1  # once, by the last client
    row = session.scalar(select(Round).where(Round.experiment_id == round0["id"]))
    session.refresh(row)
    assert row is not None and row.aggregate_key is not None
    paths = RunPaths(settings.runs_store().sub(round0["id"]))
    assert paths.store.read_bytes(paths.upload(0, 2)) == update


def _cut_upload(client: TestClient, url: str, token: str, body: bytes) -> None:
    """Send half of ``body`` to the app, then the client is gone (ASGI ``http.disconnect``),
    as when a silo client is killed in the middle of its upload."""
    messages = [
        {"type": "http.request", "body": body[: len(body) // 2], "more_body": True},
        {"type": "http.disconnect"},
    ]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": url, "raw_path": url.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("testserver", 80),
        "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {token}".encode()),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def call() -> None:
        await client.app(scope, receive, send)  # type: ignore[arg-type]

    assert client.portal is not None
    client.portal.call(call)
    started = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in started] == [400], sent  # refused, never taken as an upload


def test_an_upload_cut_off_midway_stores_nothing_and_its_retry_counts_once(
    client: TestClient, session: Session, settings: Settings, round0: dict[str, Any]
) -> None:
    task = claim(client, round0["a"])
    url = f"{API}/silo/tasks/{task['id']}/update"
    update = safetensors_bytes(ADAPTER, {"n_examples": "5"})
    paths = RunPaths(settings.runs_store().sub(round0["id"]))

    _cut_upload(client, url, round0["a"], update)

    assert not paths.store.exists(paths.upload(0, 2))
    rows = session.scalars(select(ClientUpdate).where(ClientUpdate.experiment_id == round0["id"]))
    assert rows.all() == []
    # The restarted client uploads again: taken once, whole.
    retry = client.post(url, content=update, headers=auth(round0["a"]))
    assert retry.json() == {"accepted": True, "n_examples": 5}, retry.text
    assert paths.store.read_bytes(paths.upload(0, 2)) == update
    again = client.post(url, content=update, headers=auth(round0["a"]))
    assert again.json() == {"accepted": False, "n_examples": 5}


def test_an_upload_that_is_no_safetensors_file_is_refused_naming_the_problem(
    client: TestClient, round0: dict[str, Any]
) -> None:
    task = claim(client, round0["a"])
    url = f"{API}/silo/tasks/{task['id']}/update"
    for body, message in (
        (b"\xff" * 64, "update: not a safetensors file"),
        (safetensors_bytes(ADAPTER, {}), "n_examples"),
        (safetensors_bytes(ADAPTER, {"n_examples": "2"})[:-4], "(a truncated file?)"),
    ):
        answer = client.post(url, content=body, headers=auth(round0["a"]))
        assert answer.status_code == 422 and message in answer.json()["detail"], answer.text
    failed = client.post(f"{url[:-7]}/failure", json={"reason": "bad data: line 3"},
                         headers=auth(round0["a"]))  # fmt: skip
    assert failed.status_code == 200
    attempts = client.get(f"{API}/experiments/{round0['id']}/attempts", headers=auth(ADMIN))
    [attempt] = attempts.json()["data"]
    assert (attempt["client"], attempt["ok"]) == (2, False)
    assert attempt["error"] == "silo 'a': bad data: line 3"
    late = client.post(url, content=safetensors_bytes(ADAPTER, {"n_examples": "2"}),
                       headers=auth(round0["a"]))  # fmt: skip
    assert late.status_code == 409  # the task is closed


def test_a_silent_silo_task_becomes_its_clients_failure(
    client: TestClient, session: Session, settings: Settings, round0: dict[str, Any]
) -> None:
    task = claim(client, round0["a"])
    time.sleep(0.3)
    quick = settings.model_copy(update={"silo_timeout_s": 0.2})
    word = client.get(f"{API}/silo/tasks/999999", headers=auth(round0["b"]))  # b speaks
    assert word.status_code == 404

    assert lifecycle.fail_silent_silos(quick, session) == 1  # a's claimed task, silent
    time.sleep(0.3)
    assert lifecycle.fail_silent_silos(quick, session) == 1  # b's pending one, now silent
    rows = session.scalars(
        select(ClientUpdate).where(ClientUpdate.experiment_id == round0["id"])
    ).all()
    assert sorted(r.client for r in rows if not r.ok) == [2, 3]
    assert all(
        "was silent for 0.2 s with this task open (FEDMOMENTUM_SILO_TIMEOUT_S)" in (r.error or "")
        for r in rows
    )
    progress = client.post(f"{API}/silo/tasks/{task['id']}/progress", json={"steps": []},
                           headers=auth(round0["a"]))  # fmt: skip
    assert progress.status_code == 409  # the silo client is told to drop it
    assert aggregations_sent(settings) == 1  # both failed: the round decides (retry or fail)


def test_an_attempt_waits_only_for_clients_without_a_success_and_aggregates_once(
    client: TestClient, session: Session, settings: Settings, round0: dict[str, Any]
) -> None:
    eid = round0["id"]
    exp = session.get(Experiment, eid)
    assert exp is not None

    def record(c: int, attempt: int, ok: bool) -> None:
        row = {"round": 0, "client": c, "ok": ok, "n_examples": 3, "error": None if ok else "x"}
        results.record_client(session, experiment_id=eid, attempt=attempt, record=row)

    def complete() -> bool:
        return lifecycle.aggregate_when_complete(
            settings, session, experiment_id=eid, round_num=0, generation=exp.generation
        )

    record(2, 0, True)
    record(3, 0, False)
    # a re-dispatch of attempt 1 sends every sampled client again; client 2 has succeeded
    results.start_round(session, experiment_id=eid, round_num=0, attempt=1, clients=[2, 3])
    before = aggregations_sent(settings)
    assert not complete()  # client 3's retry is still out
    record(3, 1, True)
    assert complete()
    assert not complete()  # once per generation and attempt
    assert aggregations_sent(settings) == before + 1


def test_an_experiments_silos_list_each_client_with_its_newest_state(
    client: TestClient, session: Session, make_config: Callable[..., Any]
) -> None:
    fed = {"num_clients": 5, "clients_per_round": 4, "rounds": 2,
           "silos": {"b": [3], "a": [2, 0], "c": [1]}, "token_silos": ["a", "b"]}  # fmt: skip
    tokens = {"a": issue(client, "a"), "b": issue(client, "b")}
    created = client.post(f"{API}/experiments", json=make_config(federation=fed),
                          headers=auth(ADMIN))  # fmt: skip
    assert created.status_code == 201, created.text
    eid = created.json()["id"]
    exp = session.get(Experiment, eid)
    assert exp is not None
    url = f"{API}/experiments/{eid}/silos"

    def read() -> dict[str, Any]:
        answer = client.get(url, headers=auth(ADMIN))
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def table() -> list[tuple[Any, ...]]:
        return [
            (s["name"], s["token"], c["client"], c["round"], c["attempt"], c["status"], c["error"])
            for s in read()["data"]
            for c in s["clients"]
        ]

    assert table() == [  # nothing sampled yet
        ("a", True, 0, None, None, None, None),
        ("a", True, 2, None, None, None, None),
        ("b", True, 3, None, None, None, None),
        ("c", False, 1, None, None, None, None),
    ]
    results.start_round(session, experiment_id=eid, round_num=0, attempt=0, clients=[0, 1, 2, 3])
    silos.add_tasks(session, experiment_id=eid, round_num=0, attempt=0,
                    generation=exp.generation, clients={0: "a", 2: "a", 3: "b"})  # fmt: skip
    first = claim(client, tokens["a"])  # client 0
    failed = client.post(f"{API}/silo/tasks/{first['id']}/failure", json={"reason": "bad data"},
                         headers=auth(tokens["a"]))  # fmt: skip
    assert failed.status_code == 200, failed.text
    second = claim(client, tokens["a"])  # client 2, training
    words = client.post(f"{API}/silo/tasks/{second['id']}/progress", json={"steps": []},
                        headers=auth(tokens["a"]))  # fmt: skip
    assert words.status_code == 200
    third = claim(client, tokens["b"])  # client 3
    task = session.get(SiloTask, third["id"])
    assert task is not None and silos.close_task(session, task=task, ok=True)
    assert table() == [
        ("a", True, 0, 0, 0, "failed", "silo 'a': bad data"),
        ("a", True, 2, 0, 0, "claimed", None),
        ("b", True, 3, 0, 0, "done", None),
        ("c", False, 1, 0, 0, "sent", None),  # on the silo's Celery queue, no result yet
    ]
    seen = {c["client"]: c["seen_at"] for s in read()["data"] for c in s["clients"]}
    task = session.get(SiloTask, second["id"])
    assert task is not None and task.seen_at is not None
    assert seen[2] is not None and seen[2].startswith(task.seen_at.isoformat()[:19])

    # client 0 retried (attempt 1: pending again), client 1's Celery worker reported
    silos.add_tasks(session, experiment_id=eid, round_num=0, attempt=1,
                    generation=exp.generation, clients={0: "a"})  # fmt: skip
    oom = {"round": 0, "client": 1, "ok": False, "error": "oom"}
    results.record_client(session, experiment_id=eid, attempt=0, record=oom)
    assert table()[0] == ("a", True, 0, 0, 1, "pending", None)
    assert table()[3] == ("c", False, 1, 0, 0, "failed", "oom")
    results.start_round(session, experiment_id=eid, round_num=0, attempt=1, clients=[0, 1])
    assert table()[3] == ("c", False, 1, 0, 1, "sent", None)  # its retry
    assert client.post(f"{API}/experiments/{eid}/cancel", headers=auth(ADMIN)).status_code == 200
    assert table()[3] == ("c", False, 1, 0, 0, "failed", "oom")  # nothing is sent any more

    plain = client.post(f"{API}/experiments", json=make_config(), headers=auth(ADMIN)).json()
    none = client.get(f"{API}/experiments/{plain['id']}/silos", headers=auth(ADMIN))
    assert none.json() == {"data": [], "count": 0}
    assert client.get(f"{API}/experiments/nope/silos", headers=auth(ADMIN)).status_code == 404
    assert client.get(url).status_code == 401  # reads need the API token on this server
