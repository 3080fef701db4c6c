"""The service logs to a real MLflow tracking server (``mlflow server`` on 127.0.0.1): one
MLflow run per experiment, its metrics equal to the service's own, every round once, also
when the worker is killed mid-round and another one takes over; and the run directory's
TensorBoard events hold the same numbers."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.service.conftest import Service
from tests.service.test_service import LONG, _mid_round

STEPS = LONG["training"]["local_steps"]


def test_a_killed_worker_leaves_one_mlflow_run_with_every_round_once(
    redis_service: Service, mlflow_url: str
) -> None:
    service, url = redis_service, mlflow_url
    worker = service.api_and_worker(mlflow_tracking_uri=url)
    exp = service.create(name="tracked-service", **LONG)
    eid = exp["id"]
    _mid_round(service, eid, 1)
    worker.kill()
    service.worker(mlflow_tracking_uri=url)
    done = service.wait_finished(eid)
    assert done["status"] == "completed", done["error"]

    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name("fedmomentum")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.experiment_id = '{eid}'"
    )
    assert len(runs) == 1
    mlrun = runs[0]
    run_id = mlrun.info.run_id
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == "tracked-service"
    assert mlrun.data.params["federation.rounds"] == "3"
    assert mlrun.data.params["training.local_steps"] == str(STEPS)
    assert mlrun.data.tags["strategy"] == done["config"]["strategy"]

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))

    evals = service.metrics(eid, "eval")
    assert [m["round"] for m in evals] == [-1, 0, 1, 2]
    for key in ("accuracy", "eval_loss"):
        assert history(f"eval/{key}") == [(m["round"], m["values"][key]) for m in evals]
    rounds = service.metrics(eid, "round")
    want = [(m["round"], m["values"]["mean_residual_energy"]) for m in rounds]
    assert history("round/mean_residual_energy") == want
    steps = service.metrics(eid, "client_step")
    for c in {m["client"] for m in steps}:
        mine = [m for m in steps if m["client"] == c]
        want = [(m["round"] * STEPS + m["step"], m["values"]["loss"]) for m in mine]
        assert history(f"client/{c}/loss") == sorted(want)
    listed = [f.path for f in client.list_artifacts(run_id, "export/adapter")]
    assert "export/adapter/adapter_config.json" in listed

    events = EventAccumulator(str(service.tmp / "data" / "runs" / eid / "tensorboard"))
    events.Reload()
    got = [(e.step, e.value) for e in events.Scalars("eval/accuracy")]
    assert got == [(m["round"], pytest.approx(m["values"]["accuracy"], rel=1e-6)) for m in evals]
