"""The commands that drive a running service over HTTP (backend.client): submit, list,
status, follow, download, cancel. Exit status 0 when done, 1 on an error of the service or
the connection (its message, no traceback)."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from backend.cli.progress import Progress
from backend.client import DEFAULT_SERVER, FINISHED, APIError, Client
from backend.core.runs import EXPORTS

Command = Callable[[argparse.Namespace], int]


def _client(args: argparse.Namespace) -> Client:
    return Client(args.server, args.token)


def _remote(command: Callable[[argparse.Namespace, Client], int]) -> Command:
    """``command`` with a client of --server; its errors printed, exit status 1."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            with _client(args) as client:
                return command(args, client)
        except APIError as e:
            hint = " (set --token or FEDMOMENTUM_API_TOKEN)" if e.status_code == 401 else ""
            print(
                f"error: the server answered {e.status_code}{hint}:\n{e.message}", file=sys.stderr
            )
        except httpx.HTTPError as e:
            print(f"error: cannot reach the server at {args.server}: {e}", file=sys.stderr)
        except (OSError, ValueError) as e:  # an unreadable config file, a bad download folder
            print(f"error: {e}", file=sys.stderr)
        return 1

    return run


def _show(experiment: dict[str, Any]) -> str:
    e = experiment
    lines = [
        f"{e['id']}  {e['name']}",
        f"  status    {e['status']}" + (f": {e['error']}" if e.get("error") else ""),
        f"  strategy  {e['strategy']}   model {e['model']}   dataset {e['dataset']}",
        f"  rounds    {e['current_round']}/{e['total_rounds']}"
        + (f"   best accuracy {e['best_accuracy']:.3f}" if e["best_accuracy"] is not None else ""),
        f"  created   {e['created_at']}",
    ]
    lines += [f"  {k.removesuffix('_at'):<9} {e[k]}" for k in ("started_at", "finished_at") if e[k]]
    return "\n".join(lines)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


@_remote
def submit(args: argparse.Namespace, client: Client) -> int:
    experiment = client.submit(args.config)
    if args.json:
        _print_json(experiment)
    else:
        print(f"submitted {experiment['id']} ({experiment['name']}): {experiment['status']}")
    return _follow(client, experiment["id"]) if args.follow else 0


@_remote
def list_experiments(args: argparse.Namespace, client: Client) -> int:
    rows = client.list(status=args.status, strategy=args.strategy, limit=args.limit)
    if args.json:
        _print_json(rows)
        return 0
    head = f"{'id':<12} {'status':<10} {'rounds':>7} {'accuracy':>8}  {'strategy':<14} name"
    print(head)
    for e in rows:
        accuracy = "-" if e["best_accuracy"] is None else f"{e['best_accuracy']:.3f}"
        rounds = f"{e['current_round']}/{e['total_rounds']}"
        print(
            f"{e['id']:<12} {e['status']:<10} {rounds:>7} {accuracy:>8}  "
            f"{e['strategy']:<14} {e['name']}"
        )
    return 0


@_remote
def status(args: argparse.Namespace, client: Client) -> int:
    experiment = client.status(args.id)
    if args.json:
        _print_json(experiment)
    else:
        print(_show(experiment))
    return 0


def _follow(client: Client, experiment_id: str) -> int:
    """Progress bars until the experiment ends; 0 when it completed, 1 otherwise."""
    progress = Progress(client.status(experiment_id), sys.stdout, live=sys.stdout.isatty())
    final = None
    for event in client.events(experiment_id):
        if event.event == "end":
            final = event.data.get("status") if isinstance(event.data, dict) else None
            break
        progress.update(event)
    experiment = client.status(experiment_id)
    final = final if final in FINISHED else experiment["status"]
    error = f": {experiment['error']}" if experiment.get("error") else ""
    print(f"experiment {experiment_id} {final}{error}")
    return 0 if final == "completed" else 1


@_remote
def follow(args: argparse.Namespace, client: Client) -> int:
    return _follow(client, args.id)


@_remote
def download(args: argparse.Namespace, client: Client) -> int:
    path = client.download(args.id, args.format, args.out, rank=args.rank, unzip=not args.zip)
    files = [p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    print(
        f"downloaded {args.format} of {args.id}: {path} ({len(files)} files, {size / 1e6:.1f} MB)"
    )
    return 0


@_remote
def cancel(args: argparse.Namespace, client: Client) -> int:
    experiment = client.cancel(args.id)
    print(f"{experiment['id']}: {experiment['status']}")
    return 0


def server_options() -> argparse.ArgumentParser:
    """The parent parser of every remote command: --server and --token."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        default=os.environ.get("FEDMOMENTUM_SERVER") or DEFAULT_SERVER,
        help=f"the service's URL (default: FEDMOMENTUM_SERVER or {DEFAULT_SERVER})",
    )
    common.add_argument(
        "--token",
        default=os.environ.get("FEDMOMENTUM_API_TOKEN") or None,
        help="the service's API token, sent as a bearer token (default: FEDMOMENTUM_API_TOKEN)",
    )
    return common


def add_commands(sub: Any) -> None:
    """The remote commands, on the subparsers of the ``fedmomentum`` parser."""
    common = server_options()
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print the API's JSON")

    def command(name: str, func: Command, help: str, *parents: Any) -> Any:
        parser = sub.add_parser(name, help=help, parents=[common, *parents])
        parser.set_defaults(func=func)
        return parser

    p = command("submit", submit, "submit an experiment config to the service", as_json)
    p.add_argument("config", type=Path, help="YAML experiment config (see examples/)")
    p.add_argument("--follow", action="store_true", help="then follow it as `follow` does")
    p = command("list", list_experiments, "list the service's experiments, newest first", as_json)
    p.add_argument("--status", choices=["queued", "running", *FINISHED])
    p.add_argument("--strategy")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p = command("status", status, "show one experiment of the service", as_json)
    p.add_argument("id", help="experiment id")
    p = command(
        "follow", follow, "live progress of an experiment until it ends (exit 0: completed)"
    )
    p.add_argument("id", help="experiment id")
    p = command("download", download, "download an export of a completed experiment")
    p.add_argument("id", help="experiment id")
    p.add_argument("--format", choices=list(EXPORTS), default="adapter", help="default: adapter")
    p.add_argument("--rank", type=int, help="adapter-rank: the rank wanted (default: exported)")
    p.add_argument("--out", type=Path, default=Path("."), help="folder (default: here)")
    p.add_argument("--zip", action="store_true", help="keep the zip instead of unpacking it")
    p = command("cancel", cancel, "cancel a queued or running experiment")
    p.add_argument("id", help="experiment id")
