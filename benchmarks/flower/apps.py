"""The Flower side of ``benchmarks/vs_flower.py``: FlowerTune-style FedAvg over PEFT LoRA
state dicts, with Flower 1.x's Message API (ServerApp, ClientApp, the FedAvg strategy of
``flwr.serverapp.strategy``) in its Simulation Engine (Ray backend).

Run only by ``benchmarks/flower/main.py`` inside the benchmark's own virtual environment,
with this repository on PYTHONPATH: the model, data, split, seeds, local training loop and
evaluation are this repository's (``workers.runner.bench``, ``backend.core.data`` through
``workers.runner.clients``, ``workers.training.train_local``,
``workers.evaluation.evaluate_model``), so both frameworks get identical inputs and do the
same arithmetic; what differs is the federation around them. As in FlowerTune, a client
receives the global adapter as an ArrayRecord, loads it with PEFT's
``set_peft_model_state_dict``, trains, and replies with ``get_peft_model_state_dict`` and
its example count; the server's FedAvg averages every array weighted by that count (FedIT:
A and B averaged separately).

One difference from FlowerTune's template, in Flower's favour: its ClientApp builds the model
on every call; here each Ray actor keeps its loaded model between calls (the runner's
per-process cache), as our worker does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import save_file

from backend.core.config import ExperimentConfig
from benchmarks.flower.protocol import Channel, set_threads
from workers.evaluation import evaluate_model
from workers.runner.bench import Bench, bench_for, encoded, fresh_adapter
from workers.runner.clients import client_indices, round_seed, task_of
from workers.training import train_local

# --- client (runs in a Ray actor process) --------------------------------------------------

client_app = ClientApp()


@lru_cache(maxsize=2)
def _job(job_json: str) -> ExperimentConfig:
    return ExperimentConfig.model_validate_json(job_json)


@lru_cache(maxsize=2)
def _split(job_json: str) -> list[list[int] | None]:
    return client_indices(_job(job_json))


def _load_adapter(bench: Bench, arrays: ArrayRecord) -> None:
    result = set_peft_model_state_dict(bench.model, arrays.to_torch_state_dict())
    if result.unexpected_keys:
        raise ValueError(f"adapter keys the model lacks: {result.unexpected_keys[:3]}")


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """One client's local training: the runner's own loop, data and seed for this client."""
    config = msg.content["config"]
    job_json = str(config["job"])
    job = _job(job_json)
    set_threads(int(config["threads"]))
    client = int(context.node_config["partition-id"])
    round_num = int(config["server-round"]) - 1  # Flower counts rounds from 1, we from 0
    bench = bench_for(job, job.lora.rank)
    _load_adapter(bench, msg.content["arrays"])
    idx = _split(job_json)[client]
    if idx is None:
        raise ValueError(f"client {client} has no pooled data (silos are not benchmarked)")
    data = [encoded(job, job.lora.rank, "train")[i] for i in idx]
    start = time.perf_counter()
    losses = train_local(
        bench.model,
        data,
        job.training,
        seed=round_seed(job.seed, round_num, client),
        pad_id=bench.tokenizer.pad_token_id,
        device=bench.device,
    )
    compute = time.perf_counter() - start
    state = {k: v.detach().cpu() for k, v in get_peft_model_state_dict(bench.model).items()}
    metrics = MetricRecord(
        {
            "num-examples": len(data),
            "compute-seconds": compute,
            "train-loss": losses[-1],
            "threads": torch.get_num_threads(),
        }
    )
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=msg)


# --- server (the driver process; the ServerApp runs in a thread of run_simulation) ----------


def _sum_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:
    """Per-round totals over the replies: the clients' optimizer seconds, their examples."""
    metrics = [next(iter(r.metric_records.values())) for r in records]
    return MetricRecord(
        {
            "compute-seconds": sum(float(m["compute-seconds"]) for m in metrics),
            "num-examples": sum(int(m[weighting_key]) for m in metrics),
            "threads": min(int(m["threads"]) for m in metrics),
        }
    )


class TimedFedAvg(FedAvg):
    """Flower's FedAvg, remembering the last round's aggregation time and train metrics."""

    last_aggregate_seconds = 0.0
    last_train_metrics: dict[str, Any] = {}  # replaced each round, never mutated

    def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        arrays, metrics = super().aggregate_train(server_round, replies)
        self.last_aggregate_seconds = time.perf_counter() - start
        self.last_train_metrics = dict(metrics or {})
        if arrays is None:
            raise RuntimeError(f"round {server_round}: no client replied successfully")
        return arrays, metrics


@dataclass
class Server:
    """What the ServerApp needs from main.py: the job, the channel, where the result goes."""

    job: ExperimentConfig
    threads: int
    out: str
    channel: Channel
    strategy: TimedFedAvg | None = None
    round_started: float = field(default=0.0)

    @property
    def bench(self) -> Bench:
        return bench_for(self.job, self.job.lora.rank)

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Centralised evaluation of the global adapter, then the benchmark's turn."""
        start = time.perf_counter()
        _load_adapter(self.bench, arrays)
        task = task_of(self.job)
        scores = evaluate_model(
            self.bench.model,
            self.bench.tokenizer,
            task,
            task.eval,
            encoded(self.job, self.job.lora.rank, "eval"),
            kind=self.bench.kind,
            batch_size=self.job.eval.batch_size,
            max_new_tokens=self.job.eval.max_new_tokens,
            device=self.bench.device,
        )
        eval_seconds = time.perf_counter() - start
        if server_round == 0:
            self.channel.send("ready", **scores)
        else:
            assert self.strategy is not None
            train = self.strategy.last_train_metrics
            self.channel.send(
                "round",
                round=server_round,
                wall_seconds=time.perf_counter() - self.round_started,
                compute_seconds=train.get("compute-seconds"),
                eval_seconds=eval_seconds,
                aggregate_seconds=self.strategy.last_aggregate_seconds,
                client_threads=train.get("threads"),
                **scores,
            )
        last = server_round == self.job.federation.rounds
        self.channel.expect("finish" if last else "go")
        self.round_started = time.perf_counter()
        return MetricRecord(scores)


SERVER: Server | None = None  # set by main.py before run_simulation starts the ServerApp
server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """FedAvg for the job's rounds from the runner's initial adapter; save the result."""
    server = SERVER
    if server is None:
        raise RuntimeError("benchmarks/flower/main.py sets apps.SERVER before the simulation")
    n = server.job.federation.clients_per_round
    server.strategy = TimedFedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,  # evaluation is centralised, as FlowerTune's
        min_train_nodes=n,
        min_available_nodes=server.job.federation.num_clients,
        train_metrics_aggr_fn=_sum_metrics,
    )
    initial = fresh_adapter(server.bench, server.job.seed)  # the runner's round-0 adapter
    result = server.strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial),
        num_rounds=server.job.federation.rounds,
        train_config=ConfigRecord({"job": server.job.model_dump_json(), "threads": server.threads}),
        evaluate_fn=server.evaluate,
    )
    final = result.arrays.to_torch_state_dict()
    save_file({k: v.contiguous() for k, v in final.items()}, server.out)
    server.channel.send("done", adapter=server.out)
