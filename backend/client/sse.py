"""Server-sent events read from the lines of a response (the subset the API sends: ``id``,
``event``, ``data`` and ``retry`` fields, ``:`` comments)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    """One server-sent event; ``data`` is decoded JSON (the text where it is not JSON)."""

    event: str
    data: Any
    id: int | None = None


@dataclass
class Parser:
    """Turns lines into events; remembers the last event id and the reconnection delay the
    server asked for."""

    last_id: int | None = None
    retry_s: float | None = None

    def feed(self, lines: Iterable[str]) -> Iterator[Event]:
        kind, event_id = "message", None
        data: list[str] = []
        for line in lines:
            if not line:
                if data:
                    yield self._dispatch(kind, "\n".join(data), event_id)
                kind, data, event_id = "message", [], None
                continue
            if line.startswith(":"):
                continue  # a comment: the server's keep-alive
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                kind = value
            elif name == "data":
                data.append(value)
            elif name == "id" and value.isdigit():
                event_id = int(value)
            elif name == "retry" and value.isdigit():
                self.retry_s = int(value) / 1000

    def _dispatch(self, kind: str, text: str, event_id: int | None) -> Event:
        if event_id is not None:
            self.last_id = event_id
        try:
            data = json.loads(text)
        except ValueError:
            data = text
        return Event(event=kind, data=data, id=event_id)
