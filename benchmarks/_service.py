"""Shared by the benchmarks that drive a running service through its API: a free port,
waiting for it, running experiments to the end, stopping its processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(done: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("the service did not get there in time")
        time.sleep(0.1)


def healthy(http: httpx.Client) -> bool:
    try:
        return http.get("/health").status_code == 200
    except httpx.HTTPError:
        return False


def run_to_end(
    http: httpx.Client, bodies: list[dict[str, Any]], timeout: float
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Run each experiment to its end, one after the other (the first ones warm the workers
    up); the last one's experiment, rounds and client records."""
    for body in bodies:
        eid = http.post("/experiments", json=body).json()["id"]
        wait(lambda eid=eid: http.get(f"/experiments/{eid}").json()["status"]
             in ("completed", "failed"), timeout=timeout)  # fmt: skip
    exp = http.get(f"/experiments/{eid}").json()
    assert exp["status"] == "completed", exp["error"]
    rounds = http.get(f"/experiments/{eid}/rounds").json()["data"]
    clients = http.get(
        f"/experiments/{eid}/metrics", params={"kind": "client", "limit": 500}
    ).json()["data"]
    return exp, rounds, clients


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        p.wait(60)
