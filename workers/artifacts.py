"""Tensor files of a run directory: safetensors only, never pickle.

A run directory is a folder of the artifact store (backend.core.store.Store: a local
directory, or s3:// when configured), laid out by backend.core.runs.RunPaths; every write is
atomic, and a round's server state appears at once (``Store.commit_dir``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from safetensors.torch import load, save

from backend.core.store import Store


def save_tensors(
    store: Store, key: str, tensors: Mapping[str, torch.Tensor], meta: dict[str, str] | None = None
) -> None:
    """Write a safetensors file atomically (CPU, contiguous)."""
    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    store.write_bytes(key, save(data, meta))


def load_tensors(store: Store, key: str) -> dict[str, torch.Tensor]:
    return load(store.read_bytes(key))
