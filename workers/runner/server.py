"""Aggregating a round: screen the uploads, run the strategy, commit the next state."""

from __future__ import annotations

import time
from dataclasses import asdict

import torch
from safetensors import SafetensorError

from backend.core.config import ExperimentConfig
from backend.core.runs import RunPaths
from workers.artifacts import load_tensors
from workers.federated import (
    AggregationOptions,
    ClientUpdate,
    Strategy,
    aggregate_round,
    get_strategy,
    screen_updates,
)
from workers.federated.privacy import central_round
from workers.runner.privacy import check_budget, dp_params, noise_generator, privacy_summary
from workers.runner.records import ClientRecord, TooFewUpdates
from workers.runner.state import commit_state, factor_name, factors, layer_states, load_run_config


def aggregate(paths: RunPaths, round_num: int, records: list[ClientRecord]) -> dict[str, object]:
    """Screen the round's successful uploads, aggregate those kept into the next state;
    returns the round summary. TooFewUpdates when fewer than min_clients_per_round remain."""
    cfg = load_run_config(paths)
    ok = [r for r in records if r.ok]
    strategy = get_strategy(cfg.strategy, AggregationOptions(**_options(cfg)))
    state = paths.store.sub(paths.state(round_num))
    ranks = {cfg.client_rank(r.client) for r in ok}
    sent = {rank: load_tensors(state, paths.adapter_file(rank)) for rank in ranks}
    uploads, excluded = _read_uploads(paths, round_num, ok)
    screening = screen_updates(
        uploads,
        {c: _uploaded(strategy, sent[cfg.client_rank(int(c))]) for c in uploads},
        cfg.aggregation.max_norm_ratio,
    )
    excluded |= {int(c): reason for c, reason in screening.excluded.items()}
    kept = [r for r in ok if r.client not in excluded]
    need = cfg.federation.min_clients_per_round
    if len(kept) < need:
        why = "".join(f"; client {c}: excluded: {reason}" for c, reason in excluded.items())
        raise TooFewUpdates(
            f"round {round_num}: {len(kept)} of {len(records)} clients succeeded, "
            f"min_clients_per_round is {need}{why}",
            excluded,
        )
    updates, heads, sent_heads = [], [], []
    for r in kept:
        # A factor a client does not upload (ffa's frozen A, fedsa's private B) is, for the
        # server, the one it broadcast.
        rank = cfg.client_rank(r.client)
        tensors = {**sent[rank], **uploads[str(r.client)]}
        updates.append(ClientUpdate(str(r.client), r.n_examples, factors(cfg, tensors)))
        heads.append(_head(tensors))
        sent_heads.append(_head(sent[rank]))
    states = layer_states(cfg, paths, round_num)
    start = time.perf_counter()
    perturbations, head, dp_norms = None, None, []
    if cfg.privacy.mode == "central":
        check_budget(cfg, round_num)  # nothing of a round over the budget is released
        private = central_round(
            cfg.strategy, updates, states, dp_params(cfg), noise_generator(), heads, sent_heads
        )
        updates, perturbations, head = private.updates, private.perturbations, private.extras
        dp_norms = sorted(private.norms.values())
    result = aggregate_round(strategy, round_num, updates, states, perturbations)
    seconds = time.perf_counter() - start
    energies = [lr.diagnostics.residual_energy for lr in result.layers.values()]
    known = [e for e in energies if e is not None]
    summary: dict[str, object] = {
        "round": round_num,
        "mean_residual_energy": sum(known) / len(known) if known else None,
        "clients": [r.client for r in records],
        "failed": {r.client: r.error for r in records if not r.ok},
        "excluded": excluded,  # trained, but its upload was not aggregated: why
        "update_norms": {int(c): n for c, n in screening.norms.items()},
        "aggregate_seconds": seconds,
        "bytes_up": result.bytes_up,
        "bytes_down": result.bytes_down,
        "diagnostics": {name: asdict(lr.diagnostics) for name, lr in result.layers.items()},
    }
    if cfg.privacy.mode != "off":
        summary.update(privacy_summary(cfg, round_num))
    if dp_norms:  # the trusted server's view, for choosing the clip norm; not itself private
        clip = cfg.privacy.clip or 0.0
        summary["clipped"] = sum(norm > clip for norm in dp_norms)
        summary["update_norm_median"] = dp_norms[(len(dp_norms) - 1) // 2]
    if head is None:
        head = _average_heads(heads, updates)
    commit_state(cfg, paths, round_num, strategy, result, head, summary)
    return summary


def _head(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The fully trained extra modules (a classifier head) of an upload or a broadcast."""
    return {k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")}


def _options(cfg: ExperimentConfig) -> dict[str, object]:
    """The strategy's options: the aggregation config less the screening's."""
    return cfg.aggregation.model_dump(exclude={"max_norm_ratio"})


def _read_uploads(
    paths: RunPaths, round_num: int, ok: list[ClientRecord]
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[int, str]]:
    """Each client's upload (client id -> tensors); a missing or undecodable file is a reason
    to exclude that client, not to fail the round."""
    uploads: dict[str, dict[str, torch.Tensor]] = {}
    unreadable: dict[int, str] = {}
    for r in ok:
        try:
            uploads[str(r.client)] = load_tensors(paths.store, paths.upload(round_num, r.client))
        except (FileNotFoundError, SafetensorError) as e:
            unreadable[r.client] = f"unreadable upload: {type(e).__name__}: {e}"
    return uploads, unreadable


def _uploaded(strategy: Strategy, sent: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The broadcast tensors a client of this strategy sends back changed (what _train saves)."""
    return {
        k: v
        for k, v in sent.items()
        if k.startswith("head.") or (".lora_" in k and factor_name(k) in strategy.uploads)
    }


def _average_heads(
    heads: list[dict[str, torch.Tensor]], updates: list[ClientUpdate]
) -> dict[str, torch.Tensor]:
    """FedAvg of any fully trained extra modules (a classifier head)."""
    if not heads or not heads[0]:
        return {}
    total = sum(u.n_examples for u in updates)
    return {
        k: sum(h[k] * (u.n_examples / total) for h, u in zip(heads, updates, strict=True))
        for k in heads[0]
    }  # type: ignore[misc]
