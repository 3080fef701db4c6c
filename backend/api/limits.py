"""Request limits: the largest request body (413), live event streams per client (429), and
how many requests and event polls use the database at once.

All are per API process. Bodies need no coordination. Event streams are counted per client
address in the process that holds them: each open stream costs that process a connection,
a queue and its share of the fan-out (backend.api.event_fanout), so the process is the
resource being protected; with several API processes behind a load balancer a client may
hold the limit in each of them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
from fastapi import HTTPException
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Requests and event polls that use the database at once. It must stay below the worker
# threads of sync routes (anyio's 40) and within the connection pool (SQLAlchemy's 5 + 10
# overflow): a request holds its connection between the thread hops of its dependencies and
# route; with more of them than threads, every thread can end up waiting for a connection
# that only a request waiting for a thread can give back (a stall until the pool timeout,
# then 500s). The rest wait their turn in the event loop, holding nothing.
DB_CONCURRENCY = 10


def database_slots() -> anyio.Semaphore:
    """The semaphore of one app's database slots (waited on in async code only)."""
    return anyio.Semaphore(DB_CONCURRENCY)


def _body_error(max_bytes: int) -> str:
    return f"request body: larger than the limit of {max_bytes} bytes (FEDMOMENTUM_MAX_BODY_BYTES)"


class BodySizeLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes``, by its Content-Length up
    front and by counting the bytes as they arrive (a chunked body declares no length)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": _body_error(self.max_bytes)}, 413)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException: FastAPI re-raises it from its body parsing (any other
                    # error would become a 400) and the app's handler answers 413.
                    raise HTTPException(413, _body_error(self.max_bytes))
            return message

        await self.app(scope, limited, send)


class StreamSlots:
    """How many event streams each client address holds open in this process.

    Used only from the event loop's thread (acquire and release run in async code between
    awaits), so the counter needs no lock.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: no limit
        self.open: Counter[str] = Counter()

    def acquire(self, client: str) -> bool:
        """Take a slot for ``client``; False when it already holds ``limit`` streams."""
        if self.limit and self.open[client] >= self.limit:
            return False
        self.open[client] += 1
        return True

    def release(self, client: str) -> None:
        """Give back a slot taken by ``acquire``."""
        self.open[client] -= 1
        if self.open[client] <= 0:
            del self.open[client]


class SlotEventSourceResponse(EventSourceResponse):
    """An event stream that holds one of its client's slots while it runs: 429 when none is
    free.

    The slot is taken and given back inside the response call itself, so a stream that
    ends, fails or loses its client always frees it.
    """

    def __init__(self, content: Any, *, slots: StreamSlots, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope["client"][0] if scope.get("client") else "unknown"
        if not self.slots.acquire(client):
            detail = (
                f"too many event streams: this client already has {self.slots.limit} open "
                "(FEDMOMENTUM_MAX_EVENT_STREAMS_PER_CLIENT); close one and retry"
            )
            refusal = JSONResponse({"detail": detail}, 429, headers={"Retry-After": "2"})
            await refusal(scope, receive, send)
            return
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slots.release(client)
