"""``fedmomentum up`` and ``fedmomentum worker``: the service's processes.

``up`` migrates the database, starts one Celery worker process (unless --no-worker) and
serves the API and dashboard with uvicorn in this process; Ctrl-C stops both. The embedded
default (filesystem broker, SQLite) needs no server. With the filesystem broker no other
worker can exist, so every active experiment is re-dispatched at start and whenever the
embedded worker had to be restarted: nothing waits for the stale timeout.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

from backend.core.settings import Settings

log = logging.getLogger("fedmomentum")
WORKER_STOP_S = 20.0  # warm shutdown (finish the running task) before the worker is killed


def _embedded(settings: Settings) -> bool:
    return settings.broker_url.startswith("filesystem://")


def worker_command(queues: str = "train,aggregate", name: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "backend.cli", "worker", "--queues", queues]
    return cmd + (["--name", name] if name else [])


def _die_with_parent() -> None:
    """In the worker child (Linux): SIGTERM it when the service process dies, even by SIGKILL,
    so no orphaned worker keeps consuming the embedded queue."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


class WorkerSupervisor:
    """One worker subprocess, restarted if it dies while the service runs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def start(self) -> None:
        self._spawn()
        self.thread.start()

    def _spawn(self) -> None:
        self.process = subprocess.Popen(
            worker_command(), start_new_session=True, preexec_fn=_die_with_parent
        )
        log.info("worker started (pid %d)", self.process.pid)

    def _watch(self) -> None:
        from backend.db.lifecycle import reconcile

        while not self.stopping.is_set():
            assert self.process is not None
            code = self.process.wait()
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


def up(settings: Settings, *, host: str, port: int, worker: bool) -> int:
    import uvicorn

    from backend.api.app import create_app
    from backend.db.engine import migrate
    from backend.db.lifecycle import reconcile

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.database_url)
    supervisor = WorkerSupervisor(settings) if worker else None
    if supervisor is not None:
        if _embedded(settings):
            reconcile(settings, everything=True)
        supervisor.start()
    # uvicorn re-raises the SIGTERM it caught once it has shut down: make that an exception,
    # so the worker is stopped below instead of the process dying on the spot.
    signal.signal(signal.SIGTERM, _terminate)
    print(f"FedMomentum is running on http://{host}:{port}  (API docs: /docs; Ctrl-C stops)")
    sys.stdout.flush()
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
    finally:
        if supervisor is not None:
            supervisor.stop()
    return 0


def worker(settings: Settings, *, queues: str, name: str | None) -> int:
    """A Celery worker in this process: one task at a time (the solo pool; scale out with
    more processes), so each process keeps its loaded models between tasks."""
    from workers.tasks import app

    argv = ["worker", "--pool=solo", f"--queues={queues}", "--loglevel=INFO", "--without-gossip"]
    argv += ["--without-mingle", f"--hostname={name or f'worker-{os.getpid()}@%h'}"]
    app.worker_main(argv)
    return 0
