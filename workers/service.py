"""The service's steps, each run by one Celery task (workers.tasks): the runner's functions
plus the database. Every step first checks that its dispatch generation is current and the
experiment still active, and every step can run again after a crash without changing the
result: state is committed atomically in the run directory, rows are keyed.

    advance ──> [train_client × clients] ──chord──> aggregate_round ──> next round ... export
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from backend.core.broker import send_round
from backend.core.config import ExperimentConfig
from backend.core.runs import RunPaths, run_dir
from backend.core.settings import Settings
from backend.db import lifecycle, results
from backend.db import silos as silo_tasks
from backend.db.engine import get_engine
from backend.db.events import add_event
from backend.db.metrics import add_metrics, has_metric, round_records
from backend.db.models import ACTIVE, ExperimentStatus
from workers import runner

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """The experiment was cancelled (or deleted) while a client trained."""


@dataclass(frozen=True)
class Job:
    """What every step of one dispatch works with: the settings, which experiment and
    generation, its config, and its run directory."""

    settings: Settings
    experiment_id: str
    generation: int
    cfg: ExperimentConfig
    paths: RunPaths

    @classmethod
    def load(cls, settings: Settings, experiment_id: str, generation: int) -> Job | None:
        """The job, if a task of this generation should still work on the experiment."""
        with _db(settings) as db:
            exp = lifecycle.current(db, experiment_id=experiment_id, generation=generation)
            if exp is None:
                return None
            cfg = ExperimentConfig.model_validate(exp.config)
        paths = RunPaths(run_dir(settings.runs_store(), experiment_id))
        return cls(settings, experiment_id, generation, cfg, paths)

    def db(self) -> AbstractContextManager[Session]:
        """A database session (closed at the end of the ``with`` block)."""
        return _db(self.settings)

    def is_current(self) -> bool:
        with self.db() as db:
            exp = lifecycle.current(
                db, experiment_id=self.experiment_id, generation=self.generation
            )
            return exp is not None

    def fail(self, reason: str) -> str:
        log.error("experiment %s failed: %s", self.experiment_id, reason)
        with self.db() as db:
            exp = lifecycle.current(
                db, experiment_id=self.experiment_id, generation=self.generation
            )
            if exp is not None:
                lifecycle.finish(db, experiment=exp, status=ExperimentStatus.failed, error=reason)
        return "failed"

    def add_metrics(self, records: list[dict[str, Any]]) -> None:
        with self.db() as db:
            add_metrics(db, experiment_id=self.experiment_id, records=records, emit=True)

    @property
    def chorded(self) -> bool:
        """Whether rounds are Celery chords: not when token silos train over the API (then
        the round's last client result, from a task or the API, sends the aggregation)."""
        return not self.cfg.federation.token_silos

    def send_round(self, t: int, attempt: int, clients: list[int]) -> None:
        """``send_round``, each silo client to its silo's queue; each token-silo client as a
        task its silo claims over the API (unless it already has this attempt's result)."""
        tokens = {c: s for c in clients if (s := self.cfg.token_silo_of(c)) is not None}
        celery = [c for c in clients if c not in tokens]
        silos = {c: silo for c in celery if (silo := self.cfg.silo_of(c)) is not None}
        if tokens:
            with self.db() as db:
                done = results.latest_client_updates(
                    db, experiment_id=self.experiment_id, round_num=t
                )
                waiting = {
                    c: s
                    for c, s in tokens.items()
                    if c not in done or not (done[c].ok or done[c].attempt >= attempt)
                }
                silo_tasks.add_tasks(
                    db,
                    experiment_id=self.experiment_id,
                    round_num=t,
                    attempt=attempt,
                    generation=self.generation,
                    clients=waiting,
                )
        send_round(
            self.settings, self.experiment_id, t, self.generation, attempt, celery, silos,
            chorded=self.chorded,
        )  # fmt: skip
        if not self.chorded:
            self.aggregate_when_complete(t)

    def aggregate_when_complete(self, t: int) -> None:
        """Not chorded: send round t's aggregation if its last client result is in."""
        if self.chorded:
            return
        with self.db() as db:
            lifecycle.aggregate_when_complete(
                self.settings,
                db,
                experiment_id=self.experiment_id,
                round_num=t,
                generation=self.generation,
            )

    def register(self, key: str, kind: str, round_num: int | None) -> None:
        """Record a committed folder in the artifacts table (path relative to the run dir)."""
        size = self.paths.store.size(key)
        with self.db() as db:
            results.record_artifact(
                db,
                experiment_id=self.experiment_id,
                kind=kind,
                path=key,
                round_num=round_num,
                size=size,
            )


@contextmanager
def _db(settings: Settings) -> Iterator[Session]:
    with Session(get_engine(settings.database_url), expire_on_commit=False) as session:
        yield session


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


# ---- advance: wherever the experiment stands ----------------------------------------------------


def advance(settings: Settings, experiment_id: str, generation: int) -> str:
    """Prepare the run (once), evaluate the initial model (once), then continue it."""
    with _db(settings) as db:
        exp = lifecycle.current(db, experiment_id=experiment_id, generation=generation)
        if exp is None:
            return "stale"
        lifecycle.mark_running(db, experiment=exp)
        tags = {"sweep": exp.sweep_id} if exp.sweep_id else None
    job = Job.load(settings, experiment_id, generation)
    if job is None:
        return "stale"
    paths = job.paths
    try:
        runner.prepare(job.cfg, paths, tags)
        # A silo's client size is known once it has trained (the server never sees its data).
        sizes = [len(idx or []) for idx in paths.store.read_json(paths.split)["clients"]]
        ranks = [job.cfg.client_rank(i) for i in range(len(sizes))]
        with job.db() as db:
            results.record_clients(db, experiment_id=experiment_id, sizes=sizes, ranks=ranks)
            evaluated = has_metric(db, experiment_id=experiment_id, kind="eval", round_num=-1)
        if not evaluated:
            scores = runner.evaluate(paths, 0, on_batch=_beating(job))
            job.add_metrics([runner.eval_record(-1, scores)])
        t = paths.latest_state()
    except OperationalError:
        raise  # the database is away: the task fails, the reconciler tries again
    except Exception as e:  # noqa: BLE001 - a bad model, data or disk: the user must know
        return job.fail(f"prepare: {_error(e)}")
    with job.db() as db:
        last = (
            results.get_round(db, experiment_id=experiment_id, round_num=t - 1) if t > 0 else None
        )
    if last is not None and last.status != "completed":
        return _finish_round(job, t - 1)
    return _continue(job, t)


def _continue(job: Job, t: int) -> str:
    """Start round ``t`` (or resume it), or export and complete after the last round."""
    if not job.is_current():
        return "stale"
    if t >= job.cfg.federation.rounds:
        return _complete(job)
    try:
        runner.check_budget(job.cfg, t)  # stop before a round past privacy.target_epsilon
    except runner.PrivacyBudgetExceeded as e:
        return job.fail(str(e))
    with job.db() as db:
        row = results.get_round(db, experiment_id=job.experiment_id, round_num=t)
        attempt = row.attempt if row is not None else 0
        clients = runner.sample_clients(job.cfg, t)
        results.start_round(
            db, experiment_id=job.experiment_id, round_num=t, attempt=attempt, clients=clients
        )
    job.send_round(t, attempt, clients)
    return f"round {t} dispatched"


def _complete(job: Job) -> str:
    paths = job.paths
    try:
        if not paths.store.committed(paths.export):
            runner.export(paths, max(job.cfg.rank_groups()))
        job.register(paths.export, "export", None)
    except OperationalError:
        raise
    except Exception as e:  # noqa: BLE001
        return job.fail(f"export: {_error(e)}")
    with job.db() as db:
        exp = lifecycle.current(db, experiment_id=job.experiment_id, generation=job.generation)
        if exp is None:
            return "stale"
        lifecycle.finish(db, experiment=exp, status=ExperimentStatus.completed, error=None)
    return "completed"


def _beating(job: Job) -> Callable[[], None]:
    """A progress callback for long work without steps (evaluation): it beats the heart at
    most every ``progress_interval_s``, so the watchdog and the stale check see a slow
    evaluation as alive (a large eval set can take longer than their limits) and only a
    stuck task as silent."""
    last = time.monotonic()

    def beat() -> None:
        nonlocal last
        if time.monotonic() - last >= job.settings.progress_interval_s:
            last = time.monotonic()
            with job.db() as db:
                lifecycle.heartbeat(db, experiment_id=job.experiment_id)

    return beat


# ---- one client ----------------------------------------------------------------------------------


class _Reporter:
    """The on_step callback: buffers step losses; at most every ``interval`` seconds writes
    them as metrics, sends a progress event, beats the heart and checks for cancellation."""

    def __init__(self, job: Job, round_num: int, client: int):
        self.job, self.round, self.client = job, round_num, client
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
        if time.monotonic() - self.last >= self.job.settings.progress_interval_s:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        experiment_id = self.job.experiment_id
        with self.job.db() as db:
            if self.pending:
                add_metrics(db, experiment_id=experiment_id, records=self.pending, emit=True)
                last = self.pending[-1]
                add_event(
                    db,
                    experiment_id=experiment_id,
                    type="client_progress",
                    data={k: last[k] for k in ("round", "client", "step", "loss")},
                )
                self.pending = []
            status = lifecycle.heartbeat(db, experiment_id=experiment_id)
        if status not in ACTIVE:
            raise Cancelled(f"experiment {experiment_id} is {status or 'deleted'}")


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
    job = Job.load(settings, experiment_id, generation)
    if job is None:
        return {"client": client, "skipped": "stale"}
    paths = job.paths
    if paths.store.committed(paths.state(round_num + 1)):
        return {"client": client, "skipped": "round already aggregated"}
    with job.db() as db:
        done = results.latest_client_updates(
            db, experiment_id=experiment_id, round_num=round_num
        ).get(client)
        lifecycle.heartbeat(db, experiment_id=experiment_id)
    if done is not None and done.ok and paths.store.exists(paths.upload(round_num, client)):
        job.aggregate_when_complete(round_num)
        return {"client": client, "ok": True, "skipped": "already trained"}
    reporter = _Reporter(job, round_num, client)
    rec = runner.train_client(paths, round_num, client, on_step=reporter)
    rec.worker = worker
    reporter.pending = []  # every step is in rec.losses, written below
    with job.db() as db:
        if rec.ok:  # a failed attempt is kept in client_updates: its metrics would take the
            # (round, client) keys and hide the retry that succeeds
            records = runner.client_metrics(rec)
            records[-1]["wait_seconds"] = waited  # the "client" record
            add_metrics(db, experiment_id=experiment_id, records=records, emit=True)
        record = {k: v for k, v in asdict(rec).items() if k != "losses"}
        results.record_client(db, experiment_id=experiment_id, attempt=attempt, record=record)
        lifecycle.heartbeat(db, experiment_id=experiment_id)
    job.aggregate_when_complete(round_num)
    return {"client": client, "ok": rec.ok, "error": rec.error}


# ---- aggregation and evaluation -----------------------------------------------------------------


def aggregate(
    settings: Settings, experiment_id: str, round_num: int, attempt: int, generation: int
) -> str:
    """Aggregate the round's successful clients (or retry it, or fail), evaluate, go on."""
    job = Job.load(settings, experiment_id, generation)
    if job is None:
        return "stale"
    try:
        if not job.paths.store.committed(job.paths.state(round_num + 1)):
            outcome = _aggregate(job, round_num, attempt)
            if outcome is not None:
                return outcome
    except OperationalError:
        raise
    except Exception as e:  # noqa: BLE001
        return job.fail(f"round {round_num}: {_error(e)}")
    return _finish_round(job, round_num)


def _aggregate(job: Job, t: int, attempt: int) -> str | None:
    """Aggregate round t; or a string saying why not (retried, failed).

    A client whose upload screening excludes counts as failed: with too few usable updates
    the round is retried for the failed and excluded clients, then fails with every reason.
    """
    sampled = runner.sample_clients(job.cfg, t)
    with job.db() as db:
        latest = results.latest_client_updates(db, experiment_id=job.experiment_id, round_num=t)
    ok = [c for c in sampled if c in latest and latest[c].ok]
    need = job.cfg.federation.min_clients_per_round
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
            runner.aggregate(job.paths, t, records)
        except runner.TooFewUpdates as e:
            with job.db() as db:
                results.exclude_clients(
                    db, experiment_id=job.experiment_id, round_num=t, excluded=e.excluded
                )
                latest = results.latest_client_updates(
                    db, experiment_id=job.experiment_id, round_num=t
                )
            ok = [c for c in sampled if c in latest and latest[c].ok]
        else:
            job.register(job.paths.state(t + 1), "round_state", t)
            return None
    failed = [c for c in sampled if c not in ok]
    if attempt + 1 < job.settings.max_round_attempts:
        with job.db() as db:
            results.start_round(
                db,
                experiment_id=job.experiment_id,
                round_num=t,
                attempt=attempt + 1,
                clients=failed,
            )
        job.send_round(t, attempt + 1, failed)
        return f"round {t} retried"
    reasons = "; ".join(
        f"client {c}: {latest[c].error if c in latest else 'no result'}" for c in failed
    )
    return job.fail(
        f"round {t}: {len(ok)} of {len(sampled)} clients succeeded after {attempt + 1} "
        f"attempts (min_clients_per_round is {need}); {reasons}"
    )


def _tracked_before(job: Job, t: int) -> list[dict[str, Any]]:
    """What the trackers get with round ``t``: its clients' records (and in round 0 the
    evaluation before training)."""
    eid = job.experiment_id
    with job.db() as db:
        before = (
            round_records(db, experiment_id=eid, round_num=-1, kinds=["eval"]) if t == 0 else []
        )
        clients = round_records(db, experiment_id=eid, round_num=t, kinds=["client", "client_step"])
    return before + clients


def _finish_round(job: Job, t: int) -> str:
    """Evaluate the aggregated round, store its records (once), and continue."""
    try:
        with job.db() as db:
            row = results.get_round(db, experiment_id=job.experiment_id, round_num=t)
            latest = results.latest_client_updates(db, experiment_id=job.experiment_id, round_num=t)
        if row is None or row.status != "completed":
            earlier = _tracked_before(job, t)
            summary, records = runner.finish_round(
                job.paths,
                t,
                started_at=row.started_at if row is not None else None,
                train_seconds=sum(r.seconds for r in latest.values()),
                earlier=earlier,
                on_batch=_beating(job),
            )
            with job.db() as db:
                add_metrics(db, experiment_id=job.experiment_id, records=records, emit=True)
                results.finish_round(
                    db, experiment_id=job.experiment_id, round_num=t, summary=summary
                )
    except OperationalError:
        raise
    except Exception as e:  # noqa: BLE001
        return job.fail(f"round {t} evaluation: {_error(e)}")
    return _continue(job, t + 1)
