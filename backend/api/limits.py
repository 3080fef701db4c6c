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
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.core.settings import Settings

# Requests and event polls that use the database at once. It must stay below the worker
# threads of sync routes (anyio's 40) and within the connection pool (SQLAlchemy's 5 + 10
# overflow): a request holds its connection between the thread hops of its dependencies and
# route; with more of them than threads, every thread can end up waiting for a connection
# that only a request waiting for a thread can give back (a stall until the pool timeout,
# then 500s). The rest wait their turn in the event loop, holding nothing.
DB_CONCURRENCY = 10
_TOO_LARGE = b"Content Too Large"  # Starlette's answer to a body over max_body_size


def database_slots() -> anyio.Semaphore:
    """The semaphore of one app's database slots (waited on in async code only)."""
    return anyio.Semaphore(DB_CONCURRENCY)


def body_limit_settings(settings: Settings) -> dict[int, str]:
    """Each request body limit in bytes -> the setting it comes from (its 413 names it).

    The app passes ``max_body_bytes`` to FastAPI's ``max_body_size``; a router or route that
    takes larger bodies gets its own ``max_body_size`` (``app.include_router(router,
    max_body_size=settings.<its setting>)``) and its setting here.
    """
    return {
        settings.max_dataset_bytes: "FEDMOMENTUM_MAX_DATASET_BYTES",
        settings.max_upload_bytes: "FEDMOMENTUM_MAX_UPLOAD_BYTES",
        settings.max_body_bytes: "FEDMOMENTUM_MAX_BODY_BYTES",  # wins if two are equal
    }


def body_error(limit: int, setting: str | None) -> str:
    named = f" ({setting})" if setting else ""
    return f"request body: larger than the limit of {limit} bytes{named}"


class BodyLimitDetail:
    """The outermost ASGI layer: FastAPI's body limit answers 413 "Content Too Large" (plain
    text for a too-large Content-Length, JSON for bytes counted as they arrive); this turns
    that answer into the API's JSON error naming the limit in force and its setting."""

    def __init__(self, app: ASGIApp, settings_of_limits: dict[int, str]) -> None:
        self.app = app
        self.settings_of_limits = settings_of_limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None  # the start of a 413, until its body tells whose it is
        replaced = False

        async def named(message: Message) -> None:
            nonlocal held, replaced
            if replaced:
                return  # the rest of the body that was replaced
            if message["type"] == "http.response.start" and message["status"] == 413:
                held = message
                return
            if held is not None and message["type"] == "http.response.body":
                start, held = held, None
                limit = scope.get(MAX_BODY_SIZE_SCOPE_KEY)
                if limit is not None and _TOO_LARGE in message.get("body", b""):
                    detail = body_error(limit, self.settings_of_limits.get(limit))
                    await JSONResponse({"detail": detail}, 413)(scope, receive, send)
                    replaced = True
                    return
                await send(start)
            await send(message)

        await self.app(scope, receive, named)


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
