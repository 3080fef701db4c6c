"""A real worker process with a fault injected, for the service tests only:
``python -m tests.service.faulty_worker worker --queues ...`` (the arguments of
``fedmomentum worker``). The faults are read from the environment:

- ``FAULT_POISON="<client>:<how>,..."``: after that client trains (its real training), its
  upload in the artifact store is overwritten, as a broken or malicious client would send it:
  ``nan`` (a NaN in every tensor), ``scale`` (every tensor x 1e6) or ``shape`` (an extra row
  in every lora_A).
- ``FAULT_HANG_ROUND=<round>`` and ``FAULT_MARKER=<file>``: while committing that round's
  aggregated state, after some of its files are written and before the last, touch the marker
  and hang, so the test can SIGKILL the worker in the middle of aggregation.
- ``FAULT_STALL_ROUND=<round>`` and ``FAULT_MARKER=<file>``: the first client of that round to
  train (while the marker does not exist) touches the marker and hangs in ``stall_forever``
  (after the restart the marker exists: it trains), for the watchdog of ``fedmomentum up``.
- ``FAULT_SLOW_EVAL_S=<seconds>``: every evaluation batch takes that much longer (a large eval
  set on a slow machine), so that one evaluation outlasts the watchdog's limit.

``python -m tests.service.faulty_worker up ...`` runs the service with its embedded worker
started this way too (the supervisor's worker command is this module's).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from backend.cli import main, serve
from backend.core.runs import RunPaths
from workers import evaluation, runner
from workers.artifacts import load_tensors, save_tensors
from workers.runner import server, state


def poisoned(tensors: dict[str, torch.Tensor], how: str) -> dict[str, torch.Tensor]:
    """A client's upload as a broken or malicious client would send it."""
    out = {}
    for name, t in tensors.items():
        if how == "nan":
            t = t.clone()
            t.view(-1)[0] = float("nan")
        elif how == "scale":
            t = t * 1e6
        elif how == "shape" and ".lora_A." in name:
            t = torch.cat([t, t[:1]])  # (r + 1, d_in)
        out[name] = t
    return out


POISON = dict(
    (int(c), how)
    for c, how in (p.split(":") for p in os.environ.get("FAULT_POISON", "").split(",") if p)
)
_train_client = runner.train_client


def stall_forever() -> None:
    """A worker that stops making progress (the watchdog's stack dump shows this frame)."""
    Path(os.environ["FAULT_MARKER"]).touch()
    while True:
        time.sleep(60)


def train_client(paths: RunPaths, round_num: int, client: int, on_step: Any = None) -> Any:
    marker = os.environ.get("FAULT_MARKER")
    if str(round_num) == os.environ.get("FAULT_STALL_ROUND") and not Path(marker or "").exists():
        stall_forever()
    rec = _train_client(paths, round_num, client, on_step)
    if rec.ok and client in POISON:
        key = paths.upload(round_num, client)
        save_tensors(paths.store, key, poisoned(load_tensors(paths.store, key), POISON[client]))
    return rec


def _hang_at(last: str) -> Any:
    save = state.save_tensors

    def save_or_hang(store: Any, key: str, tensors: Any, meta: Any = None) -> None:
        if key == last:
            Path(os.environ["FAULT_MARKER"]).touch()
            while True:  # until the test SIGKILLs this process
                time.sleep(60)
        save(store, key, tensors, meta)

    return save_or_hang


_commit_state = server.commit_state


def commit_state(cfg: Any, paths: RunPaths, round_num: int, *rest: Any) -> None:
    if str(round_num) == os.environ.get("FAULT_HANG_ROUND"):
        state.save_tensors = _hang_at(RunPaths.server_file)  # the state folder's last file
    _commit_state(cfg, paths, round_num, *rest)


_make_batch = evaluation.make_batch


def slow_make_batch(*args: Any, **kwargs: Any) -> Any:
    time.sleep(float(os.environ["FAULT_SLOW_EVAL_S"]))
    return _make_batch(*args, **kwargs)


def worker_command(*args: Any, **kwargs: Any) -> list[str]:
    """``fedmomentum up``'s worker command, running this module instead of backend.cli."""
    args_after_module = _worker_command(*args, **kwargs)[3:]
    return [sys.executable, "-m", "tests.service.faulty_worker", *args_after_module]


runner.train_client = train_client
if os.environ.get("FAULT_SLOW_EVAL_S"):
    evaluation.make_batch = slow_make_batch  # the evaluation's batches only, not training's
server.commit_state = commit_state
_worker_command = serve.worker_command
serve.worker_command = worker_command

if __name__ == "__main__":
    sys.exit(main())
