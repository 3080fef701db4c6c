"""Checks of a valid config against its data, done before an experiment is stored.

ExperimentConfig checks each field alone; here the dataset is loaded (torch-free, cached for
built-ins) to check what needs its size, so a bad experiment fails at submission instead of
in its first round.
"""

from __future__ import annotations

from functools import lru_cache

from backend.core.catalog import DATASETS
from backend.core.config import ExperimentConfig
from backend.core.data import load_dataset

Problem = tuple[tuple[str, ...], str]  # (field path, message)


@lru_cache(maxsize=64)
def _builtin_train_size(name: str, seed: int, n_train: int | None, n_eval: int | None) -> int:

    return len(load_dataset(name, seed=seed, n_train=n_train, n_eval=n_eval).train)


def _train_size(config: ExperimentConfig) -> int:
    d = config.data
    if config.dataset in DATASETS:
        return _builtin_train_size(config.dataset, config.seed, d.n_train, d.n_eval)
    # A user file may change between submissions: read it each time.
    return len(
        load_dataset(config.dataset, seed=config.seed, n_train=d.n_train, n_eval=d.n_eval).train
    )


def check_feasible(config: ExperimentConfig) -> list[Problem]:
    """Problems a config has with its data (empty when it can run)."""
    if config.dataset.startswith("hf:"):
        return []  # needs the network; the workers check it when they load it
    try:
        n_examples = _train_size(config)
    except (OSError, ValueError) as e:
        return [(("dataset",), f"cannot load dataset {config.dataset!r}: {e}")]
    clients = config.federation.num_clients
    if clients > n_examples:
        return [
            (
                ("federation", "num_clients"),
                f"more clients ({clients}) than training examples ({n_examples}) in dataset "
                f"{config.dataset!r}; lower federation.num_clients or raise data.n_train",
            )
        ]
    return []
