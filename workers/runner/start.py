"""Preparing a run: validate the config against its data and model, then write the config,
the clients' split, the manifest and the state round 0 starts from (once)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from importlib.metadata import version

import torch
import yaml

from backend.core.config import ExperimentConfig
from backend.core.data import split_hash
from backend.core.runs import RunPaths
from workers import tracking
from workers.artifacts import save_tensors
from workers.models import model_fingerprint, model_source, portable_name
from workers.runner.bench import bench_for, fresh_adapter, resolve_device
from workers.runner.clients import client_indices, task_of
from workers.runner.privacy import noise_multiplier
from workers.runner.state import load_run_config

_PACKAGES = ("torch", "transformers", "peft", "safetensors", "fedmomentum")


def prepare(
    cfg: ExperimentConfig, paths: RunPaths, tags: Mapping[str, str] | None = None
) -> RunPaths:
    """Validate the config against data and model, write config, split, manifest, round-0
    state; open the run's tracking (``tags``: e.g. its sweep, for the MLflow run)."""
    store = paths.store
    if store.exists(paths.config) and load_run_config(paths) != cfg:
        raise ValueError(
            f"{store.url()} holds a run with a different config; resume it with the same "
            "config or choose another --out"
        )
    if cfg.privacy.mode != "off":
        noise_multiplier(cfg)  # a target_epsilon no noise can meet refuses the run here
    task = task_of(cfg)
    parts = client_indices(cfg)  # raises if there are more clients than examples
    data_hash = split_hash([p or [] for p in parts], task)
    store.write_text(paths.config, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    store.write_json(paths.split, {"clients": parts, "hash": data_hash})
    store.write_json(paths.manifest, _manifest(cfg, data_hash))
    if not store.committed(paths.state(0)):
        with store.commit_dir(paths.state(0)) as scratch:
            for rank in cfg.rank_groups():
                save_tensors(scratch, paths.adapter_file(rank), _initial_adapter(cfg, rank))
    tracking.start(paths, tags)
    return paths


def _initial_adapter(cfg: ExperimentConfig, rank: int) -> dict[str, torch.Tensor]:
    bench = bench_for(cfg, rank)
    adapter = fresh_adapter(bench, cfg.seed)
    return {**adapter, **{f"head.{k}": v for k, v in bench.head.items()}}


def _manifest(cfg: ExperimentConfig, data_hash: str) -> dict[str, object]:
    return {
        "seed": cfg.seed,
        "model": cfg.model,
        "model_fingerprint": model_fingerprint(cfg.model),
        "base_model": portable_name(cfg.model),  # what exported adapters name as their base
        "model_source": model_source(cfg.model, cfg.seed),  # where these weights came from
        "dataset": cfg.dataset,
        "split_hash": data_hash,
        "packages": {p: version(p) for p in _PACKAGES},
        "device": str(resolve_device(cfg.device)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
