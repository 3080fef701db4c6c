"""One client's local training: from its rank group's global state to its upload."""

from __future__ import annotations

import time
from collections.abc import Callable

from backend.core.config import ExperimentConfig
from backend.core.runs import RunPaths
from workers import peft_glue
from workers.artifacts import load_tensors, save_tensors
from workers.federated import get_strategy, to_peft_state_dict
from workers.federated.privacy import local_release
from workers.runner.bench import bench_for, encoded, load_state_into
from workers.runner.clients import round_seed, silo_examples, task_of
from workers.runner.privacy import check_budget, dp_params, noise_generator
from workers.runner.records import ClientRecord
from workers.runner.state import factor_name, load_run_config, read_group
from workers.training import encode, train_local

StepCallback = Callable[[int, float], None]


def train_client(
    paths: RunPaths,
    round_num: int,
    client: int,
    on_step: StepCallback | None = None,
    silo_data: str | None = None,
) -> ClientRecord:
    """Train one client from its group's global state; write its upload. Never raises.

    ``silo_data``: a silo client's data file, for a client pinned to that silo (default:
    this worker's FEDMOMENTUM_SILO_DATA)."""
    start = time.perf_counter()
    try:
        cfg = load_run_config(paths)
        n, losses, compute = _train(paths, cfg, round_num, client, on_step, silo_data)
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
    silo_data: str | None,
) -> tuple[int, list[float], float]:
    strategy = get_strategy(cfg.strategy)
    if cfg.privacy.mode == "local":
        check_budget(cfg, round_num)  # a client never uploads past the run's budget
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
        examples = silo_examples(cfg, client, silo_data)
        # The label set (classifiers) is the experiment's; a language model needs none, so a
        # silo never needs the server's dataset to train one.
        labels = task_of(cfg).labels if bench.kind == "seq-cls" else []
        data = encode(
            examples,
            bench.tokenizer,
            cfg.training.max_length,
            bench.kind,
            labels,
            chat_template=cfg.data.chat_template,
        )
    t0 = time.perf_counter()
    losses = train_local(
        bench.model,
        data,
        cfg.training,
        seed=round_seed(cfg.seed, round_num, client),
        pad_id=bench.tokenizer.pad_token_id,
        device=bench.device,
        on_step=on_step,
    )
    compute = time.perf_counter() - t0
    lora = to_peft_state_dict(peft_glue.get_lora_factors(bench.model))
    head = {f"head.{k}": v for k, v in peft_glue.get_head_state(bench.model).items()}
    if strategy.personalised:  # fedsa: B never leaves the client
        save_tensors(store, paths.local(client), {k: v for k, v in lora.items() if ".lora_B." in k})
    upload = {k: v for k, v in lora.items() if factor_name(k) in strategy.uploads}
    tensors = {**upload, **head}
    if cfg.privacy.mode == "local":  # clipped and noised here: the server sees only this
        tensors, _ = local_release(
            tensors, {k: adapter[k] for k in tensors}, dp_params(cfg), noise_generator()
        )
    meta = {"n_examples": str(len(data))}
    save_tensors(store, paths.upload(round_num, client), tensors, meta)
    return len(data), losses, compute
