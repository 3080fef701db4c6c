"""Parallel workers: round wall time with 1, 2, ... worker processes consuming ``train``.

    .venv/bin/python benchmarks/parallel_workers.py [--workers 1,2] [--rounds 4]
        [--clients 4] [--local-steps 120] [--config examples/tiny.yaml] [--json]

For each worker count N: the API (``fedmomentum up --no-worker``) and N ``fedmomentum worker``
processes on the real Redis (queues train,aggregate; FEDMOMENTUM_TORCH_THREADS=1 each), the
database SQLite unless --database-url. One warm-up experiment first (every worker loads torch
and the model once, as in any long-lived deployment), then the measured one. Round time is
from the round's dispatch to its evaluated summary (database timestamps). Also reported: the
mean seconds of one client's training task, and how many workers took part in each round.
Run it alone: on 2 cores anything else running changes the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx
from _service import free_port, healthy, run_to_end, stop, wait

ROOT = Path(__file__).resolve().parents[1]


def _config(args: argparse.Namespace) -> dict[str, Any]:
    from backend.core.config import load_config

    data = load_config(args.config).model_dump(mode="json")
    data["federation"].update(
        num_clients=max(args.clients, data["federation"]["num_clients"]),
        clients_per_round=args.clients,
        rounds=args.rounds,
    )
    data["training"]["local_steps"] = args.local_steps
    return data


def measure(config: dict[str, Any], workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """Start the API and ``workers`` worker processes, run warm-up + measured experiment."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMOMENTUM_")}
        env.update(
            FEDMOMENTUM_DATA_DIR=f"{tmp}/data", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
            FEDMOMENTUM_BROKER_URL=args.redis_url, FEDMOMENTUM_TORCH_THREADS="1",
            FEDMOMENTUM_BROKER_KEY_PREFIX=f"fmbench-{uuid.uuid4().hex[:8]}:",
        )  # fmt: skip
        if args.database_url:
            env["FEDMOMENTUM_DATABASE_URL"] = args.database_url
        cli = [sys.executable, "-m", "backend.cli"]
        logs = [Path(tmp) / f"proc-{i}.log" for i in range(workers + 1)]
        commands = [[*cli, "up", "--no-worker", "--port", str(port)]] + [
            [*cli, "worker", "--queues", "train,aggregate", "--name", f"bench-{i}@%h"]
            for i in range(workers)
        ]
        procs = [
            subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log.open("wb"),
                             stderr=subprocess.STDOUT, start_new_session=True)
            for cmd, log in zip(commands, logs, strict=True)
        ]  # fmt: skip
        try:
            http = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=30)
            wait(lambda: healthy(http) and all(b" ready." in log.read_bytes() for log in logs[1:]))
            warm = {**config, "federation": {**config["federation"], "rounds": 1}}
            _, rounds, clients = run_to_end(http, [warm, config], timeout=3600)  # 2nd measured
        finally:
            stop(procs)
    per_round: dict[int, set[str]] = {}
    for m in clients:
        per_round.setdefault(m["round"], set()).add(m["values"]["worker"])
    return {
        "workers": workers,
        "round_seconds": [r["summary"]["round_seconds"] for r in rounds],
        "client_task_seconds": statistics.mean(m["values"]["seconds"] for m in clients),
        "workers_per_round": [len(per_round[r]) for r in sorted(per_round)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=ROOT / "examples/tiny.yaml")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=4, help="clients per round")
    parser.add_argument("--local-steps", type=int, default=120)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--database-url", help="default: SQLite in a temporary data dir")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = _config(args)
    load = os.getloadavg()  # 1/5/15-minute load average before the run: was the machine busy?
    results = [measure(config, int(n), args) for n in args.workers.split(",")]
    base = statistics.median(results[0]["round_seconds"])
    for r in results:
        r["median_round_s"] = round(statistics.median(r["round_seconds"]), 3)
        r["speedup"] = round(base / r["median_round_s"], 2)
        r["round_seconds"] = [round(x, 3) for x in r["round_seconds"]]
        r["client_task_seconds"] = round(r["client_task_seconds"], 3)
    if args.json:
        options = {k: str(v) for k, v in vars(args).items()}
        print(json.dumps({"options": options, "load_before": load, "rows": results}, indent=2))
        return
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'workers':>7} {'median round s':>14} {'speedup':>8} {'client task s':>13} rounds")
    for r in results:
        print(
            f"{r['workers']:>7} {r['median_round_s']:>14.3f} {r['speedup']:>8.2f} "
            f"{r['client_task_seconds']:>13.3f} {r['round_seconds']}"
        )


if __name__ == "__main__":
    main()
