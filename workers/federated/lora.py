"""LoRA factors of one layer, low-rank deltas, and PEFT state-dict key names.

Orientation: A is (r, d_in), B is (d_out, r), the update is s * B @ A in (d_out, d_in), as in
PEFT. A layer stored transposed (GPT-2 Conv1D, PEFT ``fan_in_fan_out=True``) keeps the same
factor shapes; only merging into its stored weight transposes (``merge_delta``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import Tensor


def lora_scaling(r: int, alpha: float, rslora: bool = False) -> float:
    """PEFT's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(r) if rslora else alpha / r


@dataclass(frozen=True)
class LoraFactors:
    """One layer's adapter: effective weight W + scaling * B @ A."""

    A: Tensor  # (r, d_in)
    B: Tensor  # (d_out, r)
    alpha: float
    rslora: bool = False
    fan_in_fan_out: bool = False

    @property
    def r(self) -> int:
        return int(self.A.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.A.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.B.shape[0])

    @property
    def scaling(self) -> float:
        return lora_scaling(self.r, self.alpha, self.rslora)

    def delta(self) -> Tensor:
        """s * B @ A in (d_out, d_in) orientation."""
        return self.scaling * (self.B @ self.A)

    def with_factors(self, A: Tensor, B: Tensor) -> LoraFactors:
        """Same settings, new factors (the rank may change)."""
        return replace(self, A=A, B=B)


@dataclass(frozen=True)
class LowRank:
    """A (d_out, d_in) matrix kept as B @ A, coefficients folded into A."""

    B: Tensor  # (d_out, q)
    A: Tensor  # (q, d_in)

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def dense(self) -> Tensor:
        return self.B @ self.A  # (d_out, d_in)

    def numel(self) -> int:
        return self.B.numel() + self.A.numel()


Delta = Tensor | LowRank
"""A backbone update: dense (d_out, d_in) or factored."""


def to_dense(delta: Delta) -> Tensor:
    return delta.dense() if isinstance(delta, LowRank) else delta


def cheaper_form(delta: Delta) -> Delta:
    """Factored when q (d_out + d_in) < d_out d_in numbers, dense otherwise."""
    if isinstance(delta, LowRank):
        d_out, d_in = delta.B.shape[0], delta.A.shape[1]
        return delta if delta.numel() < d_out * d_in else delta.dense()
    return delta


def stack_lowrank(parts: list[tuple[float, Tensor, Tensor]]) -> LowRank:
    """sum_j c_j B_j A_j as one LowRank: B = [B_1 .. B_n], A = [c_1 A_1; ..; c_n A_n]."""
    B = torch.cat([b for _, b, _ in parts], dim=1)  # (d_out, K)
    A = torch.cat([c * a for c, _, a in parts], dim=0)  # (K, d_in)
    return LowRank(B=B, A=A)


def merge_delta(weight: Tensor, delta: Delta, fan_in_fan_out: bool = False) -> Tensor:
    """Return weight + delta, transposing the delta for layers stored as (d_in, d_out)."""
    dense = to_dense(delta).to(weight.dtype)
    update = dense.T if fan_in_fan_out else dense
    if update.shape != weight.shape:
        raise ValueError(
            f"delta of shape {tuple(dense.shape)} does not fit weight {tuple(weight.shape)} "
            f"(fan_in_fan_out={fan_in_fan_out})"
        )
    return weight + update


# PEFT saves "<module path>.lora_A.weight"; an in-memory model also has the adapter name
# ("<module path>.lora_A.default.weight"). Both are read, the saved form is written.
_PEFT_KEY = re.compile(r"^(?P<layer>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


def from_peft_state_dict(
    state: Mapping[str, Tensor],
    *,
    alpha: float,
    rslora: bool = False,
    fan_in_fan_out: bool = False,
) -> dict[str, LoraFactors]:
    """Group PEFT lora_A / lora_B tensors by layer; every layer must have both."""
    parts: dict[str, dict[str, Tensor]] = {}
    for key, tensor in state.items():
        match = _PEFT_KEY.match(key)
        if match is None:
            continue
        parts.setdefault(match["layer"], {})[match["which"]] = tensor
    layers = {}
    for layer, ab in sorted(parts.items()):
        missing = {"A", "B"} - ab.keys()
        if missing:
            raise ValueError(f"layer {layer!r}: missing lora_{missing.pop()}.weight")
        layers[layer] = LoraFactors(ab["A"], ab["B"], alpha, rslora, fan_in_fan_out)
    return layers


def to_peft_state_dict(layers: Mapping[str, LoraFactors]) -> dict[str, Tensor]:
    """PEFT's on-disk key names (adapter_model.safetensors)."""
    state = {}
    for layer, f in layers.items():
        state[f"{layer}.lora_A.weight"] = f.A.contiguous()
        state[f"{layer}.lora_B.weight"] = f.B.contiguous()
    return state
