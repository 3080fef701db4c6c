"""Experiment tracking: a run's metrics records as scalars, for TensorBoard (always: event
files in the run directory) and for MLflow (one MLflow run per experiment, when a tracking
server is configured). Both the in-process runner and the service log through the runner's
shared steps: ``start`` when a run is prepared, ``log_round`` when a round is finished,
``log_export`` when the export is written.

Scalar names: ``eval/<score>`` and ``round/<value>`` (step: the round; the evaluation before
training is step -1), ``layer/<layer>/<diagnostic>`` (step: the round), ``client/<id>/<value>``
(step: the round) and ``client/<id>/loss`` (step: the client's local step counted over the
whole run). A round is written once: its TensorBoard file has a name of its own (a redone
round replaces it) and the MLflow run remembers the last round it holds (a tag). Tracking
never fails training: a tracking server that is away costs a warning.
"""

from __future__ import annotations

import io
import logging
import math
import os
import posixpath
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter

from backend.core.config import ExperimentConfig
from backend.core.runs import METRICS_ENVELOPE, RunPaths
from backend.core.settings import get_settings

log = logging.getLogger(__name__)

Scalar = tuple[str, float, int]  # name, value, step

# Tags the MLflow run carries besides the caller's (experiment id, sweep id).
RUN_DIR_TAG = "fedmomentum.run_dir"  # finds the run again if tracking.json was never written
LAST_ROUND_TAG = "fedmomentum.last_round"  # the last round whose scalars the run holds
_MAX_PARAM = 6000  # MLflow's longest parameter value
_BATCH = 1000  # MLflow's most metrics per log_batch
_BAD_NAME = re.compile(r"[^\w\-. :/]")

# A tracking server that is away must not hold training up for minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


# ---- records -> scalars -------------------------------------------------------------------------


def scalars(records: Iterable[Mapping[str, Any]]) -> list[Scalar]:
    """The numbers of metrics records (as returned, or as metrics.jsonl lines) as named
    scalars (see the module docstring); a round's client steps must all be among them."""
    records = list(records)
    steps_per_round = Counter(
        (r["round"], r["client"]) for r in records if r["kind"] == "client_step"
    )
    out: list[Scalar] = []
    for r in records:
        kind, t = r["kind"], int(r["round"])
        if kind == "client_step":
            step = t * steps_per_round[(t, r["client"])] + int(r["step"])
            out += _numbers(f"client/{r['client']}", {"loss": r["loss"]}, step)
        elif kind == "client":
            out += _numbers(f"client/{r['client']}", _values(r, ("client", "ok")), t)
        elif kind == "diagnostics":
            out += _numbers(f"layer/{r['layer']}", _values(r, ("layer",)), t)
        elif kind in ("eval", "round"):
            out += _numbers(kind, _values(r, ("clients",)), t)
    return out


def _values(record: Mapping[str, Any], skip: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("kind", "round", *METRICS_ENVELOPE, *skip)}


def _numbers(prefix: str, values: Mapping[str, Any], step: int) -> list[Scalar]:
    """Every finite number in ``values`` (mappings flattened into name/key), as scalars."""
    out: list[Scalar] = []
    for key, v in values.items():
        name = f"{prefix}/{key}"
        if isinstance(v, Mapping):
            out += _numbers(name, v, step)
        elif isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out.append((_BAD_NAME.sub("_", name), float(v), step))
    return out


# ---- TensorBoard --------------------------------------------------------------------------------


def _event_key(round_num: int) -> str:
    # Sorted by name, TensorBoard reads the rounds in order (the "tfevents" marks the file).
    return f"{RunPaths.tensorboard}/events.out.tfevents.{round_num + 1:010d}.fedmomentum"


