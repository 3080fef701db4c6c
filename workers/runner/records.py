"""What the steps return and record: client records, round failures, metrics records.

A client task returns a small record, never tensors; a failed client is data, not an
exception. The metrics records are the rows of metrics.jsonl and of the service's table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ClientRecord:
    """What a client task returns: small, never tensors. A failure is data, not an exception."""

    round: int
    client: int
    ok: bool
    n_examples: int = 0
    seconds: float = 0.0  # the whole task: loading state, training, writing the upload
    compute_seconds: float = 0.0  # inside the optimizer loop only
    path: str | None = None  # the upload's full location in the artifact store
    error: str | None = None
    worker: str | None = None  # the Celery worker that trained it (service only)
    losses: list[float] = field(default_factory=list)


class TooFewUpdates(RuntimeError):
    """A round with fewer usable updates than ``min_clients_per_round``; ``excluded``: the
    clients whose upload screening rejected, with the reasons (the service retries them)."""

    def __init__(self, message: str, excluded: dict[int, str]) -> None:
        super().__init__(message)
        self.excluded = excluded


def aggregated_clients(summary: Mapping[str, Any]) -> list[int]:
    """The clients whose updates a round aggregated (its summary, fresh or read back as JSON,
    whose keys are then strings)."""
    left_out = {str(c) for key in ("failed", "excluded") for c in summary.get(key) or {}}
    return [int(c) for c in summary["clients"] if str(c) not in left_out]


def eval_record(round_num: int, scores: Mapping[str, float]) -> dict[str, object]:
    """The evaluation of the global model after round ``round_num`` (-1: before training)."""
    return {"kind": "eval", "round": round_num, **scores}


def client_metrics(rec: ClientRecord) -> list[dict[str, object]]:
    """Metrics records of one client task: a loss per local step, then the task record."""
    steps: list[dict[str, object]] = [
        {"kind": "client_step", "round": rec.round, "client": rec.client, "step": i, "loss": loss}
        for i, loss in enumerate(rec.losses)
    ]
    record = {k: v for k, v in asdict(rec).items() if k != "losses"}
    return [*steps, {"kind": "client", **record}]


def round_metrics(round_num: int, summary: Mapping[str, Any]) -> list[dict[str, object]]:
    """Metrics records of an aggregated and evaluated round: diagnostics per layer, the round."""
    diagnostics: Mapping[str, Mapping[str, object]] = summary["diagnostics"]
    records: list[dict[str, object]] = [
        {"kind": "diagnostics", "round": round_num, "layer": layer, **diag}
        for layer, diag in diagnostics.items()
    ]
    rest = {k: v for k, v in summary.items() if k != "diagnostics"}
    return [*records, {"kind": "round", **rest}]
