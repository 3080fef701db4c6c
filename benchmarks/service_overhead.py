"""Service overhead: the same config in-process and through Celery (embedded and Redis).

    .venv/bin/python benchmarks/service_overhead.py [--config examples/tiny.yaml]
        [--rounds 6] [--local-steps N] [--modes inprocess,embedded,redis] [--json]

For each mode: the median round wall time (in-process: the runner's round; service: from
the round's dispatch to its evaluated summary, read from the database) and its ratio to
in-process, and the task start latency (seconds between sending a round's train tasks and
the first of them starting; median over rounds). Run it alone: on 2 cores anything else
running changes the timings. Redis mode needs Redis on 127.0.0.1:6379 (or --redis-url).
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


def _config(path: Path, rounds: int, local_steps: int | None) -> dict[str, Any]:
    from backend.core.config import load_config

    cfg = load_config(path)
    data = cfg.model_dump(mode="json")
    data["federation"]["rounds"] = rounds
    if local_steps:
        data["training"]["local_steps"] = local_steps
    return data


def in_process(config: dict[str, Any]) -> dict[str, Any]:
    from backend.core.config import ExperimentConfig
    from workers.runner import run

    with tempfile.TemporaryDirectory() as out:
        summaries = run(ExperimentConfig.model_validate(config), Path(out), progress=False)
    rounds = [float(s["round_seconds"]) for s in summaries]  # type: ignore[arg-type]
    return {"round_seconds": rounds, "latency_seconds": None}


def through_service(config: dict[str, Any], env_extra: dict[str, str]) -> dict[str, Any]:
    """Start the service, run the experiment through the API, read the timings back."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMOMENTUM_")}
        env.update(FEDMOMENTUM_DATA_DIR=f"{tmp}/data", HF_HUB_OFFLINE="1", **env_extra)
        cli = [sys.executable, "-m", "backend.cli"]
        embedded = "FEDMOMENTUM_BROKER_URL" not in env_extra
        log = open(f"{tmp}/service.log", "wb")  # noqa: SIM115
        procs = [
            subprocess.Popen(
                [*cli, "up", "--port", str(port), *([] if embedded else ["--no-worker"])],
                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        ]  # fmt: skip
        if not embedded:
            procs.append(
                subprocess.Popen(
                    [*cli, "worker"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )  # fmt: skip
        try:
            http = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=30)
            wait(lambda: healthy(http) and b" ready." in Path(f"{tmp}/service.log").read_bytes())
            # One warm-up experiment: the worker loads torch and the model once per process,
            # as it would for the second experiment of any real session.
            _, rounds, clients = run_to_end(http, [config, config], timeout=1800)
        finally:
            stop(procs)
    first_wait = {}
    for m in clients:
        w = m["values"].get("wait_seconds")
        if w is not None:
            first_wait[m["round"]] = min(w, first_wait.get(m["round"], w))
    return {
        "round_seconds": [r["summary"]["round_seconds"] for r in rounds],
        "latency_seconds": statistics.median(first_wait.values()) if first_wait else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=ROOT / "examples/tiny.yaml")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--local-steps", type=int, help="override the config's local_steps")
    parser.add_argument("--modes", default="inprocess,embedded,redis")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = _config(args.config, args.rounds, args.local_steps)
    results: dict[str, dict[str, Any]] = {}
    for mode in args.modes.split(","):
        if mode == "inprocess":
            results[mode] = in_process(config)
        elif mode == "embedded":
            results[mode] = through_service(config, {})
        elif mode == "redis":
            prefix = f"fmbench-{uuid.uuid4().hex[:8]}:"
            results[mode] = through_service(
                config,
                {"FEDMOMENTUM_BROKER_URL": args.redis_url, "FEDMOMENTUM_BROKER_KEY_PREFIX": prefix},
            )
        else:
            parser.error(f"--modes: unknown {mode!r}; allowed: inprocess, embedded, redis")
    base = (
        statistics.median(results["inprocess"]["round_seconds"]) if "inprocess" in results else None
    )
    rows = []
    for mode, r in results.items():
        median = statistics.median(r["round_seconds"])
        rows.append(
            {
                "mode": mode,
                "rounds": len(r["round_seconds"]),
                "median_round_s": round(median, 4),
                "ratio_to_inprocess": round(median / base, 3) if base else None,
                "task_start_latency_s": None
                if r["latency_seconds"] is None
                else round(r["latency_seconds"], 4),
                "round_seconds": [round(x, 4) for x in r["round_seconds"]],
            }
        )
    if args.json:
        print(json.dumps({"config": str(args.config), "rows": rows}, indent=2))
        return
    print(f"{'mode':<10} {'median round s':>14} {'x in-process':>12} {'task start s':>12}")
    for row in rows:
        lat = row["task_start_latency_s"]
        print(
            f"{row['mode']:<10} {row['median_round_s']:>14.3f} "
            f"{row['ratio_to_inprocess'] or float('nan'):>12.3f} "
            f"{'-' if lat is None else f'{lat:.3f}':>12}"
        )


if __name__ == "__main__":
    main()
