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
rounds. The streams run in a child process (their parsing does not delay the requests'
clock). Reports errors (a non-200 answer, a failed request, a stream that did not open or
ended early, events repeated, out of order or missing against the other streams), latency
percentiles per endpoint, the events the streams received, and the experiment's round time
during the load against the ``--baseline`` seconds before it (no load). Every connection
goes to 127.0.0.1.

Everything it starts stops on any exit (the end, an error, Ctrl-C, SIGTERM or SIGHUP from
``timeout`` or a closed terminal): the experiment is cancelled, the service's process group
and those of its descendants (the worker runs in its own session) get SIGTERM, then SIGKILL,
the stream process ends, and the PostgreSQL schema is dropped. The service and the stream
process also get SIGTERM from the kernel if this process is killed outright.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import multiprocessing as mp
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STREAMS_PER_CLIENT = 100  # Settings.max_event_streams_per_client
STOP_S = 30.0  # SIGTERM to SIGKILL
MAX_IN_FLIGHT = 400  # unanswered requests
STALL_S = 5.0  # an open stream with no event for this long, while the others get some
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
EVENT_ID = re.compile(rb"^id: (\d+)$", re.MULTILINE)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP: unwinds like Ctrl-C, through every ``finally``."""


def _on_signal(signum: int, _frame: Any) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the cleanup under way is not interrupted
    raise Stopped(signal.Signals(signum).name)


def _die_with_parent() -> None:
    """In a child (Linux): SIGTERM when this process dies, even by SIGKILL."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


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


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children[int(fields[1])].append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _state(pid: int) -> str | None:
    """The process's state letter (Z: a zombie), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z")


def _signal_groups(pids: list[int], sig: int) -> None:
    groups = set()
    for pid in filter(_alive, pids):
        with suppress(ProcessLookupError):
            groups.add(os.getpgid(pid))
    for pgid in groups:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def api_cpu_seconds(api_pid: int) -> float:
    """CPU time so far of the API: the ``up`` process and its uvicorn worker processes
    (``--api-workers``), not the Celery worker and what it started."""

    def is_worker(pid: int) -> bool:
        with suppress(OSError):
            return b"backend.cli\x00worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
        return False

    workers = {pid for pid in _descendants(api_pid) if is_worker(pid)}
    below = {d for w in workers for d in _descendants(w)}
    api = [api_pid, *(p for p in _descendants(api_pid) if p not in workers | below)]
    total = 0.0
    for pid in api:
        with suppress(OSError):
            total += cpu_seconds(pid)
    return total


def stop_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group of ``proc`` and of each of its descendants (the worker
    starts its own session); SIGKILL to whatever is left after STOP_S."""
    tree = [proc.pid, *_descendants(proc.pid)]
    _signal_groups(tree, signal.SIGTERM)
    deadline = time.monotonic() + STOP_S
    while time.monotonic() < deadline and (proc.poll() is None or any(map(_alive, tree[1:]))):
        time.sleep(0.2)
    tree += [p for p in _descendants(proc.pid) if p not in tree]
    _signal_groups(tree, signal.SIGKILL)
    proc.wait()


@contextmanager
def service(tmp: str, settings: dict[str, str], keep_log: Path | None = None) -> Any:
    """``fedmomentum up`` (API and its worker) on a free loopback port; yields the API URL
    and the API's process id."""
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
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}/api/v1"
        try:
            _wait(lambda: b" ready." in log_path.read_bytes() and _healthy(url), proc, log_path)
            yield url, proc.pid
        finally:
            stop_tree(proc)
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


@contextmanager
def experiment(url: str) -> Any:
    """The long experiment, once its first round has trained; cancelled on the way out."""
    http = httpx.Client(base_url=url, timeout=30)
    response = http.post("/experiments", json=CONFIG)
    response.raise_for_status()
    eid = response.json()["id"]
    try:
        deadline = time.monotonic() + 300
        while http.get(f"/experiments/{eid}").json()["current_round"] < 1:
            if time.monotonic() > deadline:
                raise RuntimeError(f"experiment {eid} did not finish a round in 300 s")
            time.sleep(0.5)
        yield eid
    finally:
        with suppress(httpx.HTTPError):
            http.post(f"/experiments/{eid}/cancel")
        http.close()


