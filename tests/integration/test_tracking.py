"""Tracking of in-process runs: metrics.jsonl's schema and time, TensorBoard event files read
back with TensorBoard's own reader, and a real MLflow tracking server (``mlflow server``
on 127.0.0.1) queried with MlflowClient: params, per-round metrics, tags, the exported
adapter, one MLflow run per experiment across an interrupted and resumed run."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import workers.runner.loop as loop_module
from backend.core.config import parse_config
from backend.core.runs import RunPaths
from backend.core.settings import get_settings
from workers.runner import finish_round, run

TINY = {
    "name": "tracked",
    "model": "tiny-llama",
    "dataset": "arith",
    "data": {"n_train": 36, "n_eval": 8, "partition": "iid"},
    "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
    "federation": {"num_clients": 3, "clients_per_round": 2, "rounds": 2},
    "training": {"local_steps": 3, "batch_size": 4, "max_length": 48, "lr": 0.01},
    "eval": {"batch_size": 8, "max_new_tokens": 4},
}
STEPS = TINY["training"]["local_steps"]  # type: ignore[index]


def lines(root: Path) -> list[dict[str, Any]]:
    return [json.loads(s) for s in (root / "metrics.jsonl").read_text().splitlines()]


def of(root: Path, kind: str) -> list[dict[str, Any]]:
    return [r for r in lines(root) if r["kind"] == kind]


@pytest.fixture(scope="module")
def server(mlflow_url: str) -> str:
    return mlflow_url


@pytest.fixture
def tracked(server: str, monkeypatch: pytest.MonkeyPatch):
    """FEDMOMENTUM_MLFLOW_TRACKING_URI pointing at the test server, for this test."""
    monkeypatch.setenv("FEDMOMENTUM_MLFLOW_TRACKING_URI", server)
    get_settings.cache_clear()
    yield MlflowClient(tracking_uri=server)
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def finished(server: str, tmp_path_factory: pytest.TempPathFactory):
    """A 2-round run tracked by the server: (run directory, client, MLflow run id, start)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDMOMENTUM_MLFLOW_TRACKING_URI", server)
        get_settings.cache_clear()
        root = tmp_path_factory.mktemp("tracked-run")
        started = time.time()
        run(parse_config(TINY), root, progress=False, tags={"sweep": "grid-1"})
        ended = time.time()
    get_settings.cache_clear()
    run_id = json.loads((root / RunPaths.tracking).read_text())["mlflow_run_id"]
    return root, MlflowClient(tracking_uri=server), run_id, (started, ended)


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_metrics_jsonl_records_carry_schema_and_time(finished):
    root, _, _, (started, ended) = finished
    records = lines(root)
    assert {r["schema"] for r in records} == {1}
    times = [r["time"] for r in records]
    assert started <= times[0] and times[-1] <= ended
    assert times == sorted(times)


def test_mlflow_run_has_the_config_tags_and_status(finished):
    root, client, run_id, _ = finished
    mlrun = client.get_run(run_id)
    p = mlrun.data.params
    assert p["federation.rounds"] == "2" and p["lora.rank"] == "4"
    assert p["training.lr"] == "0.01" and p["strategy"] == "fedmomentum"
    assert p["data.n_train"] == "36" and p["tracking.mlflow"] == "None"
    tags = mlrun.data.tags
    assert tags["strategy"] == "fedmomentum" and tags["model"] == "tiny-llama"
    assert tags["dataset"] == "arith" and tags["sweep"] == "grid-1"
    assert tags["experiment_id"] == root.name and tags["mlflow.runName"] == "tracked"
    assert mlrun.info.status == "FINISHED"


def test_mlflow_metrics_equal_metrics_jsonl(finished):
    root, client, run_id, _ = finished
    evals = of(root, "eval")
    assert [r["round"] for r in evals] == [-1, 0, 1]
    for key in ("accuracy", "eval_loss"):
        assert history(client, run_id, f"eval/{key}") == [(r["round"], r[key]) for r in evals]
    rounds = of(root, "round")
    for key in ("mean_residual_energy", "round_seconds", "accuracy"):
        assert history(client, run_id, f"round/{key}") == [(r["round"], r[key]) for r in rounds]
    down = [(r["round"], float(r["bytes_down"]["4"])) for r in rounds]
    assert history(client, run_id, "round/bytes_down/4") == down  # per rank group
    for r in rounds:  # per client
        for c, sent in r["bytes_up"].items():
            assert (r["round"], sent) in history(client, run_id, f"round/bytes_up/{c}")
    diags = of(root, "diagnostics")
    layer = diags[0]["layer"]
    for key in ("naive_error", "residual_energy", "kept_rank"):
        want = [(d["round"], d[key]) for d in diags if d["layer"] == layer]
        assert history(client, run_id, f"layer/{layer}/{key}") == want
    momentum = [(d["round"], d["subspace_momentum"]) for d in diags if d["layer"] == layer]
    got = history(client, run_id, f"layer/{layer}/subspace_momentum")
    assert got == [m for m in momentum if m[1] is not None] and got
    steps = of(root, "client_step")
    for c in {s["client"] for s in steps}:
        want = [(s["round"] * STEPS + s["step"], s["loss"]) for s in steps if s["client"] == c]
        assert history(client, run_id, f"client/{c}/loss") == sorted(want)
    for rec in of(root, "client"):
        got = dict(history(client, run_id, f"client/{rec['client']}/seconds"))
        assert got[rec["round"]] == rec["seconds"]


