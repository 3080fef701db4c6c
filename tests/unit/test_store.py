"""The artifact store on fsspec's local and memory filesystems: atomic writes, folder commits
(a rename on local disks, a marker object elsewhere), listing, removal, symlinks."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from backend.core.settings import Settings
from backend.core.store import Store


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return Store(tmp_path / "store")
    return Store(f"memory://fm-test-{uuid.uuid4().hex[:8]}/runs")


def leftovers(store: Store) -> list[str]:
    """Temporary or scratch names anywhere in the store."""
    return [
        p for p in store.fs.find(store.root, withdirs=True) if "/." in p and "committed" not in p
    ]


def test_files_round_trip_with_full_urls(store: Store) -> None:
    store.write_bytes("a/b/file.bin", b"\x00\x01")
    store.write_json("a/meta.json", {"n": 1})
    store.write_text("a/b/c/readme.md", "hi")

    assert store.read_bytes("a/b/file.bin") == b"\x00\x01"
    assert store.read_json("a/meta.json") == {"n": 1}
    assert store.files("a") == ["a/b/c/readme.md", "a/b/file.bin", "a/meta.json"]
    assert store.size("a/b") == 4 and store.size("a/b/file.bin") == 2
    assert store.glob("a/b/*.bin") == ["a/b/file.bin"]
    assert store.sub("a/b").read_bytes("file.bin") == b"\x00\x01"
    expected = "memory://" if not store.local else "/"
    assert store.url("a/meta.json").startswith(expected)
    assert store.url("a/meta.json").endswith(
        "/runs/a/meta.json" if not store.local else "store/a/meta.json"
    )
    assert leftovers(store) == []


def test_a_write_replaces_and_a_failed_write_leaves_the_old_file(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write_bytes("x.bin", b"old")
    store.write_bytes("x.bin", b"new")
    assert store.read_bytes("x.bin") == b"new"

    def half_then_fail(path: str, data: bytes, **_: object) -> None:
        with store.fs.open(path, "wb") as f:
            f.write(data[:2])
        raise OSError("disk full")

    monkeypatch.setattr(store.fs, "pipe_file", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        store.write_bytes("x.bin", b"newer")

    assert store.read_bytes("x.bin") == b"new"  # never half a file
    assert leftovers(store) == []  # and no temporary left behind


def test_put_file_streams_a_local_file_in(store: Store, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 40_000)  # more than one 4 MiB chunk

    store.put_file(big, "deep/big.bin")

    assert store.read_bytes("deep/big.bin") == big.read_bytes()
    assert leftovers(store) == []


def test_commit_dir_appears_whole_or_not_at_all(store: Store) -> None:
    with store.commit_dir("state/round-0001") as scratch:
        scratch.write_text("adapter.bin", "v1")
        scratch.write_text("sub/summary.json", "{}")
        assert not store.committed("state/round-0001")  # nothing visible mid-commit
    assert store.committed("state/round-0001")
    assert store.files("state") == [
        "state/round-0001/adapter.bin",
        "state/round-0001/sub/summary.json",
    ]

    with pytest.raises(RuntimeError), store.commit_dir("state/round-0002") as scratch:
        scratch.write_text("adapter.bin", "v2")
        raise RuntimeError("crash mid-commit")
    assert not store.committed("state/round-0002")

    with store.commit_dir("state/round-0001") as scratch:  # a re-run replaces the folder
        scratch.write_text("other.bin", "v3")
    assert store.files("state/round-0001") == ["state/round-0001/other.bin"]
    assert leftovers(store) == []


def test_a_commit_killed_midway_is_swept_by_the_next_commit(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    with store.commit_dir("state/round-0001") as scratch:
        scratch.write_text("a.bin", "v1")
    killed = store.local_path("state") / ".round-0002.k1ll3d"  # what a SIGKILL leaves behind
    (killed / "sub").mkdir(parents=True)
    (killed / "sub" / "half.bin").write_text("half")
    other = store.local_path("state") / ".round-00021.abc"  # another folder's: not swept
    other.mkdir()

    with store.commit_dir("state/round-0002") as scratch:
        scratch.write_text("a.bin", "v2")

    assert not killed.exists() and other.exists()
    assert store.files("state") == ["state/round-0001/a.bin", "state/round-0002/a.bin"]


def test_remove_deletes_a_folder_and_its_commit(store: Store) -> None:
    with store.commit_dir("exp1/export") as scratch:
        scratch.write_text("a.txt", "a")
    store.write_text("exp2/keep.txt", "k")

    assert store.remove("exp1") is True
    assert store.remove("exp1") is False
    assert store.remove("exp1/export") is False
    assert not store.committed("exp1/export")
    assert store.files() == ["exp2/keep.txt"]


def test_local_files_never_resolve_outside_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    store.write_text("run/export/ok.txt", "ok")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "passwd").write_text("root")
    (store.local_path("run/export") / "leak.txt").symlink_to(secret / "passwd")
    (store.local_path("run/export") / "leakdir").symlink_to(secret, target_is_directory=True)
    (store.local_path("run") / "linked").symlink_to(secret, target_is_directory=True)

    assert store.files("run") == ["run/export/ok.txt"]
    assert store.files("run/export/leak.txt") == []
    assert not store.sub("run").committed("linked")


def test_settings_choose_the_store() -> None:
    default = Settings(data_dir=Path("/srv/fm"))
    assert default.runs_store().local and default.runs_store().root == "/srv/fm/runs"

    memory = Settings(
        artifact_url="memory://bucket/runs", artifact_options={"skip_instance_cache": True}
    )
    store = memory.runs_store()
    assert not store.local and store.url() == "memory:///bucket/runs"
    with pytest.raises(ValueError, match="not on a local filesystem"):
        store.local_path()


def test_an_object_store_commit_cut_short_stays_uncommitted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = Store(f"memory://fm-test-{uuid.uuid4().hex[:8]}/runs")
    put = store.put_file
    calls: list[str] = []

    def put_then_crash(local: Path, key: str) -> None:
        calls.append(key)
        if len(calls) == 2:
            raise ConnectionError("store unreachable")
        put(local, key)

    monkeypatch.setattr(store, "put_file", put_then_crash)
    with pytest.raises(ConnectionError), store.commit_dir("state/round-0003") as scratch:
        scratch.write_text("a.bin", "a")
        scratch.write_text("b.bin", "b")

    assert store.files("state/round-0003") == ["state/round-0003/a.bin"]  # half uploaded...
    assert not store.committed("state/round-0003")  # ...and so not committed


def test_an_unusable_artifact_url_stops_at_start_naming_the_allowed() -> None:
    with pytest.raises(ValueError, match="artifact_url") as error:
        Settings(artifact_url="foo://bucket/runs")

    assert "cannot use foo:// (Protocol not known: foo)" in str(error.value)
    assert "allowed: a local path, file://, memory://, or s3://" in str(error.value)
