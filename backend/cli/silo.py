"""Token silos from the command line: ``fedmomentum silo create|list|revoke`` (an admin, over
the API with its token) and ``fedmomentum silo-client``, the training client a silo runs
behind its own firewall: it holds only the silo's token and the silo's data, connects
outward to the API only (HTTP), and trains with the same code as a Celery worker
(workers.runner.train_client) in a local work folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from backend.cli.remote import Command, _remote
from backend.client import APIError, Client
from backend.client.silo import SiloAPI
from backend.core.runs import RunPaths

log = logging.getLogger("fedmomentum.silo")


@_remote
def create(args: argparse.Namespace, client: Client) -> int:
    silo = client.create_silo(args.name)
    print(f"silo {silo['name']}: token (shown once, keep it secret):\n{silo['token']}")
    return 0


@_remote
def list_silos(args: argparse.Namespace, client: Client) -> int:
    rows = client.list_silos()
    print(f"{'name':24} {'state':8} {'created':20} last used")
    for s in rows:
        state = "revoked" if s["revoked_at"] else "active"
        print(f"{s['name']:24} {state:8} {s['created_at'][:19]:20} {s['last_used_at'] or 'never'}")
    return 0


@_remote
def revoke(args: argparse.Namespace, client: Client) -> int:
    client.revoke_silo(args.name)
    print(f"silo {args.name}: token revoked")
    return 0


class _Dropped(Exception):
    """The server no longer wants the task (cancelled, re-dispatched, or timed out)."""


class _Reporter:
    """The on_step callback: buffers step losses and sends them (or a sign of life when
    there are none) at most every ``interval`` s, also from a thread while nothing steps
    (loading the model). A 409 marks the task dropped; training stops at the next step."""

    def __init__(self, api: SiloAPI, task_id: int, interval: float) -> None:
        self.api, self.task_id, self.interval = api, task_id, interval
        self.pending: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.dropped: str | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> _Reporter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def __call__(self, step: int, loss: float) -> None:
        if self.dropped:
            raise _Dropped(self.dropped)
        with self.lock:
            self.pending.append({"step": step, "loss": loss})

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            self.flush()

    def flush(self) -> None:
        with self.lock:
            steps, self.pending = self.pending, []
        try:
            self.api.progress(self.task_id, steps)
        except APIError as e:
            if e.status_code == 409:
                self.dropped = e.message
            else:
                log.warning("task %s: progress refused: %s", self.task_id, e.message)
        except httpx.TransportError as e:  # the server may be restarting: keep training
            with self.lock:
                self.pending = steps + self.pending
            log.warning("task %s: progress not sent: %s", self.task_id, e)


def run_task(api: SiloAPI, task: dict[str, Any], data: Path, work: Path, interval: float) -> str:
    """Train one claimed task in ``work`` and upload its update (or report its failure)."""
    from workers.runner import train_client  # torch from here on

    tid, t, client = task["id"], task["round"], task["client"]
    paths = RunPaths.at(work / task["experiment_id"])
    state = paths.state(t)
    paths.store.write_text(paths.config, yaml.safe_dump(task["config"], sort_keys=False))
    api.download(
        tid, "adapter", paths.store.local_path(f"{state}/{paths.adapter_file(task['rank'])}")
    )
    if task["backbone"]:
        api.download(
            tid, "backbone", paths.store.local_path(f"{state}/{paths.backbone_file(task['rank'])}")
        )
    with _Reporter(api, tid, interval) as reporter:
        rec = train_client(paths, t, client, on_step=reporter, silo_data=str(data))
    if reporter.dropped:
        return f"dropped: {reporter.dropped}"
    reporter.flush()  # the last losses
    if not rec.ok:
        api.fail(tid, rec.error or "unknown error")
        return f"failed: {rec.error}"
    update = paths.store.local_path(paths.upload(t, client))
    answer = _retrying(
        lambda: api.upload(tid, update, seconds=rec.seconds, compute_seconds=rec.compute_seconds)
    )
    return "uploaded" if answer["accepted"] else "uploaded before"


def _retrying(call: Any, tries: int = 5) -> Any:
    """An idempotent call, retried while the server cannot be reached."""
    for i in range(tries):
        try:
            return call()
        except httpx.TransportError:
            if i == tries - 1:
                raise
            time.sleep(2.0 * (i + 1))
    raise AssertionError("unreachable")


def serve(args: argparse.Namespace) -> int:
    """Claim and train this silo's tasks until interrupted (or ``--max-tasks`` done)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not args.token:
        print("error: --token (or FEDMOMENTUM_SILO_TOKEN) is required", file=sys.stderr)
        return 2
    if not args.data.is_file():
        print(f"error: --data {args.data}: no such file", file=sys.stderr)
        return 2
    done = 0
    with SiloAPI(args.server, args.token) as api:
        while args.max_tasks is None or done < args.max_tasks:
            try:
                task = api.next_task(wait=args.wait)
                if task is None:
                    continue
                log.info(
                    "task %s: experiment %s round %s client %s: training",
                    *(task[k] for k in ("id", "experiment_id", "round", "client")),
                )
                outcome = run_task(api, task, args.data, args.work_dir, args.progress_interval)
                log.info("task %s: %s", task["id"], outcome)
                done += 1
            except APIError as e:
                if e.status_code == 401:
                    print(f"error: the server refused the token:\n{e.message}", file=sys.stderr)
                    return 1
                log.warning("the server answered %s: %s", e.status_code, e.message)
                time.sleep(2)
            except httpx.TransportError as e:
                log.warning("cannot reach %s: %s; trying again", args.server, e)
                time.sleep(2)
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """``silo create|list|revoke`` (with the remote commands' --server/--token) and
    ``silo-client``."""
    silo = sub.add_parser("silo", help="token silos: issue, list and revoke silo tokens")
    silo_sub = silo.add_subparsers(dest="silo_command", required=True)

    def command(name: str, func: Command, help: str) -> Any:
        parser = silo_sub.add_parser(name, help=help, parents=[common])
        parser.set_defaults(func=func)
        return parser

    command("create", create, "issue a silo's token (printed once)").add_argument("name")
    command("list", list_silos, "every silo with its token's state and last use")
    command("revoke", revoke, "revoke a silo's token at once").add_argument("name")

    client = sub.add_parser(
        "silo-client",
        help="train a token silo's clients: only HTTP to the API, only the silo's token",
    )
    client.add_argument("--server", required=True, help="the service's URL")
    client.add_argument(
        "--token",
        default=os.environ.get("FEDMOMENTUM_SILO_TOKEN") or None,
        help="the silo's token (default: FEDMOMENTUM_SILO_TOKEN)",
    )
    client.add_argument(
        "--data", type=Path, required=True, help="the silo's data file (jsonl/csv...)"
    )
    client.add_argument(
        "--work-dir",
        type=Path,
        default=Path("silo-work"),
        help="local folder for the downloaded state and updates (default: ./silo-work)",
    )
    client.add_argument("--wait", type=float, default=25.0, help="long-poll seconds (<= 25)")
    client.add_argument("--progress-interval", type=float, default=2.0, help="seconds")
    client.add_argument("--max-tasks", type=int, help="stop after this many tasks")
    client.set_defaults(func=serve)
