"""``fedmomentum up`` and ``fedmomentum worker``: the service's processes.

``up`` migrates the database, starts one Celery worker process (unless --no-worker) and
serves the API and dashboard with uvicorn in this process, or in --api-workers N uvicorn
worker processes that this one supervises; Ctrl-C stops them all. The embedded default
(filesystem broker, SQLite) needs no server. With the filesystem broker no other
worker can exist, so every active experiment is re-dispatched at start and whenever the
embedded worker had to be restarted: nothing waits for the stale timeout.

A watchdog restarts an embedded worker that went silent (active experiments, but no heartbeat
for ``worker_stall_s``), after it wrote the Python stacks of all its threads to the log
(faulthandler on SIGUSR1), so a hang is both survived and explained.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.core.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("fedmomentum")
WORKER_STOP_S = 20.0  # warm shutdown (finish the running task) before the worker is killed
API_STOP_S = 5.0  # for requests in flight at a stop; then open ones (event streams) are cut
STACKS_WAIT_S = 2.0  # after SIGUSR1, for the stall's stacks to reach the log
KEEP_ALIVE_S = 75  # seconds an idle HTTP connection stays open (see `up`)
WORKER_START_S = 600.0  # the watchdog's limit for a worker to become ready (imports, broker)
LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"


def _embedded(settings: Settings) -> bool:
    return settings.broker_url.startswith("filesystem://")


def worker_command(
    queues: str = "train,aggregate",
    name: str | None = None,
    ready_file: Path | None = None,
    parent_pid: int | None = None,
) -> list[str]:
    cmd = [sys.executable, "-m", "backend.cli", "worker", "--queues", queues]
    cmd += ["--name", name] if name else []
    cmd += ["--parent-pid", str(parent_pid)] if parent_pid else []
    return cmd + (["--ready-file", str(ready_file)] if ready_file else [])


def _exit_with_parent(parent_pid: int) -> None:
    """In the worker (Linux): SIGTERM it when the service process dies, even by SIGKILL, so no
    orphaned worker keeps consuming the embedded queue. Done by the worker itself after exec,
    not in a ``preexec_fn``: the service has threads, and Python code run between fork and
    exec (an import, ``dlopen``) can deadlock on a lock another thread held at the fork,
    leaving a child that never becomes a worker."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # it died before the line above
        raise SystemExit(f"the service process {parent_pid} is gone")


def _dump_stacks_on_sigusr1() -> None:
    # unregister first: register() only updates an enabled handler, even one replaced since.
    # sys.__stderr__: a Celery worker replaces sys.stderr with a logger (no file descriptor).
    faulthandler.unregister(signal.SIGUSR1)
    faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


