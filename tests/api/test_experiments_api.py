"""Experiments over HTTP: create, validate, list, read, cancel, delete, clone."""

from __future__ import annotations

import pytest

API = "/api/v1/experiments"


def test_create_then_get_returns_the_same(client, create):
    created = create(name="first")

    response = client.get(f"{API}/{created['id']}")

    assert response.status_code == 200
    assert response.json() == created
    assert created["status"] == "queued"
    assert (created["strategy"], created["model"], created["dataset"]) == (
        "fedmomentum",
        "tiny-llama",
        "arith",
    )
    assert (created["current_round"], created["total_rounds"]) == (0, 3)
    assert created["config"]["federation"]["num_clients"] == 4
    assert created["config"]["lora"]["rank"] == 8  # defaults filled in and stored


def test_create_sets_location(client, make_config):
    response = client.post(API, json=make_config())

    assert response.headers["location"].endswith(f"{API}/{response.json()['id']}")


@pytest.mark.parametrize(
    ("changes", "loc", "message"),
    [
        ({"strategy": "fedavg"}, ["body", "strategy"], "unknown strategy 'fedavg'; allowed: "),
        ({"lora": {"rank": 0}}, ["body", "lora", "rank"], "greater than 0"),
        (
            {"federation": {"num_clients": 5, "clients_per_round": 6}},
            ["body", "federation"],
            "clients_per_round (6) must be <= num_clients (5)",
        ),
        (
            {"data": {"n_train": 3}, "federation": {"num_clients": 5, "clients_per_round": 5}},
            ["body", "federation", "num_clients"],
            "more clients (5) than training examples (3)",
        ),
        ({"colour": "red"}, ["body", "colour"], "Extra inputs are not permitted"),
    ],
    ids=["strategy", "lora.rank", "clients_per_round", "more-clients-than-examples", "extra"],
)
def test_invalid_config_is_422_naming_the_field(client, make_config, changes, loc, message):
    response = client.post(API, json=make_config(**changes))

    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(e["loc"] == loc and message in e["msg"] for e in errors), errors
    assert client.get(API).json()["count"] == 0  # nothing stored


def test_list_filters_sorts_and_pages(client, create):
    a = create(name="a", strategy="fedit")
    b = create(name="b")
    c = create(name="c", strategy="fedit")
    client.post(f"{API}/{b['id']}/cancel")

    def names(**params):
        body = client.get(API, params=params).json()
        return [e["name"] for e in body["data"]], body["count"]

    assert names(sort="name") == (["a", "b", "c"], 3)
    assert names(sort="-name") == (["c", "b", "a"], 3)
    assert names(strategy="fedit", sort="name") == (["a", "c"], 2)
    assert names(status="cancelled") == (["b"], 1)
    assert names(status="queued", strategy="fedit", sort="-name") == (["c", "a"], 2)
    assert names(sort="name", limit=2) == (["a", "b"], 3)
    assert names(sort="name", offset=2, limit=2) == (["c"], 3)
    assert {e["id"] for e in client.get(API).json()["data"]} == {a["id"], b["id"], c["id"]}


@pytest.mark.parametrize(
    ("params", "field", "allowed"),
    [
        ({"sort": "size"}, "sort", "'-created_at'"),
        ({"status": "done"}, "status", "'cancelled'"),
        ({"strategy": "fedavg"}, "strategy", "'fedmomentum'"),
        ({"limit": 501}, "limit", "500"),
        ({"offset": -1}, "offset", "0"),
    ],
)
def test_list_rejects_bad_parameters(client, params, field, allowed):
    response = client.get(API, params=params)

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["query", field]
    assert allowed in error["msg"]


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("get", ""),
        ("delete", ""),
        ("post", "/cancel"),
        ("post", "/clone"),
        ("get", "/rounds"),
        ("get", "/metrics"),
        ("get", "/diagnostics"),
        ("get", "/download"),
    ],
)
def test_unknown_id_is_404_naming_it(client, method, suffix):
    response = client.request(method, f"{API}/nope123{suffix}")

    assert response.status_code == 404
    assert response.json()["detail"] == "experiment 'nope123' not found"


def test_cancel_then_cancel_again_is_409(client, create):
    experiment = create()

    first = client.post(f"{API}/{experiment['id']}/cancel")
    second = client.post(f"{API}/{experiment['id']}/cancel")

    assert first.status_code == 200
    assert first.json()["status"] == "cancelled"
    assert first.json()["finished_at"] is not None
    assert second.status_code == 409
    assert "already cancelled" in second.json()["detail"]


def test_delete_removes_rows_and_run_directory(client, create, settings):
    experiment = create()
    run = settings.runs_dir / experiment["id"]
    (run / "export" / "adapter").mkdir(parents=True)
    (run / "export" / "adapter" / "adapter_config.json").write_text("{}")

    refused = client.delete(f"{API}/{experiment['id']}")  # still queued
    client.post(f"{API}/{experiment['id']}/cancel")
    deleted = client.delete(f"{API}/{experiment['id']}")

    assert refused.status_code == 409
    assert "cancel it before deleting it" in refused.json()["detail"]
    assert deleted.status_code == 204
    assert not run.exists()
    assert settings.runs_dir.exists()  # only the experiment's own directory goes
    assert client.get(f"{API}/{experiment['id']}").status_code == 404


def test_delete_without_run_directory(client, create):
    experiment = create()
    client.post(f"{API}/{experiment['id']}/cancel")

    assert client.delete(f"{API}/{experiment['id']}").status_code == 204


def test_clone_copies_the_config(client, create):
    original = create(name="base", strategy="flora")

    named = client.post(f"{API}/{original['id']}/clone", json={"name": "again"})
    unnamed = client.post(f"{API}/{original['id']}/clone")

    assert named.status_code == unnamed.status_code == 201
    clone = named.json()
    assert clone["id"] != original["id"]
    assert (clone["name"], clone["status"], clone["strategy"]) == ("again", "queued", "flora")
    assert clone["config"] == original["config"] | {"name": "again"}
    assert unnamed.json()["name"] == "base (copy)"
    assert client.get(API).json()["count"] == 3
