"""Soak: Redis + PostgreSQL, an API and 2 workers, 40 tiny experiments submitted over 15
minutes, and a random SIGKILL of a worker, the API or Redis about every minute (each restarted
at once). At the end every experiment must have completed, every metric row must be there
exactly once, and no file may be orphaned (a temporary file, a run directory without its
experiment, a round past the last, an upload no client record accounts for).

    .venv/bin/python benchmarks/soak.py                        # ~20 min on 2 cores
    .venv/bin/python benchmarks/soak.py --experiments 10 --spread 120 --kill-every 30

It starts its own redis-server (no persistence: a kill loses every queued message, which the
reconciler must recover) on a free port and its own PostgreSQL schema (FEDMOMENTUM_TEST_
POSTGRES_URL or the local server), and stops everything it started on any exit. Prints one
line per kill and a JSON summary; exit 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._service import free_port, healthy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get(
    "FEDMOMENTUM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
ROUNDS, CLIENTS, STEPS = 3, 2, 3
CONFIG = {
    "model": "tiny-llama",
    "dataset": "arith",
    "data": {"n_train": 40, "n_eval": 8, "partition": "iid"},
    "federation": {"num_clients": 4, "clients_per_round": CLIENTS, "rounds": ROUNDS},
    "training": {"local_steps": STEPS},
}
FINISHED = ("completed", "failed", "cancelled")


class Child:
    """A process in its own group, restartable, its output appended to one log."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.cmd, self.env, self.log = name, cmd, env, log
        self.popen: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.cmd, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def kill(self) -> None:
        if self.popen and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(30)

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def _wait(done: Any, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _redis_up(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=1).ping())
    except redis.exceptions.ConnectionError:
        return False


def _exactly_once(engine: sa.Engine, ids: list[str]) -> list[str]:
    """What is missing or doubled in the metrics of ``ids`` (empty when all is right)."""
    problems: list[str] = []
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT experiment_id, kind, round, client, step, layer FROM metrics")
        ).all()
    by_exp: dict[str, Counter[tuple[str, int]]] = {i: Counter() for i in ids}
    keys: Counter[tuple[Any, ...]] = Counter(tuple(r) for r in rows)
    problems += [f"doubled row {k}" for k, n in keys.items() if n > 1]
    for exp, kind, rnd, *_ in rows:
        if exp in by_exp:
            by_exp[exp][kind, rnd] += 1
    layers = {c["diagnostics", 0] for c in by_exp.values()}
    if len(layers) != 1 or 0 in layers:
        problems.append(f"diagnostics rows per round differ between experiments: {layers}")
    for exp, count in by_exp.items():
        want = {("eval", -1): 1}
        for r in range(ROUNDS):
            want |= {("eval", r): 1, ("round", r): 1, ("client", r): CLIENTS}
            want |= {("client_step", r): CLIENTS * STEPS, ("diagnostics", r): max(layers)}
        for key, n in want.items():
            if count[key] != n:
                problems.append(f"{exp}: {key} has {count[key]} rows, expected {n}")
    return problems


