"""``fedmomentum up --api-workers N``: the API served by N uvicorn worker processes on one
port, beside the embedded worker, all stopped by one SIGTERM."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.cli import build_parser, main
from backend.core.settings import get_settings
from tests.service.conftest import FINISHED, Service, descendants, read_events


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def _running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    return [c for c in descendants(pid) if _running(c) and _parent(c) == pid]


def _parent(pid: int) -> int:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def test_up_serves_from_several_api_processes(embedded_service: Service) -> None:
    service = embedded_service
    # One event stream per client per API process: two open at once need two processes.
    up = service.api(worker=True, options=["--api-workers", "2"], max_event_streams_per_client="1")
    children = _children(up.popen.pid)
    api_pids = [p for p in children if "multiprocessing.spawn" in _cmdline(p)]
    assert len(api_pids) == 2, [_cmdline(p) for p in children]
    assert sum(" worker " in _cmdline(p) for p in children) == 1, "one embedded worker"

    exp = service.create(name="two-apis")
    url = f"{service.url}/api/v1/experiments/{exp['id']}/events"
    streams: list[list[dict[str, Any]]] = []
    threads: list[threading.Thread] = []
    refused = 0
    with contextlib.ExitStack() as stack:
        # A new connection each time: the kernel hands it to whichever process accepts first.
        for _ in range(40):
            client = stack.enter_context(httpx.Client(timeout=60))
            response = stack.enter_context(client.stream("GET", url))
            if response.status_code == 429:
                assert "FEDMOMENTUM_MAX_EVENT_STREAMS_PER_CLIENT" in response.read().decode()
                refused += 1
                continue
            out: list[dict[str, Any]] = []
            streams.append(out)
            threads.append(
                threading.Thread(target=lambda r=response, o=out: o.extend(read_events(r)))
            )
            threads[-1].start()
            if len(streams) == 2:
                break
        assert len(streams) == 2, f"one process took all {refused + 1} connections"
        # Still running, so the first stream still held its slot when the second opened.
        assert service.get(exp["id"])["status"] not in FINISHED
        for thread in threads:
            thread.join(120)
            assert not thread.is_alive()

    done = service.wait_finished(exp["id"])
    assert done["status"] == "completed", done
    for events in streams:  # the same stream from either process
        assert events[-1]["event"] == "end" and events[-1]["data"]["status"] == "completed"
        assert [e["data"]["round"] for e in events if e["event"] == "round_finished"] == [0, 1]

    tree = descendants(up.popen.pid)
    assert set(api_pids) <= set(tree)
    up.popen.send_signal(signal.SIGTERM)
    assert up.popen.wait(30) == 0
    deadline = time.monotonic() + 10
    while any(_running(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [_cmdline(p) for p in tree if _running(p)] == []


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_a_bad_number_of_api_workers_is_refused(
    value: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["up", "--api-workers", value])
    assert exit_.value.code == 2
    assert "--api-workers" in capsys.readouterr().err

    monkeypatch.setenv("FEDMOMENTUM_API_WORKERS", value)
    get_settings.cache_clear()
    try:
        assert main(["up"]) == 2  # refused before anything starts
    finally:
        get_settings.cache_clear()
    assert "api_workers" in capsys.readouterr().err
