"""Seeded client partitions of a training set: IID, Dirichlet over labels, label shards."""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Sequence

from backend.core.data.task import Example, TaskData

METHODS = ("iid", "dirichlet", "shards")


def _chunks(items: list[int], k: int) -> list[list[int]]:
    """k contiguous near-equal pieces (sizes differ by at most one)."""
    bounds = [len(items) * i // k for i in range(k + 1)]
    return [items[bounds[i] : bounds[i + 1]] for i in range(k)]


def _dirichlet(
    examples: Sequence[Example], k: int, alpha: float, rng: random.Random
) -> list[list[int]]:
    """Per label, split its examples across clients by proportions ~ Dirichlet(alpha)."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_label[ex.label].append(i)
    parts: list[list[int]] = [[] for _ in range(k)]
    for label in sorted(by_label):
        idx = by_label[label]
        rng.shuffle(idx)
        weights = [rng.gammavariate(alpha, 1.0) for _ in range(k)]
        total = sum(weights)
        if total <= 0:  # every draw underflowed (tiny alpha): the alpha -> 0 limit, one owner
            weights[rng.randrange(k)], total = 1.0, 1.0
        cum, start = 0.0, 0
        for c, w in enumerate(weights):
            cum += w
            end = len(idx) if c == k - 1 else round(len(idx) * cum / total)
            parts[c] += idx[start:end]
            start = end
    return parts


def _shards(
    examples: Sequence[Example], k: int, per_client: int, rng: random.Random
) -> list[list[int]]:
    """Sort by label, cut into k * per_client shards, deal per_client random shards to each."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    order.sort(key=lambda i: examples[i].label)  # stable: random order within a label
    shards = _chunks(order, k * per_client)
    ids = list(range(len(shards)))
    rng.shuffle(ids)
    return [
        [i for s in ids[c * per_client : (c + 1) * per_client] for i in shards[s]] for c in range(k)
    ]


def _fill_empty(parts: list[list[int]]) -> list[list[int]]:
    """Move one example from the largest client to each empty one (n >= k makes this possible)."""
    for part in parts:
        if not part:
            part.append(max(parts, key=len).pop())
    return parts


def partition(
    examples: Sequence[Example],
    num_clients: int,
    method: str = "iid",
    *,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    seed: int = 0,
) -> list[list[int]]:
    """Indices of each client's examples: disjoint, covering, every client non-empty, seeded."""
    if method not in METHODS:
        raise ValueError(f"method: unknown {method!r}; allowed: {', '.join(METHODS)}")
    if num_clients <= 0:
        raise ValueError(f"num_clients: must be >= 1 (got {num_clients})")
    if num_clients > len(examples):
        raise ValueError(
            f"num_clients: more clients ({num_clients}) than examples ({len(examples)})"
        )
    if not alpha > 0:  # also rejects NaN
        raise ValueError(f"alpha: must be > 0 (got {alpha})")
    if shards_per_client <= 0:
        raise ValueError(f"shards_per_client: must be >= 1 (got {shards_per_client})")
    rng = random.Random(seed)
    if method == "iid":
        order = list(range(len(examples)))
        rng.shuffle(order)
        parts = _chunks(order, num_clients)
    elif method == "dirichlet":
        parts = _dirichlet(examples, num_clients, alpha, rng)
    else:
        parts = _shards(examples, num_clients, shards_per_client, rng)
    return [sorted(p) for p in _fill_empty(parts)]


def split_hash(parts: list[list[int]], task: TaskData) -> str:
    """SHA-256 (hex) of the task's examples and the client split, for the run manifest."""

    def rows(examples: list[Example]) -> list[list[str]]:
        return [[ex.prompt, ex.response, ex.label] for ex in examples]

    payload = {
        "task": task.name,
        "metric": task.metric,
        "scoring": task.scoring,
        "train": rows(task.train),
        "eval": rows(task.eval),
        "parts": parts,
    }
    blob = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()
