"""The artifact store: a folder in any fsspec filesystem (a local directory by default,
``s3://bucket/prefix`` on any S3-compatible store with the ``s3`` extra, ``memory://`` in
tests). Torch-free: the API streams downloads from it, the workers keep run directories in it.

Keys are ``/``-separated paths relative to the store's root. Writes are atomic, so a reader
never sees half a file: on S3 a file is written straight under its key (one PUT, or a
multipart upload that is completed only after its last part: the object appears whole or
not at all); elsewhere it is written under a temporary name in its folder and then moved
into place (a rename on a local disk). A folder committed with ``commit_dir`` appears at once
on a local disk (one rename); on an object store, where folders cannot be renamed, it counts
as present only once its marker object (``.<name>.committed`` beside it) is written, after
every file.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

_CHUNK = 1 << 22  # bytes per read/write when streaming a large file into the store
# Filesystems whose writes are atomic by themselves (see the module doc).
_ATOMIC_PUT = frozenset({"s3", "s3a"})


def _named(e: OSError, url: str) -> OSError:
    """``e`` naming ``url`` as its file (``[Errno 2] Not found: 's3://bucket/key'``)."""
    try:
        if e.errno is None:
            return type(e)(f"{e}: {url!r}")
        return type(e)(e.errno, e.strerror, url)
    except TypeError:  # an error type of a library with another signature
        return OSError(f"{type(e).__name__}: {e}: {url!r}")


def _marker(key: str) -> str:
    head, name = posixpath.split(key.rstrip("/"))
    return posixpath.join(head, f".{name}.committed")


class Store:
    """A folder of artifacts. ``location``: a local path or an fsspec URL; ``options``: the
    filesystem's storage options (s3: endpoint_url, key, secret, client_kwargs...)."""

    def __init__(self, location: str | Path, options: Mapping[str, Any] | None = None) -> None:
        # Listings are never cached: other processes write the same folders.
        opts = {"use_listings_cache": False, **(options or {})}
        self.fs, self.root = fsspec.core.url_to_fs(str(location), **opts)
        self.root = self.root.rstrip("/") or "/"
        self.local = isinstance(self.fs, LocalFileSystem)
        protocols = self.fs.protocol
        self.atomic_put = bool(
            _ATOMIC_PUT.intersection((protocols,) if isinstance(protocols, str) else protocols)
        )

    def __repr__(self) -> str:
        return f"Store({self.url()!r})"

    # ---- names --------------------------------------------------------------------------

    def path(self, key: str = "") -> str:
        """The filesystem path of a key (what fsspec calls it)."""
        return posixpath.join(self.root, key) if key else self.root

    def url(self, key: str = "") -> str:
        """The full location of a key: a local path, or a URL with its protocol."""
        path = self.path(key)
        return path if self.local else self.fs.unstrip_protocol(path)

    def sub(self, key: str) -> Store:
        """The store of a folder inside this one (same filesystem)."""
        child = object.__new__(Store)
        child.fs, child.local, child.atomic_put = self.fs, self.local, self.atomic_put
        child.root = self.path(key).rstrip("/")
        return child

    def local_path(self, key: str = "") -> Path:
        """A key as a local path (only for local stores: e.g. for Hugging Face's writers)."""
        if not self.local:
            raise ValueError(f"{self.url(key)} is not on a local filesystem")
        return Path(self.path(key))

    @contextmanager
    def _naming(self, key: str) -> Iterator[None]:
        """An OSError of the filesystem that does not say which file names the key's full
        location (an object store's "The specified bucket does not exist" alone does not)."""
        try:
            yield
        except OSError as e:
            if e.filename is not None or self.path(key) in str(e):
                raise
            raise _named(e, self.url(key)) from e

    # ---- reading ------------------------------------------------------------------------

    def exists(self, key: str = "") -> bool:
        with self._naming(key):
            return bool(self.fs.exists(self.path(key)))

    def isfile(self, key: str) -> bool:
        with self._naming(key):
            return bool(self.fs.isfile(self.path(key)))

    def read_bytes(self, key: str) -> bytes:
        with self._naming(key):
            return bytes(self.fs.cat_file(self.path(key)))

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def open(self, key: str) -> IO[bytes]:
        """A file of the store, opened for reading (streaming large files)."""
        with self._naming(key):
            return self.fs.open(self.path(key), "rb")  # type: ignore[no-any-return]

    def size(self, key: str) -> int:
        """Bytes of a file, or of every file below a folder."""
        with self._naming(key):
            return sum(int(self.fs.size(self.path(k))) for k in self.files(key))

    def files(self, key: str = "") -> list[str]:
        """Keys of every file at or below ``key``, sorted. On a local disk, anything that
        resolves outside the store (a planted symlink) is left out."""
        path = self.path(key)
        with self._naming(key):
            if self.fs.isfile(path):
                found = [path]
            elif self.local:  # os.walk does not descend into symlinked folders
                found = [os.path.join(d, n) for d, _, names in os.walk(path) for n in names]
            else:
                found = list(self.fs.find(path))
        keys = sorted(self._key(p) for p in found if self._contains(p))
        return [k for k in keys if not posixpath.basename(k).endswith(".committed")]

    def glob(self, pattern: str) -> list[str]:
        """Keys matching a glob pattern (relative to the store), sorted."""
        with self._naming(pattern):
            return sorted(self._key(p) for p in self.fs.glob(self.path(pattern)))

    def committed(self, key: str) -> bool:
        """Whether a folder written with ``commit_dir`` is complete (see the module doc)."""
        if self.local:
            return self._contains(self.path(key)) and self.fs.isdir(self.path(key))
        return self.exists(_marker(key))

    def _key(self, path: str) -> str:
        return str(posixpath.relpath(self.fs._strip_protocol(path), self.root))

    def _contains(self, path: str) -> bool:
        if not self.local:
            return True
        real, root = os.path.realpath(path), os.path.realpath(self.root)
        return real == root or real.startswith(root.rstrip("/") + "/")

    # ---- writing ------------------------------------------------------------------------

    def _publish(self, key: str, write: Callable[[str], None]) -> None:
        """``write`` the key itself where writes are atomic; elsewhere a temporary name in the
        key's folder, then move it into place."""
        with self._naming(key):
            if self.atomic_put:
                write(self.path(key))
                return
            parent, name = posixpath.split(self.path(key))
            tmp = posixpath.join(parent, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
            if self.local:  # object stores have no folders to create
                self.fs.makedirs(parent, exist_ok=True)
            try:
                write(tmp)
                if self.local:
                    os.replace(tmp, self.path(key))  # atomic, and replaces an existing file
                else:
                    self.fs.mv(tmp, self.path(key))  # the object appears whole
            except BaseException:
                if self.fs.exists(tmp):
                    self.fs.rm(tmp)
                raise

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write a file atomically (see the module doc)."""
        self._publish(key, lambda path: self.fs.pipe_file(path, data))

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def write_json(self, key: str, data: Any) -> None:
        self.write_text(key, json.dumps(data, indent=2, default=str))

    def append_text(self, key: str, text: str) -> None:
        """Append to a log file (not atomic: for the in-process runner's metrics log)."""
        with self._naming(key):
            if self.local:
                self.fs.makedirs(posixpath.dirname(self.path(key)), exist_ok=True)
            with self.fs.open(self.path(key), "ab") as f:
                f.write(text.encode("utf-8"))

    def put_file(self, local: Path, key: str) -> None:
        """Copy a local file into the store atomically, streamed (on S3: one PUT, or from
        100 MiB on a multipart upload of 50 MiB parts, aborted when the copy fails midway)."""

        def copy(path: str) -> None:
            if self.atomic_put:
                self.fs.put_file(str(local), path)
                return
            with local.open("rb") as src, self.fs.open(path, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)

        self._publish(key, copy)

    def remove(self, key: str) -> bool:
        """Delete a file or folder (and its commit marker); False when there was none."""
        found = False
        with self._naming(key):
            for path in (self.path(_marker(key)), self.path(key)):  # uncommitted from the first
                if key and self.fs.exists(path):
                    self.fs.rm(path, recursive=True)
                    found = True
        return found

    @contextmanager
    def commit_dir(self, key: str) -> Iterator[Store]:
        """Yield a local scratch store; when the block ends it replaces folder ``key`` whole.

        A re-run of the same step replaces the earlier result. An exception leaves ``key``
        as it was (local) or uncommitted (object stores). The scratch folder of a commit whose
        process was killed (local: a hidden sibling; object stores: files without the marker)
        is removed by the next commit of the same folder.
        """
        if self.local:
            target = self.local_path(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            for stale in target.parent.glob(f".{target.name}.*"):  # a commit killed midway
                shutil.rmtree(stale, ignore_errors=True)
            scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
            try:
                yield Store(scratch)
                if target.exists():
                    shutil.rmtree(target)
                os.replace(scratch, target)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            return
        with tempfile.TemporaryDirectory(prefix="fedmomentum-commit-") as folder:
            yield Store(folder)
            self.remove(key)
            for name in Store(folder).files():
                self.put_file(Path(folder) / name, posixpath.join(key, name))
            self.write_bytes(_marker(key), b"")
