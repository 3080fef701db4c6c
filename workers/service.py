"""The service's steps, each run by one Celery task (workers.tasks): the runner's functions
plus the database. Every step first checks that its dispatch generation is current and the
experiment still active, and every step can run again after a crash without changing the
result: state is committed atomically in the run directory, rows are keyed.

    advance ──> [train_client × clients] ──chord──> aggregate_round ──> next round ... export
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from backend import crud, progress
from backend.config import ExperimentConfig
from backend.db import get_engine
from backend.models import ACTIVE, ExperimentStatus
from backend.runs import run_dir
from backend.settings import Settings
from workers import runner
from workers.artifacts import RunPaths
from workers.dispatch import send_round

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """The experiment was cancelled (or deleted) while a client trained."""


@contextmanager
def _db(settings: Settings) -> Iterator[Session]:
    with Session(get_engine(settings.database_url), expire_on_commit=False) as session:
        yield session


def _paths(settings: Settings, experiment_id: str) -> RunPaths:
    return RunPaths(run_dir(settings.runs_store(), experiment_id))


def _send_round(
    settings: Settings,
    experiment_id: str,
    cfg: ExperimentConfig,
    t: int,
    generation: int,
    attempt: int,
    clients: list[int],
) -> None:
    """``send_round``, each silo client to its silo's queue."""
    silos = {c: silo for c in clients if (silo := cfg.silo_of(c)) is not None}
    send_round(settings, experiment_id, t, generation, attempt, clients, silos)


def _current(settings: Settings, experiment_id: str, generation: int) -> ExperimentConfig | None:
    """The config, if a task of this generation should still work on the experiment."""
    with _db(settings) as db:
        exp = progress.current(db, experiment_id, generation)
        return None if exp is None else ExperimentConfig.model_validate(exp.config)


def _fail(settings: Settings, experiment_id: str, generation: int, reason: str) -> str:
    log.error("experiment %s failed: %s", experiment_id, reason)
    with _db(settings) as db:
        exp = progress.current(db, experiment_id, generation)
        if exp is not None:
            progress.finish(db, exp, ExperimentStatus.failed, reason)
    return "failed"


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


# ---- advance: wherever the experiment stands ----------------------------------------------------


def advance(settings: Settings, experiment_id: str, generation: int) -> str:
    """Prepare the run (once), evaluate the initial model (once), then continue it."""
    with _db(settings) as db:
        exp = progress.current(db, experiment_id, generation)
        if exp is None:
            return "stale"
        progress.mark_running(db, exp)
        cfg = ExperimentConfig.model_validate(exp.config)
    paths = _paths(settings, experiment_id)
    try:
        runner.prepare(cfg, paths)
        # A silo's client size is known once it has trained (the server never sees its data).
        sizes = [len(idx or []) for idx in paths.store.read_json(paths.split)["clients"]]
        with _db(settings) as db:
            ranks = [cfg.client_rank(i) for i in range(len(sizes))]
            progress.record_clients(db, experiment_id, sizes, ranks)
        with _db(settings) as db:
            evaluated = progress.has_metric(db, experiment_id, "eval", -1)
        if not evaluated:
            scores = runner.evaluate(paths, 0)
            with _db(settings) as db:
                crud.add_metrics(
                    db, experiment_id=experiment_id, records=[_eval(-1, scores)], emit=True
                )
        t = paths.latest_state()
    except OperationalError:
        raise  # the database is away: the task fails, the reconciler tries again
    except Exception as e:  # noqa: BLE001 - a bad model, data or disk: the user must know
        return _fail(settings, experiment_id, generation, f"prepare: {_error(e)}")
    with _db(settings) as db:
        last = progress.get_round(db, experiment_id, t - 1) if t > 0 else None
    if last is not None and last.status != "completed":
        return _finish_round(settings, experiment_id, cfg, paths, t - 1, generation)
    return _continue(settings, experiment_id, cfg, paths, t, generation)


def _eval(round_num: int, scores: dict[str, float]) -> dict[str, Any]:
    return {"kind": "eval", "round": round_num, **scores}


def _continue(
    settings: Settings,
    experiment_id: str,
    cfg: ExperimentConfig,
    paths: RunPaths,
    t: int,
    generation: int,
) -> str:
    """Start round ``t`` (or resume it), or export and complete after the last round."""
    if _current(settings, experiment_id, generation) is None:
        return "stale"
    if t >= cfg.federation.rounds:
        return _complete(settings, experiment_id, cfg, paths, generation)
    with _db(settings) as db:
        row = progress.get_round(db, experiment_id, t)
        attempt = row.attempt if row is not None else 0
        clients = runner.sample_clients(cfg, t)
        progress.start_round(db, experiment_id, t, attempt, clients)
    _send_round(settings, experiment_id, cfg, t, generation, attempt, clients)
    return f"round {t} dispatched"


