"""The API of a token silo (``fedmomentum silo-client``): its bearer token is the silo's,
and it reaches only the /silo routes. httpx only: no server code, no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import httpx

from backend.client import HTTPClient, check, stream_to


class SiloAPI(HTTPClient):
    """A silo's tasks on one server. Errors raise ``APIError`` (409: the task is no longer
    wanted) or httpx's ``TransportError``."""

    def __init__(self, server: str, token: str, *, timeout: float = 60.0) -> None:
        super().__init__(server, token, timeout=timeout)

    def next_task(self, wait: float = 25.0) -> dict[str, Any] | None:
        """Claim this silo's next task, waiting up to ``wait`` s; None when none came."""
        timeout = httpx.Timeout(self.http.timeout.connect, read=wait + 30)
        response = check(self.http.get("/silo/tasks", params={"wait": wait}, timeout=timeout))
        return None if response.status_code == 204 else cast(dict[str, Any], response.json())

    def download(self, task_id: int, which: str, target: Path) -> None:
        """The task's ``adapter`` or ``backbone`` file, streamed to ``target``."""
        stream_to(self.http, f"/silo/tasks/{task_id}/{which}", target)

    def progress(self, task_id: int, steps: list[dict[str, Any]]) -> None:
        """Step losses ({step, loss}) since the last report; none: a sign of life."""
        check(self.http.post(f"/silo/tasks/{task_id}/progress", json={"steps": steps}))

    def fail(self, task_id: int, reason: str) -> None:
        check(self.http.post(f"/silo/tasks/{task_id}/failure", json={"reason": reason[:10_000]}))

    def upload(
        self, task_id: int, file: Path, *, seconds: float, compute_seconds: float
    ) -> dict[str, Any]:
        """Stream the update file; ``accepted`` false when this task was uploaded before."""
        params = {"seconds": seconds, "compute_seconds": compute_seconds}
        with file.open("rb") as f:
            response = self.http.post(
                f"/silo/tasks/{task_id}/update",
                params=params,
                content=f,  # streamed in chunks, with its Content-Length
                headers={"Content-Type": "application/octet-stream"},
            )
        return cast(dict[str, Any], check(response).json())
