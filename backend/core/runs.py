"""Run directories: their layout (``RunPaths``, the one place that spells every key), where an
experiment's files are, its exports as a streamed zip, removal. Torch-free: the workers write
through the same ``RunPaths`` (their tensors as safetensors), the API reads through it. Run
directories live in the artifact store (backend.core.store: a local directory, or s3://).

An experiment id never names anything outside its run directory, and on a local disk files
that resolve outside it (a symlink planted in an export) are neither read nor listed.
"""

from __future__ import annotations

import posixpath
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from backend.core.store import Store


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
    tensorboard = "tensorboard"  # TensorBoard event files, one per finished round
    tracking = "tracking.json"  # the run's MLflow run id and tags
    export = "export"
    export_info = "export/export.json"
    server_file = "server.safetensors"  # inside a state folder: bases and pending residuals

    @staticmethod
    def state(round_num: int) -> str:
        """Server state that round ``round_num`` starts from (adapters, backbone deltas)."""
        return f"state/round-{round_num:04d}"

    @classmethod
    def summary(cls, round_num: int) -> str:
        """The summary of round ``round_num``, committed with the state it produced."""
        return f"{cls.state(round_num + 1)}/summary.json"

    @staticmethod
    def adapter_file(rank: int | str) -> str:
        """A rank group's global adapter, inside a state folder."""
        return f"adapter-r{rank}.safetensors"

    @staticmethod
    def backbone_file(rank: int | str) -> str:
        """A rank group's merged backbone delta, inside a state folder."""
        return f"backbone-r{rank}.safetensors"

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


# Every metrics.jsonl line is one record plus these two fields: ``schema``, the version of
# the record layout (METRICS_SCHEMA), and ``time``, when it was written (unix seconds, UTC).
METRICS_SCHEMA = 1
METRICS_ENVELOPE = ("schema", "time")

# Download format -> key inside the run directory.
EXPORTS: dict[str, str] = {
    "merged": f"{RunPaths.export}/merged",
    "adapter": f"{RunPaths.export}/adapter",
    "delta": f"{RunPaths.export}/adapter/backbone_delta.safetensors",
    "adapter-rank": f"{RunPaths.export}/adapter-rank",
}
# What each format is, for the dashboard and the API docs (same keys as EXPORTS).
EXPORT_HELP: dict[str, str] = {
    "adapter": "PEFT adapter (adapter_config.json + safetensors) with the merged backbone delta",
    "merged": "the full model with the adapter and every merged residual folded in",
    "delta": "backbone_delta.safetensors: the residual merged into W over all rounds",
    "adapter-rank": "one plain rank-N PEFT adapter approximating the whole change (backbone "
    "delta included), for single-adapter serving; its relative error is in export.json",
}
_CHUNK = 1 << 20  # bytes read per write into the zip stream


def run_dir(runs: Store, experiment_id: str) -> Store:
    """The run directory of an experiment (it may not exist yet); ValueError for an id that
    would leave the runs folder."""
    if not experiment_id or experiment_id in (".", "..") or any(c in experiment_id for c in "/\\"):
        raise ValueError(f"experiment id {experiment_id!r} leaves {runs.url()}")
    return runs.sub(experiment_id)


def remove_run_dir(runs: Store, experiment_id: str) -> bool:
    """Delete an experiment's run directory; False when there was none."""
    run_dir(runs, experiment_id)  # the id check
    return runs.remove(experiment_id)


def export_path(runs: Store, experiment_id: str, fmt: str) -> str:
    """The key of the export file or folder of ``fmt``; FileNotFoundError naming what is
    missing."""
    root = run_dir(runs, experiment_id)
    key = EXPORTS[fmt]
    if not (root.committed(RunPaths.export) and root.files(key)):
        raise FileNotFoundError(
            f"experiment {experiment_id!r} has no {key} yet (format {fmt!r}); "
            "exports are written when an experiment completes"
        )
    return key


def check_export_rank(runs: Store, experiment_id: str, rank: int) -> None:
    """FileNotFoundError unless the exported rank-N adapter has rank ``rank``."""
    root = run_dir(runs, experiment_id)
    info = RunPaths.export_info
    exported = (
        root.read_json(info).get("adapter_rank", {}).get("rank") if root.files(info) else None
    )
    if exported != rank:
        raise FileNotFoundError(
            f"experiment {experiment_id!r} has its rank-N adapter at rank {exported}, not {rank}; "
            f"write another with `fedmomentum export <run dir> --rank {rank}`"
        )


def read_manifest(runs: Store, experiment_id: str) -> dict[str, Any]:
    """The run's manifest.json; FileNotFoundError until the run has been prepared."""
    root = run_dir(runs, experiment_id)
    if not root.files(RunPaths.manifest):
        raise FileNotFoundError(
            f"experiment {experiment_id!r} has no manifest yet (written when its run starts)"
        )
    return root.read_json(RunPaths.manifest)  # type: ignore[no-any-return]


def read_export_info(runs: Store, experiment_id: str) -> dict[str, Any]:
    """The run's export.json (base model, the rank-N adapter and its relative error);
    FileNotFoundError until the experiment has been exported."""
    root = run_dir(runs, experiment_id)
    if not (root.committed(RunPaths.export) and root.files(RunPaths.export_info)):
        raise FileNotFoundError(
            f"experiment {experiment_id!r} has no export yet (written when it completes)"
        )
    return root.read_json(RunPaths.export_info)  # type: ignore[no-any-return]


def round_state_path(runs: Store, experiment_id: str, round_num: int) -> str:
    """The key of the server state committed by round ``round_num`` (the global adapter it
    produced: ``state/round-<round + 1>``); FileNotFoundError when that round has not
    finished."""
    root = run_dir(runs, experiment_id)
    key = RunPaths.state(round_num + 1)
    if not (root.committed(key) and root.files(key)):
        raise FileNotFoundError(
            f"experiment {experiment_id!r} has no global adapter of round {round_num} "
            "(the round has not been aggregated)"
        )
    return key


def _files(target: str, root: Store) -> Iterator[tuple[str, str]]:
    """(key, name in the zip) of every file at or below ``target``."""
    base = posixpath.basename(target)
    for key in root.files(target):
        yield key, base if key == target else f"{base}/{posixpath.relpath(key, target)}"


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


def zip_stream(target: str, root: Store) -> Iterator[bytes]:
    """A zip of ``target`` (a file or folder key of the run directory ``root``) as chunks,
    about one file chunk in memory at once. Stored, not deflated: weights do not compress.
    """
    return (chunk for chunk in _zip_chunks(target, root) if chunk)


def _zip_chunks(target: str, root: Store) -> Iterator[bytes]:
    sink = _Sink()
    with zipfile.ZipFile(cast(IO[bytes], sink), "w", compression=zipfile.ZIP_STORED) as archive:
        for key, name in _files(target, root):
            info = zipfile.ZipInfo(name, time.localtime()[:6])
            info.external_attr = 0o644 << 16  # rw-r--r-- when unpacked
            info.file_size = root.size(key)  # known up front: zip64 when needed
            with root.open(key) as src, archive.open(info, "w") as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
                    yield sink.take()
            yield sink.take()
    yield sink.take()  # the central directory