class WorkerSupervisor:
    """One worker subprocess, restarted if it dies while the service runs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0  # time.monotonic() at the last spawn
        self.ready_file = settings.data_dir / "worker.ready"  # the worker writes it when ready
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self._spawn()
        self.thread.start()

    def _spawn(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            worker_command(ready_file=self.ready_file.absolute(), parent_pid=os.getpid()),
            start_new_session=True,
        )
        self.started = time.monotonic()
        log.info("worker started (pid %d)", self.process.pid)

    def _stalled(self) -> str | None:
        """How the worker is stalled, or None while it shows signs of life.

        Only the embedded worker: it is the only one, so every active experiment waits on it
        and the newest heartbeat of any of them is its last sign of life. Becoming ready counts
        as one (starting takes long on a loaded machine); starting gets WORKER_START_S."""
        from sqlalchemy.orm import Session

        from backend.db.engine import get_engine
        from backend.db.lifecycle import last_sign_of_life

        limit = self.settings.worker_stall_s
        if not limit or not _embedded(self.settings):
            return None
        try:
            ready = self.ready_file.stat().st_mtime
        except FileNotFoundError:
            starting = time.monotonic() - self.started
            if starting > max(limit, WORKER_START_S):
                return f"not ready {starting:.0f} s after its start"
            return None
        with Session(get_engine(self.settings.database_url)) as session:
            last = last_sign_of_life(session)
        if last is None:
            return None  # nothing to do, nothing to wait for
        silent = time.time() - max(ready, last.timestamp())
        if silent > limit:
            return f"silent for {silent:.0f} s with active experiments (worker_stall_s {limit:g})"
        return None

    def _wait(self, process: subprocess.Popen[bytes]) -> int:
        """Until the worker exits; a stalled one is made to exit (stacks to the log first)."""
        poll = min(5.0, max(0.2, self.settings.worker_stall_s / 10))
        while True:
            try:
                return process.wait(poll)
            except subprocess.TimeoutExpired:
                pass
            if self.stopping.is_set():
                continue
            try:
                stalled = self._stalled()
            except Exception:  # noqa: BLE001 - the database is busy or away: look again later
                log.exception("watchdog: cannot read the heartbeats")
                continue
            if stalled is not None:
                log.error(
                    "watchdog: worker (pid %d) %s; its stacks follow, then it is restarted",
                    process.pid, stalled,
                )  # fmt: skip
                process.send_signal(signal.SIGUSR1)  # faulthandler: every thread's stack
                time.sleep(STACKS_WAIT_S)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)

    def _watch(self) -> None:
        from backend.db.lifecycle import reconcile

        while not self.stopping.is_set():
            assert self.process is not None
            code = self._wait(self.process)
            if self.stopping.is_set():
                return
            log.warning("worker exited with %s; restarting it", code)
            time.sleep(1.0)
            if _embedded(self.settings):
                reconcile(self.settings, everything=True)
            self._spawn()

    def stop(self) -> None:
        self.stopping.set()
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)  # warm shutdown: finish the running task
        try:
            process.wait(WORKER_STOP_S)
        except subprocess.TimeoutExpired:
            log.warning("worker did not stop in %.0f s; killing it", WORKER_STOP_S)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def api_app() -> FastAPI:
    """The app of one of ``up``'s API processes (uvicorn's factory, in a process of its own):
    built from the environment's settings, as ``up``'s own; the process exits with ``up``."""
    import multiprocessing

    from backend.api.app import create_app

    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid is not None:
        _exit_with_parent(parent.pid)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    return create_app()


def up(
    settings: Settings, *, host: str, port: int, worker: bool, api_workers: int | None = None
) -> int:
    """Migrate, start the embedded worker (``worker``) and serve until a signal stops it.

    ``api_workers`` (default ``settings.api_workers``) above 1: that many uvicorn worker
    processes share the port; each builds its app from the environment (``api_app``), so
    ``settings`` must be the environment's (``get_settings()``)."""
    from backend.db.engine import migrate
    from backend.db.lifecycle import reconcile

    api_workers = settings.api_workers if api_workers is None else api_workers  # both >= 1
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.database_url)
    supervisor = WorkerSupervisor(settings) if worker else None
    if supervisor is not None:
        if _embedded(settings):
            reconcile(settings, everything=True)
            stall, stale = settings.worker_stall_s, settings.stale_after_s
            if stall and settings.reconcile_interval_s and stale <= stall:
                log.warning(
                    "worker_stall_s (%.0f s) is not below stale_after_s (%.0f s): the "
                    "reconciler's re-dispatches hide a stalled worker from the watchdog",
                    stall, stale,
                )  # fmt: skip
        supervisor.start()
    # The API's imports after the worker's start: both processes load side by side.
    import uvicorn

    # uvicorn re-raises the SIGTERM it caught once it has shut down: make that an exception,
    # so the worker is stopped below instead of the process dying on the spot.
    signal.signal(signal.SIGTERM, _terminate)
    print(f"FedMomentum is running on http://{host}:{port}  (API docs: /docs; Ctrl-C stops)")
    sys.stdout.flush()
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,
        # An idle keep-alive connection is closed by the server only well after clients
        # stop reusing theirs (httpx: 5 s, browsers: minutes, proxies: about 60 s): closed
        # at the same moment, a request sent on it fails with a reset.
        "timeout_keep_alive": KEEP_ALIVE_S,
        "timeout_graceful_shutdown": API_STOP_S,  # a live event stream never ends by itself
    }
    try:
        if api_workers == 1:
            from backend.api.app import create_app

            uvicorn.run(create_app(settings), **options)
        else:
            # Every process runs its own reconciler: harmless, a dispatch claims the next
            # generation with a conditional UPDATE, so of two racing reconcilers one sends it.
            # uvicorn's supervisor takes the signals here: a stop by one returns (exit 0).
            uvicorn.run("backend.cli.serve:api_app", factory=True, workers=api_workers, **options)
    finally:
        if supervisor is not None:
            supervisor.stop()
    return 0


def worker(
    settings: Settings,
    *,
    queues: str,
    name: str | None,
    ready_file: Path | None = None,
    parent_pid: int | None = None,
) -> int:
    """A Celery worker in this process: one task at a time (the solo pool; scale out with
    more processes), so each process keeps its loaded models between tasks. ``ready_file``
    is written (this process id) once it consumes tasks; ``parent_pid``: the service process
    that started it (it exits with it)."""
    if parent_pid is not None:
        _exit_with_parent(parent_pid)
    from celery.signals import worker_ready

    import workers.service  # noqa: F401 - torch and the steps loaded before "ready", not in a task
    from workers.tasks import app

    def on_ready(**_: object) -> None:
        # Again: Celery took SIGUSR1 for a stack dump of its own in Python, which never runs
        # while the main thread is stuck in C (a lock, a system call).
        _dump_stacks_on_sigusr1()
        if ready_file is not None:
            ready_file.write_text(str(os.getpid()))

    _dump_stacks_on_sigusr1()  # the watchdog's stack dump (faulthandler, every thread)
    worker_ready.connect(on_ready, weak=False)

    argv = ["worker", "--pool=solo", f"--queues={queues}", "--loglevel=INFO", "--without-gossip"]
    argv += ["--without-mingle", f"--hostname={name or f'worker-{os.getpid()}@%h'}"]
    app.worker_main(argv)
    return 0
