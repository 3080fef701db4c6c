"""Uploaded datasets: checked by the builders' own rules, kept in the artifact store and in the
first data root, summarised (layout, size, first examples, count per label or topic).

The artifact store is the source of truth: it is the one place every process of every
deployment reaches (a local folder when embedded; a shared volume or S3 across machines),
so the upload, its summary and the list of uploads live there. The copy in the first data
root is what an experiment config names (``path``): the API checks configs against the data
roots and the builders read local files. A worker that lacks that copy (another machine
with its own disk) restores it from the store before loading (``restore``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from backend.core.data.files import FILE_SUFFIXES, Row, detect_layout, read_file
from backend.core.data.task import Example
from backend.core.settings import Settings

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
PREVIEW = 5  # examples shown in a summary
_CHUNK = 1 << 20
_SUMMARY = ".summary.json"


class UploadError(ValueError):
    """A refused upload; ``field`` is the form field at fault ("file" or "name")."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class NameTaken(Exception):
    """An upload of a name that already exists, without ``replace``."""


class TooLarge(Exception):
    """An upload over ``max_dataset_bytes``."""


def too_large(limit: int) -> str:
    """The message of an upload over the limit, naming the setting that raises it."""
    return f"dataset upload: larger than the limit of {limit} bytes (FEDMOMENTUM_MAX_DATASET_BYTES)"


def check_name(name: str) -> str:
    """``name`` if it is a valid dataset name (no dots or slashes: it never leaves its folder)."""
    if not NAME.fullmatch(name):
        raise UploadError(
            "name",
            f"invalid dataset name {name!r}: 1-64 letters, digits, '_' or '-', "
            "starting with a letter or digit",
        )
    return name


def _suffix(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise UploadError(
            "file", f"{filename!r}: unsupported file type; allowed: {', '.join(FILE_SUFFIXES)}"
        )
    return suffix


def default_name(filename: str) -> str:
    """A dataset name made from an uploaded file's name (its stem, other characters as '-')."""
    stem = Path(Path(filename).name).stem
    return re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-_")[:64] or "dataset"


def _preview(layout: str, rows: list[Row], examples: list[Example]) -> list[dict[str, str]]:
    if layout == "text/label":
        text = detect_layout("", list(rows[0][1]))[1]["text"]
        first = zip(rows[:PREVIEW], examples[:PREVIEW], strict=True)
        return [{"text": str(row[text]), "label": ex.label} for (_, row), ex in first]
    return [{"prompt": ex.prompt, "response": ex.response} for ex in examples[:PREVIEW]]


def summarize(path: Path, *, source: str) -> dict[str, Any]:
    """Layout, number of examples, the first examples and the count per label (text/label) or
    topic (the optional label of other layouts: "all" when absent). ValueError as the builders
    raise it, naming ``source`` instead of the file's path on the server."""
    try:
        layout, rows, examples = read_file(path)
    except ValueError as e:
        raise UploadError("file", str(e).replace(str(path), source)) from None
    counts = Counter(ex.label for ex in examples)
    return {
        "layout": layout,
        "n_examples": len(examples),
        "preview": _preview(layout, rows, examples),
        "count_by": "label" if layout == "text/label" else "topic",
        "counts": dict(sorted(counts.items())),
    }


def _copy(source: IO[bytes], target: Path, limit: int) -> tuple[int, str]:
    """Stream ``source`` into ``target``: (bytes, sha256); TooLarge past ``limit``."""
    digest, size = hashlib.sha256(), 0
    with target.open("wb") as out:
        while chunk := source.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise TooLarge(too_large(limit))
            digest.update(chunk)
            out.write(chunk)
    return size, digest.hexdigest()


def _local_files(settings: Settings, name: str) -> list[Path]:
    root = settings.data_root_dirs[0]
    return [root / f"{name}{s}" for s in FILE_SUFFIXES if (root / f"{name}{s}").exists()]


def save(
    settings: Settings, *, source: IO[bytes], filename: str, name: str | None, replace: bool
) -> dict[str, Any]:
    """Check an uploaded file, keep it in the store and the first data root, and return its
    summary. UploadError for a bad file or name, NameTaken for an existing name."""
    name = check_name(default_name(filename) if name is None else name)
    suffix = _suffix(filename)
    store = settings.datasets_store()
    if not replace and (store.exists(name + _SUMMARY) or _local_files(settings, name)):
        raise NameTaken(f"dataset {name!r} exists; upload with replace=true to replace it")
    root = settings.data_root_dirs[0]
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".upload-") as scratch:
        tmp = Path(scratch) / f"{name}{suffix}"
        size, sha256 = _copy(source, tmp, settings.max_dataset_bytes)
        if size == 0:
            raise UploadError("file", f"{filename!r} is empty")
        summary = {
            "name": name,
            "path": tmp.name,  # relative to the data roots, as experiment configs name it
            "filename": Path(filename).name,
            "format": suffix.lstrip("."),
            "bytes": size,
            "sha256": sha256,
            "uploaded_at": datetime.now(UTC).isoformat(),
            **summarize(tmp, source=Path(filename).name),
        }
        remove(settings, name)  # a replaced upload may have had another format
        store.put_file(tmp, tmp.name)
        store.write_json(name + _SUMMARY, summary)  # last: the upload is listed once complete
        os.replace(tmp, root / tmp.name)
    return summary


def get(settings: Settings, name: str) -> dict[str, Any] | None:
    """The summary of an uploaded dataset, or None."""
    store = settings.datasets_store()
    key = check_name(name) + _SUMMARY
    return store.read_json(key) if store.isfile(key) else None


def list_all(settings: Settings) -> list[dict[str, Any]]:
    """Every uploaded dataset's summary, by name."""
    store = settings.datasets_store()
    return [store.read_json(k) for k in store.glob(f"*{_SUMMARY}")]


def remove(settings: Settings, name: str) -> bool:
    """Delete an uploaded dataset from the store and the data root; False when there was none."""
    store = settings.datasets_store()
    found = [store.remove(f"{check_name(name)}{s}") for s in (_SUMMARY, *FILE_SUFFIXES)]
    for path in _local_files(settings, name):
        path.unlink()
        found.append(True)
    return any(found)


def restore(dataset: str, settings: Settings) -> None:
    """Copy an uploaded dataset from the store to the data-root path a config names, when this
    machine lacks it (a worker on another machine). Other paths are left alone."""
    path = Path(dataset)
    if path.is_file() or path.suffix.lower() not in FILE_SUFFIXES:
        return
    root = settings.data_root_dirs[0]
    if path.parent.resolve() != root.resolve() or not NAME.fullmatch(path.stem):
        return
    store = settings.datasets_store()
    if not store.isfile(path.name):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.NamedTemporaryFile(dir=path.parent, prefix=".restore-", delete=False) as out,
        store.open(path.name) as src,
    ):
        shutil.copyfileobj(src, out, _CHUNK)
    os.replace(out.name, path)
