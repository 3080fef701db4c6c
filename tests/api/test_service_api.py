"""Catalog, health, OpenAPI, and the rule that the backend never imports torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from fastapi.testclient import TestClient

from backend.app import create_app
from backend.config import ExperimentConfig
from backend.settings import Settings
from workers.catalog import DATASETS, MODELS, PARTITIONS, STRATEGIES

ROOT = Path(__file__).parents[2]


def test_catalog_lists_choices_and_defaults(client):
    body = client.get("/api/v1/catalog").json()

    for key, source in (("strategies", STRATEGIES), ("models", MODELS), ("datasets", DATASETS)):
        assert {e["name"]: e["description"] for e in body[key]} == source
    assert body["partitions"] == list(PARTITIONS)
    assert body["defaults"] == ExperimentConfig().model_dump(mode="json")
    assert {"federation", "lora", "strategy"} <= set(body["config_schema"]["properties"])


def test_health(client):
    assert client.get("/api/v1/health").json() == {"status": "ok", "database": "ok"}


def test_health_reports_an_unreachable_database(tmp_path):
    url = "postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2"
    app = create_app(Settings(data_dir=tmp_path, database_url=url))

    response = TestClient(app).get("/api/v1/health")

    assert response.status_code == 503
    assert response.json() == {"status": "error", "database": "unreachable"}


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
        import backend.app, backend.cli, backend.crud
        from backend.db import migrate
        from backend.settings import Settings

        settings = Settings(data_dir={str(tmp_path)!r})
        migrate(settings.database_url)
        client = TestClient(backend.app.create_app(settings))
        config = {{"model": "tiny-llama", "dataset": "arith", "data": {{"n_train": 20}}}}
        assert client.post("/api/v1/experiments", json=config).status_code == 201
        assert client.get("/api/v1/catalog").status_code == 200
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
