"""Catalog, health, OpenAPI, and the rule that the backend never imports torch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from fastapi.testclient import TestClient

from backend.api.app import create_app
from backend.core.catalog import DATASETS, MODELS, PARTITIONS, STRATEGIES
from backend.core.config import ExperimentConfig
from backend.core.settings import Settings

ROOT = Path(__file__).parents[2]


def test_catalog_lists_choices_and_defaults(client):
    body = client.get("/api/v1/catalog").json()

    for key, source in (("strategies", STRATEGIES), ("models", MODELS), ("datasets", DATASETS)):
        assert {e["name"]: e["description"] for e in body[key]} == source
    assert body["partitions"] == list(PARTITIONS)
    assert body["defaults"] == ExperimentConfig().model_dump(mode="json")
    assert {"federation", "lora", "strategy"} <= set(body["config_schema"]["properties"])


def test_health(client):
    assert client.get("/api/v1/health").json() == {"status": "ok", "database": "ok", "auth": "none"}


def test_health_reports_an_unreachable_database(tmp_path):
    url = "postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2"
    app = create_app(Settings(data_dir=tmp_path, database_url=url))

    response = TestClient(app).get("/api/v1/health")

    assert response.status_code == 503
    assert response.json() == {"status": "error", "database": "unreachable", "auth": "none"}


def test_openapi_documents_the_routes(client):
    spec = client.get("/api/v1/openapi.json").json()

    assert "/api/v1/experiments/{experiment_id}/download" in spec["paths"]
    post = spec["paths"]["/api/v1/experiments"]["post"]
    assert post["description"].startswith("Validate an experiment config")
    assert client.get("/docs").status_code == 200


def test_backend_never_imports_torch(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        from fastapi.testclient import TestClient
        import backend.api.app, backend.cli, backend.db.experiments
        from backend.db.engine import migrate
        from backend.core.settings import Settings

        settings = Settings(data_dir={str(tmp_path)!r})
        migrate(settings.database_url)
        client = TestClient(backend.api.app.create_app(settings))
        config = {{"model": "tiny-llama", "dataset": "arith", "data": {{"n_train": 20}}}}
        assert client.post("/api/v1/experiments", json=config).status_code == 201
        assert client.get("/api/v1/catalog").status_code == 200
        banned = ("torch", "transformers", "peft", "workers")
        print(sorted(m for m in sys.modules if m.split(".")[0] in banned))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_importing_the_api_starts_nothing_and_creates_no_folder(tmp_path):
    data = tmp_path / "data"
    script = textwrap.dedent(
        """
        import threading
        import backend.api.app, backend.api, backend.db.lifecycle, backend.core.broker
        print(threading.active_count())
        """
    )
    env = {**os.environ, "FEDMOMENTUM_DATA_DIR": str(data)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"  # no thread started
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no data dir, no ./control


def test_create_dispatches_to_the_workers(client, create, settings):
    experiment = create()

    messages = list(settings.broker_dir.rglob("*.msg"))
    assert len(messages) == 1  # the advance task, waiting for a worker
    assert experiment["id"] in messages[0].read_text()


def test_events_of_unknown_experiment_is_404(client):
    response = client.get("/api/v1/experiments/nope/events")

    assert response.status_code == 404
    assert "nope" in response.json()["detail"]


def test_events_replay_and_end_for_a_finished_experiment(client, create, session):
    from backend.db.events import add_event
    from backend.db.models import Experiment

    experiment = create()
    row = session.get(Experiment, experiment["id"])
    add_event(session, experiment_id=row.id, type="round_started", data={"round": 0})
    session.commit()
    client.post(f"/api/v1/experiments/{row.id}/cancel")

    body = client.get(f"/api/v1/experiments/{row.id}/events").text
    resumed = client.get(
        f"/api/v1/experiments/{row.id}/events", headers={"Last-Event-ID": "999999999"}
    ).text

    assert "event: round_started" in body
    assert "event: status" in body and '"cancelled"' in body
    assert body.rstrip().endswith('data: {"status": "cancelled"}')
    assert "round_started" not in resumed and "event: end" in resumed


def test_round_adapter_before_the_round_is_aggregated_is_404(client, create):
    experiment = create()

    response = client.get(f"/api/v1/experiments/{experiment['id']}/rounds/0/adapter")

    assert response.status_code == 404
    assert "round 0" in response.json()["detail"]
