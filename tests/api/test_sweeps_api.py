"""Sweeps over the API (SQLite and PostgreSQL): create and dispatch every experiment, 422
naming the bad entry, the 200 limit, list, the leaderboard of stored metrics, cancel, delete."""

from __future__ import annotations

import pytest

from backend.db import metrics as db_metrics
from backend.db.models import Experiment

SWEEPS = "/api/v1/sweeps"


@pytest.fixture
def spec(make_config):
    def build(**changes):
        return {
            "name": "cmp",
            "base": make_config(),
            "strategies": ["fedit", "fedmomentum"],
            "seeds": 2,
        } | changes

    return build


def _post(client, body):
    response = client.post(SWEEPS, json=body)
    assert response.status_code == 201, response.text
    return response.json()


def test_create_stores_and_dispatches_every_experiment(client, spec, settings):
    sweep = _post(client, spec(grid={"aggregation.factor_split": ["sqrt", "b"]}))

    assert (sweep["n_experiments"], sweep["status"], sweep["counts"]) == (
        8,
        "queued",
        {"queued": 8},
    )
    detail = client.get(f"{SWEEPS}/{sweep['id']}").json()
    names = sorted(e["name"] for e in detail["experiments"])
    assert names[0] == "cmp / fedit, aggregation.factor_split=b / seed 0"
    assert {e["sweep_id"] for e in detail["experiments"]} == {sweep["id"]}
    one = client.get(f"/api/v1/experiments/{detail['experiments'][0]['id']}").json()
    assert one["sweep_id"] == sweep["id"]
    messages = list(settings.broker_dir.rglob("*.msg"))
    assert len(messages) == 8  # one advance task per experiment
    assert detail["leaderboard"] == []  # nothing evaluated yet


def test_create_sets_location(client, spec):
    response = client.post(SWEEPS, json=spec())
    assert response.headers["location"].endswith(f"{SWEEPS}/{response.json()['id']}")


@pytest.mark.parametrize(
    ("changes", "loc", "message"),
    [
        ({"grid": {"lora.rank": [4, 0]}}, ["body", "grid", "lora.rank", 1], "greater than 0"),
        ({"grid": {"lora.rnak": [4]}}, ["body", "grid", "lora.rnak"], "unknown config field"),
        (
            {"strategies": ["fedit", "fedex", "fedavg"]},
            ["body", "strategies", 2],
            "unknown strategy 'fedavg'; allowed: fedmomentum",
        ),
        ({"seeds": [1, 1]}, ["body", "seeds", 1], "seed 1 is listed twice"),
        ({"sedes": 2}, ["body", "sedes"], "Extra inputs are not permitted"),
        (
            {"grid": {"federation.num_clients": [4, 100]}},
            ["body", "grid", "federation.num_clients"],
            "more clients (100) than training examples (40)",
        ),
        (
            {"seeds": 30, "grid": {"lora.rank": [2, 4, 8, 16]}},
            ["body"],
            "this sweep expands to 240 experiments; at most 200",
        ),
    ],
)
def test_bad_sweeps_are_422_naming_the_entry(client, spec, settings, changes, loc, message):
    response = client.post(SWEEPS, json=spec(**changes))

    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == loc and message in error["msg"]
    assert client.get(SWEEPS).json()["count"] == 0  # nothing stored
    assert not list(settings.broker_dir.rglob("*.msg"))


def test_list_newest_first_with_counts(client, spec):
    first = _post(client, spec(name="one", seeds=1))
    second = _post(client, spec(name="two", seeds=1, strategies=["ffa"]))

    body = client.get(SWEEPS).json()
    assert body["count"] == 2
    assert [s["id"] for s in body["data"]] == [second["id"], first["id"]]
    assert [s["n_experiments"] for s in body["data"]] == [1, 2]
    assert (
        client.get(SWEEPS, params={"limit": 1, "offset": 1}).json()["data"][0]["id"] == first["id"]
    )


def _eval(round_num, accuracy):
    return {"kind": "eval", "round": round_num, "accuracy": accuracy, "eval_loss": 1 - accuracy}


def _round(round_num):
    return {
        "kind": "round",
        "round": round_num,
        "clients": [0, 1],
        "bytes_up": {"0": 10, "1": 30},
        "bytes_down": {"8": 100},
        "round_seconds": 2.0,
    }


