"""Real service processes for the service tests: the API (``fedmomentum up``), Celery worker
processes (``fedmomentum worker``), the real Redis and PostgreSQL, or the embedded mode
(filesystem broker + SQLite). Redis or PostgreSQL missing fails the tests; nothing skips.

Each service gets its own data directory, its own PostgreSQL schema and its own Redis key
prefix, so test sessions running side by side never share a queue or a row.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.helpers import free_port, postgres_schema, require_redis, unique

ROOT = Path(__file__).resolve().parents[2]
FINISHED = ("completed", "failed", "cancelled")


def tiny_config(**changes: Any) -> dict[str, Any]:
    """A 2-round tiny-llama experiment (seconds on a CPU)."""
    data: dict[str, Any] = {
        "name": "svc",
        "model": "tiny-llama",
        "dataset": "arith",
        "data": {"n_train": 40, "n_eval": 8, "partition": "iid"},
        "federation": {"num_clients": 4, "clients_per_round": 2, "rounds": 2},
        "training": {"local_steps": 3},
    }
    return data | changes


class Proc:
    """A child process in its own process group, its output in a log file."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.handle = log.open("ab")
        self.popen = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=self.handle, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash: no cleanup of any kind)."""
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(30)
        self.handle.close()

    def kill_tree(self) -> None:
        """SIGKILL the process and every descendant (``up``'s worker runs in a session of its
        own): the end of a test, where a graceful stop would only wait for the interpreters'
        exits."""
        if self.alive():  # not reaped: its pid is still its own, not a reused one
            for pid in descendants(self.popen.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.kill()

    def stop(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(30)
        self.kill()


def read_events(response: httpx.Response) -> list[dict[str, Any]]:
    """An open SSE response read until its ``end`` event: [{id, event, data}]."""
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    out: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for line in response.iter_lines():
        if line.startswith("id: "):
            current["id"] = int(line[4:])
        elif line.startswith("event: "):
            current["event"] = line[7:]
        elif line.startswith("data: "):
            current["data"] = json.loads(line[6:])
        elif line == "" and "event" in current:
            out.append(current)
            if current["event"] == "end":
                return out
            current = {}
    return out


def descendants(pid: int) -> list[int]:
    """The process ids of ``pid``'s children, their children, and so on (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [c for c, p in parents.items() if p in frontier]
        found += children
        frontier = children
    return found


