"""The federation one step at a time: prepare, train_client, aggregate, evaluate, export.

The run directory (backend.core.runs.RunPaths) is the whole state; each step reads what it
needs from it and writes its result atomically, so the in-process loop (``run``) and the
Celery service call the same functions, and any step can be re-run after a crash.

    records   what steps return and record      clients  sampling, data, silos, seeds
    bench     the loaded-model cache            state    server state on disk
    start     prepare                           client   train_client
    server    aggregate                         finish   evaluate, finish_round
    exports   export                            loop     run (in-process)
    privacy   noise multiplier, epsilon spent, budget check (Opacus's accountant)
"""

from workers.runner.bench import bench_for, encoded, load_state_into
from workers.runner.client import train_client
from workers.runner.clients import round_seed, sample_clients
from workers.runner.exports import export
from workers.runner.finish import evaluate, finish_round
from workers.runner.loop import run
from workers.runner.privacy import PrivacyBudgetExceeded, check_budget
from workers.runner.records import (
    ClientRecord,
    TooFewUpdates,
    aggregated_clients,
    client_metrics,
    eval_record,
    round_metrics,
)
from workers.runner.server import aggregate
from workers.runner.start import prepare
from workers.runner.state import aggregated_summary, read_group

__all__ = [
    "ClientRecord",
    "PrivacyBudgetExceeded",
    "TooFewUpdates",
    "aggregate",
    "aggregated_clients",
    "aggregated_summary",
    "bench_for",
    "check_budget",
    "client_metrics",
    "encoded",
    "eval_record",
    "evaluate",
    "export",
    "finish_round",
    "load_state_into",
    "prepare",
    "read_group",
    "round_metrics",
    "round_seed",
    "run",
    "sample_clients",
    "train_client",
]
