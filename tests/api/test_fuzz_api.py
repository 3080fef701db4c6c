"""Fuzzing: schemathesis sends requests generated from /api/v1/openapi.json (valid and
invalid ones) to the real app over HTTP (uvicorn), on SQLite and on PostgreSQL; not one may
get a 5xx. The database holds experiments in every status with results, events and files,
so path parameters hit real rows as well as missing ones. Derandomized: the same requests
every run.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from sqlalchemy.orm import Session

from backend import crud, progress
from backend.app import create_app
from backend.config import ExperimentConfig
from backend.db import get_engine
from backend.models import Base, Experiment, ExperimentStatus
from backend.settings import Settings
from tests.api.conftest import serve

EXAMPLES = 30  # per operation and generation mode (positive, negative)
MIN_REQUESTS = 500
EVENTS = "/api/v1/experiments/{experiment_id}/events"
EVENTS_LABEL = f"GET {EVENTS}"
METRICS_LABEL = "GET /api/v1/experiments/{experiment_id}/metrics"


def _seed(settings: Settings) -> list[str]:
    """Experiments in every status (a completed one with rounds, attempts, metrics,
    diagnostics, events, a manifest, an export and a round adapter); their ids."""
    ids = []
    with Session(get_engine(settings.database_url)) as session:
        for status in ExperimentStatus:
            config = ExperimentConfig(name=f"fuzz {status}", model="tiny-llama", dataset="arith")
            exp = crud.create_experiment(session, config=config)
            ids.append(exp.id)
            if status == ExperimentStatus.queued:
                continue
            progress.mark_running(session, exp)
            if status == ExperimentStatus.completed:
                _results(session, settings, exp)
            if status == ExperimentStatus.cancelled:
                crud.cancel_experiment(session, experiment=exp)
            elif status != ExperimentStatus.running:
                progress.finish(session, exp, status, "boom" if status == "failed" else None)
    return ids


def _results(session: Session, settings: Settings, exp: Experiment) -> None:
    progress.start_round(session, exp.id, 0, 0, [0, 1])
    for client in (0, 1):
        ok = client == 0
        record = {"round": 0, "client": client, "ok": ok, "error": None if ok else "oom"}
        progress.record_client(session, exp.id, 0, record)
    records: list[dict[str, Any]] = [
        {"kind": "client_step", "round": 0, "client": 0, "step": s, "loss": 1.0} for s in range(3)
    ]
    records += [{"kind": "eval", "round": r, "accuracy": 0.5, "eval_loss": 1.0} for r in (-1, 0)]
    records.append(
        {"kind": "diagnostics", "round": 0, "layer": "q_proj", "singular_values": [2.0, 1.0]}
    )
    crud.add_metrics(session, experiment_id=exp.id, records=records, emit=True)
    progress.finish_round(session, exp.id, 0, {"round": 0, "accuracy": 0.5, "eval_loss": 1.0})
    root = settings.runs_dir / exp.id
    files = {
        "manifest.json": b'{"seed": 0}',
        "export/adapter/adapter_config.json": b'{"r": 8}',
        "export/adapter/backbone_delta.safetensors": b"delta",
        "export/merged/config.json": b"{}",
        "state/round-0001/adapter_model.safetensors": b"lora",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def _clear(settings: Settings) -> None:
    with get_engine(settings.database_url).begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


def _send(case: schemathesis.Case, base_url: str, http: requests.Session) -> int:
    """Send one case; the status code. A 5xx fails the test with the request to reproduce."""
    if case.operation.path == EVENTS:
        # A stream of an active experiment never ends: the status is all there is to check,
        # then the connection is closed (which frees the stream's slot on the server).
        kwargs = case.as_transport_kwargs(base_url=base_url)
        with http.request(**kwargs, stream=True, timeout=30) as response:
            assert response.status_code < 500, (case.as_curl_command(), response.text)
            return response.status_code
    response = case.call(base_url=base_url, session=http, timeout=30)
    case.validate_response(response, checks=[not_a_server_error])
    return response.status_code


def _strategy(
    operation: Any, mode: GenerationMode, ids: list[str]
) -> st.SearchStrategy[schemathesis.Case]:
    """Cases of one operation; those with an experiment id use a seeded one half the time."""
    generated = operation.as_strategy(mode)
    if "{experiment_id}" not in operation.path:
        return generated
    real = st.sampled_from(ids).flatmap(
        lambda i: operation.as_strategy(mode, path_parameters={"experiment_id": i})
    )
    return st.one_of(real, generated)


def _fuzz(strategy: st.SearchStrategy[schemathesis.Case], send: Any) -> bool:
    """``send`` each of EXAMPLES cases (the same ones every run); False when the strategy
    cannot make any (a negative case of an operation whose only input is a string path)."""

    @given(strategy)
    @hypothesis.settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[hypothesis.Phase.generate],  # no shrinking: the failing request is reported
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        send(case)

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        return False
    return True


def test_fuzzing_finds_no_server_error(settings, client):
    statuses: Counter[tuple[str, int]] = Counter()
    with serve(create_app(settings)) as base_url, requests.Session() as http:

        def send(case: schemathesis.Case) -> None:
            statuses[case.operation.label, _send(case, base_url, http)] += 1

        schema = schemathesis.openapi.from_dict(http.get(f"{base_url}/api/v1/openapi.json").json())
        for result in schema.get_all_operations():
            operation = result.ok()
            _clear(settings)  # every operation starts from the same seeded rows
            ids = _seed(settings)
            assert _fuzz(_strategy(operation, GenerationMode.POSITIVE, ids), send)
            _fuzz(_strategy(operation, GenerationMode.NEGATIVE, ids), send)

    total = sum(statuses.values())
    print(f"{total} requests:", dict(sorted(statuses.items())))
    assert total >= MIN_REQUESTS, statuses
    assert [key for key in statuses if key[1] >= 500] == []
    # Seeded rows were hit as well as missing ones.
    for label in ("GET /api/v1/experiments/{experiment_id}", EVENTS_LABEL, METRICS_LABEL):
        assert statuses[label, 200] > 0 and statuses[label, 404] > 0, label