def _complete(
    settings: Settings, experiment_id: str, cfg: ExperimentConfig, paths: RunPaths, generation: int
) -> str:
    try:
        if not paths.store.committed(paths.export):
            runner.export(paths, max(cfg.rank_groups()))
        _register(settings, experiment_id, paths, paths.export, "export", None)
    except OperationalError:
        raise
    except Exception as e:  # noqa: BLE001
        return _fail(settings, experiment_id, generation, f"export: {_error(e)}")
    with _db(settings) as db:
        exp = progress.current(db, experiment_id, generation)
        if exp is None:
            return "stale"
        progress.finish(db, exp, ExperimentStatus.completed, None)
    return "completed"


# ---- one client ----------------------------------------------------------------------------------


class _Reporter:
    """The on_step callback: buffers step losses; at most every ``interval`` seconds writes
    them as metrics, sends a progress event, beats the heart and checks for cancellation."""

    def __init__(self, settings: Settings, experiment_id: str, round_num: int, client: int):
        self.settings, self.experiment_id = settings, experiment_id
        self.round, self.client = round_num, client
        self.pending: list[dict[str, Any]] = []
        self.last = time.monotonic()

    def __call__(self, step: int, loss: float) -> None:
        self.pending.append(
            {
                "kind": "client_step",
                "round": self.round,
                "client": self.client,
                "step": step,
                "loss": loss,
            }
        )
        if time.monotonic() - self.last >= self.settings.progress_interval_s:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        with _db(self.settings) as db:
            if self.pending:
                crud.add_metrics(
                    db, experiment_id=self.experiment_id, records=self.pending, emit=True
                )
                last = self.pending[-1]
                progress.add_event(
                    db,
                    self.experiment_id,
                    "client_progress",
                    {k: last[k] for k in ("round", "client", "step", "loss")},
                )
                self.pending = []
            status = progress.heartbeat(db, self.experiment_id)
        if status not in ACTIVE:
            raise Cancelled(f"experiment {self.experiment_id} is {status or 'deleted'}")


def train(
    settings: Settings,
    experiment_id: str,
    round_num: int,
    client: int,
    attempt: int,
    generation: int,
    waited: float | None = None,
    worker: str | None = None,
) -> dict[str, Any]:
    """Train one client unless its result already exists; store its record and metrics.

    ``waited``: seconds between dispatch and the start of this task (queueing + latency);
    ``worker``: the name of the Celery worker running it (recorded with the client).
    """
    if _current(settings, experiment_id, generation) is None:
        return {"client": client, "skipped": "stale"}
    paths = _paths(settings, experiment_id)
    if paths.store.committed(paths.state(round_num + 1)):
        return {"client": client, "skipped": "round already aggregated"}
    with _db(settings) as db:
        done = progress.latest_client_updates(db, experiment_id, round_num).get(client)
    if done is not None and done.ok and paths.store.exists(paths.upload(round_num, client)):
        return {"client": client, "ok": True, "skipped": "already trained"}
    reporter = _Reporter(settings, experiment_id, round_num, client)
    with _db(settings) as db:
        progress.heartbeat(db, experiment_id)
    rec = runner.train_client(paths, round_num, client, on_step=reporter)
    rec.worker = worker
    reporter.pending = []  # every step is in rec.losses, written below
    with _db(settings) as db:
        if rec.ok:  # a failed attempt is kept in client_updates: its metrics would take the
            # (round, client) keys and hide the retry that succeeds
            records = runner.client_metrics(rec)
            records[-1]["wait_seconds"] = waited  # the "client" record
            crud.add_metrics(db, experiment_id=experiment_id, records=records, emit=True)
        record = {k: v for k, v in asdict(rec).items() if k != "losses"}
        progress.record_client(db, experiment_id, attempt, record)
        progress.heartbeat(db, experiment_id)
    return {"client": client, "ok": rec.ok, "error": rec.error}


# ---- aggregation and evaluation -----------------------------------------------------------------


