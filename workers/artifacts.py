"""Run directory layout and tensor files (safetensors and JSON only, never pickle).

A run directory is a folder of the artifact store (backend.store.Store: a local directory,
or s3:// when configured), so every write is atomic and a round's server state appears at
once (``Store.commit_dir``). RunPaths names the keys; the store reads and writes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load, save

from backend.store import Store


def save_tensors(
    store: Store, key: str, tensors: Mapping[str, torch.Tensor], meta: dict[str, str] | None = None
) -> None:
    """Write a safetensors file atomically (CPU, contiguous)."""
    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    store.write_bytes(key, save(data, meta))


def load_tensors(store: Store, key: str) -> dict[str, torch.Tensor]:
    return load(store.read_bytes(key))


@dataclass(frozen=True)
class RunPaths:
    """Where everything of one run lives: keys inside the run's store folder."""

    store: Store

    @classmethod
    def at(cls, location: str | Path) -> RunPaths:
        """The run directory at a local path or an fsspec URL."""
        return cls(Store(location))

    config = "config.yaml"
    manifest = "manifest.json"
    split = "split.json"
    metrics = "metrics.jsonl"
    export = "export"

    @staticmethod
    def state(round_num: int) -> str:
        """Server state that round ``round_num`` starts from (adapters, backbone deltas)."""
        return f"state/round-{round_num:04d}"

    @staticmethod
    def upload(round_num: int, client: int) -> str:
        return f"rounds/{round_num:04d}/client-{client:05d}.safetensors"

    @staticmethod
    def local(client: int) -> str:
        """Client-private tensors that never leave the client (fedsa's B)."""
        return f"clients/client-{client:05d}.safetensors"

    def latest_state(self) -> int:
        """Highest round whose start state is committed (0 after ``prepare``)."""
        rounds = [k for k in self.store.glob("state/round-*") if self.store.committed(k)]
        if not rounds:
            raise FileNotFoundError(
                f"{self.store.url()}: no committed state; was the run prepared?"
            )
        return max(int(k.rsplit("round-", 1)[1]) for k in rounds)
