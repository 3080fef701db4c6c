"""The live event stream over real HTTP (uvicorn) on SQLite and PostgreSQL: many streams of
one experiment share one poller and each gets every event exactly once and in order; a
stream resumed with Last-Event-ID continues without gap or duplicate; a client that reads
slowly holds nobody back and still gets everything; the poller stops with its last stream."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy.orm import Session

from backend.api import event_fanout
from backend.api.app import create_app
from backend.core.settings import Settings
from backend.db.engine import get_engine
from backend.db.events import add_event, all_events, events_after
from tests.api.conftest import serve

API = "/api/v1/experiments"
TIMEOUT = httpx.Timeout(60, read=120)


def _write(settings: Settings, experiment_id: str, rounds: range, size: int = 0) -> None:
    """One committed ``round_started`` event per round (``size`` bytes of padding each)."""
    with Session(get_engine(settings.database_url)) as session:
        for r in rounds:
            add_event(
                session,
                experiment_id=experiment_id,
                type="round_started",
                data={"round": r, "pad": "x" * size},
            )
            session.commit()


def _stored_ids(settings: Settings, experiment_id: str) -> list[int]:
    with Session(get_engine(settings.database_url)) as session:
        return [e.id for e in all_events(session, experiment_id=experiment_id)]


async def _read(
    response: httpx.Response, on_event: Callable[[dict[str, Any]], None] | None = None
) -> list[dict[str, Any]]:
    """The events of an open stream until ``end`` (or until the stream stops)."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    async for line in response.aiter_lines():
        field, _, value = line.partition(": ")
        if field in ("id", "event", "retry"):
            current[field] = value
        elif field == "data":
            current["data"] = json.loads(value)
        elif line == "" and "event" in current:
            out.append(current)
            if on_event is not None:
                on_event(current)
            if current["event"] == "end":
                return out
            current = {}
        elif line == "":
            current = {}
    return out


def _ids(events: list[dict[str, Any]]) -> list[int]:
    return [int(e["id"]) for e in events if e["event"] != "end"]


async def _until(done: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


def test_many_streams_get_every_event_once_in_order(settings, create):
    experiment_id = create()["id"]  # queued, no worker: it stays active until cancelled
    _write(settings, experiment_id, range(1))  # each stream replays it, then follows
    app = create_app(settings)
    hub = app.state.event_hub
    n_streams = 40
    got_first: set[int] = set()

    async def one(http: httpx.AsyncClient, i: int) -> list[dict[str, Any]]:
        async with http.stream("GET", f"{API}/{experiment_id}/events") as response:
            assert response.status_code == 200
            return await _read(response, lambda _e: got_first.add(i))

    async def main(url: str) -> list[list[dict[str, Any]]]:
        limits = httpx.Limits(max_connections=n_streams + 5)
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT, limits=limits) as http:
            streams = [asyncio.create_task(one(http, i)) for i in range(n_streams)]
            await _until(lambda: len(got_first) == n_streams, "every stream following")
            pollers = hub.active_pollers
            for start in range(1, 60, 6):  # batches over several polls
                await asyncio.to_thread(_write, settings, experiment_id, range(start, start + 6))
                await asyncio.sleep(0.1)
            assert (await http.post(f"{API}/{experiment_id}/cancel")).status_code == 200
            results = await asyncio.gather(*streams)
            assert pollers == 1
            return results

    with serve(app) as url:
        results = asyncio.run(main(url))

    stored = _stored_ids(settings, experiment_id)
    assert len(stored) >= 62  # the 61 rounds, the status event of the cancel
    for events in results:
        assert _ids(events) == stored
        assert events[-1] == {"event": "end", "data": {"status": "cancelled"}}
        assert [e["data"]["round"] for e in events if e["event"] == "round_started"] == list(
            range(61)
        )
    assert hub.active_pollers == 0


