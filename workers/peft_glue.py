"""Thin glue between PEFT models and the federated math in ``workers.federated``.

Layer names are PEFT's saved key prefixes, e.g.
``base_model.model.model.layers.0.self_attn.q_proj``: exactly the keys that
``from_peft_state_dict(get_peft_model_state_dict(model))`` produces, which are also the
PeftModel's own module paths, so ``model.get_submodule(layer)`` finds the LoRA layer.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.utils.other import ModulesToSaveWrapper
from safetensors.torch import save_file
from torch import Tensor
from transformers import PreTrainedModel

from workers.federated.lora import (
    Delta,
    LoraFactors,
    from_peft_state_dict,
    merge_delta,
    to_dense,
    to_peft_state_dict,
)

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
    reinit_lora(peft_model, seed)
    return peft_model


def reinit_lora(model: PeftModel, seed: int) -> None:
    """A fresh LoRA in place: A drawn from ``seed``, B = 0 (FLoRA restarts every round).

    A uses PEFT's own distribution but a private generator and a fixed (sorted) layer order, so
    it does not depend on PEFT's init order or the global RNG: every client gets the same A.
    """
    generator = torch.Generator().manual_seed(seed)
    adapter = model.active_adapter
    with torch.no_grad():
        for _, layer in sorted(_lora_layers(model).items()):
            A = layer.lora_A[adapter].weight
            init = torch.empty(A.shape, dtype=torch.float32)
            torch.nn.init.kaiming_uniform_(init, a=math.sqrt(5), generator=generator)
            A.copy_(init)
            layer.lora_B[adapter].weight.zero_()


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
    """Copy A and B into the model in place; the layers and ranks must match.

    The factors' alpha and rslora are not used: the adapter's config fixes the scaling.
    """
    modules = _lora_layers(model)
    if set(layers) != set(modules):
        unknown, missing = sorted(set(layers) - set(modules)), sorted(set(modules) - set(layers))
        raise ValueError(
            f"LoRA layers do not match the model: unknown {unknown}, missing {missing}"
        )
    adapter = model.active_adapter
    for name, f in layers.items():
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


def base_weights(model: PeftModel) -> dict[str, Tensor]:
    """Layer -> its frozen base weight (the live parameter, in its stored orientation)."""
    return {name: m.get_base_layer().weight for name, m in sorted(_lora_layers(model).items())}


# --- export ---------------------------------------------------------------------------------

_PREFIX = "base_model.model."


def weight_names(model: PeftModel, deltas: Mapping[str, Delta]) -> dict[str, Tensor]:
    """Backbone deltas keyed by the plain model's weight names, in the stored orientation.

    E.g. ``model.layers.0.self_attn.q_proj.weight``: the form a user adds to the base weights.
    """
    modules = _lora_layers(model)
    fan_in_fan_out = bool(_config(model).fan_in_fan_out)
    out = {}
    for name, delta in deltas.items():
        if name not in modules:
            raise ValueError(f"layer {name!r}: no such LoRA layer in the model")
        dense = to_dense(delta).detach().to(device="cpu", dtype=torch.float32)
        out[f"{name.removeprefix(_PREFIX)}.weight"] = (dense.T if fan_in_fan_out else dense).clone()
    return out


def save_adapter(model: PeftModel, directory: Path, *, base_name: str | None = None) -> None:
    """The adapter (and a seq-cls head) as a PEFT directory: loadable with PeftModel.

    ``base_name`` replaces base_model_name_or_path in adapter_config.json (PEFT writes the
    path the base was loaded from, meaningless on another machine).
    """
    model.save_pretrained(directory)
    if base_name is not None:
        config_file = Path(directory) / "adapter_config.json"
        config = json.loads(config_file.read_text())
        config["base_model_name_or_path"] = base_name
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True))


def save_adapter_factors(
    model: PeftModel,
    layers: Mapping[str, LoraFactors],
    directory: Path,
    *,
    rank: int,
    base_name: str | None = None,
) -> None:
    """A PEFT adapter directory holding ``layers`` (all of rank ``rank``) in place of the
    model's own factors; config and head come from ``model``, scaling from the factors, the
    base model's name from ``base_name`` when given."""
    if set(layers) != set(_lora_layers(model)):
        raise ValueError("factors must cover exactly the model's LoRA layers")
    settings = {(f.r, f.alpha, f.rslora) for f in layers.values()}
    if len(settings) != 1 or next(iter(settings))[0] != rank:
        raise ValueError(f"every layer needs rank {rank} and one alpha/rslora; got {settings}")
    _, alpha, rslora = settings.pop()
    config = copy.deepcopy(_config(model))
    config.r, config.lora_alpha, config.use_rslora = rank, alpha, rslora
    config.inference_mode = True  # as PeftModel.save_pretrained writes it
    if base_name is not None:
        config.base_model_name_or_path = base_name
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(directory))
    state = {**to_peft_state_dict(layers), **get_head_state(model)}
    tensors = {
        k: v.detach().to(device="cpu", dtype=torch.float32).contiguous() for k, v in state.items()
    }
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})


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
        raise ValueError(
            f"head keys do not match the model: got {sorted(state)}, expected {sorted(params)}"
        )
    for key, t in state.items():
        if t.shape != params[key].shape:
            raise ValueError(f"head {key!r}: shape {tuple(t.shape)} != {tuple(params[key].shape)}")
    with torch.no_grad():
        for key, t in state.items():
            params[key].copy_(t)
