"""The federation one step at a time: prepare, train_client, aggregate, evaluate, export.

The run directory (workers.artifacts.RunPaths) is the whole state; each step reads what it
needs from it and writes its result atomically, so the in-process loop (``run``) and the
Celery tasks call the same functions, and any step can be re-run after a crash.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError

from backend.config import ExperimentConfig
from backend.settings import get_settings
from backend.store import Store
from workers import peft_glue
from workers.artifacts import RunPaths, load_tensors, save_tensors
from workers.data import Example, TaskData, load_dataset, partition, split_hash
from workers.evaluation import evaluate_model
from workers.federated import (
    AggregationOptions,
    ClientUpdate,
    LayerState,
    LoraFactors,
    RoundAggregate,
    Strategy,
    aggregate_round,
    from_peft_state_dict,
    get_strategy,
    screen_updates,
    to_dense,
    to_peft_state_dict,
)
from workers.models import BUILTIN_MODELS, load_model, model_fingerprint, model_info
from workers.training import Encoded, encode, train_local

StepCallback = Callable[[int, float], None]


@dataclass
class ClientRecord:
    """What a client task returns: small, never tensors. A failure is data, not an exception."""

    round: int
    client: int
    ok: bool
    n_examples: int = 0
    seconds: float = 0.0  # the whole task: loading state, training, writing the upload
    compute_seconds: float = 0.0  # inside the optimizer loop only
    path: str | None = None  # the upload's full location in the artifact store
    error: str | None = None
    worker: str | None = None  # the Celery worker that trained it (service only)
    losses: list[float] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, CPU otherwise."""
    if name == "auto":
        name = get_settings().device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_run_config(paths: RunPaths) -> ExperimentConfig:
    return ExperimentConfig.model_validate(yaml.safe_load(paths.store.read_text(paths.config)))


# ---- data and model, cached per process ---------------------------------------------------


@lru_cache(maxsize=4)
def _task(dataset: str, seed: int, n_train: int | None, n_eval: int | None) -> TaskData:
    return load_dataset(dataset, seed=seed, n_train=n_train, n_eval=n_eval)


def task_of(cfg: ExperimentConfig) -> TaskData:
    return _task(cfg.dataset, cfg.seed, cfg.data.n_train, cfg.data.n_eval)


def client_indices(cfg: ExperimentConfig) -> list[list[int] | None]:
    """Each client's training examples: the seeded partition of the config among the pooled
    clients; None for a client pinned to a silo (its data never reaches the server)."""
    pooled = [c for c in range(cfg.federation.num_clients) if cfg.silo_of(c) is None]
    parts: list[list[int] | None] = [None] * cfg.federation.num_clients
    if pooled:
        for c, idx in zip(pooled, _partition(cfg, task_of(cfg).train, len(pooled)), strict=True):
            parts[c] = idx
    return parts


def _partition(cfg: ExperimentConfig, examples: list[Example], n: int) -> list[list[int]]:
    d = cfg.data
    return partition(
        examples,
        n,
        d.partition,
        alpha=d.alpha,
        shards_per_client=d.shards_per_client,
        seed=cfg.seed,
    )


@lru_cache(maxsize=4)
def _silo_examples(location: str, seed: int) -> list[Example]:
    task = load_dataset(location, seed=seed)
    return task.train + task.eval  # all of a silo's records train; the server evaluates


def silo_examples(cfg: ExperimentConfig, client: int) -> list[Example]:
    """The training examples of a client pinned to a silo, read on that silo's worker from
    the data path its settings hold (``FEDMOMENTUM_SILO_DATA``); the silo's file is split
    among its clients by the config's partition. ValueError when this worker has none."""
    silo = cfg.silo_of(client)
    held = get_settings().silo_data
    if silo is None or silo not in held:
        raise ValueError(
            f"client {client} is pinned to silo {silo!r}, whose data this worker does not "
            f"hold; FEDMOMENTUM_SILO_DATA names: {', '.join(held) or 'none'}"
        )
    examples = _silo_examples(held[silo], cfg.seed)
    members = (cfg.federation.silos or {})[silo]
    part = _partition(cfg, examples, len(members))[members.index(client)]
    return [examples[i] for i in part]