def test_resuming_with_last_event_id_has_no_gap_or_duplicate(settings, create):
    """Streams reconnect with Last-Event-ID while events keep arriving and other streams
    keep the poller running: each resumed stream continues right after its id."""
    experiment_id = create()["id"]
    _write(settings, experiment_id, range(10))
    app = create_app(settings)
    stop_writing = threading.Event()
    reconnected: list[int] = []

    def writer() -> None:
        r = 10
        while not stop_writing.is_set():
            _write(settings, experiment_id, range(r, r + 3))
            r += 3
            time.sleep(0.03)

    async def resumed(http: httpx.AsyncClient, cut: int) -> list[dict[str, Any]]:
        async with http.stream("GET", f"{API}/{experiment_id}/events") as first:
            head = []
            async for event in _aiter_events(first):
                head.append(event)
                if len(head) == cut:
                    break  # the connection drops mid-stream
        headers = {"Last-Event-ID": head[-1]["id"]}
        async with http.stream("GET", f"{API}/{experiment_id}/events", headers=headers) as rest:
            assert rest.status_code == 200
            reconnected.append(cut)
            return head + await _read(rest)

    async def main(url: str) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
        async with (
            httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http,
            http.stream("GET", f"{API}/{experiment_id}/events") as steady,
        ):
            whole = asyncio.create_task(_read(steady))
            thread = threading.Thread(target=writer)
            thread.start()
            try:
                tasks = [asyncio.create_task(resumed(http, cut)) for cut in (3, 10, 25, 40)]
                await _until(lambda: len(reconnected) == len(tasks), "every stream resumed")
                await asyncio.sleep(0.5)  # events keep coming after the reconnects
            finally:
                stop_writing.set()
                await asyncio.to_thread(thread.join)
            await http.post(f"{API}/{experiment_id}/cancel")
            return await whole, await asyncio.gather(*tasks)

    with serve(app) as url:
        whole, parts = asyncio.run(main(url))

    stored = _stored_ids(settings, experiment_id)
    assert _ids(whole) == stored
    for events in parts:
        assert _ids(events) == stored
        assert events[-1]["event"] == "end"


async def _aiter_events(response: httpx.Response) -> Any:
    current: dict[str, Any] = {}
    async for line in response.aiter_lines():
        field, _, value = line.partition(": ")
        if field in ("id", "event"):
            current[field] = value
        elif line == "":
            if "id" in current:
                yield current
            current = {}


def test_a_slow_reader_delays_no_one_and_still_gets_everything(settings, create):
    """One client stops reading; its queue fills and it leaves the fan-out. The others get
    every event and the end while it still reads nothing; then it gets everything too (the
    gap replayed from the database), once each and in order."""
    experiment_id = create()["id"]
    app = create_app(settings)
    hub = app.state.event_hub
    hub.queue_batches = 2
    hub.poll_s = 0.05
    size = 1024 * 1024  # the slow client's socket buffers fill after a few events

    async def main(url: str) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
        async with (
            httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http,
            http.stream("GET", f"{API}/{experiment_id}/events") as slow,
        ):
            fast = [asyncio.create_task(_read_stream(http, experiment_id)) for _ in range(3)]
            await _until(lambda: hub.active_pollers == 1, "the poller running")
            await asyncio.sleep(0.5)  # every stream subscribed
            for r in range(30):
                await asyncio.to_thread(_write, settings, experiment_id, range(r, r + 1), size)
                await asyncio.sleep(hub.poll_s * 2)  # one batch per event
            await http.post(f"{API}/{experiment_id}/cancel")
            others = await asyncio.gather(*fast)  # while the slow one has read nothing
            return others, await _read(slow)

    with serve(app) as url:
        others, slow = asyncio.run(main(url))

    stored = _stored_ids(settings, experiment_id)
    for events in [*others, slow]:
        assert _ids(events) == stored
        assert events[-1] == {"event": "end", "data": {"status": "cancelled"}}
    assert hub.fallbacks >= 1  # the slow stream was dropped and replayed the gap


async def _read_stream(http: httpx.AsyncClient, experiment_id: str) -> list[dict[str, Any]]:
    async with http.stream("GET", f"{API}/{experiment_id}/events") as response:
        return await _read(response)


def test_the_poller_stops_with_the_last_stream_of_its_experiment(settings, create):
    first, second = create()["id"], create()["id"]
    app = create_app(settings)
    hub = app.state.event_hub

    async def main(url: str) -> list[int]:
        counts = []
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http:
            streams = [
                await http.send(http.build_request("GET", f"{API}/{eid}/events"), stream=True)
                for eid in (first, first, first, second)
            ]
            await _until(lambda: hub.active_pollers == 2, "one poller per experiment")
            counts.append(hub.active_pollers)
            for stream in streams[:2]:
                await stream.aclose()
            await asyncio.sleep(0.5)
            counts.append(hub.active_pollers)  # the third stream keeps its poller
            await streams[3].aclose()
            await _until(lambda: hub.active_pollers == 1, "the second's poller stopped")
            await streams[2].aclose()
            await _until(lambda: hub.active_pollers == 0, "every poller stopped")
            counts.append(hub.active_pollers)
        return counts

    with serve(app) as url:
        counts = asyncio.run(main(url))

    assert counts == [2, 2, 0]