def _orphans(engine: sa.Engine, runs: Path, ids: list[str]) -> list[str]:
    """Files no record accounts for: temporary files, run directories of no experiment,
    rounds past the last, client uploads of a client the round has no record of."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT experiment_id, round, client FROM metrics WHERE kind = 'client'")
        ).all()
    recorded = {(e, r, c) for e, r, c in rows}
    found = []
    for upload in runs.glob("*/rounds/*/client-*.safetensors"):
        exp, rnd = upload.parts[-4], int(upload.parts[-2])
        if (exp, rnd, int(upload.stem.split("-")[1])) not in recorded:
            found.append(f"upload with no client record: {upload}")
    for path in runs.rglob("*"):
        if ".tmp" in path.name or path.name.startswith("."):
            found.append(f"temporary file {path}")
    for folder in runs.iterdir() if runs.exists() else []:
        if folder.name not in ids:
            found.append(f"run directory without an experiment: {folder}")
    for exp in ids:
        rounds = runs / exp / "rounds"
        extra = [p for p in rounds.iterdir() if int(p.name) >= ROUNDS] if rounds.exists() else []
        found += [f"round past the last: {p}" for p in extra]
    return found


def soak(args: argparse.Namespace, tmp: Path, children: list[Child]) -> dict[str, Any]:
    rng = random.Random(args.seed)
    redis_port, api_port = free_port(), free_port()
    schema = f"fm_soak_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(POSTGRES_URL, poolclass=sa.NullPool)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    database_url = sa.make_url(POSTGRES_URL).update_query_dict(
        {"options": f"-csearch_path={schema}"}
    )
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDMOMENTUM_")}
        env |= {
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "FEDMOMENTUM_DATA_DIR": str(tmp / "data"),
            "FEDMOMENTUM_DATABASE_URL": database_url.render_as_string(hide_password=False),
            "FEDMOMENTUM_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
            "FEDMOMENTUM_TORCH_THREADS": "1",
            "FEDMOMENTUM_RECONCILE_INTERVAL_S": "5",
            "FEDMOMENTUM_STALE_AFTER_S": "30",
        }
        cli = [sys.executable, "-m", "backend.cli"]
        redis_cmd = ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"]
        redis_server = Child("redis", redis_cmd + ["--dir", str(tmp)], env, tmp / "redis.log")
        children.append(redis_server)
        _wait(lambda: _redis_up(redis_port), "redis-server")
        api = Child(
            "api", cli + ["up", "--no-worker", "--port", str(api_port)], env, tmp / "api.log"
        )
        children.append(api)
        http = httpx.Client(base_url=f"http://127.0.0.1:{api_port}/api/v1", timeout=30)
        _wait(lambda: healthy(http), "the API")
        workers = [
            Child(f"worker-{i}", cli + ["worker", "--name", f"soak{i}@%h"], env, tmp / f"w{i}.log")
            for i in range(2)
        ]
        children.extend(workers)
        ids: list[str] = []
        start = time.monotonic()
        gap = args.spread / max(1, args.experiments - 1)
        next_kill = start + args.kill_every * rng.uniform(0.5, 1.5)
        kills: Counter[str] = Counter()
        status: dict[str, str] = {}
        while time.monotonic() - start < args.timeout:
            try:
                page = http.get("/experiments", params={"limit": 200}).json()["data"]
                status = {e["id"]: e["status"] for e in page if e["id"] in ids}
            except (httpx.HTTPError, ValueError, KeyError):
                pass  # the API is restarting
            due = min(args.experiments, 1 + int((time.monotonic() - start) / gap))
            while len(ids) < due:  # submissions spread over --spread seconds
                try:
                    body = CONFIG | {"name": f"soak {len(ids)}", "seed": len(ids)}
                    answer = http.post("/experiments", json=body)
                    answer.raise_for_status()
                    ids.append(answer.json()["id"])
                except httpx.HTTPError:
                    break  # the API is restarting: submit on the next pass
            done = len(ids) == args.experiments
            if done and len(status) == len(ids) and all(s in FINISHED for s in status.values()):
                break
            if time.monotonic() >= next_kill:
                victim = rng.choice([api, redis_server, *workers])
                done = sum(s in FINISHED for s in status.values())
                at = time.monotonic() - start
                print(f"{at:6.0f} s  SIGKILL {victim.name}  ({done}/{len(ids)} done)", flush=True)
                victim.kill()
                victim.start()
                kills[victim.name] += 1
                next_kill = time.monotonic() + args.kill_every * rng.uniform(0.5, 1.5)
            time.sleep(1)
        seconds = time.monotonic() - start
        engine = sa.create_engine(database_url, poolclass=sa.NullPool)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, status, error FROM experiments")).all()
        final = {r.id: (r.status, r.error) for r in rows if r.id in ids}
        problems = [f"{i}: {s} {e or ''}" for i, (s, e) in final.items() if s != "completed"]
        problems += [f"{i}: missing" for i in ids if i not in final]
        problems += _exactly_once(engine, ids)
        problems += _orphans(engine, tmp / "data" / "runs", ids)
        engine.dispose()
        return {
            "experiments": len(ids),
            "completed": sum(s == "completed" for s, _ in final.values()),
            "seconds": round(seconds),
            "kills": dict(kills),
            "problems": problems,
        }
    finally:
        for child in reversed(children):
            child.stop()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", type=int, default=40)
    parser.add_argument(
        "--spread", type=float, default=900.0, help="submit the experiments over (s)"
    )
    parser.add_argument("--kill-every", type=float, default=60.0, help="mean seconds between kills")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up after (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the logs and data here")
    args = parser.parse_args()
    children: list[Child] = []

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through soak()'s finally: stops everything

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    with tempfile.TemporaryDirectory(prefix="fm-soak-") as folder:
        tmp = args.keep or Path(folder)
        tmp.mkdir(parents=True, exist_ok=True)
        summary = soak(args, tmp, children)
    print(json.dumps(summary, indent=2))
    return 1 if summary["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
