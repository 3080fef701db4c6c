"""The in-process loop (``fedmomentum run``): every step in this process, metrics to
metrics.jsonl. It resumes where a run directory stands; an interrupted round is redone."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from backend.core.config import ExperimentConfig
from backend.core.runs import METRICS_SCHEMA, RunPaths
from backend.core.store import Store
from workers.runner.client import train_client
from workers.runner.clients import sample_clients
from workers.runner.exports import export
from workers.runner.finish import evaluate, finish_round
from workers.runner.privacy import check_budget
from workers.runner.records import client_metrics, eval_record
from workers.runner.server import aggregate
from workers.runner.start import prepare


def run(
    cfg: ExperimentConfig,
    root: str | Path,
    *,
    progress: bool = True,
    export_rank: int | None = None,
    write_export: bool = True,
    tags: Mapping[str, str] | None = None,
) -> list[dict[str, object]]:
    """Run (or resume) a whole experiment in this process; returns one summary per round.
    ``write_export=False`` skips export/ (a sweep's many runs: `fedmomentum export` writes
    it later from the run directory). ``tags``: of its MLflow run (e.g. its sweep)."""
    from tqdm.auto import tqdm

    paths = prepare(cfg, RunPaths.at(root), tags)
    start_round = paths.latest_state()
    summaries: list[dict[str, object]] = []
    log = _MetricsLog(paths.store, paths.metrics)
    log.drop_rounds_from(start_round)  # an interrupted round is redone: no duplicate records
    earlier: list[dict[str, object]] = []  # the round's records before it is finished
    if start_round == 0:
        earlier.append(eval_record(-1, evaluate(paths, 0)))
        log.write(earlier[-1])
    rounds = tqdm(
        range(start_round, cfg.federation.rounds),
        desc="rounds",
        disable=not progress,
        initial=start_round,
        total=cfg.federation.rounds,
    )
    for t in rounds:
        check_budget(cfg, t)  # stop before a round that would spend past target_epsilon
        started = datetime.now(UTC)
        records = []
        for c in sample_clients(cfg, t):
            steps = tqdm(
                desc=f"round {t} client {c}", total=None, leave=False, disable=not progress
            )
            rec = train_client(
                paths,
                t,
                c,
                on_step=lambda s, loss, bar=steps: (
                    bar.update(1),
                    bar.set_postfix(loss=f"{loss:.3f}"),
                ),
            )
            steps.close()
            records.append(rec)
            for record in client_metrics(rec):
                log.write(record)
                earlier.append(record)
        aggregate(paths, t, records)
        summary, metrics = finish_round(
            paths,
            t,
            started_at=started,
            train_seconds=sum(r.seconds for r in records),
            compute_seconds=sum(r.compute_seconds for r in records),
            earlier=earlier,
        )
        earlier = []
        for record in metrics:
            log.write(record)
        summaries.append(summary)
        rounds.set_postfix(acc=f"{summary['accuracy']:.3f}", loss=f"{summary['eval_loss']:.3f}")
    if write_export:
        export(paths, export_rank)
    return summaries


class _MetricsLog:
    """Append-only JSON lines: each record with its schema version and the time it was
    written (unix seconds)."""

    def __init__(self, store: Store, key: str) -> None:
        self.store, self.key = store, key

    def write(self, record: dict[str, object]) -> None:
        line = {**record, "schema": METRICS_SCHEMA, "time": round(time.time(), 3)}
        self.store.append_text(self.key, json.dumps(line, default=str) + "\n")

    def drop_rounds_from(self, first: int) -> None:
        """Forget records of rounds >= first (the initial evaluation is round -1)."""
        if not self.store.exists(self.key):
            return
        lines = self.store.read_text(self.key).splitlines()
        keep = [line for line in lines if json.loads(line)["round"] < first]
        if first == 0:
            keep = []
        self.store.write_text(self.key, "".join(line + "\n" for line in keep))