def test_an_idle_stream_gets_keep_alives(settings, create):
    experiment_id = create()["id"]
    app = create_app(settings)
    app.state.event_hub.keepalive_s = 0.2

    with (
        serve(app) as url,
        httpx.stream("GET", f"{url}{API}/{experiment_id}/events", timeout=TIMEOUT) as response,
    ):
        lines = []
        for line in response.iter_lines():
            lines.append(line)
            if line.startswith(":"):
                break

    assert response.headers["content-type"].startswith("text/event-stream")
    assert lines[0] == "retry: 2000"
    assert lines[-1] == ": ping"


def test_the_schema_lists_the_stream_as_text_event_stream(client):
    spec = client.get("/api/v1/openapi.json").json()

    operation = spec["paths"]["/api/v1/experiments/{experiment_id}/events"]["get"]
    content = operation["responses"]["200"]["content"]
    assert list(content) == ["text/event-stream"]
    item = content["text/event-stream"]["itemSchema"]
    assert set(item["properties"]) == {"id", "event", "data", "retry"}
    assert "round_finished" in item["properties"]["event"]["enum"]
    assert {"404", "429"} <= set(operation["responses"])
    assert {p["name"] for p in operation["parameters"]} == {
        "experiment_id",
        "last-event-id",
        "after",
    }


def test_replays_come_from_the_pollers_history_and_older_events_from_the_database(
    settings, create, monkeypatch
):
    """The poller keeps only the newest events (here 4, trimmed as new ones come): a stream
    opened from event 0 afterwards reads the older ones from the database and the newest from
    memory, a stream resumed inside the history only from memory; both get every event
    once, in order."""
    monkeypatch.setattr(event_fanout, "PAGE", 3)  # several database pages before the history
    experiment_id = create()["id"]
    _write(settings, experiment_id, range(0, 10))
    app = create_app(settings)
    hub = app.state.event_hub
    hub.history = 4
    hub.poll_s = 0.05

    async def main(url: str) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]], int]:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http:
            first = asyncio.create_task(_read_stream(http, experiment_id))
            await _until(lambda: hub.active_pollers == 1, "the poller running")
            for r in range(10, 30):
                await asyncio.to_thread(_write, settings, experiment_id, range(r, r + 1))
                await asyncio.sleep(hub.poll_s * 2)
            await _until(lambda: len(hub._pollers[experiment_id].ids) < 10, "a trimmed history")
            floor = hub._pollers[experiment_id].floor
            late = asyncio.create_task(_read_stream(http, experiment_id))
            inside = http.stream(
                "GET", f"{API}/{experiment_id}/events", headers={"Last-Event-ID": str(floor + 1)}
            )
            async with inside as resumed:
                await asyncio.sleep(0.5)
                await http.post(f"{API}/{experiment_id}/cancel")
                return [await first, await late], await _read(resumed), floor

    with serve(app) as url:
        from_zero, resumed, floor = asyncio.run(main(url))

    stored = _stored_ids(settings, experiment_id)
    assert floor > stored[0]  # events before the history's first had to come from the database
    for events in from_zero:
        assert _ids(events) == stored
    assert _ids(resumed) == [i for i in stored if i > floor + 1]
    for events in (*from_zero, resumed):
        assert events[-1]["event"] == "end"


def test_a_reader_by_id_misses_no_event_when_writers_commit_out_of_order(settings, create):
    """Writer 1 inserts an event (taking the lower id) and holds its transaction open; writer 2
    inserts another and commits. A reader following ids, as the poller does, must never see
    the higher id while the lower one is still coming: writer 2 waits for writer 1."""
    experiment_id = create()["id"]
    engine = get_engine(settings.database_url)
    seen: list[int] = []

    def read() -> None:
        with Session(engine) as session:
            after = seen[-1] if seen else 0
            seen.extend(
                e.id for e in events_after(session, experiment_id=experiment_id, after=after)
            )

    with Session(engine) as first:
        add_event(first, experiment_id=experiment_id, type="round_started", data={"round": 0})
        first.flush()  # the lower id is taken; not committed yet
        second = threading.Thread(target=_write, args=(settings, experiment_id, range(1, 2)))
        second.start()
        try:
            time.sleep(1.5)  # without the lock writer 2 commits well within this
            read()
        finally:
            first.commit()  # also on failure: an open transaction would block the teardown
            second.join(timeout=30)
    assert seen == [], "the reader saw an event while a lower id was still uncommitted"
    assert not second.is_alive()
    read()
    assert seen == _stored_ids(settings, experiment_id)
    assert len(seen) == 2
