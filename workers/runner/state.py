"""The server state on disk: what round t starts from, and committing round t + 1's.

``state/round-<t>`` holds, per rank group, the global adapter (and for strategies that merge
into the backbone, the dense backbone delta), plus the strategy's own server tensors. A
round's folder is committed at once, so a crash leaves either the old state or the new one.
"""

from __future__ import annotations

from typing import Any

import torch
import yaml

from backend.core.config import ExperimentConfig
from backend.core.runs import RunPaths
from backend.core.store import Store
from workers.artifacts import load_tensors, save_tensors
from workers.federated import (
    LayerState,
    LoraFactors,
    RoundAggregate,
    Strategy,
    from_peft_state_dict,
    to_dense,
    to_peft_state_dict,
)
from workers.runner.bench import bench_for, fresh_adapter
from workers.runner.clients import round_seed


def load_run_config(paths: RunPaths) -> ExperimentConfig:
    """The config a run directory was prepared with."""
    return ExperimentConfig.model_validate(yaml.safe_load(paths.store.read_text(paths.config)))


def read_group(
    paths: RunPaths, round_num: int, rank: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(adapter tensors, dense backbone deltas or None) of a rank group at a round's start."""
    state = paths.store.sub(paths.state(round_num))
    backbone = paths.backbone_file(rank)
    return load_tensors(state, paths.adapter_file(rank)), (
        load_tensors(state, backbone) if state.exists(backbone) else None
    )


def aggregated_summary(paths: RunPaths, round_num: int) -> dict[str, Any]:
    """The summary ``aggregate`` committed with the state of round ``round_num``."""
    summary: dict[str, Any] = paths.store.read_json(paths.summary(round_num))
    return summary


def factor_name(key: str) -> str:
    """'A' or 'B' for a PEFT LoRA key."""
    return "A" if ".lora_A." in key else "B"


def factors(cfg: ExperimentConfig, tensors: dict[str, torch.Tensor]) -> dict[str, LoraFactors]:
    """The LoRA factors of PEFT state-dict tensors, with the experiment's scaling."""
    lora = {k: v for k, v in tensors.items() if ".lora_" in k}
    return from_peft_state_dict(lora, alpha=cfg.lora.alpha, rslora=cfg.lora.rslora)


def layer_states(cfg: ExperimentConfig, paths: RunPaths, round_num: int) -> dict[str, LayerState]:
    """Per layer: what each rank group trained from, and the strategy's server tensors."""
    state = paths.store.sub(paths.state(round_num))
    ranks = frozenset(cfg.rank_groups())
    adapters = {r: factors(cfg, load_tensors(state, paths.adapter_file(r))) for r in ranks}
    extra = load_tensors(state, paths.server_file) if state.exists(paths.server_file) else {}
    layers = next(iter(adapters.values())).keys()
    return {
        layer: LayerState(
            ranks=ranks,
            adapters={r: adapters[r][layer] for r in ranks},  # what each group trained from
            basis=extra.get(f"basis.{layer}"),
            pending={
                r: extra[f"pending.r{r}.{layer}"] for r in ranks if f"pending.r{r}.{layer}" in extra
            },
        )
        for layer in layers
    }


def commit_state(
    cfg: ExperimentConfig,
    paths: RunPaths,
    round_num: int,
    strategy: Strategy,
    result: RoundAggregate,
    head: dict[str, torch.Tensor],
    summary: dict[str, object],
) -> None:
    """Write the state round ``round_num + 1`` starts from, with the round's summary."""
    previous = paths.store.sub(paths.state(round_num))
    with paths.store.commit_dir(paths.state(round_num + 1)) as scratch:
        scratch.write_json("summary.json", summary)
        server: dict[str, torch.Tensor] = {}
        for rank in cfg.rank_groups():
            adapter = _next_adapter(cfg, strategy, result, rank, round_num)
            _save_finite(
                scratch,
                paths.adapter_file(rank),
                {**adapter, **{f"head.{k}": v for k, v in head.items()}},
            )
            if strategy.changes_backbone:
                old = paths.backbone_file(rank)
                backbone = load_tensors(previous, old) if previous.exists(old) else {}
                for layer, lr in result.layers.items():
                    if rank in lr.residuals:
                        backbone[layer] = (
                            backbone.get(layer, 0) + to_dense(lr.residuals[rank]).float()
                        )
                _save_finite(scratch, paths.backbone_file(rank), backbone)
        for layer, lr in result.layers.items():
            if lr.state.basis is not None:
                server[f"basis.{layer}"] = lr.state.basis
            for rank, pending in lr.state.pending.items():
                server[f"pending.r{rank}.{layer}"] = to_dense(pending).float()
        _save_finite(scratch, paths.server_file, server)
    _prune_backbones(paths, round_num - 1)


def _save_finite(store: Store, key: str, tensors: dict[str, torch.Tensor]) -> None:
    """save_tensors, refusing NaN or inf: a non-finite global model is never committed."""
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{key}: {name} has NaN or inf values; the round is not committed")
    save_tensors(store, key, tensors)


def _next_adapter(
    cfg: ExperimentConfig, strategy: Strategy, result: RoundAggregate, rank: int, round_num: int
) -> dict[str, torch.Tensor]:
    if strategy.reinit_lora:  # flora: a fresh LoRA every round, from a round-specific seed
        return fresh_adapter(bench_for(cfg, rank), round_seed(cfg.seed, round_num + 1))
    return to_peft_state_dict(
        {layer: lr.state.adapters[rank] for layer, lr in result.layers.items()}
    )


def _prune_backbones(paths: RunPaths, round_num: int) -> None:
    """Dense backbone deltas are as large as the adapted layers: keep the last two rounds'."""
    if round_num < 1:
        return
    for key in paths.store.glob(f"{paths.state(round_num)}/{paths.backbone_file('*')}"):
        paths.store.remove(key)
