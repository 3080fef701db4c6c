"""The embedded broker's message files appear whole: written aside, then renamed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from kombu import Connection

from backend.core import fs_transport


def _connection(folder: Path) -> Connection:
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder)}
    return Connection("filesystem://", transport=fs_transport.Transport, transport_options=options)


def test_a_message_round_trips_and_leaves_no_temporary_file(tmp_path):
    with _connection(tmp_path) as conn:
        queue = conn.SimpleQueue("train")
        queue.put({"experiment": "e1", "round": 3})
        files = os.listdir(tmp_path)
        assert len([f for f in files if f.endswith(".train.msg")]) == 1
        assert not [f for f in files if f.startswith(".")]

        message = queue.get(timeout=5)

        assert message.payload == {"experiment": "e1", "round": 3}
        message.ack()
        queue.close()


def test_no_reader_can_see_the_file_before_it_is_complete(tmp_path, monkeypatch):
    seen: list[tuple[list[str], dict]] = []
    replace = os.replace

    def watching_replace(src: str, dst: str) -> None:
        # Just before the rename: no queue file yet, and the hidden one is already whole.
        visible = [f for f in os.listdir(tmp_path) if f.endswith(".train.msg")]
        seen.append((visible, json.loads(Path(src).read_text())))
        replace(src, dst)

    monkeypatch.setattr(fs_transport.os, "replace", watching_replace)
    with _connection(tmp_path) as conn:
        conn.SimpleQueue("train").put({"big": "x" * 1_000_000})

    assert len(seen) == 1
    visible, payload = seen[0]
    assert visible == []
    assert len(payload["body"]) > 1_000_000  # the whole (encoded) message was there


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    def full_disk(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fs_transport.os, "replace", full_disk)
    with _connection(tmp_path) as conn, pytest.raises(Exception, match="Cannot add"):
        conn.SimpleQueue("train").put({"a": 1})
    assert os.listdir(tmp_path) == []
