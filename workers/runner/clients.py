"""Which clients train in a round, on which examples, with which seed.

The pooled clients' examples are a seeded partition of the experiment's dataset, the same in
every process; a client pinned to a silo trains on the data its silo's worker holds, which
the server never sees. ``round_seed`` is the one place a round's randomness is derived.
"""

from __future__ import annotations

import random
from functools import lru_cache

from backend.core.config import ExperimentConfig
from backend.core.data import Example, TaskData, load_dataset, partition
from backend.core.settings import get_settings
from backend.core.uploads import restore

_PRIME = 1_000_003  # spreads experiment seeds apart: (seed, round) pairs never collide


def round_seed(seed: int, round_num: int, client: int | None = None) -> int:
    """The seed of round ``round_num`` (client sampling, a fresh LoRA), or of one client's
    local training in it (data order, dropout)."""
    if client is None:
        return seed * _PRIME + round_num
    return seed * _PRIME + round_num * 10_007 + client


def sample_clients(cfg: ExperimentConfig, round_num: int) -> list[int]:
    """The clients of a round: a seeded sample, the same in every process."""
    rng = random.Random(round_seed(cfg.seed, round_num))
    return sorted(rng.sample(range(cfg.federation.num_clients), cfg.federation.clients_per_round))


@lru_cache(maxsize=4)
def _task(dataset: str, seed: int, n_train: int | None, n_eval: int | None) -> TaskData:
    restore(dataset, get_settings())  # an uploaded dataset this machine has no copy of yet
    return load_dataset(dataset, seed=seed, n_train=n_train, n_eval=n_eval)


def task_of(cfg: ExperimentConfig) -> TaskData:
    """The experiment's dataset (cached per process)."""
    return _task(cfg.dataset, cfg.seed, cfg.data.n_train, cfg.data.n_eval)


def client_indices(cfg: ExperimentConfig) -> list[list[int] | None]:
    """Each client's training examples: the seeded partition of the config among the pooled
    clients; None for a client pinned to a silo (its data never reaches the server)."""
    pooled = [c for c in range(cfg.federation.num_clients) if cfg.silo_of(c) is None]
    parts: list[list[int] | None] = [None] * cfg.federation.num_clients
    if pooled:
        for c, idx in zip(pooled, _partition(cfg, task_of(cfg).train, len(pooled)), strict=True):
            parts[c] = idx
    return parts


def _partition(cfg: ExperimentConfig, examples: list[Example], n: int) -> list[list[int]]:
    d = cfg.data
    return partition(
        examples,
        n,
        d.partition,
        alpha=d.alpha,
        shards_per_client=d.shards_per_client,
        seed=cfg.seed,
    )


@lru_cache(maxsize=4)
def _silo_examples(location: str, seed: int) -> list[Example]:
    task = load_dataset(location, seed=seed)
    return task.train + task.eval  # all of a silo's records train; the server evaluates


def silo_examples(cfg: ExperimentConfig, client: int, location: str | None = None) -> list[Example]:
    """The training examples of a client pinned to a silo, read on that silo's worker from
    the data path its settings hold (``FEDMOMENTUM_SILO_DATA``), or from ``location`` (a
    token silo client's own file); the silo's file is split among its clients by the
    config's partition. ValueError when this worker has none."""
    silo = cfg.silo_of(client)
    held = get_settings().silo_data if location is None else {str(silo): location}
    if silo is None or silo not in held:
        raise ValueError(
            f"client {client} is pinned to silo {silo!r}, whose data this worker does not "
            f"hold; FEDMOMENTUM_SILO_DATA names: {', '.join(held) or 'none'}"
        )
    examples = _silo_examples(held[silo], cfg.seed)
    members = (cfg.federation.silos or {})[silo]
    part = _partition(cfg, examples, len(members))[members.index(client)]
    return [examples[i] for i in part]
