"""Checks of a valid config against the server and its data, done before an experiment from
an API request is stored.

ExperimentConfig checks each field alone. ``server_paths`` confines what a request may name
by path to the configured roots (the answer is the same whether a path exists or not, so a
caller learns nothing about the server's disks) and hub ids to servers that allow them;
``check_feasible`` loads the dataset (torch-free, cached for built-ins) to check what needs
its size, so a bad experiment fails at submission instead of in its first round.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from backend.core.catalog import DATASETS, MODELS
from backend.core.config import ExperimentConfig
from backend.core.data import load_dataset
from backend.core.data.files import is_local_hf, parse_hf
from backend.core.settings import Settings

Problem = tuple[tuple[str, ...], str]  # (field path, message)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # org/name, as the hub spells them


def _under(value: str, roots: Sequence[Path], *, folder: bool) -> Path | None:
    """The real path ``value`` names inside one of ``roots`` (relative values are relative to
    each root; symlinks resolved), if it is an existing folder (or file); else None."""
    for root in roots:
        base = root.resolve()
        real = (base / value).resolve()  # an absolute value replaces the base
        if real.is_relative_to(base) and (real.is_dir() if folder else real.is_file()):
            return real
    return None


def server_paths(
    config: ExperimentConfig,
    *,
    model_roots: Sequence[Path],
    data_roots: Sequence[Path],
    allow_hub: bool,
) -> tuple[ExperimentConfig, list[Problem]]:
    """The config with its model and dataset paths made absolute, and the problems: a path
    outside the roots (or missing: the same message), a hub id the server does not allow."""
    problems: list[Problem] = []
    update: dict[str, str] = {}
    model, dataset = config.model, config.dataset
    if model not in MODELS:
        real = _under(model, model_roots, folder=True)
        if real is not None:
            update["model"] = str(real)
        elif not (allow_hub and HUB_ID.fullmatch(model)):
            roots = ", ".join(str(r) for r in model_roots)
            hub = "" if allow_hub else " (hub ids need FEDMOMENTUM_ALLOW_HUB on the server)"
            why = f"model {model!r} is neither a built-in model nor a model directory under "
            problems.append((("model",), f"{why}the server's model roots ({roots}){hub}"))
    if dataset not in DATASETS:
        if dataset.startswith("hf:"):
            problem, local = _hf_dataset(dataset, data_roots, allow_hub)
            if problem:
                problems.append((("dataset",), problem))
            elif local:
                update["dataset"] = local
        elif (real := _under(dataset, data_roots, folder=False)) is not None:
            update["dataset"] = str(real)
        else:
            roots = ", ".join(str(r) for r in data_roots)
            why = f"dataset {dataset!r} is neither a built-in dataset nor a file under "
            problems.append((("dataset",), f"{why}the server's data roots ({roots})"))
    return config.model_copy(update=update), problems


def _hf_dataset(
    dataset: str, data_roots: Sequence[Path], allow_hub: bool
) -> tuple[str | None, str | None]:
    """(problem, the spec with its directory made absolute) of an ``hf:`` dataset: a saved
    directory must lie under the data roots like a file; a Hub id needs allow_hub."""
    try:
        target, _, split = parse_hf(dataset)
    except ValueError as e:
        return str(e), None
    if not is_local_hf(target):
        why = "hf: Hub datasets need FEDMOMENTUM_ALLOW_HUB on the server"
        return (None if allow_hub else why), None
    real = _under(target, data_roots, folder=True)
    if real is None:
        roots = ", ".join(str(r) for r in data_roots)
        why = f"dataset {dataset!r} names no dataset directory under the server's data roots"
        return f"{why} ({roots})", None
    return None, f"hf:{real}@{split}"


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


def check_for_server(
    config: ExperimentConfig, settings: Settings
) -> tuple[ExperimentConfig, list[Problem]]:
    """An API request's config as the server will run it (paths made absolute) and its
    problems: first the roots (a refused file is never read), then the data."""
    config, problems = server_paths(
        config,
        model_roots=settings.model_root_dirs,
        data_roots=settings.data_root_dirs,
        allow_hub=settings.allow_hub,
    )
    return config, problems or check_feasible(config)


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