def _store_metrics(client, session, sweep):
    """Metrics as workers write them: fedmomentum ends at 0.8 and 0.9, fedit at 0.5, and
    fedit's seed 1 has evaluated round 0 only (still running)."""
    runs = client.get(f"{SWEEPS}/{sweep['id']}").json()["experiments"]
    finals = {
        ("fedit", 0): 0.5,
        ("fedit", 1): 0.7,
        ("fedmomentum", 0): 0.8,
        ("fedmomentum", 1): 0.9,
    }
    for run in runs:
        strategy, seed = run["config"]["strategy"], run["config"]["seed"]
        records = [
            _eval(-1, 0.1),
            _eval(0, 0.3),
            _round(0),
            _eval(1, finals[strategy, seed]),
            _round(1),
        ]
        if (strategy, seed) == ("fedit", 1):
            records = records[:3]
        db_metrics.add_metrics(session, experiment_id=run["id"], records=records)


def test_the_leaderboard_of_stored_metrics(client, spec, session):
    sweep = _post(client, spec())
    _store_metrics(client, session, sweep)

    board = client.get(f"{SWEEPS}/{sweep['id']}").json()["leaderboard"]

    assert [r["label"] for r in board] == ["fedmomentum", "fedit"]
    fm, fi = board
    assert fm["final_mean"] == pytest.approx(0.85) and fm["final_std"] == pytest.approx(0.0707107)
    assert fi["final_mean"] == pytest.approx((0.5 + 0.3) / 2)  # seed 1's latest is round 0
    assert (fm["rounds_done"], fi["rounds_done"]) == (2, 1)
    assert fm["bytes_up"] == 80 and fm["bytes_down"] == 400  # 2 rounds x (10 + 30), x 2 x 100
    assert fm["rounds_to_best"] == 2 and fi["rounds_to_best"] is None
    assert [p["n"] for p in fi["accuracy"]] == [2, 2, 1]
    assert fm["within_noise_of_next"] is False  # 0.45 apart, spreads 0.07 and 0.14


def test_the_report_is_one_offline_page(client, spec, session):
    sweep = _post(client, spec())
    _store_metrics(client, session, sweep)

    response = client.get(f"{SWEEPS}/{sweep['id']}/report")

    assert response.status_code == 200
    assert f"fedmomentum-sweep-{sweep['id']}-report.html" in response.headers["content-disposition"]
    page = response.text
    assert "FedMomentum sweep: cmp" in page and "<td>0.850 ± 0.071</td>" in page
    assert "<td>fedit</td>" in page and 'id="chart-accuracy"' in page


def test_cancel_cancels_every_active_experiment(client, spec, session):
    sweep = _post(client, spec())
    runs = client.get(f"{SWEEPS}/{sweep['id']}").json()["experiments"]
    done = session.get(Experiment, runs[0]["id"])
    done.status = "completed"
    session.commit()

    response = client.post(f"{SWEEPS}/{sweep['id']}/cancel")

    assert response.status_code == 200
    assert response.json()["counts"] == {"completed": 1, "cancelled": 3}
    assert response.json()["status"] == "cancelled"
    again = client.post(f"{SWEEPS}/{sweep['id']}/cancel")
    assert again.status_code == 409 and "nothing to cancel" in again.json()["detail"]


def test_delete_removes_the_sweep_its_experiments_and_run_directories(client, spec, settings):
    sweep = _post(client, spec(seeds=1))
    runs = client.get(f"{SWEEPS}/{sweep['id']}").json()["experiments"]
    run_dir = settings.runs_store().sub(runs[0]["id"])
    run_dir.write_text("config.yaml", "x: 1\n")

    busy = client.delete(f"{SWEEPS}/{sweep['id']}")
    assert busy.status_code == 409 and "cancel it before deleting it" in busy.json()["detail"]
    client.post(f"{SWEEPS}/{sweep['id']}/cancel")
    assert client.delete(f"{SWEEPS}/{sweep['id']}").status_code == 204

    assert client.get(f"{SWEEPS}/{sweep['id']}").status_code == 404
    assert all(client.get(f"/api/v1/experiments/{r['id']}").status_code == 404 for r in runs)
    assert not settings.runs_store().exists(runs[0]["id"])


def test_deleting_an_experiment_leaves_the_sweep(client, spec):
    sweep = _post(client, spec(seeds=1))
    runs = client.get(f"{SWEEPS}/{sweep['id']}").json()["experiments"]
    client.post(f"/api/v1/experiments/{runs[0]['id']}/cancel")

    assert client.delete(f"/api/v1/experiments/{runs[0]['id']}").status_code == 204

    assert client.get(f"{SWEEPS}/{sweep['id']}").json()["n_experiments"] == 1


@pytest.mark.parametrize("method", ["get", "delete"])
def test_unknown_sweep_is_404(client, method):
    response = getattr(client, method)(f"{SWEEPS}/nope")
    assert response.status_code == 404 and "nope" in response.json()["detail"]
