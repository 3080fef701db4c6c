"""Rounds, metrics and diagnostics: idempotent inserts (crud) and the read endpoints."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from backend.db.metrics import add_metrics
from backend.db.models import Metric, Round

API = "/api/v1/experiments"


def _records() -> list[dict]:
    """Records as the runner writes them to metrics.jsonl (flat)."""
    steps = [
        {"kind": "client_step", "round": r, "client": c, "step": s, "loss": 2.0 - 0.1 * s}
        for r in (0, 1)
        for c in (0, 1)
        for s in range(3)
    ]
    evals = [
        {"kind": "eval", "round": r, "accuracy": 0.1 * (r + 2), "eval_loss": 1.0}
        for r in (-1, 0, 1)
    ]
    diagnostics = [
        {
            "kind": "diagnostics",
            "round": r,
            "layer": layer,
            "singular_values": [3.0, 2.0, 1.0],
            "kept_rank": 2,
            "residual_energy": 1 / 14,
            "naive_error": 0.3,
            "exactness_error": 1e-8,
            "subspace_momentum": None if r == 0 else 0.9,
        }
        for r in (0, 1)
        for layer in ("layers.0.q_proj", "layers.0.v_proj")
    ]
    return steps + evals + diagnostics


@pytest.fixture
def experiment(create, session):
    created = create()
    add_metrics(session, experiment_id=created["id"], records=_records())
    return created


def _count(session, experiment_id):
    query = select(func.count()).where(Metric.experiment_id == experiment_id)
    return session.scalar(query)


def test_add_metrics_twice_stores_each_record_once(create, session):
    experiment_id = create()["id"]
    records = _records()

    first = add_metrics(session, experiment_id=experiment_id, records=records)
    again = add_metrics(session, experiment_id=experiment_id, records=records)
    changed = [r | {"loss": 99.0} for r in records if r["kind"] == "client_step"]
    redelivered = add_metrics(session, experiment_id=experiment_id, records=changed)

    assert (first, again, redelivered) == (len(records), 0, 0)
    assert _count(session, experiment_id) == len(records)


def test_add_metrics_rejects_an_unknown_kind(create, session):
    with pytest.raises(ValueError, match=r"kind: unknown 'loss'; allowed: client_step"):
        add_metrics(session, experiment_id=create()["id"], records=[{"kind": "loss", "round": 0}])


def test_metrics_filters(client, experiment):
    url = f"{API}/{experiment['id']}/metrics"

    def get(**params):
        return client.get(url, params=params).json()

    everything = get(limit=500)
    steps = get(kind="client_step", limit=500)
    client1 = get(kind="client_step", client=1, round_min=1)
    evals = get(kind="eval", round_max=0)
    page = get(kind="client_step", offset=10, limit=5)

    assert everything["count"] == len(_records())
    assert steps["count"] == 12
    assert {(m["round"], m["client"]) for m in client1["data"]} == {(1, 1)}
    assert [m["step"] for m in client1["data"]] == [0, 1, 2]
    assert client1["data"][0]["values"] == {"loss": 2.0}
    assert [m["round"] for m in evals["data"]] == [-1, 0]
    assert evals["data"][0] | {"id": 0} == {
        "id": 0,
        "kind": "eval",
        "round": -1,
        "client": None,
        "step": None,
        "layer": None,
        "values": {"accuracy": pytest.approx(0.1), "eval_loss": 1.0},
    }
    assert (page["count"], len(page["data"])) == (12, 2)


def test_metrics_rejects_an_unknown_kind(client, experiment):
    response = client.get(f"{API}/{experiment['id']}/metrics", params={"kind": "loss"})

    assert response.status_code == 422
    assert "'client_step'" in response.json()["detail"][0]["msg"]


def test_diagnostics_by_layer_and_round(client, experiment):
    url = f"{API}/{experiment['id']}/diagnostics"

    everything = client.get(url).json()
    one = client.get(url, params={"layer": "layers.0.v_proj", "round": 1}).json()

    assert everything["count"] == 4
    assert everything["layers"] == ["layers.0.q_proj", "layers.0.v_proj"]
    assert [(d["round"], d["layer"]) for d in everything["data"]] == [
        (0, "layers.0.q_proj"),
        (0, "layers.0.v_proj"),
        (1, "layers.0.q_proj"),
        (1, "layers.0.v_proj"),
    ]
    [diag] = one["data"]
    assert diag["singular_values"] == [3.0, 2.0, 1.0]
    assert (diag["kept_rank"], diag["subspace_momentum"]) == (2, 0.9)
    assert diag["exactness_error"] == pytest.approx(1e-8)
    assert everything["data"][0]["subspace_momentum"] is None


def test_rounds_in_order(client, create, session):
    experiment_id = create()["id"]
    for r in (1, 0):
        session.add(
            Round(experiment_id=experiment_id, round=r, status="completed", summary={"accuracy": r})
        )
    session.commit()

    body = client.get(f"{API}/{experiment_id}/rounds").json()

    assert body["count"] == 2
    assert [(r["round"], r["status"], r["summary"]) for r in body["data"]] == [
        (0, "completed", {"accuracy": 0}),
        (1, "completed", {"accuracy": 1}),
    ]


def test_deleting_an_experiment_deletes_its_rows(client, experiment, session):
    session.add(Round(experiment_id=experiment["id"], round=0, status="completed"))
    session.commit()
    client.post(f"{API}/{experiment['id']}/cancel")

    client.delete(f"{API}/{experiment['id']}")

    assert _count(session, experiment["id"]) == 0  # ON DELETE CASCADE (SQLite: foreign_keys=ON)
    assert session.scalar(select(func.count()).select_from(Round)) == 0


def test_attempts_list_failures_and_retries_in_order(client, create, session):
    from backend.db.results import record_client

    experiment = create()
    for client_id, attempt, ok in ((1, 0, False), (0, 0, True), (1, 1, True), (1, 1, True)):
        record = {"round": 0, "client": client_id, "ok": ok, "n_examples": 7, "seconds": 0.5}
        record["error"] = None if ok else "OSError: disk full"
        record_client(
            session, experiment_id=experiment["id"], attempt=attempt, record=record
        )  # the last: a re-run

    everything = client.get(f"{API}/{experiment['id']}/attempts").json()
    failures = client.get(f"{API}/{experiment['id']}/attempts", params={"ok": False}).json()

    assert everything["count"] == 3
    assert [(a["client"], a["attempt"], a["ok"]) for a in everything["data"]] == [
        (0, 0, True),
        (1, 0, False),
        (1, 1, True),
    ]
    assert failures["count"] == 1 and failures["data"][0]["error"] == "OSError: disk full"
    assert client.get(f"{API}/nope/attempts").status_code == 404