def aggregate(
    settings: Settings, experiment_id: str, round_num: int, attempt: int, generation: int
) -> str:
    """Aggregate the round's successful clients (or retry it, or fail), evaluate, go on."""
    cfg = _current(settings, experiment_id, generation)
    if cfg is None:
        return "stale"
    paths = _paths(settings, experiment_id)
    try:
        if not paths.store.committed(paths.state(round_num + 1)):
            outcome = _aggregate(
                settings, experiment_id, cfg, paths, round_num, attempt, generation
            )
            if outcome is not None:
                return outcome
    except OperationalError:
        raise
    except Exception as e:  # noqa: BLE001
        return _fail(settings, experiment_id, generation, f"round {round_num}: {_error(e)}")
    return _finish_round(settings, experiment_id, cfg, paths, round_num, generation)


def _aggregate(
    settings: Settings,
    experiment_id: str,
    cfg: ExperimentConfig,
    paths: RunPaths,
    t: int,
    attempt: int,
    generation: int,
) -> str | None:
    """Aggregate round t; or a string saying why not (retried, failed).

    A client whose upload screening excludes counts as failed: with too few usable updates
    the round is retried for the failed and excluded clients, then fails with every reason.
    """
    sampled = runner.sample_clients(cfg, t)
    with _db(settings) as db:
        latest = progress.latest_client_updates(db, experiment_id, t)
    ok = [c for c in sampled if c in latest and latest[c].ok]
    need = cfg.federation.min_clients_per_round
    if len(ok) >= need:
        records = [
            runner.ClientRecord(
                t,
                c,
                latest[c].ok,
                n_examples=latest[c].n_examples,
                seconds=latest[c].seconds,
                path=latest[c].path,
                error=latest[c].error,
            )
            for c in sampled
            if c in latest
        ]
        try:
            runner.aggregate(paths, t, records)
        except runner.TooFewUpdates as e:
            with _db(settings) as db:
                progress.exclude_clients(db, experiment_id, t, e.excluded)
                latest = progress.latest_client_updates(db, experiment_id, t)
            ok = [c for c in sampled if c in latest and latest[c].ok]
        else:
            _register(settings, experiment_id, paths, paths.state(t + 1), "round_state", t)
            return None
    failed = [c for c in sampled if c not in ok]
    if attempt + 1 < settings.max_round_attempts:
        with _db(settings) as db:
            progress.start_round(db, experiment_id, t, attempt + 1, failed)
        _send_round(settings, experiment_id, cfg, t, generation, attempt + 1, failed)
        return f"round {t} retried"
    reasons = "; ".join(
        f"client {c}: {latest[c].error if c in latest else 'no result'}" for c in failed
    )
    return _fail(
        settings,
        experiment_id,
        generation,
        f"round {t}: {len(ok)} of {len(sampled)} clients succeeded after {attempt + 1} "
        f"attempts (min_clients_per_round is {need}); {reasons}",
    )


def _register(
    settings: Settings,
    experiment_id: str,
    paths: RunPaths,
    key: str,
    kind: str,
    round_num: int | None,
) -> None:
    """Record a committed folder in the artifacts table (path relative to the run dir)."""
    size = paths.store.size(key)
    with _db(settings) as db:
        progress.record_artifact(db, experiment_id, kind, key, round_num, size)


def _finish_round(
    settings: Settings,
    experiment_id: str,
    cfg: ExperimentConfig,
    paths: RunPaths,
    t: int,
    generation: int,
) -> str:
    """Evaluate the aggregated round, store its records (once), and continue."""
    try:
        with _db(settings) as db:
            row = progress.get_round(db, experiment_id, t)
            finished = row is not None and row.status == "completed"
            latest = progress.latest_client_updates(db, experiment_id, t)
        if not finished:
            summary = runner.aggregated_summary(paths, t)
            start = time.perf_counter()
            scores = runner.evaluate(paths, t + 1, runner.aggregated_clients(summary))
            started = row.started_at if row is not None and row.started_at else None
            summary.update(
                scores,
                eval_seconds=time.perf_counter() - start,
                train_seconds=sum(r.seconds for r in latest.values()),
                round_seconds=(progress.utcnow() - started).total_seconds() if started else None,
            )
            with _db(settings) as db:
                crud.add_metrics(
                    db,
                    experiment_id=experiment_id,
                    records=[_eval(t, scores), *runner.round_metrics(t, summary)],
                    emit=True,
                )
                summary.pop("diagnostics")
                progress.finish_round(db, experiment_id, t, summary)
    except OperationalError:
        raise
    except Exception as e:  # noqa: BLE001
        return _fail(settings, experiment_id, generation, f"round {t} evaluation: {_error(e)}")
    return _continue(settings, experiment_id, cfg, paths, t + 1, generation)
