"""The round loop over layers, written once: weights, input checks, strategy, byte counts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .lora import LoraFactors
from .strategies import (
    STRATEGIES,
    ClientUpdate,
    LayerRound,
    LayerState,
    Perturbation,
    Strategy,
    Weighted,
)

BYTES_PER_NUMBER = 4  # adapters and residuals travel as float32


@dataclass(frozen=True)
class RoundAggregate:
    """All layers of one round, with traffic per client (up) and per rank group (down)."""

    layers: dict[str, LayerRound]
    bytes_up: dict[str, int]  # client id -> bytes uploaded
    bytes_down: dict[int, int]  # rank group -> bytes each of its clients downloads


def initial_states(layers: Iterable[str], ranks: Iterable[int]) -> dict[str, LayerState]:
    """Round-0 server state: no adapter broadcast yet (B = 0 makes its product zero)."""
    groups = frozenset(ranks)
    return {layer: LayerState(ranks=groups) for layer in layers}


def client_weights(updates: Sequence[ClientUpdate]) -> list[float]:
    """p_i = n_i / sum(n); every n_i must be a positive integer."""
    if not updates:
        raise ValueError("updates: no client updates to aggregate")
    for u in updates:
        if isinstance(u.n_examples, bool) or not isinstance(u.n_examples, int) or u.n_examples <= 0:
            raise ValueError(
                f"client {u.client_id!r}: n_examples must be a positive integer, "
                f"got {u.n_examples!r}"
            )
    total = sum(u.n_examples for u in updates)
    return [u.n_examples / total for u in updates]


def check_factors(
    strategy: Strategy,
    layer: str,
    client_id: str,
    f: LoraFactors,
    ref: LoraFactors,
    state: LayerState,
) -> None:
    """ValueError naming the layer, the client and what is allowed, for any bad factor."""
    where = f"layer {layer!r}, client {client_id!r}"
    if f.A.ndim != 2 or f.B.ndim != 2:
        raise ValueError(
            f"{where}: lora_A and lora_B must be 2-D, got {f.A.ndim}-D and {f.B.ndim}-D"
        )
    if f.r <= 0:
        raise ValueError(f"{where}: rank must be > 0, got r={f.r}")
    if f.B.shape[1] != f.r:
        raise ValueError(f"{where}: lora_B has {f.B.shape[1]} columns, lora_A has r={f.r} rows")
    if (f.d_out, f.d_in) != (ref.d_out, ref.d_in):
        raise ValueError(
            f"{where}: shape (d_out, d_in)=({f.d_out}, {f.d_in}) differs from "
            f"({ref.d_out}, {ref.d_in}) of the first client"
        )
    if f.r > min(f.d_out, f.d_in):
        raise ValueError(f"{where}: rank r={f.r} exceeds min(d_out, d_in)={min(f.d_out, f.d_in)}")
    if f.alpha <= 0:
        raise ValueError(f"{where}: lora_alpha must be > 0, got {f.alpha}")
    if (f.alpha, f.rslora, f.fan_in_fan_out) != (ref.alpha, ref.rslora, ref.fan_in_fan_out):
        raise ValueError(f"{where}: alpha, rslora and fan_in_fan_out must match the other clients'")
    for name in strategy.uploads:
        if not torch.isfinite(getattr(f, name)).all():
            raise ValueError(f"{where}: lora_{name} has NaN or inf values")
    if f.r not in state.ranks:
        allowed = ", ".join(str(r) for r in sorted(state.ranks))
        raise ValueError(
            f"{where}: rank r={f.r} is not a rank of this federation; allowed: {allowed}"
        )
    if f.r != ref.r and not strategy.heterogeneous_ranks:
        hetero = ", ".join(n for n, s in STRATEGIES.items() if s.heterogeneous_ranks)
        raise ValueError(
            f"{where}: rank r={f.r} differs from r={ref.r}; strategy {strategy.name!r} needs "
            f"equal ranks (heterogeneous ranks: {hetero})"
        )


def _layer_inputs(
    strategy: Strategy,
    layer: str,
    updates: Sequence[ClientUpdate],
    weights: Sequence[float],
    state: LayerState,
) -> list[Weighted]:
    for u in updates:
        if layer not in u.layers:
            raise ValueError(f"layer {layer!r}, client {u.client_id!r}: missing from the update")
    ref = updates[0].layers[layer]
    out = []
    for u, p in zip(updates, weights, strict=True):
        check_factors(strategy, layer, u.client_id, u.layers[layer], ref, state)
        out.append(Weighted(u.client_id, p, u.layers[layer]))
    return out


def aggregate_round(
    strategy: Strategy,
    round_num: int,
    updates: Sequence[ClientUpdate],
    states: Mapping[str, LayerState],
    perturbations: Mapping[str, Perturbation] | None = None,
) -> RoundAggregate:
    """Aggregate every layer of one round; states come from ``initial_states`` or the last round.

    ``perturbations``: per layer, what central differential privacy adds to the aggregate
    (``workers.federated.privacy.central_round``); None for none."""
    weights = client_weights(updates)
    for u in updates:
        extra = set(u.layers) - set(states)
        if extra:
            raise ValueError(
                f"layer {sorted(extra)[0]!r}, client {u.client_id!r}: not an adapted layer; "
                f"allowed: {', '.join(sorted(states)[:5])}{' ...' if len(states) > 5 else ''}"
            )
    layers = {
        name: strategy.aggregate_layer(
            round_num,
            name,
            _layer_inputs(strategy, name, updates, weights, state),
            state,
            (perturbations or {}).get(name),
        )
        for name, state in states.items()
    }
    up = {
        u.client_id: BYTES_PER_NUMBER * sum(strategy.upload_numel(f) for f in u.layers.values())
        for u in updates
    }
    groups = next(iter(states.values())).ranks if states else frozenset()
    down = {
        k: BYTES_PER_NUMBER
        * sum(
            strategy.download_numel(lr.state.adapters.get(k), lr.residuals.get(k))
            for lr in layers.values()
        )
        for k in groups
    }
    return RoundAggregate(layers=layers, bytes_up=up, bytes_down=down)
