"""Run directories on the API side: where an experiment's files are, its exports as a
streamed zip, removal. Torch-free (workers.artifacts imports torch; the layout is the same:
``<runs_dir>/<experiment id>/export/...``).

Every path is resolved and checked to stay inside the run directory, so neither an id nor a
symlink planted in an export can make the API read or delete anything outside it.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Download format -> path inside the run directory.
EXPORTS: dict[str, str] = {
    "merged": "export/merged",
    "adapter": "export/adapter",
    "delta": "export/adapter/backbone_delta.safetensors",
    "adapter-rank": "export/adapter-rank",
}
# What each format is, for the dashboard and the API docs (same keys as EXPORTS).
EXPORT_HELP: dict[str, str] = {
    "adapter": "PEFT adapter (adapter_config.json + safetensors) with the merged backbone delta",
    "merged": "the full model with the adapter and every merged residual folded in",
    "delta": "backbone_delta.safetensors: the residual merged into W over all rounds",
    "adapter-rank": "the final update truncated to a rank-N PEFT adapter (no backbone change)",
}
_CHUNK = 1 << 20  # bytes read per write into the zip stream


def _inside(path: Path, root: Path) -> Path:
    """``path`` resolved; ValueError when it leaves ``root``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ValueError(f"{path} leaves {root}")
    return resolved


def run_dir(runs_dir: Path, experiment_id: str) -> Path:
    """The run directory of an experiment (it may not exist yet)."""
    return _inside(runs_dir / experiment_id, runs_dir)


def remove_run_dir(runs_dir: Path, experiment_id: str) -> bool:
    """Delete an experiment's run directory; False when there was none."""
    root = run_dir(runs_dir, experiment_id)
    if root == runs_dir.resolve() or not root.is_dir():
        return False
    shutil.rmtree(root)
    return True


def export_path(runs_dir: Path, experiment_id: str, fmt: str) -> Path:
    """The export file or folder of ``fmt``; FileNotFoundError naming what is missing."""
    root = run_dir(runs_dir, experiment_id)
    relative = EXPORTS[fmt]
    try:
        target = _inside(root / relative, root)
    except ValueError:  # a symlink out of the run directory: treat as absent
        target = None
    if target is None or not target.exists():
        raise FileNotFoundError(
            f"experiment {experiment_id!r} has no {relative} yet (format {fmt!r}); "
            "exports are written when an experiment completes"
        )
    return target


def check_export_rank(runs_dir: Path, experiment_id: str, rank: int) -> None:
    """FileNotFoundError unless the exported rank-N adapter has rank ``rank``."""
    info = run_dir(runs_dir, experiment_id) / "export" / "export.json"
    exported = (
        json.loads(info.read_text()).get("adapter_rank", {}).get("rank") if info.is_file() else None
    )
    if exported != rank:
        raise FileNotFoundError(
            f"experiment {experiment_id!r} has its rank-N adapter at rank {exported}, not {rank}; "
            f"write another with `fedmomentum export <run dir> --rank {rank}`"
        )


def read_manifest(runs_dir: Path, experiment_id: str) -> dict[str, Any]:
    """The run's manifest.json; FileNotFoundError until the run has been prepared."""
    path = run_dir(runs_dir, experiment_id) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"experiment {experiment_id!r} has no manifest yet (written when its run starts)"
        )
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def round_state_path(runs_dir: Path, experiment_id: str, round_num: int) -> Path:
    """The server state committed by round ``round_num`` (the global adapter it produced:
    ``state/round-<round + 1>``); FileNotFoundError when that round has not finished."""
    root = run_dir(runs_dir, experiment_id)
    target = root / "state" / f"round-{round_num + 1:04d}"
    if not target.is_dir() or target.is_symlink():
        raise FileNotFoundError(
            f"experiment {experiment_id!r} has no global adapter of round {round_num} "
            "(the round has not been aggregated)"
        )
    return _inside(target, root)


def _files(target: Path, root: Path) -> Iterator[tuple[Path, str]]:
    """(file, name in the zip) under ``target``, skipping anything that resolves outside root."""
    if target.is_file():
        yield target, target.name
        return
    for folder, dirs, names in os.walk(target):  # does not follow symlinked folders
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            try:
                resolved = _inside(path, root)
            except ValueError:
                continue
            if resolved.is_file():
                yield resolved, f"{target.name}/{path.relative_to(target).as_posix()}"


class _Sink:
    """A write-only, unseekable file: zipfile then writes data descriptors and never seeks."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


def zip_stream(target: Path, root: Path) -> Iterator[bytes]:
    """A zip of ``target`` (file or folder) as chunks, about one file chunk in memory at once.

    Stored, not deflated: safetensors weights do not compress.
    """
    return (chunk for chunk in _zip_chunks(target, root) if chunk)


def _zip_chunks(target: Path, root: Path) -> Iterator[bytes]:
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:
        for path, name in _files(target, root):
            info = zipfile.ZipInfo.from_file(path, name)  # knows the size: zip64 when needed
            with path.open("rb") as src, archive.open(info, "w") as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
                    yield sink.take()
            yield sink.take()
    yield sink.take()  # the central directory