def test_mlflow_run_holds_the_exported_adapter(finished):
    root, client, run_id, _ = finished
    local = Path(client.download_artifacts(run_id, "export", str(root.parent / "downloaded")))
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (local / "adapter" / name).read_bytes() == (
            root / "export" / "adapter" / name
        ).read_bytes()
    assert json.loads((local / "export.json").read_text())["round"] == 2


def test_tensorboard_events_equal_metrics_jsonl(finished):
    root = finished[0]
    events = EventAccumulator(str(root / RunPaths.tensorboard), size_guidance={"scalars": 0})
    events.Reload()

    def scalars(tag: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in events.Scalars(tag)]

    for key in ("accuracy", "eval_loss"):
        want = [(r["round"], pytest.approx(r[key], rel=1e-6)) for r in of(root, "eval")]
        assert scalars(f"eval/{key}") == want
    rounds = of(root, "round")
    assert scalars("round/mean_residual_energy") == [
        (r["round"], pytest.approx(r["mean_residual_energy"], rel=1e-6)) for r in rounds
    ]
    assert scalars("round/bytes_down/4") == [(r["round"], r["bytes_down"]["4"]) for r in rounds]
    diags = of(root, "diagnostics")
    for d in diags:
        got = dict(scalars(f"layer/{d['layer']}/naive_error"))
        assert got[d["round"]] == pytest.approx(d["naive_error"], rel=1e-6)
    steps = of(root, "client_step")
    for c in {s["client"] for s in steps}:
        want = [
            (s["round"] * STEPS + s["step"], pytest.approx(s["loss"], rel=1e-6))
            for s in steps
            if s["client"] == c
        ]
        assert scalars(f"client/{c}/loss") == want


def test_a_resumed_run_keeps_one_mlflow_run_and_each_round_once(tracked, tmp_path, monkeypatch):
    cfg = parse_config({**TINY, "name": "resumed"})
    real = loop_module.train_client

    def crash_in_round_1(paths, t, c, **kw):
        if t == 1:
            raise KeyboardInterrupt("killed in round 1")
        return real(paths, t, c, **kw)

    with monkeypatch.context() as mp:
        mp.setattr(loop_module, "train_client", crash_in_round_1)
        with pytest.raises(KeyboardInterrupt):
            run(cfg, tmp_path, progress=False)
    run_id = json.loads((tmp_path / RunPaths.tracking).read_text())["mlflow_run_id"]
    assert history(tracked, run_id, "eval/accuracy")[-1][0] == 0  # round 0 only so far
    run(cfg, tmp_path, progress=False)
    # A service worker that dies after evaluating round 1 evaluates it again: logged once.
    finish_round(RunPaths.at(tmp_path), 1, started_at=None, train_seconds=0.0)
    run(cfg, tmp_path, progress=False)  # a finished run: the export again, not its artifact

    experiment = tracked.get_experiment_by_name("fedmomentum")
    runs = tracked.search_runs(
        [experiment.experiment_id], filter_string=f"tags.experiment_id = '{tmp_path.name}'"
    )
    assert [r.info.run_id for r in runs] == [run_id]
    evals = of(tmp_path, "eval")
    assert history(tracked, run_id, "eval/accuracy") == [(r["round"], r["accuracy"]) for r in evals]
    for c in range(3):
        steps = [(s["round"], s["step"]) for s in of(tmp_path, "client_step") if s["client"] == c]
        want = sorted(t * STEPS + step for t, step in steps)
        assert [step for step, _ in history(tracked, run_id, f"client/{c}/loss")] == want
    steps = [m.step for m in tracked.get_metric_history(run_id, "round/bytes_down/4")]
    assert steps == [0, 1]
    assert [f.path for f in tracked.list_artifacts(run_id, "export")] == [
        "export/adapter",
        "export/export.json",
    ]


def test_mlflow_off_in_the_config_logs_nothing(tracked, tmp_path):
    cfg = parse_config({**TINY, "name": "untracked", "tracking": {"mlflow": False}})
    run(cfg, tmp_path, progress=False, write_export=False)
    assert not (tmp_path / RunPaths.tracking).exists()
    runs = tracked.search_runs(
        [tracked.get_experiment_by_name("fedmomentum").experiment_id],
        filter_string="attributes.run_name = 'untracked'",
    )
    assert runs == []
    assert list((tmp_path / RunPaths.tensorboard).glob("events.out.tfevents.*"))


def test_a_tracking_server_that_is_away_never_fails_training(tmp_path, monkeypatch, caplog):
    from tests.helpers import free_port

    monkeypatch.setenv("FEDMOMENTUM_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    get_settings.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="workers.tracking"):
            summaries = run(parse_config({**TINY, "name": "away"}), tmp_path, progress=False)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert [s["round"] for s in summaries] == [0, 1]
    assert (tmp_path / "export" / "adapter" / "adapter_config.json").is_file()
    warned = [r.getMessage() for r in caplog.records if r.name == "workers.tracking"]
    assert any("MLflow round 1" in w and "failed" in w for w in warned)
