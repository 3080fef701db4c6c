"""The loaded-model cache: one model with a LoRA per experiment and rank group, per process.

Loading a base model takes seconds; a worker keeps it between tasks and only resets the
adapted layers to base + backbone delta + adapter for each task (``load_state_into``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from backend.core.config import ExperimentConfig
from backend.core.settings import get_settings
from workers import peft_glue
from workers.federated import from_peft_state_dict, to_peft_state_dict
from workers.models import BUILTIN_MODELS, load_model, model_info
from workers.runner.clients import task_of
from workers.training import Encoded, encode


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, CPU otherwise."""
    if name == "auto":
        name = get_settings().device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lora_settings(
    cfg: ExperimentConfig, rank: int, default_targets: tuple[str, ...]
) -> peft_glue.LoraSettings:
    targets = cfg.lora.target_modules or list(default_targets)
    if not targets:
        raise ValueError(
            f"lora.target_modules: PEFT has no default LoRA targets for model {cfg.model!r}; "
            "name its attention projections (e.g. [q_proj, v_proj])"
        )
    return peft_glue.LoraSettings(
        r=rank,
        alpha=cfg.lora.alpha,
        dropout=cfg.lora.dropout,
        target_modules=tuple(targets),
        rslora=cfg.lora.rslora,
    )


@dataclass
class Bench:
    """One loaded model with a LoRA of one rank, and the pristine weights of adapted layers
    and of the fully trained head (a classifier's): a cached bench is shared by every run of
    this process with the same model, so each run starts from these, not from the last."""

    model: torch.nn.Module
    tokenizer: object
    kind: str
    base: dict[str, torch.Tensor]  # layer -> original base weight
    device: torch.device
    head: dict[str, torch.Tensor]  # the head as initialised (empty for causal LMs)


@lru_cache(maxsize=4)  # one per rank group of a heterogeneous run
def _bench(cfg_json: str, rank: int) -> Bench:
    cfg = ExperimentConfig.model_validate_json(cfg_json)
    builtin = BUILTIN_MODELS.get(cfg.model)
    labels = len(task_of(cfg).labels) if builtin and builtin.task == "seq-cls" else None
    model, tokenizer = load_model(cfg.model, num_labels=labels, seed=cfg.seed)
    info = model_info(cfg.model, model)  # task and LoRA targets, also for local directories
    settings = lora_settings(cfg, rank, info.target_modules)
    device = resolve_device(cfg.device)
    peft = peft_glue.attach_lora(model, settings, task=info.task, seed=cfg.seed).to(device)
    base = {name: w.detach().clone() for name, w in peft_glue.base_weights(peft).items()}
    head = {k: v.detach().clone() for k, v in peft_glue.get_head_state(peft).items()}
    return Bench(peft, tokenizer, info.task, base, device, head)


def bench_for(cfg: ExperimentConfig, rank: int) -> Bench:
    """The process's model for this experiment and rank (loading the base once)."""
    return _bench(_model_key(cfg), rank)


def _model_key(cfg: ExperimentConfig) -> str:
    # Only the fields that change the loaded model and its LoRA: runs that differ in
    # strategy or training share one loaded model.
    keep = cfg.model_dump(include={"model", "dataset", "seed", "device", "lora", "data"})
    return ExperimentConfig.model_validate(keep).model_dump_json()


@lru_cache(maxsize=8)
def _encoded(model_key: str, max_length: int, rank: int, split: str) -> list[Encoded]:
    cfg = ExperimentConfig.model_validate_json(model_key)
    bench, task = bench_for(cfg, rank), task_of(cfg)
    examples = task.train if split == "train" else task.eval
    return encode(
        examples,
        bench.tokenizer,
        max_length,
        bench.kind,
        task.labels,
        chat_template=cfg.data.chat_template,
    )


def encoded(cfg: ExperimentConfig, rank: int, split: str) -> list[Encoded]:
    """Tokenized train or eval examples (cached per process)."""
    return _encoded(_model_key(cfg), cfg.training.max_length, rank, split)


def load_state_into(
    bench: Bench, adapter: dict[str, torch.Tensor], backbone: dict[str, torch.Tensor] | None
) -> None:
    """Set the bench to base + backbone delta + adapter: cost independent of the round."""
    deltas = backbone or {}
    with torch.no_grad():
        for name, w in peft_glue.base_weights(bench.model).items():
            w.copy_(bench.base[name])
    peft_glue.apply_backbone_delta(bench.model, deltas)
    lora = {k: v for k, v in adapter.items() if ".lora_" in k}
    peft_glue.set_lora_factors(bench.model, from_peft_state_dict(lora, alpha=1.0))
    head = {k.removeprefix("head."): v for k, v in adapter.items() if k.startswith("head.")}
    if head:
        peft_glue.set_head_state(bench.model, head)


def fresh_adapter(bench: Bench, seed: int) -> dict[str, torch.Tensor]:
    """PEFT's initial LoRA (A random from ``seed``, B = 0), as PEFT state-dict tensors."""
    peft_glue.reinit_lora(bench.model, seed)
    return to_peft_state_dict(peft_glue.get_lora_factors(bench.model))