class Service:
    """A running FedMomentum service and an HTTP client for it."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env = tmp, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=f"{self.url}/api/v1", timeout=30)
        self.procs: list[Proc] = []
        self.api_proc: Proc | None = None

    def _spawn(
        self,
        name: str,
        args: list[str],
        env: dict[str, str] | None = None,
        module: str = "backend.cli",
    ) -> Proc:
        log = self.tmp / f"{name}-{len(self.procs)}.log"
        proc = Proc([sys.executable, "-m", module, *args], env or self.env, log)
        self.procs.append(proc)
        return proc

    def api(
        self,
        *,
        worker: bool = False,
        faults: dict[str, str] | None = None,
        options: list[str] | None = None,
        **settings: str,
    ) -> Proc:
        """``fedmomentum up`` (with --no-worker unless ``worker``; ``options``: more of its
        flags); waits for /health. ``settings`` and ``faults``: as for ``worker`` (the
        embedded worker inherits both)."""
        args = ["up", "--port", str(self.port)] + ([] if worker else ["--no-worker"])
        args += options or []
        env = self.env | {f"FEDMOMENTUM_{k.upper()}": v for k, v in settings.items()}
        env |= {f"FAULT_{k.upper()}": v for k, v in (faults or {}).items()}
        module = "tests.service.faulty_worker" if faults else "backend.cli"
        self.api_proc = proc = self._spawn("up" if worker else "api", args, env, module)
        self._wait(lambda: self._healthy(), proc, "the API to answer /health")
        if worker:
            self._wait(lambda: " ready." in proc.output(), proc, "the embedded worker")
        return proc

    def worker(
        self,
        queues: str = "train,aggregate",
        name: str | None = None,
        faults: dict[str, str] | None = None,
        wait: bool = True,
        **settings: str,
    ) -> Proc:
        """A worker process (``name``: its Celery node name; ``settings``: FEDMOMENTUM_*
        variables of this worker only, e.g. silo_data; ``faults``: FAULT_* variables of
        tests/service/faulty_worker.py, which then runs it with that fault injected).
        ``wait=False``: started, not yet ready (see ``ready``), so that several processes
        start side by side."""
        args = ["worker", "--queues", queues] + (["--name", name] if name else [])
        env = self.env | {f"FEDMOMENTUM_{k.upper()}": v for k, v in settings.items()}
        env |= {f"FAULT_{k.upper()}": v for k, v in (faults or {}).items()}
        module = "tests.service.faulty_worker" if faults else "backend.cli"
        proc = self._spawn("faulty-worker" if faults else "worker", args, env, module)
        return self.ready(proc)[0] if wait else proc

    def ready(self, *workers: Proc) -> list[Proc]:
        """Until each worker started with ``wait=False`` is ready."""
        for proc in workers:
            self._wait(lambda p=proc: " ready." in p.output(), proc, "the worker to be ready")
        return list(workers)

    def api_and_worker(self, **worker: Any) -> Proc:
        """The API and one worker (``worker``'s keywords), started side by side; the worker."""
        proc = self.worker(wait=False, **worker)
        self.api()
        return self.ready(proc)[0]

    def _healthy(self) -> bool:
        try:
            return self.http.get("/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _wait(self, done: Callable[[], bool], proc: Proc, what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if not proc.alive():
                pytest.fail(f"process died waiting for {what}:\n{proc.output()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}:\n{proc.output()[-4000:]}")
            time.sleep(0.1)

    def create(self, **changes: Any) -> dict[str, Any]:
        response = self.http.post("/experiments", json=tiny_config(**changes))
        assert response.status_code == 201, response.text
        return response.json()

    def get(self, experiment_id: str) -> dict[str, Any]:
        response = self.http.get(f"/experiments/{experiment_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_until(
        self, experiment_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 180
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                exp = self.get(experiment_id)
                if done(exp):
                    return exp
            except httpx.HTTPError:
                pass  # the API may be restarting
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.log.name}\n{p.output()[-3000:]}" for p in self.procs)
                pytest.fail(f"experiment {experiment_id} did not get there in time\n{logs}")
            time.sleep(0.2)

    def wait_finished(self, experiment_id: str, timeout: float = 180) -> dict[str, Any]:
        return self.wait_until(experiment_id, lambda e: e["status"] in FINISHED, timeout)

    def metrics(self, experiment_id: str, kind: str, **params: Any) -> list[dict[str, Any]]:
        """Every metric of a kind (all pages)."""
        rows: list[dict[str, Any]] = []
        while True:
            page = self.http.get(
                f"/experiments/{experiment_id}/metrics",
                params={"kind": kind, "offset": len(rows), "limit": 500, **params},
            ).json()
            rows += page["data"]
            if len(rows) >= page["count"]:
                return rows

    def events(self, experiment_id: str, last_event_id: int | None = None) -> list[dict[str, Any]]:
        """The SSE stream until its ``end`` event: [{id, event, data}]."""
        headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
        with self.http.stream(
            "GET", f"/experiments/{experiment_id}/events", headers=headers, timeout=120
        ) as response:
            return read_events(response)

    def close(self) -> None:
        """Kill every process of the test: nothing after a test needs a graceful stop."""
        for proc in reversed(self.procs):
            proc.kill_tree()
        self.http.close()


def _env(tmp: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMOMENTUM_")}
    env.update(
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        FEDMOMENTUM_DATA_DIR=str(tmp / "data"),
        FEDMOMENTUM_TORCH_THREADS="1",  # the test process, API and worker share 2 cores
        FEDMOMENTUM_PROGRESS_INTERVAL_S="0.2",
        FEDMOMENTUM_RECONCILE_INTERVAL_S="1",
        FEDMOMENTUM_STALE_AFTER_S="5",  # a silent experiment is re-dispatched after 5 s
    )
    env.update({f"FEDMOMENTUM_{k.upper()}": v for k, v in settings.items()})
    return env


def _redis_service(tmp: Path) -> Iterator[Service]:
    url = require_redis()
    prefix = unique("fmtest:")
    with postgres_schema() as database_url:
        env = _env(tmp, broker_url=url, broker_key_prefix=prefix, database_url=database_url)
        service = Service(tmp, env)
        try:
            yield service
        finally:
            service.close()
            client = redis.Redis.from_url(url)
            keys = list(client.scan_iter(f"{prefix}*"))
            if keys:
                client.delete(*keys)


@pytest.fixture
def redis_service(tmp_path: Path) -> Iterator[Service]:
    """Redis broker and results, PostgreSQL database; start processes with .api()/.worker()."""
    yield from _redis_service(tmp_path)


@pytest.fixture(scope="module")
def running_redis_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """An API and one worker on Redis + PostgreSQL, shared by a module's tests."""
    for service in _redis_service(tmp_path_factory.mktemp("redis")):
        service.api_and_worker()
        yield service


@pytest.fixture
def embedded_service(tmp_path: Path) -> Iterator[Service]:
    """The embedded mode: filesystem broker, SQLite results and database; no server."""
    service = Service(tmp_path, _env(tmp_path))
    try:
        yield service
    finally:
        service.close()