def round_times(url: str, eid: str, start: float, end: float) -> list[float]:
    """Seconds per round of the rounds that finished between two wall-clock times (each
    from the previous round's finish)."""
    rows: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, timeout=30) as http:
        while True:
            page = http.get(f"/experiments/{eid}/rounds", params={"offset": len(rows)}).json()
            rows += page["data"]
            if not page["data"] or len(rows) >= page["count"]:
                break
    done = sorted(
        datetime.fromisoformat(r["finished_at"]).timestamp() for r in rows if r["finished_at"]
    )
    return [b - a for a, b in zip(done, done[1:], strict=False) if start <= b <= end]


class Stats:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.sent = 0


class Connections:
    """Keep-alive HTTP/1.1 connections to the service for GET requests, written directly on
    asyncio streams. The load generator shares the machine with what it measures, so it must
    cost far less per request than the service: httpx's async client took ~6.7 ms of CPU per
    request here (more than the service's ~4 ms), so its own event loop, not the service,
    set the latency it reported (curl during such a run: ~7 ms)."""

    def __init__(self, url: str) -> None:
        parsed = httpx.URL(url)
        self.host, self.port, self.prefix = parsed.host, parsed.port or 80, parsed.path
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.all: set[asyncio.StreamWriter] = set()

    async def get(self, path: str) -> tuple[int, bytes]:
        """Status and body of ``GET path``; raises OSError or ValueError on any failure."""
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self.all.add(writer)
        try:
            writer.write(f"GET {self.prefix}{path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            lines = head.split(b"\r\n")
            status = int(lines[0].split()[1])
            length = next(
                (int(v) for k, _, v in (x.partition(b":") for x in lines[1:])
                 if k.lower() == b"content-length"),
                None,
            )  # fmt: skip
            if length is None:  # (a StopIteration here would end the coroutine as a RuntimeError)
                raise ValueError(f"no Content-Length in the answer to {path}")
            body = await asyncio.wait_for(reader.readexactly(length), 30)
        except BaseException:
            writer.close()
            self.all.discard(writer)
            raise
        self.idle.append((reader, writer))
        return status, body

    def close(self) -> None:
        for writer in self.all:
            writer.close()


async def _request(http: Connections, name: str, eid: str, stats: Stats) -> None:
    path, params = ENDPOINTS[name]
    start = time.perf_counter()
    try:
        status, _ = await http.get(f"/experiments/{eid}/{path}?{urlencode(params)}")
    except (OSError, ValueError, asyncio.IncompleteReadError) as e:
        stats.errors[f"{name}: {type(e).__name__}"] += 1
        return
    except TimeoutError:
        stats.errors[f"{name}: timeout"] += 1
        return
    stats.latency[name].append(time.perf_counter() - start)
    if status != 200:
        stats.errors[f"{name}: HTTP {status}"] += 1


async def reads(url: str, eid: str, rate: float, duration: float, stats: Stats) -> float:
    """``rate`` requests per second for ``duration`` s, on schedule; the achieved rate. A
    request due while MAX_IN_FLIGHT are still unanswered is not sent and counts as an error
    (the service is failing anyway). Each request in flight has a connection of its own."""
    http = Connections(url)
    try:
        loop = asyncio.get_running_loop()
        names = list(ENDPOINTS)
        start = loop.time()
        tasks: set[asyncio.Task[None]] = set()
        for i in range(int(rate * duration)):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(tasks) >= MAX_IN_FLIGHT:
                stats.errors[f"not sent: {MAX_IN_FLIGHT} requests unanswered"] += 1
                continue
            task = asyncio.create_task(_request(http, names[i % len(names)], eid, stats))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            stats.sent += 1
        sent_in = loop.time() - start
        await asyncio.gather(*tasks)
    finally:
        http.close()
    return int(rate * duration) / sent_in


# ---- the event streams (a child process) -------------------------------------------------------


async def _stream(
    http: httpx.AsyncClient, eid: str, ids: list[int], at: list[float], out: dict[str, Any]
) -> None:
    """One event stream from event 0, held open until cancelled; the ids it received and
    (``at[0]``) when it last received one."""
    errors: Counter[str] = out["errors"]
    try:
        async with http.stream("GET", f"/experiments/{eid}/events") as response:
            if response.status_code != 200:
                errors[f"events: HTTP {response.status_code}"] += 1
                return
            out["opened"] += 1
            rest = b""
            async for chunk in response.aiter_bytes():
                done = (rest + chunk).rpartition(b"\n\n")  # whole events, the rest
                new = EVENT_ID.findall(done[0])
                if new:
                    ids += map(int, new)
                    at[0] = time.monotonic()
                rest = done[2]
        errors["events: stream ended early"] += 1  # the experiment runs throughout
    except httpx.HTTPError as e:
        errors[f"events: {type(e).__name__}"] += 1


async def _streams(url: str, eid: str, n: int, stop: Any, ready: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"errors": Counter(), "opened": 0}
    ids: list[list[int]] = [[] for _ in range(n)]
    limits = httpx.Limits(max_connections=n + 10)
    timeout = httpx.Timeout(30, read=None)  # a quiet stream is not an error
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as sse:
        at = [[0.0] for _ in range(n)]
        tasks = [asyncio.create_task(_stream(sse, eid, ids[i], at[i], out)) for i in range(n)]
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        stopped = time.monotonic()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    out["events"] = [len(x) for x in ids]
    # The experiment emits events every round (a fraction of a second): a stream that got
    # nothing in the last STALL_S while another did has stopped following, whatever it got
    # before (the id comparison below only covers what every stream reached).
    if any(stopped - a[0] < STALL_S for a in at):
        stalled = sum(1 for x, a in zip(ids, at, strict=True) if x and stopped - a[0] >= STALL_S)
        if stalled:
            out["errors"]["events: a stream stalled"] += stalled
    out["errors"].update(_check_ids(ids))
    return out


def _check_ids(ids: list[list[int]]) -> Counter[str]:
    """Each stream's ids strictly increasing, and the same as every other stream's up to
    the last id all of them reached (of the streams that received any)."""
    errors: Counter[str] = Counter()
    errors["events: none received"] = sum(1 for x in ids if not x)
    ids = [x for x in ids if x]
    for x in ids:
        if any(b <= a for a, b in zip(x, x[1:], strict=False)):
            errors["events: repeated or out of order"] += 1
    cutoff = min((x[-1] for x in ids), default=0)
    union = sorted({i for x in ids for i in x if i <= cutoff})
    errors["events: a stream missed some"] += sum(
        1 for x in ids if [i for i in x if i <= cutoff] != union
    )
    return +errors


def _streams_main(url: str, eid: str, n: int, stop: Any, ready: Any, results: Any) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    out = asyncio.run(_streams(url, eid, n, stop, ready))
    results.put({**out, "errors": dict(out["errors"])})


@contextmanager
def streams(url: str, eid: str, n: int) -> Any:
    """``n`` event streams in a child process; yields a function that stops them and returns
    what they received. The process ends on any way out."""
    ctx = mp.get_context("spawn")
    stop, ready, results = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_streams_main, args=(url, eid, n, stop, ready, results), daemon=True)
    proc.start()

    def finish() -> dict[str, Any]:
        stop.set()
        out: dict[str, Any] = results.get(timeout=120)
        return out

    try:
        if not ready.wait(60):
            raise RuntimeError("the stream process did not start")
        yield finish
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


