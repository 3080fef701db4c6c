"""Thin glue between PEFT models and the federated math in ``workers.federated``.

Layer names are PEFT's saved key prefixes, e.g.
``base_model.model.model.layers.0.self_attn.q_proj``: exactly the keys that
``from_peft_state_dict(get_peft_model_state_dict(model))`` produces, which are also the
PeftModel's own module paths, so ``model.get_submodule(layer)`` finds the LoRA layer.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.utils.other import ModulesToSaveWrapper
from torch import Tensor
from transformers import PreTrainedModel

from workers.federated.lora import Delta, LoraFactors, from_peft_state_dict, merge_delta, to_dense

_TASK_TYPES = {"causal-lm": TaskType.CAUSAL_LM, "seq-cls": TaskType.SEQ_CLS}


@dataclass(frozen=True)
class LoraSettings:
    """The adapter every client attaches; identical across a run."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    rslora: bool = False


def _config(model: PeftModel) -> LoraConfig:
    return model.peft_config[model.active_adapter]


def _lora_layers(model: PeftModel) -> dict[str, LoraLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def _head_modules(model: PeftModel) -> dict[str, torch.nn.Module]:
    """The trainable copies of modules_to_save (the classifier head), by saved key prefix."""
    adapter = model.active_adapter
    return {
        name: m.modules_to_save[adapter]
        for name, m in model.named_modules()
        if isinstance(m, ModulesToSaveWrapper)
    }


def attach_lora(model: PreTrainedModel, lora: LoraSettings, *, task: str, seed: int) -> PeftModel:
    """Wrap ``model`` with LoRA; A drawn from ``seed`` (same on every client), B = 0.

    For "seq-cls" PEFT also wraps the classifier head as modules_to_save, so it is trained and
    saved with the adapter.
    """
    if task not in _TASK_TYPES:
        raise ValueError(f"task: unknown {task!r}; expected one of {', '.join(_TASK_TYPES)}")
    config = LoraConfig(
        task_type=_TASK_TYPES[task],
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        use_rslora=lora.rslora,
    )
    # fork_rng: PEFT's own init draws from the global RNG; leave the caller's untouched.
    with torch.random.fork_rng(devices=[]):
        peft_model = get_peft_model(model, config)
    if task == "seq-cls" and not _head_modules(peft_model):
        raise ValueError("seq-cls model has no classifier head PEFT can train (classifier/score)")
    # Re-draw A from a private generator in a fixed (sorted) layer order, with PEFT's own
    # distribution, so the initial A does not depend on PEFT's init order or the global RNG.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in sorted(_lora_layers(peft_model).items()):
            A = layer.lora_A[peft_model.active_adapter].weight
            init = torch.empty(A.shape, dtype=torch.float32)
            torch.nn.init.kaiming_uniform_(init, a=math.sqrt(5), generator=generator)
            A.copy_(init)
            layer.lora_B[peft_model.active_adapter].weight.zero_()
    return peft_model


def get_lora_factors(model: PeftModel) -> dict[str, LoraFactors]:
    """Every LoRA layer's (A, B) as detached float32 CPU copies."""
    config = _config(model)
    state = {
        key: t.detach().to(device="cpu", dtype=torch.float32).clone()
        for key, t in get_peft_model_state_dict(model).items()
    }
    return from_peft_state_dict(
        state,
        alpha=float(config.lora_alpha),
        rslora=bool(config.use_rslora),
        fan_in_fan_out=bool(config.fan_in_fan_out),
    )


def set_lora_factors(model: PeftModel, layers: Mapping[str, LoraFactors]) -> None:
    """Copy factors into the model in place; layers, ranks and scaling must match."""
    modules = _lora_layers(model)
    if set(layers) != set(modules):
        unknown, missing = sorted(set(layers) - set(modules)), sorted(set(modules) - set(layers))
        raise ValueError(f"LoRA layers do not match the model: unknown {unknown}, missing {missing}")
    config = _config(model)
    adapter = model.active_adapter
    for name, f in layers.items():
        # A different alpha or rsLoRA flag would silently rescale the update.
        if f.alpha != float(config.lora_alpha) or f.rslora != bool(config.use_rslora):
            raise ValueError(f"layer {name!r}: factors' alpha/rslora differ from the adapter's")
        A = modules[name].lora_A[adapter].weight
        B = modules[name].lora_B[adapter].weight
        if f.A.shape != A.shape or f.B.shape != B.shape:
            raise ValueError(
                f"layer {name!r}: factor shapes A{tuple(f.A.shape)} B{tuple(f.B.shape)} do not "
                f"fit A{tuple(A.shape)} B{tuple(B.shape)}"
            )
    with torch.no_grad():
        for name, f in layers.items():
            modules[name].lora_A[adapter].weight.copy_(f.A)
            modules[name].lora_B[adapter].weight.copy_(f.B)


def set_trainable(model: PeftModel, *, train_A: bool, train_B: bool) -> None:
    """Switch gradients of the LoRA factors (FFA-LoRA trains B only)."""
    for layer in _lora_layers(model).values():
        for p in layer.lora_A.parameters():
            p.requires_grad_(train_A)
        for p in layer.lora_B.parameters():
            p.requires_grad_(train_B)


def lora_layer_shapes(model: PeftModel) -> dict[str, tuple[int, int]]:
    """Layer -> (d_out, d_in) of its update B @ A."""
    adapter = model.active_adapter
    return {
        name: (int(m.lora_B[adapter].weight.shape[0]), int(m.lora_A[adapter].weight.shape[1]))
        for name, m in sorted(_lora_layers(model).items())
    }


def apply_backbone_delta(model: PeftModel, deltas: Mapping[str, Delta]) -> None:
    """Add each (d_out, d_in) delta into its layer's frozen base weight, in place.

    Every delta is checked before any weight changes, so a bad one leaves the model intact.
    """
    modules = _lora_layers(model)
    fan_in_fan_out = bool(_config(model).fan_in_fan_out)
    updates: dict[str, Tensor] = {}
    for name, delta in deltas.items():
        if name not in modules:
            raise ValueError(f"layer {name!r}: no such LoRA layer in the model")
        weight = modules[name].get_base_layer().weight
        dense = to_dense(delta).to(device=weight.device)
        if not torch.isfinite(dense).all():
            raise ValueError(f"layer {name!r}: backbone delta has non-finite values")
        updates[name] = merge_delta(weight.detach(), dense, fan_in_fan_out)
    with torch.no_grad():
        for name, new in updates.items():
            modules[name].get_base_layer().weight.copy_(new)


def merged_model(model: PeftModel) -> PreTrainedModel:
    """A plain model with LoRA (and the trained head) folded in, for export; input untouched."""
    merged = copy.deepcopy(model).merge_and_unload()
    return merged.eval()


def get_head_state(model: PeftModel) -> dict[str, Tensor]:
    """Classifier-head tensors (seq-cls modules_to_save) under PEFT's saved keys; {} for LMs."""
    return {
        f"{prefix}.{key}": t.detach().to(device="cpu", dtype=torch.float32).clone()
        for prefix, module in sorted(_head_modules(model).items())
        for key, t in module.state_dict().items()
    }


def set_head_state(model: PeftModel, state: Mapping[str, Tensor]) -> None:
    """Load tensors from ``get_head_state`` (e.g. the server's average) into the head."""
    params = {
        f"{prefix}.{key}": t
        for prefix, module in _head_modules(model).items()
        for key, t in module.state_dict().items()
    }
    if set(state) != set(params):
        raise ValueError(f"head keys do not match the model: got {sorted(state)}, "
                         f"expected {sorted(params)}")
    for key, t in state.items():
        if t.shape != params[key].shape:
            raise ValueError(f"head {key!r}: shape {tuple(t.shape)} != {tuple(params[key].shape)}")
    with torch.no_grad():
        for key, t in state.items():
            params[key].copy_(t)
