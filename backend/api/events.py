"""Live events of an experiment as server-sent events, resumable with Last-Event-ID.

The stream replays the stored events after the given id, then follows new ones from the
experiment's poller in this process (backend.api.event_fanout: one database read every
0.25 s however many streams are open; works the same with any number of API processes, and
a reconnecting browser misses nothing). It ends with an ``end`` event once the experiment
has finished and everything was sent; an idle stream gets a keep-alive comment every 15 s.
An open stream holds no database connection. A client address holds at most
``max_event_streams_per_client`` streams at once in one API process (429 beyond;
backend.api.limits).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent

from backend.api.deps import Read
from backend.api.event_fanout import EventHub, read_status
from backend.api.limits import event_stream_slot
from backend.api.schemas import MAX_EVENT_ID

router = APIRouter(prefix="/experiments/{experiment_id}", tags=["events"], dependencies=[Read])
RETRY_MS = 2000  # the browser reconnects after 2 s, sending Last-Event-ID


def get_hub(request: Request) -> EventHub:
    return request.app.state.event_hub


HubDep = Annotated[EventHub, Depends(get_hub)]


async def existing_experiment(experiment_id: str, hub: HubDep) -> None:
    if await hub.read(read_status, experiment_id) is None:
        raise HTTPException(404, f"experiment {experiment_id!r} not found")


@router.get(
    "/events",
    response_class=EventSourceResponse,
    dependencies=[Depends(existing_experiment), Depends(event_stream_slot)],
    responses={
        200: {"description": "the events as server-sent events (JSON in each data field)"},
        404: {"description": "no such experiment"},
        429: {"description": "this client already holds its limit of open event streams"},
    },
)
async def events(
    experiment_id: str,
    hub: HubDep,
    last_event_id: Annotated[int | None, Header(ge=0, le=MAX_EVENT_ID)] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_EVENT_ID, description="resume after this event id")
    ] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Server-sent events: status, round_started, round_finished, client_progress,
    client_finished, metrics (the new metric records), and a final ``end``."""
    yield ServerSentEvent(retry=RETRY_MS)
    start = last_event_id if last_event_id is not None else (after or 0)
    async for event in hub.stream(experiment_id, start):
        yield event