def load(url: str, eid: str, args: argparse.Namespace) -> dict[str, Any]:
    stats = Stats()
    with streams(url, eid, args.sse_clients) as finish:
        start = time.time()
        rate = asyncio.run(reads(url, eid, args.rate, args.duration, stats))
        end = time.time()
        sse = finish()
    stats.errors.update(sse["errors"])
    return {"stats": stats, "rate": rate, "sse": sse, "window": (start, end)}


# ---- report ---------------------------------------------------------------------------------


def _round(v: Any) -> Any:
    return round(v, 1) if isinstance(v, float) else v


def _ms(values: list[float], q: float) -> float:
    return 1000 * statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def report(run: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    stats: Stats = run["stats"]
    everything = [x for v in stats.latency.values() for x in v]
    rows = [
        {"endpoint": name, "requests": len(v), "p50_ms": _ms(v, 50), "p95_ms": _ms(v, 95)}
        for name, v in [*stats.latency.items(), ("all", everything)]
        if len(v) > 1
    ]
    base, loaded = _median(run["baseline_rounds"]), _median(run["loaded_rounds"])
    return {
        "mode": args.mode,
        "duration_s": args.duration,
        "rate_target": args.rate,
        "rate_achieved": round(run["rate"], 1),
        "requests_sent": stats.sent,
        "sse_clients": args.sse_clients,
        "sse_streams_open": run["sse"]["opened"],
        "sse_events_total": sum(run["sse"]["events"]),
        "sse_events_min_per_client": min(run["sse"]["events"], default=0),
        "errors": sum(stats.errors.values()),
        "error_kinds": dict(stats.errors),
        "experiment_status_after": run["status"],
        "round_s_unloaded": base,
        "round_s_loaded": loaded,
        "rounds_measured": [len(run["baseline_rounds"]), len(run["loaded_rounds"])],
        "round_time_ratio": round(loaded / base, 3) if base and loaded else None,
        "load_average": run["load_average"],
        "api_workers": args.api_workers,
        "api_cpu_cores": run["api_cpu"],  # CPU seconds of the API processes per second of load
        "latency": [{k: _round(v) for k, v in r.items()} for r in rows],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("embedded", "redis"), default="embedded")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--baseline", type=float, default=20.0, help="seconds without load")
    parser.add_argument("--sse-clients", type=int, default=50)
    parser.add_argument("--rate", type=float, default=100.0, help="metrics requests per second")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1/test")
    parser.add_argument(
        "--api-workers", type=int, default=1, help="API processes (fedmomentum up --api-workers)"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--log", type=Path, help="keep the service's log in this file")
    args = parser.parse_args()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    settings: dict[str, str] = {"api_workers": str(args.api_workers)}
    if args.sse_clients > DEFAULT_STREAMS_PER_CLIENT:
        # All the streams come from 127.0.0.1: raise the per-client limit to fit them.
        settings["max_event_streams_per_client"] = str(args.sse_clients)
        print(f"FEDMOMENTUM_MAX_EVENT_STREAMS_PER_CLIENT={args.sse_clients} for this run")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.mode == "redis":
                prefix = f"fmload-{uuid.uuid4().hex[:8]}:"
                settings |= {"broker_url": args.redis_url, "broker_key_prefix": prefix}
                with _postgres_schema(args.postgres_url) as db_url:
                    settings["database_url"] = db_url.render_as_string(hide_password=False)
                    result = _run(tmp, settings, args)
            else:
                result = _run(tmp, settings, args)
    except (KeyboardInterrupt, Stopped) as e:
        print(f"stopped ({type(e).__name__} {e}); everything it started is stopped")
        return 130
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 1 if result["errors"] else 0


def _run(tmp: str, settings: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    with service(tmp, settings, args.log) as (url, api_pid), experiment(url) as eid:
        start = time.time()
        time.sleep(args.baseline)
        before, cpu = os.getloadavg(), api_cpu_seconds(api_pid)
        run = load(url, eid, args)
        window = run["window"][1] - run["window"][0]
        run["api_cpu"] = round((api_cpu_seconds(api_pid) - cpu) / window, 2)
        after = os.getloadavg()
        run["load_average"] = {
            "before": [round(x, 2) for x in before],
            "after": [round(x, 2) for x in after],
        }
        run["status"] = httpx.get(f"{url}/experiments/{eid}", timeout=30).json()["status"]
        run["baseline_rounds"] = round_times(url, eid, start, run["window"][0])
        run["loaded_rounds"] = round_times(url, eid, *run["window"])
    return report(run, args)


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
    print(
        f"round time: {r['round_s_unloaded']} s unloaded, {r['round_s_loaded']} s loaded "
        f"(x{r['round_time_ratio']}; rounds {r['rounds_measured']}); "
        f"load average {r['load_average']}; the API ({r['api_workers']} process(es)) used "
        f"{r['api_cpu_cores']} cores"
    )


if __name__ == "__main__":
    sys.exit(main())
