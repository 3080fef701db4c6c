"""The line protocol between ``benchmarks/vs_flower.py`` and the processes it drives.

Each side (ours, or Flower's simulation) is a child process that gets two pipes: it reads
commands from one (``go``: run the next round; ``finish``: save the final adapter and exit)
and writes one JSON object per line to the other (``ready``, ``round``, ``done``, ``error``).
End of file on the command pipe means the benchmark is gone: the side exits at once, so
nothing it started outlives the benchmark. Importable from both virtual environments:
standard library only.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from typing import Any

CMD_FD_ENV = "VS_FLOWER_CMD_FD"
EVENT_FD_ENV = "VS_FLOWER_EVENT_FD"
_PR_SET_PDEATHSIG = 1


class BenchmarkGone(SystemExit):
    """The command pipe closed: the benchmark exited (or was killed)."""


class Channel:
    """The side's end: commands in, events out, on the inherited descriptors."""

    def __init__(self) -> None:
        self._cmd = os.fdopen(int(os.environ[CMD_FD_ENV]), "r", buffering=1)
        self._events = os.fdopen(int(os.environ[EVENT_FD_ENV]), "w", buffering=1)

    def send(self, event: str, **fields: Any) -> None:
        self._events.write(json.dumps({"event": event, **fields}) + "\n")
        self._events.flush()

    def command(self) -> str:
        """The next command; BenchmarkGone on end of file."""
        line = self._cmd.readline()
        if not line:
            raise BenchmarkGone(1)
        return line.strip()

    def expect(self, *allowed: str) -> str:
        cmd = self.command()
        if cmd not in allowed:
            raise RuntimeError(f"protocol: got command {cmd!r}, expected one of {allowed}")
        return cmd


def die_with_parent() -> None:
    """Linux: get SIGTERM when the benchmark dies, even by SIGKILL; SIGTERM then exits
    through Python's normal shutdown (atexit hooks: Ray's own shutdown)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: end of file on the command pipe still stops the side
    if os.getppid() == 1:  # the parent died before prctl took effect
        sys.exit(1)


def set_threads(threads: int) -> None:
    """The same intra-op thread count in every process of both sides."""
    import torch

    torch.set_num_threads(threads)
