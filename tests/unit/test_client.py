"""backend.client's event stream against a real uvicorn server that drops the connection in
the middle of an event, answers 503 while "restarting", then resumes from Last-Event-ID."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack

import httpx
import pytest
from fastapi import FastAPI, Header, Response
from fastapi.responses import StreamingResponse

from backend.client import APIError, Client
from tests.api.conftest import serve

EVENTS = [(i, "round_finished", {"round": i - 1}) for i in range(1, 7)]


def _sse(event_id: int, kind: str, data: object) -> str:
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"


def _app(plan: list[str], seen: list[str | None]) -> FastAPI:
    """A stream of EVENTS; each connection does what ``plan`` says next: "drop" (two events,
    then half a third and the connection is cut), "503", or "rest" (everything after
    Last-Event-ID, then ``end``)."""
    app = FastAPI()

    @app.get("/api/v1/experiments/{experiment_id}/events")
    def events(experiment_id: str, last_event_id: str | None = Header(None)) -> Response:
        seen.append(last_event_id)
        after = int(last_event_id or 0)
        todo = [e for e in EVENTS if e[0] > after]
        step = plan.pop(0) if plan else "rest"
        if experiment_id != "known":
            return Response('{"detail": "experiment not found"}', 404)
        if step == "503":
            return Response('{"detail": "restarting"}', 503)

        async def stream() -> AsyncIterator[str]:
            yield "retry: 10\n\n: keep-alive\n\n"
            if step == "drop":
                for e in todo[:2]:
                    yield _sse(*e)
                yield _sse(*todo[2])[:12]  # "id: N\nevent" and no more
                raise RuntimeError("the connection drops")
            for e in todo:
                yield _sse(*e)
            yield 'event: end\ndata: {"status": "completed"}\n\n'

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


@pytest.fixture
def server() -> Iterator[Callable[[list[str]], tuple[Client, list[str | None]]]]:
    """Start a server with a plan: a client of it and the Last-Event-ID of each request."""
    with ExitStack() as stack:

        def start(plan: list[str]) -> tuple[Client, list[str | None]]:
            seen: list[str | None] = []
            url = stack.enter_context(serve(_app(plan, seen)))
            return stack.enter_context(Client(url)), seen

        yield start


def test_events_resume_after_a_dropped_connection_without_loss_or_repeat(server):
    client, seen = server(["drop", "503", "drop"])

    events = list(client.events("known", retry_s=0.05))

    assert [e.id for e in events] == [1, 2, 3, 4, 5, 6, None]
    assert [e.data for e in events[:-1]] == [data for _, _, data in EVENTS]
    assert events[-1].event == "end" and events[-1].data == {"status": "completed"}
    assert seen == [None, "2", "2", "4"]  # each reconnection resumes after the last event


def test_events_start_after_the_given_id(server):
    client, seen = server([])

    events = list(client.events("known", after=4))

    assert [e.id for e in events] == [5, 6, None]
    assert seen == ["4"]


def test_events_give_up_after_the_retries(server):
    client, seen = server(["503"] * 10)

    with pytest.raises(APIError) as error:
        list(client.events("known", retries=2, retry_s=0.01))

    assert error.value.status_code == 503 and error.value.message == "restarting"
    assert len(seen) == 3  # the first try and two retries


def test_events_of_an_unknown_experiment_raise_at_once(server):
    client, seen = server([])

    with pytest.raises(APIError) as error:
        list(client.events("unknown", retry_s=0.01))

    assert (error.value.status_code, str(error.value)) == (404, "404: experiment not found")
    assert seen == [None]


def test_an_unreachable_server_raises_after_the_retries():
    client = Client("http://127.0.0.1:9")

    with pytest.raises(httpx.ConnectError):
        list(client.events("known", retries=1, retry_s=0.01))