def lora_settings(
    cfg: ExperimentConfig, rank: int, default_targets: tuple[str, ...]
) -> peft_glue.LoraSettings:
    targets = cfg.lora.target_modules or list(default_targets)
    return peft_glue.LoraSettings(
        r=rank,
        alpha=cfg.lora.alpha,
        dropout=cfg.lora.dropout,
        target_modules=tuple(targets),
        rslora=cfg.lora.rslora,
    )


@dataclass
class Bench:
    """One loaded model with a LoRA of one rank, and the pristine weights of adapted layers."""

    model: torch.nn.Module
    tokenizer: object
    kind: str
    base: dict[str, torch.Tensor]  # layer -> original base weight
    device: torch.device


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
    return Bench(peft, tokenizer, info.task, base, device)


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
    return encode(examples, bench.tokenizer, max_length, bench.kind, task.labels)


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


# ---- server state on disk ---------------------------------------------------------------------


def _adapter_file(rank: int) -> str:
    return f"adapter-r{rank}.safetensors"


def _backbone_file(rank: int) -> str:
    return f"backbone-r{rank}.safetensors"


def read_group(
    paths: RunPaths, round_num: int, rank: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(adapter tensors, dense backbone deltas or None) of a rank group at a round's start."""
    state = paths.store.sub(paths.state(round_num))
    backbone = _backbone_file(rank)
    return load_tensors(state, _adapter_file(rank)), (
        load_tensors(state, backbone) if state.exists(backbone) else None
    )


def fresh_adapter(bench: Bench, seed: int) -> dict[str, torch.Tensor]:
    """PEFT's initial LoRA (A random from ``seed``, B = 0), as PEFT state-dict tensors."""
    peft_glue.reinit_lora(bench.model, seed)
    return to_peft_state_dict(peft_glue.get_lora_factors(bench.model))


# ---- the steps ----------------------------------------------------------------------------------


def sample_clients(cfg: ExperimentConfig, round_num: int) -> list[int]:
    """The clients of a round: a seeded sample, the same in every process."""
    rng = random.Random(cfg.seed * 1_000_003 + round_num)
    return sorted(rng.sample(range(cfg.federation.num_clients), cfg.federation.clients_per_round))


def prepare(cfg: ExperimentConfig, paths: RunPaths) -> RunPaths:
    """Validate the config against data and model, write config, split, manifest, round-0 state."""
    store = paths.store
    if store.exists(paths.config) and load_run_config(paths) != cfg:
        raise ValueError(
            f"{store.url()} holds a run with a different config; resume it with the same "
            "config or choose another --out"
        )
    task = task_of(cfg)
    parts = client_indices(cfg)  # raises if there are more clients than examples
    data_hash = split_hash([p or [] for p in parts], task)
    store.write_text(paths.config, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    store.write_json(paths.split, {"clients": parts, "hash": data_hash})
    store.write_json(paths.manifest, _manifest(cfg, data_hash))
    if not store.committed(paths.state(0)):
        with store.commit_dir(paths.state(0)) as scratch:
            for rank in cfg.rank_groups():
                save_tensors(scratch, _adapter_file(rank), _initial_adapter(cfg, rank))
    return paths


def _initial_adapter(cfg: ExperimentConfig, rank: int) -> dict[str, torch.Tensor]:
    bench = bench_for(cfg, rank)
    adapter = fresh_adapter(bench, cfg.seed)
    head = peft_glue.get_head_state(bench.model)
    return {**adapter, **{f"head.{k}": v for k, v in head.items()}}


def _manifest(cfg: ExperimentConfig, data_hash: str) -> dict[str, object]:
    from importlib.metadata import version

    packages = ["torch", "transformers", "peft", "safetensors", "fedmomentum"]
    return {
        "seed": cfg.seed,
        "model": cfg.model,
        "model_fingerprint": model_fingerprint(cfg.model),
        "dataset": cfg.dataset,
        "split_hash": data_hash,
        "packages": {p: version(p) for p in packages},
        "device": str(resolve_device(cfg.device)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def train_client(
    paths: RunPaths, round_num: int, client: int, on_step: StepCallback | None = None
) -> ClientRecord:
    """Train one client from its group's global state; write its upload. Never raises."""
    start = time.perf_counter()
    try:
        cfg = load_run_config(paths)
        n, losses, compute = _train(paths, cfg, round_num, client, on_step)
        upload = paths.store.url(paths.upload(round_num, client))
        return ClientRecord(
            round_num, client, True, n, time.perf_counter() - start, compute, upload, losses=losses
        )
    except Exception as e:  # noqa: BLE001 - a failed client is data: the round decides
        return ClientRecord(
            round_num,
            client,
            False,
            seconds=time.perf_counter() - start,
            error=f"{type(e).__name__}: {e}",
        )


def _train(
    paths: RunPaths,
    cfg: ExperimentConfig,
    round_num: int,
    client: int,
    on_step: StepCallback | None,
) -> tuple[int, list[float], float]:
    strategy = get_strategy(cfg.strategy)
    rank = cfg.client_rank(client)
    bench = bench_for(cfg, rank)
    store = paths.store
    adapter, backbone = read_group(paths, round_num, rank)
    if strategy.personalised and store.exists(paths.local(client)):
        adapter = {**adapter, **load_tensors(store, paths.local(client))}  # fedsa: own B
    load_state_into(bench, adapter, backbone)
    peft_glue.set_trainable(
        bench.model, train_A="A" in strategy.trains, train_B="B" in strategy.trains
    )
    if cfg.silo_of(client) is None:
        idx = store.read_json(paths.split)["clients"][client]
        data = [encoded(cfg, rank, "train")[i] for i in idx]
    else:  # cross-silo: this worker's own data; the server holds none of it
        examples = silo_examples(cfg, client)
        task = task_of(cfg)  # the label set (classifiers) is the experiment's
        data = encode(examples, bench.tokenizer, cfg.training.max_length, bench.kind, task.labels)
    seed = cfg.seed * 1_000_003 + round_num * 10_007 + client
    t0 = time.perf_counter()
    losses = train_local(
        bench.model,
        data,
        cfg.training,
        seed=seed,
        pad_id=bench.tokenizer.pad_token_id,
        device=bench.device,
        on_step=on_step,
    )
    compute = time.perf_counter() - t0
    lora = to_peft_state_dict(peft_glue.get_lora_factors(bench.model))
    head = {f"head.{k}": v for k, v in peft_glue.get_head_state(bench.model).items()}
    if strategy.personalised:  # fedsa: B never leaves the client
        save_tensors(store, paths.local(client), {k: v for k, v in lora.items() if ".lora_B." in k})
    upload = {k: v for k, v in lora.items() if _factor_name(k) in strategy.uploads}
    meta = {"n_examples": str(len(data))}
    save_tensors(store, paths.upload(round_num, client), {**upload, **head}, meta)
    return len(data), losses, compute


def _layer_states(cfg: ExperimentConfig, paths: RunPaths, round_num: int) -> dict[str, LayerState]:
    state = paths.store.sub(paths.state(round_num))
    ranks = frozenset(cfg.rank_groups())
    adapters = {r: _factors(cfg, load_tensors(state, _adapter_file(r)), r) for r in ranks}
    server = "server.safetensors"
    extra = load_tensors(state, server) if state.exists(server) else {}
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


def _factor_name(key: str) -> str:
    """'A' or 'B' for a PEFT LoRA key."""
    return "A" if ".lora_A." in key else "B"


def _factors(
    cfg: ExperimentConfig, tensors: dict[str, torch.Tensor], rank: int
) -> dict[str, LoraFactors]:
    lora = {k: v for k, v in tensors.items() if ".lora_" in k}
    return from_peft_state_dict(lora, alpha=cfg.lora.alpha, rslora=cfg.lora.rslora)


class TooFewUpdates(RuntimeError):
    """A round with fewer usable updates than ``min_clients_per_round``; ``excluded``: the
    clients whose upload screening rejected, with the reasons (the service retries them)."""

    def __init__(self, message: str, excluded: dict[int, str]) -> None:
        super().__init__(message)
        self.excluded = excluded


def aggregate(paths: RunPaths, round_num: int, records: list[ClientRecord]) -> dict[str, object]:
    """Screen the round's successful uploads, aggregate those kept into the next state;
    returns the round summary. TooFewUpdates when fewer than min_clients_per_round remain."""
    cfg = load_run_config(paths)
    ok = [r for r in records if r.ok]
    strategy = get_strategy(cfg.strategy, AggregationOptions(**_options(cfg)))
    state = paths.store.sub(paths.state(round_num))
    ranks = {cfg.client_rank(r.client) for r in ok}
    sent = {rank: load_tensors(state, _adapter_file(rank)) for rank in ranks}
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
    updates, heads = [], []
    for r in kept:
        # A factor a client does not upload (ffa's frozen A, fedsa's private B) is, for the
        # server, the one it broadcast.
        rank = cfg.client_rank(r.client)
        tensors = {**sent[rank], **uploads[str(r.client)]}
        updates.append(ClientUpdate(str(r.client), r.n_examples, _factors(cfg, tensors, rank)))
        heads.append(
            {k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")}
        )
    start = time.perf_counter()
    result = aggregate_round(strategy, round_num, updates, _layer_states(cfg, paths, round_num))
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
    _commit_state(cfg, paths, round_num, strategy, result, _average_heads(heads, updates), summary)
    return summary


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
        if k.startswith("head.") or (".lora_" in k and _factor_name(k) in strategy.uploads)
    }


def aggregated_clients(summary: Mapping[str, Any]) -> list[int]:
    """The clients whose updates a round aggregated (its summary, fresh or read back as JSON,
    whose keys are then strings)."""
    left_out = {str(c) for key in ("failed", "excluded") for c in summary.get(key) or {}}
    return [int(c) for c in summary["clients"] if str(c) not in left_out]


def aggregated_summary(paths: RunPaths, round_num: int) -> dict[str, object]:
    """The summary ``aggregate`` returned for a round (kept with the state it committed)."""
    return paths.store.read_json(f"{paths.state(round_num + 1)}/summary.json")  # type: ignore[no-any-return]


def client_metrics(rec: ClientRecord) -> list[dict[str, object]]:
    """Metrics records of one client task: a loss per local step, then the task record."""
    steps: list[dict[str, object]] = [
        {"kind": "client_step", "round": rec.round, "client": rec.client, "step": i, "loss": loss}
        for i, loss in enumerate(rec.losses)
    ]
    record = {k: v for k, v in asdict(rec).items() if k != "losses"}
    return [*steps, {"kind": "client", **record}]


def round_metrics(round_num: int, summary: dict[str, object]) -> list[dict[str, object]]:
    """Metrics records of an aggregated and evaluated round: diagnostics per layer, the round."""
    diagnostics: dict[str, dict[str, object]] = summary["diagnostics"]  # type: ignore[assignment]
    records: list[dict[str, object]] = [
        {"kind": "diagnostics", "round": round_num, "layer": layer, **diag}
        for layer, diag in diagnostics.items()
    ]
    rest = {k: v for k, v in summary.items() if k != "diagnostics"}
    return [*records, {"kind": "round", **rest}]


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


def _commit_state(
    cfg: ExperimentConfig,
    paths: RunPaths,
    round_num: int,
    strategy: Strategy,
    result: RoundAggregate,
    head: dict[str, torch.Tensor],
    summary: dict[str, object],
) -> None:
    previous = paths.store.sub(paths.state(round_num))
    with paths.store.commit_dir(paths.state(round_num + 1)) as scratch:
        scratch.write_json("summary.json", summary)
        server: dict[str, torch.Tensor] = {}
        for rank in cfg.rank_groups():
            adapter = _next_adapter(cfg, strategy, result, rank, round_num)
            _save_finite(
                scratch,
                _adapter_file(rank),
                {**adapter, **{f"head.{k}": v for k, v in head.items()}},
            )
            if strategy.changes_backbone:
                old = _backbone_file(rank)
                backbone = load_tensors(previous, old) if previous.exists(old) else {}
                for layer, lr in result.layers.items():
                    if rank in lr.residuals:
                        backbone[layer] = (
                            backbone.get(layer, 0) + to_dense(lr.residuals[rank]).float()
                        )
                _save_finite(scratch, _backbone_file(rank), backbone)
        for layer, lr in result.layers.items():
            if lr.state.basis is not None:
                server[f"basis.{layer}"] = lr.state.basis
            for rank, pending in lr.state.pending.items():
                server[f"pending.r{rank}.{layer}"] = to_dense(pending).float()
        _save_finite(scratch, "server.safetensors", server)
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
        return fresh_adapter(bench_for(cfg, rank), cfg.seed * 1_000_003 + round_num + 1)
    return to_peft_state_dict(
        {layer: lr.state.adapters[rank] for layer, lr in result.layers.items()}
    )


def _prune_backbones(paths: RunPaths, round_num: int) -> None:
    """Dense backbone deltas are as large as the adapted layers: keep the last two rounds'."""
    if round_num < 1:
        return
    for key in paths.store.glob(f"{paths.state(round_num)}/backbone-r*.safetensors"):
        paths.store.remove(key)


def evaluate(paths: RunPaths, round_num: int, clients: list[int] | None = None) -> dict[str, float]:
    """Eval loss and accuracy of the global model at a round's start state.

    The global model is the largest rank group's (all groups are equal for exact strategies).
    fedsa has no global model: each given client is evaluated with the global A and its own B,
    and the mean is reported.
    """
    cfg = load_run_config(paths)
    strategy = get_strategy(cfg.strategy)
    rank = max(cfg.rank_groups())
    bench = bench_for(cfg, rank)
    adapter, backbone = read_group(paths, round_num, rank)
    if not strategy.personalised or not clients:
        load_state_into(bench, adapter, backbone)
        return _eval_bench(cfg, bench, rank)
    scores = []
    for c in clients:
        key = paths.local(c)
        own = load_tensors(paths.store, key) if paths.store.exists(key) else {}
        load_state_into(bench, {**adapter, **own}, backbone)
        scores.append(_eval_bench(cfg, bench, rank))
    return {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}


def _eval_bench(cfg: ExperimentConfig, bench: Bench, rank: int) -> dict[str, float]:
    task = task_of(cfg)
    return evaluate_model(
        bench.model,
        bench.tokenizer,
        task,
        task.eval,
        encoded(cfg, rank, "eval"),
        kind=bench.kind,
        batch_size=cfg.eval.batch_size,
        max_new_tokens=cfg.eval.max_new_tokens,
        device=bench.device,
    )


# ---- export -----------------------------------------------------------------------------


def export(paths: RunPaths, rank_approx: int | None = None) -> dict[str, object]:
    """Write export/: merged model, PEFT adapter + backbone delta + README, rank-q adapter."""
    cfg = load_run_config(paths)
    final = paths.latest_state()
    rank = max(cfg.rank_groups())
    bench = bench_for(cfg, rank)
    adapter, backbone = read_group(paths, final, rank)
    info: dict[str, object] = {"round": final, "rank_group": rank}
    with paths.store.commit_dir(paths.export) as out:  # a local scratch folder
        load_state_into(bench, adapter, backbone)
        peft_glue.save_adapter(bench.model, out.local_path("adapter"))
        deltas = peft_glue.weight_names(bench.model, backbone or {})
        save_tensors(out, "adapter/backbone_delta.safetensors", deltas)
        out.write_text("adapter/README.md", _ADAPTER_README.format(model=cfg.model, n=len(deltas)))
        merged = peft_glue.merged_model(bench.model)
        merged.save_pretrained(out.local_path("merged"))
        bench.tokenizer.save_pretrained(out.local_path("merged"))
        if rank_approx:
            info["adapter_rank"] = _export_rank(
                bench, adapter, backbone or {}, cfg, rank_approx, out.local_path("adapter-rank")
            )
        out.write_json("export.json", info)
    return info


def _export_rank(
    bench: Bench,
    adapter: dict[str, torch.Tensor],
    backbone: dict[str, torch.Tensor],
    cfg: ExperimentConfig,
    q: int,
    out: Path,
) -> dict[str, float]:
    """One PEFT adapter of rank q approximating backbone delta + s B A; its relative error."""
    factors = _factors(cfg, adapter, max(cfg.rank_groups()))
    approx, err2, total2 = {}, 0.0, 0.0
    for layer, f in factors.items():
        full = f.delta().double() + backbone.get(layer, torch.zeros(f.d_out, f.d_in)).double()
        U, S, Vh = torch.linalg.svd(full, full_matrices=False)
        k = min(q, S.shape[0])
        approx[layer] = LoraFactors(
            A=(Vh[:k] * S[:k, None]).float(), B=U[:, :k].float(), alpha=float(k)
        )
        err2 += float((S[k:] ** 2).sum())
        total2 += float((S**2).sum())
    peft_glue.save_adapter_factors(bench.model, approx, out, rank=q)
    return {"rank": q, "relative_error": math.sqrt(err2 / total2) if total2 else 0.0}


_ADAPTER_README = """# FedMomentum adapter export

Base model: `{model}`. FedMomentum merges part of every round's update into the backbone,
so the adapter alone is not the whole fine-tuning: first add `backbone_delta.safetensors`
({n} tensors, keyed by the base model's weight names) to the base weights, then load the
adapter with PEFT:

```python
import torch
from safetensors.torch import load_file
from peft import PeftModel
from transformers import AutoModelForCausalLM

base = AutoModelForCausalLM.from_pretrained(BASE_DIR, dtype=torch.float32)
state = base.state_dict()
with torch.no_grad():
    for name, delta in load_file("adapter/backbone_delta.safetensors").items():
        state[name].add_(delta)
model = PeftModel.from_pretrained(base, "adapter")
```

`../merged/` is the same model with everything merged: load it with
`AutoModelForCausalLM.from_pretrained`. `../adapter-rank/` (if present) is a single plain
PEFT adapter approximating the whole delta at a fixed rank; `../export.json` has its error.
"""


# ---- the in-process loop ----------------------------------------------------------------------


def run(
    cfg: ExperimentConfig,
    root: str | Path,
    *,
    progress: bool = True,
    export_rank: int | None = None,
) -> list[dict[str, object]]:
    """Run (or resume) a whole experiment in this process; returns one summary per round."""
    from tqdm.auto import tqdm

    paths = prepare(cfg, RunPaths.at(root))
    start_round = paths.latest_state()
    summaries: list[dict[str, object]] = []
    log = _MetricsLog(paths.store, paths.metrics)
    log.drop_rounds_from(start_round)  # an interrupted round is redone: no duplicate records
    if start_round == 0:
        log.write({"kind": "eval", "round": -1, **evaluate(paths, 0)})
    rounds = tqdm(
        range(start_round, cfg.federation.rounds),
        desc="rounds",
        disable=not progress,
        initial=start_round,
        total=cfg.federation.rounds,
    )
    for t in rounds:
        t0 = time.perf_counter()
        records = []
        for c in sample_clients(cfg, t):
            steps = tqdm(
                desc=f"round {t} client {c}", total=None, leave=False, disable=not progress
            )
            rec = train_client(
                paths,
                t,
                c,
                on_step=lambda s, loss, bar=steps: (
                    bar.update(1),
                    bar.set_postfix(loss=f"{loss:.3f}"),
                ),
            )
            steps.close()
            records.append(rec)
            for record in client_metrics(rec):
                log.write(record)
        summary = aggregate(paths, t, records)
        t_eval = time.perf_counter()
        scores = evaluate(paths, t + 1, aggregated_clients(summary))
        summary.update(
            scores,
            eval_seconds=time.perf_counter() - t_eval,
            round_seconds=time.perf_counter() - t0,
            train_seconds=sum(r.seconds for r in records),
            compute_seconds=sum(r.compute_seconds for r in records),
        )
        log.write({"kind": "eval", "round": t, **scores})
        for record in round_metrics(t, summary):
            log.write(record)
        summary.pop("diagnostics")
        summaries.append(summary)
        rounds.set_postfix(acc=f"{scores['accuracy']:.3f}", loss=f"{scores['eval_loss']:.3f}")
    export(paths, export_rank)
    return summaries


class _MetricsLog:
    """Append-only JSON lines."""

    def __init__(self, store: Store, key: str) -> None:
        self.store, self.key = store, key

    def write(self, record: dict[str, object]) -> None:
        self.store.append_text(self.key, json.dumps(record, default=str) + "\n")

    def drop_rounds_from(self, first: int) -> None:
        """Forget records of rounds >= first (the initial evaluation is round -1)."""
        if not self.store.exists(self.key):
            return
        lines = self.store.read_text(self.key).splitlines()
        keep = [line for line in lines if json.loads(line)["round"] < first]
        if first == 0:
            keep = []
        self.store.write_text(self.key, "".join(line + "\n" for line in keep))
