"""A Python client of the FedMomentum API: submit, list, follow, download and cancel
experiments of a running service (``fedmomentum up``) from anywhere httpx runs.

    from backend.client import Client

    with Client("http://127.0.0.1:8000", token="...") as api:
        experiment = api.submit("examples/quickstart.yaml")
        for event in api.events(experiment["id"]):
            print(event.event, event.data)
        api.download(experiment["id"], "adapter", "out/")

It needs httpx only (no torch, no server code). Every error answer of the API raises
``APIError`` with the status code and the API's message (a 422 names each bad field);
a server that cannot be reached raises httpx's own ``httpx.TransportError``.
"""

from __future__ import annotations

import builtins
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self, cast

import httpx

from backend.client.sse import Event, Parser
from backend.core.config import read_config_file

__all__ = ["DEFAULT_SERVER", "APIError", "Client", "Event", "check"]

DEFAULT_SERVER = "http://127.0.0.1:8000"
API_PREFIX = "/api/v1"
FINISHED = ("completed", "failed", "cancelled")


def _describe(detail: Any) -> str:
    """The API's ``detail`` in words: FastAPI's validation errors as 'field: message' lines."""
    if isinstance(detail, builtins.list):
        lines = []
        for error in detail:
            if not isinstance(error, dict):
                lines.append(str(error))
                continue
            loc = [str(p) for p in error.get("loc", [])]
            where = ".".join(loc[1:] if loc[:1] == ["body"] else loc) or "body"
            lines.append(f"{where}: {str(error.get('msg', '')).removeprefix('Value error, ')}")
        return "\n".join(lines)
    return str(detail)


class APIError(Exception):
    """An error answer of the API: ``status_code`` and ``detail`` as the API sent it;
    ``message`` is the detail in words (for a 422: one 'field: problem' line per field)."""

    def __init__(self, status_code: int, detail: Any) -> None:
        self.status_code = status_code
        self.detail = detail
        self.message = _describe(detail)
        super().__init__(f"{status_code}: {self.message}")

    @classmethod
    def from_response(cls, response: httpx.Response) -> APIError:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text or response.reason_phrase
        return cls(response.status_code, detail)


