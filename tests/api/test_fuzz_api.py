"""Fuzzing: schemathesis sends requests generated from /api/v1/openapi.json (valid and
invalid ones) to the real app over HTTP (uvicorn), on SQLite and on PostgreSQL; not one may
get a 5xx. The database holds experiments in every status with results, events and files,
and a sweep, so path parameters hit real rows as well as missing ones; mutated valid configs
and sweep specs reach the database. Derandomized: the same requests every run (~1,000 per
database, >= 500 asserted). The event stream is only opened and closed: a stream of a
running experiment never ends.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from sqlalchemy.orm import Session

from backend.api.app import create_app
from backend.core.config import ExperimentConfig
from backend.core.settings import Settings
from backend.core.sweeps import expand, parse_sweep
from backend.db import lifecycle, results
from backend.db.engine import get_engine
from backend.db.experiments import cancel_experiment, create_experiment
from backend.db.metrics import add_metrics
from backend.db.models import Base, Experiment, ExperimentStatus
from backend.db.sweeps import create_sweep
from tests.api.conftest import serve

TINY = {"model": "tiny-llama", "dataset": "arith", "data": {"n_train": 40, "n_eval": 8}}

EXAMPLES = 30  # per operation and generation mode (positive, negative)
MUTATED = 150  # mutated experiment configs
MIN_REQUESTS = 500
API = "/api/v1/experiments"
EVENTS = "/api/v1/experiments/{experiment_id}/events"
EVENTS_LABEL = f"GET {EVENTS}"
METRICS_LABEL = "GET /api/v1/experiments/{experiment_id}/metrics"
ADAPTER_LABEL = f"GET {API}/{{experiment_id}}/rounds/{{round}}/adapter"
MUTATED_LABEL = "POST /api/v1/experiments (mutated config)"
SWEEPS = "/api/v1/sweeps"
MUTATED_SWEEPS = 60  # mutated sweep specs (each valid one stores and dispatches 4 experiments)
MUTATED_SWEEP_LABEL = "POST /api/v1/sweeps (mutated spec)"
SWEEP_LABEL = f"GET {SWEEPS}/{{sweep_id}}"
SWEEP = {
    "name": "fuzz sweep",
    "base": TINY,
    "strategies": ["fedit", "fedmomentum"],
    "seeds": 1,
    "grid": {"lora.rank": [2, 4]},
}


def _seed(settings: Settings) -> tuple[list[str], list[str]]:
    """Experiments in every status (a completed one with rounds, attempts, metrics,
    diagnostics, events, a manifest, an export and a round adapter) and a sweep whose
    experiments have evaluations; their ids."""
    ids = []
    with Session(get_engine(settings.database_url)) as session:
        spec = parse_sweep(SWEEP)
        sweep, runs = create_sweep(session, spec=spec, configs=[r.config for r in expand(spec)])
        sweeps = [sweep.id]
        for run in runs:
            evals = [
                {"kind": "eval", "round": r, "accuracy": 0.5, "eval_loss": 1.0} for r in (0, 1)
            ]
            add_metrics(session, experiment_id=run.id, records=evals)
        for status in ExperimentStatus:
            config = ExperimentConfig(name=f"fuzz {status}", **TINY)
            exp = create_experiment(session, config=config)
            ids.append(exp.id)
            if status == ExperimentStatus.queued:
                continue
            lifecycle.mark_running(session, experiment=exp)
            if status == ExperimentStatus.completed:
                _results(session, settings, exp)
            if status == ExperimentStatus.cancelled:
                cancel_experiment(session, experiment=exp)
            elif status != ExperimentStatus.running:
                lifecycle.finish(
                    session,
                    experiment=exp,
                    status=status,
                    error="boom" if status == "failed" else None,
                )
    return ids, sweeps


def _results(session: Session, settings: Settings, exp: Experiment) -> None:
    results.start_round(session, experiment_id=exp.id, round_num=0, attempt=0, clients=[0, 1])
    for client in (0, 1):
        ok = client == 0
        record = {"round": 0, "client": client, "ok": ok, "error": None if ok else "oom"}
        results.record_client(session, experiment_id=exp.id, attempt=0, record=record)
    records: list[dict[str, Any]] = [
        {"kind": "client_step", "round": 0, "client": 0, "step": s, "loss": 1.0} for s in range(3)
    ]
    records += [{"kind": "eval", "round": r, "accuracy": 0.5, "eval_loss": 1.0} for r in (-1, 0)]
    records.append(
        {"kind": "diagnostics", "round": 0, "layer": "q_proj", "singular_values": [2.0, 1.0]}
    )
    add_metrics(session, experiment_id=exp.id, records=records, emit=True)
    results.finish_round(
        session,
        experiment_id=exp.id,
        round_num=0,
        summary={"round": 0, "accuracy": 0.5, "eval_loss": 1.0},
    )
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
    """Send one case; its status code."""
    if case.operation.path == EVENTS:
        # A stream of an active experiment never ends: the status is all there is to check,
        # then the connection is closed (which frees the stream's slot on the server).
        kwargs = case.as_transport_kwargs(base_url=base_url)
        with http.request(**kwargs, stream=True, timeout=30) as response:
            return response.status_code
    return case.call(base_url=base_url, session=http, timeout=30).status_code


# Mutated configs: a valid config with one field replaced, so that requests reach the config
# checks and the database (schema-generated bodies almost never pass every field). Strings
# UTF-8 or the database cannot hold, and floats JSON cannot, are included on purpose.
NASTY = st.sampled_from(["", "a\x00b", "\ud800", "\udfff x", "😀", "../../etc", "x" * 1000])
LEAF = st.one_of(
    NASTY,
    st.text(max_size=20),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and infinities included
    st.booleans(),
    st.none(),
    st.lists(st.integers(min_value=-2, max_value=20), max_size=4),
    st.dictionaries(st.text(max_size=4), st.lists(st.integers(0, 5), max_size=3), max_size=2),
)


def _leaves(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict):
            out += _leaves(value, (*prefix, key))
        out.append((*prefix, key))
    return out


def _mutated_configs() -> st.SearchStrategy[tuple[str, bytes]]:
    """(what changed, JSON body): the tiny valid config with one field (or a new one)
    replaced."""
    base = ExperimentConfig(**TINY).model_dump(mode="json")
    return _mutated(base, [("unknown",), ("data", "n_train")])


def _mutated_sweeps() -> st.SearchStrategy[tuple[str, bytes]]:
    """(what changed, JSON body): a valid 4-experiment sweep with one entry replaced."""
    extra = [("unknown",), ("grid", "aggregation.factor_split"), ("base", "seed")]
    return _mutated(SWEEP, extra)


def _mutated(base: dict[str, Any], extra: list[tuple[str, ...]]) -> st.SearchStrategy[Any]:
    paths = st.sampled_from([*_leaves(base), *extra])

    def mutate(path: tuple[str, ...], value: Any) -> tuple[str, bytes]:
        data = json.loads(json.dumps(base))
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        # ensure_ascii: lone surrogates travel as \ud800 escapes; NaN/Infinity as JSON5 words
        return f"{'.'.join(path)}={value!r}", json.dumps(data, ensure_ascii=True).encode()

    return st.builds(mutate, paths, LEAF)


def _strategy(
    operation: Any, mode: GenerationMode, ids: list[str], sweeps: list[str]
) -> st.SearchStrategy[schemathesis.Case]:
    """Cases of one operation; those with an experiment or sweep id use a seeded one half
    the time."""
    generated = operation.as_strategy(mode)
    if "{sweep_id}" in operation.path:
        real_sweep = st.sampled_from(sweeps).flatmap(
            lambda s: operation.as_strategy(mode, path_parameters={"sweep_id": s})
        )
        return st.one_of(real_sweep, generated)
    if "{experiment_id}" not in operation.path:
        return generated
    # A round that exists (0: its adapter was seeded) where the path has one.
    # Half of those are the completed experiment's round 0, so that the 200 answer is
    # reached whatever order the generator takes (ids follow ExperimentStatus's order).
    rounds = [0, 1] if "{round}" in operation.path else [None]
    completed = ids[list(ExperimentStatus).index(ExperimentStatus.completed)]
    pairs = st.tuples(st.sampled_from(ids), st.sampled_from(rounds))
    if "{round}" in operation.path:
        pairs = st.one_of(st.just((completed, 0)), pairs)
    real = pairs.flatmap(
        lambda p: operation.as_strategy(
            mode,
            path_parameters={"experiment_id": p[0]} | ({"round": p[1]} if p[1] is not None else {}),
        )
    )
    return st.one_of(real, generated)


def _fuzz(strategy: st.SearchStrategy[Any], send: Any, examples: int = EXAMPLES) -> bool:
    """``send`` each of ``examples`` cases (the same ones every run); False when the strategy
    cannot make any (a negative case of an operation whose only input is a string path)."""

    @given(strategy)
    @hypothesis.settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[hypothesis.Phase.generate],  # no shrinking: the failing request is reported
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        send(case)

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        return False
    return True


def test_fuzzing_finds_no_server_error(settings, client):
    statuses: Counter[tuple[str, int]] = Counter()
    server_errors: list[str] = []  # every one is collected: the test reports them all

    def record(label: str, request: str, call: Callable[[], int]) -> None:
        try:
            status = call()
        except requests.ConnectionError as e:  # the server dropped the connection
            status, request = 0, f"{request}: {e}"
        statuses[label, status] += 1
        if status == 0 or status >= 500:
            server_errors.append(f"{status}: {request}")

    with serve(create_app(settings)) as base_url, requests.Session() as http:

        def send(case: schemathesis.Case) -> None:
            call = partial(_send, case, base_url, http)
            record(case.operation.label, case.as_curl_command(), call)

        def poster(path: str, label: str) -> Callable[[tuple[str, bytes]], None]:
            def post(mutated: tuple[str, bytes]) -> None:
                change, body = mutated

                def call() -> int:
                    json_type = {"content-type": "application/json"}
                    return http.post(f"{base_url}{path}", body, headers=json_type).status_code

                record(label, f"POST {path} with {change}", call)

            return post

        schema = schemathesis.openapi.from_dict(http.get(f"{base_url}/api/v1/openapi.json").json())
        for result in schema.get_all_operations():
            operation = result.ok()
            _clear(settings)  # every operation starts from the same seeded rows
            ids, sweeps = _seed(settings)
            assert _fuzz(_strategy(operation, GenerationMode.POSITIVE, ids, sweeps), send)
            _fuzz(_strategy(operation, GenerationMode.NEGATIVE, ids, sweeps), send)
        _fuzz(_mutated_configs(), poster(API, MUTATED_LABEL), MUTATED)
        _fuzz(_mutated_sweeps(), poster(SWEEPS, MUTATED_SWEEP_LABEL), MUTATED_SWEEPS)

    total = sum(statuses.values())
    print(f"{total} requests:", dict(sorted(statuses.items())))
    assert total >= MIN_REQUESTS, statuses
    assert not server_errors, "\n".join(server_errors)
    # Mutated configs got past the schema to the database, and were refused too.
    assert statuses[MUTATED_LABEL, 201] > 0 and statuses[MUTATED_LABEL, 422] > 0
    assert statuses[MUTATED_SWEEP_LABEL, 201] > 0 and statuses[MUTATED_SWEEP_LABEL, 422] > 0
    # Seeded rows were hit as well as missing ones.
    for label in (
        f"GET {API}/{{experiment_id}}",
        EVENTS_LABEL,
        METRICS_LABEL,
        ADAPTER_LABEL,
        SWEEP_LABEL,
    ):
        assert statuses[label, 200] > 0 and statuses[label, 404] > 0, label
