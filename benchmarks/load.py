"""Load: live event streams and metrics reads against a running service with a running
experiment.

    .venv/bin/python benchmarks/load.py [--mode embedded|redis] [--duration 30]
        [--sse-clients 50] [--rate 100] [--json]

Starts ``fedmomentum up`` on a free loopback port (embedded: filesystem broker and SQLite;
redis: the local Redis and a fresh schema of the local PostgreSQL), launches a long
tiny-llama experiment (thousands of rounds: it runs through the whole load and is cancelled
afterwards), waits until it trains, then for ``--duration`` seconds holds ``--sse-clients``
event streams open (each from event 0: a replay, then live events) while sending ``--rate``
requests per second, open loop (on schedule, never waiting for earlier answers), to the
results endpoints the dashboard reads: metrics (client steps, evaluations), diagnostics and
rounds. Reports errors (a non-200 answer, a failed request, a stream that did not open or
ended early), latency percentiles per endpoint and the events the streams received. Every
connection goes to 127.0.0.1; everything stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STREAMS_PER_CLIENT = 100  # Settings.max_event_streams_per_client
CONFIG: dict[str, Any] = {
    "name": "load",
    "model": "tiny-llama",
    "dataset": "arith",
    "data": {"n_train": 120, "n_eval": 16, "partition": "iid"},
    "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
    "federation": {"num_clients": 3, "clients_per_round": 3, "rounds": 5000},
    "training": {"local_steps": 5, "batch_size": 4, "max_length": 64},
    "eval": {"batch_size": 16, "max_new_tokens": 8},
}
ENDPOINTS = {  # name -> path under the experiment, query
    "metrics client_step": ("metrics", {"kind": "client_step", "limit": 100}),
    "metrics eval": ("metrics", {"kind": "eval"}),
    "diagnostics": ("diagnostics", {"limit": 100}),
    "rounds": ("rounds", {}),
}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _postgres_schema(url: str) -> Any:
    """A database URL whose connections use a fresh schema (dropped afterwards)."""
    import sqlalchemy as sa

    schema = f"fm_load_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url, poolclass=sa.NullPool)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield sa.make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@contextmanager
def service(tmp: str, settings: dict[str, str], keep_log: Path | None = None) -> Any:
    """``fedmomentum up`` (API and its worker) on a free loopback port; yields the API URL."""
    port = _port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMOMENTUM_")}
    env.update(FEDMOMENTUM_DATA_DIR=f"{tmp}/data", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update(FEDMOMENTUM_TORCH_THREADS="1")  # leave a core to the API and the load
    env.update({f"FEDMOMENTUM_{k.upper()}": v for k, v in settings.items()})
    log_path = Path(tmp) / "service.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "up", "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}/api/v1"
        try:
            _wait(lambda: b" ready." in log_path.read_bytes() and _healthy(url), proc, log_path)
            yield url
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            if keep_log is not None:
                keep_log.write_bytes(log_path.read_bytes())


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(done: Any, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the service did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def start_experiment(url: str) -> str:
    """Create the long experiment and wait until its first round has trained."""
    http = httpx.Client(base_url=url, timeout=30)
    response = http.post("/experiments", json=CONFIG)
    response.raise_for_status()
    eid = response.json()["id"]
    deadline = time.monotonic() + 300
    while http.get(f"/experiments/{eid}").json()["current_round"] < 1:
        if time.monotonic() > deadline:
            raise RuntimeError(f"experiment {eid} did not finish a round in 300 s")
        time.sleep(0.5)
    return eid


class Stats:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.events: list[int] = []
        self.sent = 0
        self.opened = 0  # event streams answered 200


async def _request(http: httpx.AsyncClient, name: str, eid: str, stats: Stats) -> None:
    path, params = ENDPOINTS[name]
    start = time.perf_counter()
    try:
        response = await http.get(f"/experiments/{eid}/{path}", params=params)
        await response.aread()
    except httpx.HTTPError as e:
        stats.errors[f"{name}: {type(e).__name__}"] += 1
        return
    stats.latency[name].append(time.perf_counter() - start)
    if response.status_code != 200:
        stats.errors[f"{name}: HTTP {response.status_code}"] += 1


async def reads(url: str, eid: str, rate: float, duration: float, stats: Stats) -> float:
    """``rate`` requests per second for ``duration`` s, on schedule; the achieved rate."""
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        loop = asyncio.get_running_loop()
        names = list(ENDPOINTS)
        start = loop.time()
        tasks = []
        for i in range(int(rate * duration)):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_request(http, names[i % len(names)], eid, stats)))
        stats.sent = len(tasks)
        sent_in = loop.time() - start
        await asyncio.gather(*tasks)
    return stats.sent / sent_in


async def stream(http: httpx.AsyncClient, eid: str, stats: Stats) -> None:
    """One event stream, held open until the benchmark cancels it; counts its events."""
    events = 0
    try:
        async with http.stream("GET", f"/experiments/{eid}/events") as response:
            if response.status_code != 200:
                stats.errors[f"events: HTTP {response.status_code}"] += 1
                return
            stats.opened += 1
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    events += 1
        stats.errors["events: stream ended early"] += 1  # the experiment runs throughout
    except httpx.HTTPError as e:
        stats.errors[f"events: {type(e).__name__}"] += 1
    finally:  # cancelled at the end of the load: the normal way out
        stats.events.append(events)


async def load(url: str, eid: str, args: argparse.Namespace) -> tuple[Stats, float]:
    stats = Stats()
    limits = httpx.Limits(max_connections=args.sse_clients + 10)
    timeout = httpx.Timeout(30, read=None)  # a quiet stream is not an error
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as sse:
        streams = [asyncio.create_task(stream(sse, eid, stats)) for _ in range(args.sse_clients)]
        rate = await reads(url, eid, args.rate, args.duration, stats)
        for task in streams:
            task.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
    return stats, rate


def _round(v: Any) -> Any:
    return round(v, 1) if isinstance(v, float) else v


def _ms(values: list[float], q: float) -> float:
    return 1000 * statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def report(stats: Stats, rate: float, args: argparse.Namespace, status: str) -> dict[str, Any]:
    everything = [x for v in stats.latency.values() for x in v]
    rows = [
        {"endpoint": name, "requests": len(v), "p50_ms": _ms(v, 50), "p95_ms": _ms(v, 95)}
        for name, v in stats.latency.items()
    ]
    rows.append(
        {
            "endpoint": "all",
            "requests": len(everything),
            "p50_ms": _ms(everything, 50),
            "p95_ms": _ms(everything, 95),
        }
    )
    return {
        "mode": args.mode,
        "duration_s": args.duration,
        "rate_target": args.rate,
        "rate_achieved": round(rate, 1),
        "requests_sent": stats.sent,
        "sse_clients": args.sse_clients,
        "sse_streams_open": stats.opened,
        "sse_events_total": sum(stats.events),
        "sse_events_min_per_client": min(stats.events, default=0),
        "errors": sum(stats.errors.values()),
        "error_kinds": dict(stats.errors),
        "experiment_status_after": status,
        "latency": [{k: _round(v) for k, v in r.items()} for r in rows],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("embedded", "redis"), default="embedded")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--sse-clients", type=int, default=50)
    parser.add_argument("--rate", type=float, default=100.0, help="metrics requests per second")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1/test")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--log", type=Path, help="keep the service's log in this file")
    args = parser.parse_args()
    settings: dict[str, str] = {}
    if args.sse_clients > DEFAULT_STREAMS_PER_CLIENT:
        # All the streams come from 127.0.0.1: raise the per-client limit to fit them.
        settings["max_event_streams_per_client"] = str(args.sse_clients)
        print(f"FEDMOMENTUM_MAX_EVENT_STREAMS_PER_CLIENT={args.sse_clients} for this run")
    with tempfile.TemporaryDirectory() as tmp:
        if args.mode == "redis":
            prefix = f"fmload-{uuid.uuid4().hex[:8]}:"
            settings |= {"broker_url": args.redis_url, "broker_key_prefix": prefix}
            with _postgres_schema(args.postgres_url) as db_url:
                settings["database_url"] = db_url.render_as_string(hide_password=False)
                result = _run(tmp, settings, args)
        else:
            result = _run(tmp, settings, args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 1 if result["errors"] else 0


def _run(tmp: str, settings: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    with service(tmp, settings, args.log) as url:
        eid = start_experiment(url)
        stats, rate = asyncio.run(load(url, eid, args))
        status = httpx.get(f"{url}/experiments/{eid}", timeout=30).json()["status"]
        httpx.post(f"{url}/experiments/{eid}/cancel", timeout=30)
    return report(stats, rate, args, status)


def _print(r: dict[str, Any]) -> None:
    print(
        f"mode {r['mode']}: {r['duration_s']:.0f} s, {r['sse_clients']} SSE clients, "
        f"{r['rate_achieved']} req/s achieved (target {r['rate_target']:.0f}), "
        f"experiment {r['experiment_status_after']} at the end"
    )
    print(f"{'endpoint':<22} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8}")
    for row in r["latency"]:
        print(f"{row['endpoint']:<22} {row['requests']:>8} {row['p50_ms']:>8} {row['p95_ms']:>8}")
    print(
        f"SSE: {r['sse_streams_open']} streams open, {r['sse_events_total']} events "
        f"(min {r['sse_events_min_per_client']} per client); errors: {r['errors']} "
        f"{r['error_kinds'] or ''}"
    )


if __name__ == "__main__":
    sys.exit(main())