def check(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        response.read()
        raise APIError.from_response(response)
    return response


def stream_to(
    http: httpx.Client, url: str, target: Path, params: dict[str, Any] | None = None
) -> Path:
    """GET ``url`` streamed into ``target`` (through ``target``.part, removed on failure:
    ``target`` appears whole or not at all)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        with http.stream("GET", url, params=params) as response, part.open("wb") as out:
            check(response)
            for chunk in response.iter_bytes():
                out.write(chunk)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return part.replace(target)


class HTTPClient:
    """One server's API under /api/v1 with a bearer token: the connection, closed on exit."""

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(
            base_url=server.rstrip("/") + API_PREFIX,
            headers=headers,
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client(HTTPClient):
    """The API of one server; ``token`` is its FEDMOMENTUM_API_TOKEN, sent as a bearer token."""

    def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        return check(self.http.request(method, url, **kwargs)).json()

    def submit(self, config: dict[str, Any] | str | Path) -> dict[str, Any]:
        """Create and start an experiment from a config (a dict, or a YAML file's path);
        the experiment as the API shows it."""
        body = config if isinstance(config, dict) else read_config_file(Path(config))
        return cast(dict[str, Any], self._json("POST", "/experiments", json=body))

    def list(
        self,
        *,
        status: str | None = None,
        strategy: str | None = None,
        sort: str = "-created_at",
        offset: int = 0,
        limit: int = 50,
    ) -> builtins.list[dict[str, Any]]:
        """Experiments, newest first, optionally of one status or strategy (one page)."""
        params: dict[str, Any] = {"sort": sort, "offset": offset, "limit": limit}
        params |= {k: v for k, v in (("status", status), ("strategy", strategy)) if v}
        return cast(
            builtins.list[dict[str, Any]], self._json("GET", "/experiments", params=params)["data"]
        )

    def status(self, experiment_id: str) -> dict[str, Any]:
        """One experiment: status, progress (current_round of total_rounds), config, error."""
        return cast(dict[str, Any], self._json("GET", f"/experiments/{experiment_id}"))

    def cancel(self, experiment_id: str) -> dict[str, Any]:
        """Cancel a queued or running experiment (APIError 409 when it has finished)."""
        return cast(dict[str, Any], self._json("POST", f"/experiments/{experiment_id}/cancel"))

    def create_silo(self, name: str) -> dict[str, Any]:
        """Issue the token of silo ``name`` (shown once: ``token``)."""
        return cast(dict[str, Any], self._json("POST", "/silos", json={"name": name}))

    def list_silos(self) -> builtins.list[dict[str, Any]]:
        """Every silo: name, created_at, revoked_at, last_used_at."""
        return cast(builtins.list[dict[str, Any]], self._json("GET", "/silos")["data"])

    def revoke_silo(self, name: str) -> None:
        """Revoke silo ``name``'s token (refused from the next request on)."""
        check(self.http.delete(f"/silos/{name}"))

    def events(
        self,
        experiment_id: str,
        after: int | None = None,
        *,
        retries: int = 10,
        retry_s: float | None = None,
        read_timeout: float = 60.0,
    ) -> Iterator[Event]:
        """The experiment's live events, oldest first (after event id ``after``), until the
        ``end`` event (yielded last; its data holds the final status).

        A dropped connection (or a server answering 5xx or 429 while it restarts) is
        resumed from the last event received, with ``Last-Event-ID``: nothing is missed or
        repeated. ``retries`` failed reconnections in a row give up, raising the last error;
        between them it waits ``retry_s`` (default: what the server asks for, else 2 s). The
        server sends a keep-alive every 15 s, so ``read_timeout`` of silence is a drop too.
        """
        parser = Parser(last_id=after)
        failures = 0
        timeout = httpx.Timeout(self.http.timeout.connect, read=read_timeout)
        while True:
            headers = {} if parser.last_id is None else {"Last-Event-ID": str(parser.last_id)}
            try:
                url = f"/experiments/{experiment_id}/events"
                with self.http.stream("GET", url, headers=headers, timeout=timeout) as response:
                    if response.status_code >= 500 or response.status_code == 429:
                        response.read()
                        raise _Retry(APIError.from_response(response))
                    check(response)
                    for event in parser.feed(response.iter_lines()):
                        failures = 0
                        yield event
                        if event.event == "end":
                            return
                    raise _Retry(httpx.RemoteProtocolError("the event stream ended early"))
            except (httpx.TransportError, _Retry) as e:
                failures += 1
                if failures > retries:
                    raise (e.error if isinstance(e, _Retry) else e) from None
            time.sleep(retry_s if retry_s is not None else parser.retry_s or 2.0)

    def download(
        self,
        experiment_id: str,
        format: str = "adapter",
        out_dir: str | Path = ".",
        *,
        rank: int | None = None,
        unzip: bool = True,
    ) -> Path:
        """Download an export (``adapter``, ``merged``, ``delta`` or ``adapter-rank``, with
        ``rank`` for a rank other than the exported one) into ``out_dir``: unpacked (the
        path returned is its folder or file there), or the zip itself with ``unzip=False``.
        The zip streams to disk; a large merged model never sits in memory."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        params: dict[str, Any] = {"format": format} | ({} if rank is None else {"rank": rank})
        url = f"/experiments/{experiment_id}/download"
        name = f"fedmomentum-{experiment_id}-{format}.zip"
        zipped = stream_to(self.http, url, out / name, params)
        if not unzip:
            return zipped
        try:
            with zipfile.ZipFile(zipped) as archive:
                names = archive.namelist()
                archive.extractall(out)  # drops absolute paths and '..' from member names
        finally:
            zipped.unlink()
        return out / names[0].split("/", 1)[0] if names else out


class _Retry(Exception):
    """A reconnection worth trying, after ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error
