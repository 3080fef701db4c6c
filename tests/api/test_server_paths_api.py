"""What an API request may name by path: only folders and files under the server's roots,
with the same answer whether a path outside them exists or not; hub ids only when allowed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from backend.api.app import create_app
from backend.core.settings import Settings

API = "/api/v1/experiments"


def _rows(n: int) -> str:
    return "".join(
        json.dumps({"prompt": f"What is {i} + 1?", "response": str(i + 1)}) + "\n" for i in range(n)
    )


def _model_error(response) -> str:  # type: ignore[no-untyped-def]
    assert response.status_code == 422, response.text
    (problem,) = [p for p in response.json()["detail"] if p["loc"][-1] in ("model", "dataset")]
    return str(problem["msg"])


@pytest.fixture
def hub_client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"allow_hub": True}))) as test_client:
        yield test_client


@pytest.mark.parametrize("model", ["../../etc", "/etc", "/no/such/dir", "./nothing-here"])
def test_a_model_path_outside_the_roots_is_refused_alike(client, make_config, model):
    message = _model_error(client.post(API, json=make_config(model=model)))

    assert message.startswith(f"Value error, model {model!r} is neither a built-in model")
    assert "model roots" in message
    assert client.get(API).json()["count"] == 0  # nothing stored, nothing queued


def test_existing_and_missing_paths_get_the_same_answer(client, make_config, tmp_path):
    (tmp_path / "outside").mkdir()
    there = _model_error(client.post(API, json=make_config(model=str(tmp_path / "outside"))))
    missing = _model_error(client.post(API, json=make_config(model=str(tmp_path / "missing"))))

    assert there.replace(str(tmp_path / "outside"), "X") == missing.replace(
        str(tmp_path / "missing"), "X"
    )


def test_a_symlink_inside_a_root_to_outside_is_refused(client, make_config, settings, tmp_path):
    outside = tmp_path / "secret-model"
    outside.mkdir()
    root = settings.data_dir / "models"
    root.mkdir(parents=True)
    (root / "link").symlink_to(outside, target_is_directory=True)

    message = _model_error(client.post(API, json=make_config(model="./link")))

    assert "neither a built-in model" in message


def test_a_dataset_under_the_data_root_is_accepted_and_made_absolute(client, make_config, settings):
    root = settings.data_dir / "datasets"
    root.mkdir(parents=True)
    (root / "sums.jsonl").write_text(_rows(30))

    response = client.post(API, json=make_config(dataset="sums.jsonl"))

    assert response.status_code == 201, response.text
    assert response.json()["config"]["dataset"] == str((root / "sums.jsonl").resolve())


def test_a_dataset_outside_the_roots_is_refused_before_it_is_read(client, make_config, tmp_path):
    outside = tmp_path / "private.jsonl"
    outside.write_text("not json at all\n")  # would fail to parse if it were read

    message = _model_error(client.post(API, json=make_config(dataset=str(outside))))
    relative = _model_error(client.post(API, json=make_config(dataset="../../private.jsonl")))

    assert "neither a built-in dataset nor a file under the server's data roots" in message
    assert "data roots" in relative


def test_configured_roots_replace_the_defaults(settings, make_config, tmp_path):
    models = tmp_path / "shared-models"
    (models / "my-llama").mkdir(parents=True)
    custom = settings.model_copy(update={"model_roots": [models]})
    with TestClient(create_app(custom)) as client:
        refused = client.post(API, json=make_config(model=str(models / "elsewhere")))
        accepted = client.post(API, json=make_config(model=str(models / "my-llama")))

    assert refused.status_code == 422
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["config"]["model"] == str((models / "my-llama").resolve())


def test_hub_ids_only_when_the_server_allows_them(client, hub_client, make_config):
    refused = _model_error(client.post(API, json=make_config(model="HuggingFaceTB/SmolLM2-135M")))
    dataset = _model_error(client.post(API, json=make_config(dataset="hf:gsm8k")))
    allowed = hub_client.post(API, json=make_config(model="HuggingFaceTB/SmolLM2-135M"))

    assert "FEDMOMENTUM_ALLOW_HUB" in refused
    assert "FEDMOMENTUM_ALLOW_HUB" in dataset
    assert allowed.status_code == 201, allowed.text
    assert allowed.json()["config"]["model"] == "HuggingFaceTB/SmolLM2-135M"
    # a path-like value is never taken for a hub id, even when the hub is allowed
    assert hub_client.post(API, json=make_config(model="../../etc")).status_code == 422
