"""Datasets for federated fine-tuning: built-in tasks, user files, partitions. Torch-free:
the API loads them to check a config; the workers tokenize them.

Everything here works offline: arith is generated, wordnet-topics reads Debian's
wordnet-base files, chatterbot reads the chatterbot-corpus package's YAML files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from backend.core.catalog import DATASETS
from backend.core.data.arith import load_arith
from backend.core.data.chatterbot import load_chatterbot
from backend.core.data.files import FILE_SUFFIXES, LAYOUTS, load_file, load_hub
from backend.core.data.partition import METHODS, partition, split_hash
from backend.core.data.task import Example, TaskData
from backend.core.data.wordnet import load_wordnet

__all__ = [
    "DATASETS",
    "FILE_SUFFIXES",
    "LAYOUTS",
    "METHODS",
    "Example",
    "TaskData",
    "load_dataset",
    "partition",
    "split_hash",
]

_LOADERS: dict[str, Callable[[int, int | None, int | None], TaskData]] = {
    "wordnet-topics": load_wordnet,
    "arith": load_arith,
    "chatterbot": load_chatterbot,
}


def load_dataset(
    name: str, *, seed: int = 0, n_train: int | None = None, n_eval: int | None = None
) -> TaskData:
    """A built-in dataset, a user .jsonl/.json/.csv/.parquet path, or an ``hf:`` dataset
    (``hf:<hub id>[:<config>][@<split>]`` online, ``hf:<saved directory>[@<split>]``)."""
    for field, value in (("n_train", n_train), ("n_eval", n_eval)):
        if value is not None and value < 1:
            raise ValueError(f"{field}: must be >= 1 (got {value})")
    if name in _LOADERS:
        return _LOADERS[name](seed, n_train, n_eval)
    if name.startswith("hf:"):
        return load_hub(name, seed, n_train, n_eval)
    if name.lower().endswith(FILE_SUFFIXES):
        return load_file(Path(name), seed, n_train, n_eval)
    allowed = ", ".join(_LOADERS)
    files = "/".join(FILE_SUFFIXES)
    raise ValueError(f"dataset: unknown {name!r}; allowed: {allowed}, a {files} path, or hf:<id>")
