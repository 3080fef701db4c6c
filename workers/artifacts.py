"""Run directory layout and atomic reads/writes (safetensors and JSON only, never pickle).

A crash never leaves a half-written file visible: every write goes to a temporary name in
the same directory and is renamed into place. A round's server state is a directory that
appears at once (``commit_dir``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _tmp_near(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def save_tensors(
    path: Path, tensors: Mapping[str, torch.Tensor], meta: dict[str, str] | None = None
) -> None:
    """Write a safetensors file atomically (CPU, contiguous)."""
    tmp = _tmp_near(path)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def write_text(path: Path, text: str) -> None:
    """Replace a text file atomically."""
    tmp = _tmp_near(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically."""
    write_text(path, json.dumps(data, indent=2, default=str))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


@contextmanager
def commit_dir(target: Path) -> Iterator[Path]:
    """Yield a scratch directory that replaces ``target`` in one rename when the block ends."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        yield scratch
        if target.exists():  # a re-run of the same step: the new result wins
            shutil.rmtree(target)
        os.replace(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass(frozen=True)
class RunPaths:
    """Where everything of one run lives."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def export(self) -> Path:
        return self.root / "export"

    def state(self, round_num: int) -> Path:
        """Server state that round ``round_num`` starts from (adapters, backbone deltas)."""
        return self.root / "state" / f"round-{round_num:04d}"

    def upload(self, round_num: int, client: int) -> Path:
        return self.root / "rounds" / f"{round_num:04d}" / f"client-{client:05d}.safetensors"

    def local(self, client: int) -> Path:
        """Client-private tensors that never leave the client (fedsa's B)."""
        return self.root / "clients" / f"client-{client:05d}.safetensors"

    def latest_state(self) -> int:
        """Highest round whose start state is committed (0 after ``prepare``)."""
        rounds = sorted((self.root / "state").glob("round-*"))
        if not rounds:
            raise FileNotFoundError(f"{self.root}: no committed state; was the run prepared?")
        return int(rounds[-1].name.removeprefix("round-"))
