"""Evaluating the global model, and finishing a round: the one sequence both the in-process
loop and the service run after a round's state is committed."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from backend.core.config import ExperimentConfig
from backend.core.runs import RunPaths
from workers import tracking
from workers.artifacts import load_tensors
from workers.evaluation import OnBatch, evaluate_model
from workers.federated import get_strategy
from workers.runner.bench import Bench, bench_for, encoded, load_state_into
from workers.runner.clients import task_of
from workers.runner.records import aggregated_clients, eval_record, round_metrics
from workers.runner.state import aggregated_summary, load_run_config, read_group


def evaluate(
    paths: RunPaths, round_num: int, clients: list[int] | None = None, on_batch: OnBatch = None
) -> dict[str, float]:
    """Eval loss and accuracy of the global model at a round's start state (``on_batch``:
    called after every evaluation batch).

    The global model is the largest rank group's (all groups are equal for exact strategies).
    fedsa has no global model: each given client is evaluated with the global A and its own B,
    and the mean is reported.
    """
    cfg = load_run_config(paths)
    strategy = get_strategy(cfg.strategy)
    rank = max(cfg.rank_groups())
    bench = bench_for(cfg, rank)
    adapter, backbone = read_group(paths, round_num, rank)
    if not strategy.personalised or not clients:
        load_state_into(bench, adapter, backbone)
        return _eval_bench(cfg, bench, rank, on_batch)
    scores = []
    for c in clients:
        key = paths.local(c)
        own = load_tensors(paths.store, key) if paths.store.exists(key) else {}
        load_state_into(bench, {**adapter, **own}, backbone)
        scores.append(_eval_bench(cfg, bench, rank, on_batch))
    return {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}


def _eval_bench(
    cfg: ExperimentConfig, bench: Bench, rank: int, on_batch: OnBatch
) -> dict[str, float]:
    task = task_of(cfg)
    return evaluate_model(
        bench.model,
        bench.tokenizer,
        task,
        task.eval,
        encoded(cfg, rank, "eval"),
        kind=bench.kind,
        batch_size=cfg.eval.batch_size,
        max_new_tokens=cfg.eval.max_new_tokens,
        device=bench.device,
        on_batch=on_batch,
    )


def finish_round(
    paths: RunPaths,
    round_num: int,
    *,
    started_at: datetime | None,
    train_seconds: float,
    compute_seconds: float | None = None,
    earlier: Sequence[Mapping[str, Any]] = (),
    on_batch: OnBatch = None,
) -> tuple[dict[str, Any], list[dict[str, object]]]:
    """Evaluate the global model round ``round_num`` committed; returns the round's summary
    (timings and scores added, per-layer diagnostics left out) and its metrics records
    (the evaluation, every layer's diagnostics, the round record). The round's records, after
    ``earlier`` (its clients' records; in round 0 the evaluation before training too), go
    to the trackers (workers.tracking).

    ``started_at``: when the round started (UTC), for its wall time; ``train_seconds``: the
    clients' task seconds; ``compute_seconds``: their optimizer seconds, where known.
    """
    summary = aggregated_summary(paths, round_num)
    start = time.perf_counter()
    scores = evaluate(paths, round_num + 1, aggregated_clients(summary), on_batch)
    summary.update(scores, eval_seconds=time.perf_counter() - start, train_seconds=train_seconds)
    if compute_seconds is not None:
        summary["compute_seconds"] = compute_seconds
    summary["round_seconds"] = (
        (datetime.now(UTC) - started_at).total_seconds() if started_at is not None else None
    )
    records = [eval_record(round_num, scores), *round_metrics(round_num, summary)]
    summary.pop("diagnostics")
    tracking.log_round(paths, round_num, [*earlier, *records])
    return summary, records