def write_events(paths: RunPaths, round_num: int, batch: Sequence[Scalar]) -> None:
    """Round ``round_num``'s scalars as one event file (replacing any earlier one)."""
    buffer = io.BytesIO()
    writer = RecordWriter(buffer)
    now = time.time()
    writer.write(Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
    for name, value, step in batch:
        summary = Summary(value=[Summary.Value(tag=name, simple_value=value)])
        writer.write(Event(wall_time=now, step=step, summary=summary).SerializeToString())
    paths.store.write_bytes(_event_key(round_num), buffer.getvalue())


# ---- MLflow -------------------------------------------------------------------------------------


def tracking_uri(cfg: ExperimentConfig) -> str | None:
    """The MLflow tracking server this run logs to, or None (not tracked)."""
    if cfg.tracking.mlflow is False:
        return None
    uri = get_settings().mlflow_tracking_uri
    if not uri and cfg.tracking.mlflow:
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        if not uri:
            log.warning(
                "tracking.mlflow is true but no tracking server is set "
                "(FEDMOMENTUM_MLFLOW_TRACKING_URI or MLFLOW_TRACKING_URI): not logged to MLflow"
            )
    return uri or None


def params(cfg: ExperimentConfig) -> dict[str, str]:
    """The config flattened to dotted keys (MLflow parameters)."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[_BAD_NAME.sub("_", prefix)] = str(value)[:_MAX_PARAM]

    walk("", cfg.model_dump(mode="json"))
    return out


@contextmanager
def _mlflow(paths: RunPaths, what: str) -> Iterator[tuple[Any, str] | None]:
    """(client, run id) of the run's MLflow run (created once), or None when it is not
    tracked; an error, here or in the block, is logged as a warning and goes no further."""
    tracked = None
    try:
        cfg = _run_config(paths)
        uri = tracking_uri(cfg)
        if uri is not None:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=uri)
            tracked = client, _run_id(client, uri, cfg, paths)
    except ImportError as e:
        log.warning("MLflow %s skipped: %s (install the `tracking` extra)", what, e)
        tracked = None
    except Exception as e:  # noqa: BLE001 - a tracking server away must not fail training
        _warn(paths, what, e)
        tracked = None
    try:
        yield tracked
    except Exception as e:  # noqa: BLE001
        _warn(paths, what, e)


def _warn(paths: RunPaths, what: str, e: Exception) -> None:
    log.warning("MLflow %s of %s failed: %s: %s", what, paths.store.url(), type(e).__name__, e)


def _run_config(paths: RunPaths) -> ExperimentConfig:
    return ExperimentConfig.model_validate(yaml.safe_load(paths.store.read_text(paths.config)))


def _run_id(client: Any, uri: str, cfg: ExperimentConfig, paths: RunPaths) -> str:
    """The experiment's MLflow run: the one tracking.json names (for this server), else one
    tagged with this run directory, else a new one with the config as parameters."""
    store = paths.store
    state = store.read_json(paths.tracking) if store.exists(paths.tracking) else {}
    if state.get("mlflow_uri") == uri and state.get("mlflow_run_id"):
        return str(state["mlflow_run_id"])
    name = get_settings().mlflow_experiment
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{RUN_DIR_TAG}` = '{store.url()}'", max_results=1
    )
    if found:
        run_id = found[0].info.run_id
    else:
        tags = {
            RUN_DIR_TAG: store.url(),
            "experiment_id": Path(store.root).name,
            "strategy": cfg.strategy,
            "model": cfg.model,
            "dataset": cfg.dataset,
            **state.get("tags", {}),
        }
        run_id = client.create_run(experiment_id, run_name=cfg.name, tags=tags).info.run_id
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params(cfg).items()]
        for i in range(0, len(items), 100):  # MLflow's most parameters per batch
            client.log_batch(run_id, params=items[i : i + 100])
    store.write_json(paths.tracking, {**state, "mlflow_uri": uri, "mlflow_run_id": run_id})
    return str(run_id)


# ---- the hooks ----------------------------------------------------------------------------------


def start(paths: RunPaths, tags: Mapping[str, str] | None = None) -> None:
    """Remember the run's extra tags (e.g. its sweep) and open its MLflow run (once)."""
    store = paths.store
    state = store.read_json(paths.tracking) if store.exists(paths.tracking) else {}
    if tags and state.get("tags") != dict(tags):
        store.write_json(paths.tracking, {**state, "tags": dict(tags)})
    with _mlflow(paths, "start"):
        pass


def log_round(paths: RunPaths, round_num: int, records: Sequence[Mapping[str, Any]]) -> None:
    """Write round ``round_num``'s records (with what came before it: its clients' records,
    the evaluation before training) to TensorBoard and MLflow, each at most once."""
    batch = scalars(records)
    try:
        write_events(paths, round_num, batch)
    except Exception as e:  # noqa: BLE001 - a full disk here must not lose the round
        log.warning("TensorBoard events of round %d failed: %s: %s", round_num, type(e).__name__, e)
    with _mlflow(paths, f"round {round_num}") as tracked:
        if tracked is None:
            return
        client, run_id = tracked
        last = client.get_run(run_id).data.tags.get(LAST_ROUND_TAG)
        if last is not None and int(last) >= round_num:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name, value, now, step) for name, value, step in batch]
        for i in range(0, len(metrics), _BATCH):
            client.log_batch(run_id, metrics=metrics[i : i + _BATCH])
        client.set_tag(run_id, LAST_ROUND_TAG, str(round_num))
        if round_num + 1 >= _run_config(paths).federation.rounds:
            client.set_terminated(run_id, "FINISHED")


def log_export(paths: RunPaths) -> None:
    """Attach the exported adapter (and export.json) to the MLflow run, once."""
    with _mlflow(paths, "export") as tracked:
        if tracked is None:
            return
        client, run_id = tracked
        if client.list_artifacts(run_id, "export"):
            return
        with _local(paths, RunPaths.export) as folder:
            adapter = folder / "adapter"
            client.log_artifacts(run_id, str(adapter), "export/adapter")
            client.log_artifact(run_id, str(folder / "export.json"), "export")


@contextmanager
def _local(paths: RunPaths, key: str) -> Iterator[Path]:
    """A folder of the run directory as a local path (copied from an object store)."""
    store = paths.store
    if store.local:
        yield store.local_path(key)
        return
    with tempfile.TemporaryDirectory(prefix="fedmomentum-track-") as tmp:
        for name in store.files(key):
            target = Path(tmp) / posixpath.relpath(name, key)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(store.read_bytes(name))
        yield Path(tmp)
