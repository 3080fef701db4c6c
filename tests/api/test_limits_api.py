"""Request limits: body size (413), page sizes (422), event streams per client (429), and
the inputs that used to crash the API (5xx) now refused with 4xx naming the field."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from backend.api.app import create_app
from backend.api.limits import DB_CONCURRENCY
from backend.api.schemas import MAX_LIMIT
from tests.api.conftest import serve

API = "/api/v1/experiments"


def _limited(settings, **limits):
    return create_app(settings.model_copy(update=limits))


# ---- request body size ----------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_naming_the_limit(settings, make_config):
    client = TestClient(_limited(settings, max_body_bytes=1000))
    body = json.dumps(make_config(name="x" * 2000)).encode()

    response = client.post(API, content=body, headers={"content-type": "application/json"})

    assert response.status_code == 413
    assert response.json()["detail"] == (
        "request body: larger than the limit of 1000 bytes (FEDMOMENTUM_MAX_BODY_BYTES)"
    )


def test_a_streamed_body_without_length_is_cut_at_the_limit(settings, make_config, client):
    """Chunked transfer (no Content-Length) over real HTTP: the bytes are counted."""
    body = json.dumps(make_config(name="x" * 150)).encode()
    chunks = [body[i : i + 100] for i in range(0, len(body), 100)]
    headers = {"content-type": "application/json"}

    with serve(_limited(settings, max_body_bytes=len(body) - 1)) as url:
        over = httpx.post(f"{url}{API}", content=iter(chunks), headers=headers)
    with serve(_limited(settings, max_body_bytes=len(body))) as url:
        at = httpx.post(f"{url}{API}", content=iter(chunks), headers=headers)

    assert "content-length" not in over.request.headers
    assert over.request.headers["transfer-encoding"] == "chunked"
    assert over.status_code == 413
    assert f"limit of {len(body) - 1} bytes" in over.json()["detail"]
    assert at.status_code == 201, at.text


def test_the_default_body_limit_takes_a_large_real_config(client, make_config):
    silos = {f"s{i}": list(range(i * 100, (i + 1) * 100)) for i in range(100)}
    config = make_config(
        data={"n_train": 20_000}, federation={"num_clients": 10_000, "silos": silos}
    )

    response = client.post(API, json=config)

    assert len(json.dumps(config)) > 40_000
    assert response.status_code == 201, response.text


# ---- pagination -------------------------------------------------------------------------------


def _list_operations(client: TestClient) -> list[str]:
    """Paths of every GET operation that answers a list ({data, count})."""
    spec = client.get("/api/v1/openapi.json").json()
    schemas = spec["components"]["schemas"]
    out = []
    for path, ops in spec["paths"].items():
        content = ops.get("get", {}).get("responses", {}).get("200", {}).get("content", {})
        ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
        schema = schemas.get(ref.rsplit("/", 1)[-1], {})
        if {"data", "count"} <= set(schema.get("properties", {})):
            out.append(path)
    return out


def test_every_list_endpoint_has_a_bounded_limit(client, create):
    experiment_id = create()["id"]
    spec = client.get("/api/v1/openapi.json").json()
    paths = _list_operations(client)

    # experiments, sweeps, datasets, rounds, attempts, metrics, diagnostics, silos, and an
    # experiment's silo clients
    assert len(paths) == 9
    for path in paths:
        params = {p["name"]: p for p in spec["paths"][path]["get"]["parameters"]}
        assert params["limit"]["schema"]["maximum"] == MAX_LIMIT, path
        url = path.removeprefix("/api/v1").replace("{experiment_id}", experiment_id)
        ok = client.get(f"/api/v1{url}", params={"limit": MAX_LIMIT})
        over = client.get(f"/api/v1{url}", params={"limit": MAX_LIMIT + 1})
        assert ok.status_code == 200, (path, ok.text)
        assert over.status_code == 422, path
        [error] = over.json()["detail"]
        assert error["loc"] == ["query", "limit"]
        assert error["msg"] == f"Input should be less than or equal to {MAX_LIMIT}"


# ---- event streams per client ----------------------------------------------------------------


def _open(http: httpx.Client, experiment_id: str) -> httpx.Response:
    """An open SSE stream (the caller closes it)."""
    return http.send(http.build_request("GET", f"{API}/{experiment_id}/events"), stream=True)


def _eventually(done, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_event_streams_per_client_are_bounded_and_freed_on_close(settings, create):
    experiment_id = create()["id"]  # queued, no worker: its stream stays open
    app = _limited(settings, max_event_streams_per_client=2)
    slots = app.state.event_slots

    with serve(app) as url, httpx.Client(base_url=url, timeout=10) as http:
        first, second = _open(http, experiment_id), _open(http, experiment_id)
        third = _open(http, experiment_id)
        third.read()
        held = dict(slots.open)

        first.close()  # the server notices the disconnect and frees the slot
        _eventually(lambda: slots.open["127.0.0.1"] == 1, "the closed stream's slot freed")
        fourth = _open(http, experiment_id)
        second.close()
        fourth.close()
        _eventually(lambda: not slots.open, "every slot freed")

    assert (first.status_code, second.status_code, fourth.status_code) == (200, 200, 200)
    assert held == {"127.0.0.1": 2}
    assert third.status_code == 429
    assert third.headers["retry-after"] == "2"
    assert third.json()["detail"] == (
        "too many event streams: this client already has 2 open "
        "(FEDMOMENTUM_MAX_EVENT_STREAMS_PER_CLIENT); close one and retry"
    )


def test_a_finished_stream_frees_its_slot(settings, client, create):
    experiment_id = create()["id"]
    client.post(f"{API}/{experiment_id}/cancel")
    app = _limited(settings, max_event_streams_per_client=1)

    with TestClient(app) as limited:
        bodies = [limited.get(f"{API}/{experiment_id}/events") for _ in range(3)]

    assert [b.status_code for b in bodies] == [200, 200, 200]
    assert all(b.text.rstrip().endswith('data: {"status": "cancelled"}') for b in bodies)
    assert not app.state.event_slots.open


def test_no_stream_limit_when_zero(settings, client, create):
    experiment_id = create()["id"]
    client.post(f"{API}/{experiment_id}/cancel")
    app = _limited(settings, max_event_streams_per_client=0)

    with serve(app) as url, httpx.Client(base_url=url, timeout=10) as http:
        streams = [_open(http, experiment_id) for _ in range(5)]
        statuses = [s.status_code for s in streams]
        for s in streams:
            s.close()

    assert statuses == [200] * 5


# ---- inputs that used to answer 5xx -------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "loc", "message"),
    [
        ('"name": "a\\u0000b"', ["body", "name"], "contains a NUL character"),
        ('"model": "/x\\u0000"', ["body", "model"], "contains a NUL character"),
        ('"lora": {"target_modules": ["q\\u0000"]}', ["body", "lora", "target_modules"], "NUL"),
        ('"name": "\\ud800"', ["body", "name"], "unable to parse raw data as a unicode string"),
        ('"lora": {"alpha": NaN}', ["body", "lora", "alpha"], "Input should be a finite number"),
        ('"lora": {"alpha": Infinity}', ["body", "lora", "alpha"], "finite number"),
        ('"lora": {"alpha": 1e999}', ["body", "lora", "alpha"], "finite number"),
        ('"federation": {"rounds": NaN}', ["body", "federation", "rounds"], "finite number"),
        ('"seed": 4294967296', ["body", "seed"], "Input should be less than 4294967296"),
        ('"data": {"n_train": 100001}', ["body", "data", "n_train"], "equal to 100000"),
    ],
)
def test_unstorable_configs_are_422_naming_the_field(client, raw, loc, message):
    body = '{"dataset": "arith", ' + raw + "}"  # JSON as a client may send it (NaN too)

    response = client.post(API, content=body, headers={"content-type": "application/json"})

    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(e["loc"] == loc and message in e["msg"] for e in errors), errors


def test_clone_name_with_nul_is_422(client, create):
    experiment_id = create()["id"]

    response = client.post(f"{API}/{experiment_id}/clone", json={"name": "a\x00"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "name"]


@pytest.mark.parametrize(
    ("path", "params", "status", "field"),
    [
        ("/nope%00x", {}, 404, None),
        ("/nope%00x/events", {}, 404, None),
        ("/{id}/diagnostics", {"layer": "q\x00"}, 422, "layer"),
        ("/{id}/attempts", {"offset": 2**31}, 422, "offset"),
        ("/{id}/metrics", {"round_min": 2**31}, 422, "round_min"),
        ("/{id}/metrics", {"client": 2**63}, 422, "client"),
        ("/{id}/diagnostics", {"round": 2**31}, 422, "round"),
        ("/{id}/events", {"after": 2**63}, 422, "after"),
    ],
)
def test_out_of_range_parameters_are_4xx(client, create, path, params, status, field):
    experiment_id = create()["id"]

    response = client.get(API + path.replace("{id}", experiment_id), params=params)

    assert response.status_code == status, response.text
    if field is not None:
        assert response.json()["detail"][0]["loc"] == ["query", field]


# ---- database slots ------------------------------------------------------------------------------


def test_more_concurrent_requests_than_threads_and_connections_all_succeed(settings, create):
    """150 requests at once (anyio has 40 worker threads, the pool 15 connections): they wait
    for a database slot holding nothing, instead of holding connections while waiting for a
    thread (which stalled until the pool timed out, then answered 500)."""
    experiment_id = create()["id"]
    app = create_app(settings)

    async def burst(url: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
            urls = [f"{API}/{experiment_id}/{p}" for p in ("metrics", "rounds", "attempts")]
            return await asyncio.gather(*(http.get(urls[i % 3]) for i in range(150)))

    with serve(app) as url:
        responses = asyncio.run(burst(url))

    assert [r.status_code for r in responses] == [200] * 150
    assert app.state.db_slots.value == DB_CONCURRENCY  # every slot given back
