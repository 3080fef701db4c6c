"""One poller per experiment per API process, fanning the new events out to every open stream.

The database stays the source of truth (any number of API processes, each with its own
pollers). A poller starts with the first stream of an experiment and stops with the last:
every ``POLL_S`` it reads the events after the newest it has seen, in one short session
within one of the app's database slots, encodes each event once (fastapi.sse's wire format)
and offers the batch to every stream's bounded queue without waiting. A stream writes a
batch as one chunk: the cost of an open stream is per poll, not per event.

A stream subscribes first, then replays the stored events after its id, then takes the
batches of its queue, skipping the ids it has already sent: the poller's starting point is
read before the replay begins, so replay and fan-out overlap and nothing falls between them.
The poller keeps the experiment's newest ``HISTORY`` events as sent, so a replay of those is
a slice of memory, encoded once for every stream; only older events are read from the
database, a page at a time for each stream (hundreds of streams opening at once from event
0 made hundreds of such reads and encodings of the same events). A stream whose queue fills
(its client reads too slowly) is dropped from the fan-out instead of holding the others back;
once it has caught up with what it still holds, it replays after its last id and joins
again. Database replays use at most ``REPLAYS`` of the database slots at once, so that
hundreds of streams (re)connecting together leave slots to the requests.

The poller follows ids; the database layer makes an experiment's event ids visible in id
order (on PostgreSQL, event writers of one experiment commit one at a time), so none is
skipped.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from fastapi.concurrency import run_in_threadpool
from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event
from sqlalchemy.orm import Session

from backend.api.limits import DB_CONCURRENCY
from backend.db.engine import get_engine
from backend.db.events import event_payload, events_after, latest_events
from backend.db.experiments import experiment_status
from backend.db.models import ACTIVE, Event

log = logging.getLogger(__name__)
T = TypeVar("T")

POLL_S = 0.25
PAGE = 500  # events per read
QUEUE_BATCHES = 64  # per stream: 16 s of lag at one batch per poll before it falls back
REPLAYS = DB_CONCURRENCY // 2  # pages of replay read at once
HISTORY = 5000  # newest events each poller keeps as sent (a few MB), for replays
KEEPALIVE_S = 15.0  # a comment on an idle stream, so that proxies keep it open

Events = list[tuple[int, bytes]]  # (id, the event as sent)


@dataclass(frozen=True)
class Batch:
    """What one poll found: the new events, and the experiment's status read before them
    (None: the experiment is gone)."""

    events: Events
    status: str | None


def read_status(url: str, experiment_id: str) -> str | None:
    with Session(get_engine(url)) as session:
        return experiment_status(session, experiment_id=experiment_id)


def _encoded(e: Event) -> tuple[int, bytes]:
    data = json.dumps(event_payload(e))
    return e.id, format_sse_event(data_str=data, event=e.type, id=str(e.id))


def _read_events(url: str, experiment_id: str, after: int, pages: int) -> Batch:
    """The status, then up to ``pages`` pages of events after ``after``, formatted."""
    out: Events = []
    with Session(get_engine(url)) as session:
        status = experiment_status(session, experiment_id=experiment_id)
        for _ in range(pages if status is not None else 0):
            rows = events_after(session, experiment_id=experiment_id, after=after, limit=PAGE)
            out += map(_encoded, rows)
            if len(rows) < PAGE:
                break
            after = rows[-1].id
    return Batch(out, status)


def _newest(url: str, experiment_id: str, limit: int) -> Batch:
    """The status, then the newest ``limit`` events, formatted (the poller's start)."""
    with Session(get_engine(url)) as session:
        status = experiment_status(session, experiment_id=experiment_id)
        rows = latest_events(session, experiment_id=experiment_id, limit=limit)
        return Batch(list(map(_encoded, rows)), status)


@dataclass(eq=False)
class Subscription:
    """One stream's place in the fan-out: a bounded queue of batches."""

    queue: asyncio.Queue[Batch]
    dropped: bool = False  # its queue was full: it must replay from the database

    def offer(self, batch: Batch) -> None:
        if self.dropped:
            return
        try:
            self.queue.put_nowait(batch)
        except asyncio.QueueFull:
            self.dropped = True

    def rejoin(self) -> None:
        """Forget what is queued and take batches again (the caller replays the gap)."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.dropped = False


@dataclass(eq=False)
class _Poller:
    subscribers: set[Subscription] = field(default_factory=set)
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # its starting point is read
    task: asyncio.Task[None] | None = None
    status: str | None = None  # as of its last read
    # The newest events as sent, in id order: every event with an id above ``floor`` that
    # the poller has read is here (0: every event of the experiment so far).
    ids: list[int] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    floor: int = 0

    def keep(self, events: Events, limit: int) -> None:
        self.ids += (i for i, _ in events)
        self.chunks += (c for _, c in events)
        if len(self.ids) > 2 * limit:  # trimmed in steps: a slice per poll would copy a lot
            del self.ids[:-limit], self.chunks[:-limit]
            self.floor = self.ids[0] - 1

    def since(self, after: int) -> Events:
        """What it holds after ``after`` (which must be at least ``floor``)."""
        i = bisect.bisect_right(self.ids, after)
        return list(zip(self.ids[i:], self.chunks[i:], strict=True))


class EventHub:
    """The pollers of one app (one API process)."""

    def __init__(self, database_url: str, db_slots: anyio.Semaphore) -> None:
        self.url = database_url
        self.db_slots = db_slots
        self.poll_s = POLL_S
        self.keepalive_s = KEEPALIVE_S
        self.queue_batches = QUEUE_BATCHES
        self.history = HISTORY
        # Replays take at most this many of the database slots: when hundreds of streams
        # (re)connect at once, requests still find free ones.
        self.replays = anyio.Semaphore(REPLAYS)
        self.fallbacks = 0  # streams that were dropped from the fan-out and replayed the gap
        self._pollers: dict[str, _Poller] = {}

    @property
    def active_pollers(self) -> int:
        """Experiments polled by this process now (one per experiment with open streams)."""
        return len(self._pollers)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(database_url, *args)`` in a worker thread, within one database slot."""
        async with self.db_slots:
            return await run_in_threadpool(fn, self.url, *args)

    async def stream(self, experiment_id: str, after: int) -> AsyncIterator[bytes]:
        """The events after ``after``, then the new ones as they come, then ``end`` once the
        experiment has finished (or is gone) and everything was sent; chunks of SSE."""
        sub, poller = await self._subscribe(experiment_id)
        try:
            while True:
                while True:  # replay until it has nothing newer: memory, or the database
                    held = after >= poller.floor
                    if held:
                        batch = Batch(poller.since(after), poller.status)
                    else:
                        async with self.replays:
                            batch = await self.read(_read_events, experiment_id, after, 1)
                    if batch.events:
                        yield b"".join(event for _, event in batch.events)
                        after = batch.events[-1][0]
                    if held or len(batch.events) < PAGE:
                        break
                while batch.status in ACTIVE and not sub.dropped:
                    try:
                        async with asyncio.timeout(self.keepalive_s):
                            batch = await sub.queue.get()
                    except TimeoutError:
                        yield KEEPALIVE_COMMENT
                        continue
                    if new := [event for event_id, event in batch.events if event_id > after]:
                        yield b"".join(new)
                        after = batch.events[-1][0]
                if batch.status not in ACTIVE:
                    yield format_sse_event(
                        event="end", data_str=json.dumps({"status": batch.status})
                    )
                    return
                self.fallbacks += 1
                log.info(
                    "a stream of %s fell behind: replaying from event %d", experiment_id, after
                )
                sub.rejoin()
        finally:
            self._unsubscribe(experiment_id, sub)

    async def _subscribe(self, experiment_id: str) -> tuple[Subscription, _Poller]:
        sub = Subscription(asyncio.Queue(self.queue_batches))
        poller = self._pollers.get(experiment_id)
        if poller is None:
            poller = self._pollers[experiment_id] = _Poller()
            poller.task = asyncio.create_task(self._poll(experiment_id, poller))
        poller.subscribers.add(sub)
        try:
            await poller.ready.wait()
        except BaseException:
            self._unsubscribe(experiment_id, sub)
            raise
        return sub, poller

    def _unsubscribe(self, experiment_id: str, sub: Subscription) -> None:
        poller = self._pollers.get(experiment_id)
        if poller is None:
            return
        poller.subscribers.discard(sub)
        if not poller.subscribers:
            del self._pollers[experiment_id]
            assert poller.task is not None
            poller.task.cancel()

    async def _poll(self, experiment_id: str, poller: _Poller) -> None:
        start = await self._retrying(_newest, experiment_id, self.history)
        poller.keep(start.events, self.history)
        if len(start.events) == self.history:  # there may be older ones: in the database
            poller.floor = start.events[0][0] - 1
        after = start.events[-1][0] if start.events else 0
        status = poller.status = start.status
        poller.ready.set()
        while True:
            await asyncio.sleep(self.poll_s)
            batch = await self._retrying(_read_events, experiment_id, after, 10)
            if not batch.events and batch.status == status:
                continue
            if batch.events:
                after = batch.events[-1][0]
                poller.keep(batch.events, self.history)
            status = poller.status = batch.status
            for sub in list(poller.subscribers):
                sub.offer(batch)

    async def _retrying(self, fn: Callable[..., T], *args: Any) -> T:
        """``read``, again every poll while the database fails (its streams wait)."""
        while True:
            try:
                return await self.read(fn, *args)
            except Exception:  # noqa: BLE001 - the database may be away: try again
                log.exception("reading the events of %s failed; retrying", args[0])
            await asyncio.sleep(self.poll_s)
