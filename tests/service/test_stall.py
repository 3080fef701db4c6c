"""The embedded service under stress and the watchdog of ``fedmomentum up``: many experiments at
once on a loaded CPU while the embedded worker is SIGKILLed at random moments, and a worker
that hangs, whose stacks reach the log before it is restarted."""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.service.conftest import Proc, Service
from tests.service.test_service import _children, assert_complete_and_exactly_once

STRESS_EXPERIMENTS = 30
STRESS_KILLS = 5
SMALL = {
    "data": {"n_train": 8, "n_eval": 4, "partition": "iid"},
    "federation": {"num_clients": 2, "clients_per_round": 2, "rounds": 2},
    "training": {"local_steps": 2, "batch_size": 2},
}


@contextmanager
def busy_cores(n: int) -> Iterator[None]:
    """``n`` processes spinning on the CPU for the duration of the block."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def worker_pid(up: Proc) -> int:
    children = _children(up.popen.pid)
    assert len(children) == 1, f"up runs one worker process, not {children}"
    return children[0]


def wait_ready(service: Service, up: Proc, count: int, timeout: float = 120) -> None:
    """Until the embedded worker has been ready ``count`` times (each start says so once)."""
    deadline = time.monotonic() + timeout
    while up.output().count(" ready.") < count:
        assert up.alive(), up.output()[-4000:]
        assert time.monotonic() < deadline, f"the worker did not restart:\n{up.output()[-4000:]}"
        time.sleep(0.1)


def duplicate_metric_keys(db: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT experiment_id, kind, round, client, step, layer, COUNT(*) FROM metrics "
            "GROUP BY experiment_id, kind, round, client, step, layer HAVING COUNT(*) > 1"
        ).fetchall()


def completed_rounds(db: Path) -> dict[str, list[int]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT experiment_id, round FROM rounds WHERE status = 'completed' "
            "ORDER BY experiment_id, round"
        ).fetchall()
    out: dict[str, list[int]] = {}
    for eid, rnd in rows:
        out.setdefault(eid, []).append(rnd)
    return out


def watchdog_reports(log: str) -> list[str]:
    return re.findall(r"watchdog: worker \(pid \d+\) silent for \d+ s", log)


def test_many_experiments_survive_random_worker_kills_on_a_busy_cpu(
    embedded_service: Service,
) -> None:
    service = embedded_service
    rng = random.Random(int(os.environ.get("STRESS_SEED", "20261201")))  # to try other moments
    started = time.monotonic()
    with busy_cores(2):
        # stale_after_s above the run: only the supervisor re-dispatches (after each kill).
        up = service.api(worker=True, stale_after_s="900", worker_stall_s="30")
        experiments = [
            service.create(name=f"stress-{i}", **SMALL) for i in range(STRESS_EXPERIMENTS)
        ]
        starts = 1
        for _ in range(STRESS_KILLS):
            time.sleep(rng.uniform(0.5, 6.0))
            os.kill(worker_pid(up), signal.SIGKILL)
            starts += 1
            wait_ready(service, up, starts)
        done = [service.wait_finished(e["id"], timeout=300) for e in experiments]
    elapsed = time.monotonic() - started

    for exp in done:
        assert_complete_and_exactly_once(service, exp)
    db = service.tmp / "data" / "fedmomentum.db"
    assert duplicate_metric_keys(db) == []
    assert completed_rounds(db) == {e["id"]: [0, 1] for e in experiments}
    assert up.output().count("worker exited with -9; restarting it") >= STRESS_KILLS
    stalls = watchdog_reports(up.output())
    print(f"\nstress: {len(done)} experiments, {STRESS_KILLS} kills, {elapsed:.0f} s, {stalls}")


def test_a_silent_worker_has_its_stacks_logged_and_is_restarted(
    embedded_service: Service,
) -> None:
    service = embedded_service
    marker = service.tmp / "stalled"
    up = service.api(
        worker=True,
        faults={"stall_round": "1", "marker": str(marker)},
        stale_after_s="900",
        worker_stall_s="8",
    )
    exp = service.create(name="stall", **SMALL)

    done = service.wait_finished(exp["id"], timeout=180)

    assert marker.exists()  # the worker did hang in round 1
    log = up.output()
    assert len(watchdog_reports(log)) == 1, log[-4000:]
    stacks = log[log.index("watchdog: worker") :]
    # faulthandler's dump of the hung worker: the hanging frame under the training task
    assert "most recent call first" in stacks
    assert re.search(r'faulty_worker\.py", line \d+ in stall_forever', stacks), stacks[:4000]
    assert re.search(r"line \d+ in train_client", stacks)
    assert "worker exited with -9; restarting it" in stacks
    assert stacks.count(" ready.") == 1  # the restarted worker
    assert_complete_and_exactly_once(service, done)


def test_an_evaluation_longer_than_the_watchdogs_limit_is_not_a_stall(
    embedded_service: Service,
) -> None:
    """Each evaluation takes about 16 s (8 batches of 2 s) against a watchdog limit of 8 s and
    a stale limit of 5 s: the worker beats the heart while it evaluates, so it is neither
    restarted nor re-dispatched (its work thrown away as stale), and the run completes."""
    service = embedded_service
    up = service.api(worker=True, faults={"slow_eval_s": "2"}, worker_stall_s="8")
    small = {
        **SMALL,
        "data": {**SMALL["data"], "n_eval": 16},
        "eval": {"batch_size": 2},
        "federation": {**SMALL["federation"], "rounds": 1},
    }
    exp = service.create(name="slow-eval", **small)

    done = service.wait_finished(exp["id"], timeout=240)

    log = up.output()
    assert done["status"] == "completed", done
    assert "watchdog:" not in log, log[-4000:]
    assert log.count(" ready.") == 1, log[-4000:]  # never restarted
    with sqlite3.connect(service.tmp / "data" / "fedmomentum.db") as conn:
        (generation,) = conn.execute(
            "SELECT generation FROM experiments WHERE id = ?", (exp["id"],)
        ).fetchone()
    assert generation == 1, log[-4000:]  # dispatched once: never taken for a silent one
    (eval_s,) = (m["values"]["eval_seconds"] for m in service.metrics(exp["id"], kind="round"))
    assert eval_s > 2 * 8, eval_s  # it did outlast the watchdog's limit, twice over


def test_the_embedded_worker_exits_when_up_is_killed(embedded_service: Service) -> None:
    """SIGKILL of ``up`` alone (not its worker's process group): the worker, which set its own
    parent-death signal after exec, gets SIGTERM and exits instead of consuming the queue."""
    service = embedded_service
    up = service.api(worker=True)
    wait_ready(service, up, 1)
    worker = worker_pid(up)

    os.kill(up.popen.pid, signal.SIGKILL)
    up.popen.wait(30)

    deadline = time.monotonic() + 60
    while _alive(worker):
        assert time.monotonic() < deadline, f"worker {worker} outlived up:\n{up.output()[-3000:]}"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, reaped by init later, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
