"""A real S3-compatible server for the tests: moto's server mode (the `dev` extra) in its own
process on a free 127.0.0.1 port, and a boto3 client to look into its buckets independently
of the code under test. moto keeps objects in memory: a restart starts empty."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import free_port, unique

REGION = "us-east-1"


class S3Server:
    """One moto server process; ``kill`` (SIGKILL), ``pause``/``resume`` (SIGSTOP/SIGCONT)
    and ``start`` again on the same port."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.popen: subprocess.Popen[bytes] | None = None
        self.start()

    def env(self) -> dict[str, str]:
        """What a user sets for a worker or the API: credentials, region and the endpoint
        (botocore's standard AWS_ENDPOINT_URL)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "fedmomentum-test",
            "AWS_SECRET_ACCESS_KEY": "fedmomentum-test-secret",
            "AWS_DEFAULT_REGION": REGION,
        }

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while not self._answers():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f"the moto S3 server did not start on {self.endpoint} (moto[server] is in "
                    f"the dev extra: `make install`):\n{self.log.read_text(errors='replace')}",
                    pytrace=False,
                )
            time.sleep(0.1)

    def _answers(self) -> bool:
        try:
            return httpx.get(self.endpoint, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: the server and every object in it are gone."""
        if self.popen is not None and self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(30)

    def pause(self) -> None:
        """SIGSTOP: an outage; connections are accepted by the kernel but never answered."""
        assert self.popen is not None
        os.killpg(self.popen.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.popen is not None
        os.killpg(self.popen.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.popen is not None and self.alive():
            os.killpg(self.popen.pid, signal.SIGCONT)  # a paused server cannot act on TERM
        self.kill()

    def client(self) -> Any:
        import boto3

        env = self.env()
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=REGION,
        )

    def bucket(self) -> str:
        """A new, empty bucket."""
        name = unique("fm-test-")
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object of a bucket (below ``prefix``), key -> content."""
        client = self.client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}

    def multipart_uploads(self, bucket: str) -> list[str]:
        """Keys of multipart uploads begun and neither completed nor aborted."""
        found = self.client().list_multipart_uploads(Bucket=bucket)
        return [u["Key"] for u in found.get("Uploads", [])]


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 in front of a server that cuts the connection of any request
    larger than ``limit`` bytes once the first ``let_through`` such requests have passed: an
    upload that dies midway, as when a network link drops. Requests and responses alternate
    on a connection, so the bytes sent since the last response byte are the current request.
    """

    def __init__(self, upstream_port: int, limit: int, let_through: int = 0) -> None:
        self.upstream_port, self.limit, self.let_through = upstream_port, limit, let_through
        self.cuts = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            state = {"sent": 0, "allowed": False}
            threading.Thread(
                target=self._pump_up, args=(client, upstream, state), daemon=True
            ).start()
            threading.Thread(
                target=self._pump_down, args=(upstream, client, state), daemon=True
            ).start()

    def _pump_up(self, src: socket.socket, dst: socket.socket, state: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                state["sent"] += len(data)
                if state["sent"] > self.limit and not state["allowed"]:
                    with self._lock:
                        state["allowed"] = self.let_through > 0
                        self.let_through -= 1
                    if not state["allowed"]:
                        self.cuts += 1
                        break
                dst.sendall(data)
        for sock in (src, dst):
            sock.close()

    def _pump_down(self, src: socket.socket, dst: socket.socket, state: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                state["sent"], state["allowed"] = 0, False  # the request got its answer
                dst.sendall(data)
        for sock in (src, dst):
            sock.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
