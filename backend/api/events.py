"""Live events of an experiment as server-sent events, resumable with Last-Event-ID.

The stream replays the stored events after the given id, then follows new ones from the
experiment's poller in this process (backend.api.event_fanout: one database read every
0.25 s however many streams are open; works the same with any number of API processes, and
a reconnecting browser misses nothing). It ends with an ``end`` event once the experiment
has finished and everything was sent; an idle stream gets a keep-alive comment every 15 s.
An open stream holds no database connection. A client address holds at most
``max_event_streams_per_client`` streams at once in one API process (429 beyond;
backend.api.limits).

The response is fastapi.sse's ``EventSourceResponse`` with its wire format, written a poll's
batch of events at a time: a route that yields one ``ServerSentEvent`` per event costs each
stream a pass through the routing layer's pipeline (two tasks, two memory streams, a socket
write) per event, which is what limits how many streams one process can hold.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from fastapi.sse import EventSourceResponse, format_sse_event

from backend.api.deps import Read
from backend.api.event_fanout import EventHub, read_status
from backend.api.limits import SlotEventSourceResponse
from backend.api.schemas import MAX_EVENT_ID
from backend.db.events import EVENT_TYPES

router = APIRouter(prefix="/experiments/{experiment_id}", tags=["events"], dependencies=[Read])
RETRY_MS = 2000  # the browser reconnects after 2 s, sending Last-Event-ID
EVENT_SCHEMA: dict[str, Any] = {  # one server-sent event, as OpenAPI 3.2 describes them
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "the event id (resume after it)"},
        "event": {"type": "string", "enum": [*EVENT_TYPES, "end"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "retry": {"type": "integer", "minimum": 0},
    },
}


async def get_hub(request: Request) -> EventHub:
    return request.app.state.event_hub


HubDep = Annotated[EventHub, Depends(get_hub)]


async def _body(hub: EventHub, experiment_id: str, after: int) -> AsyncIterator[bytes]:
    yield format_sse_event(retry=RETRY_MS)
    async for chunk in hub.stream(experiment_id, after):
        yield chunk


@router.get(
    "/events",
    response_class=StreamingResponse,  # an EventSourceResponse here means a generator route
    responses={
        200: {
            "description": "the events as server-sent events (JSON in each data field)",
            "content": {"text/event-stream": {"itemSchema": EVENT_SCHEMA}},
        },
        404: {"description": "no such experiment"},
        429: {"description": "this client already holds its limit of open event streams"},
    },
)
async def events(
    experiment_id: str,
    request: Request,
    hub: HubDep,
    last_event_id: Annotated[int | None, Header(ge=0, le=MAX_EVENT_ID)] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_EVENT_ID, description="resume after this event id")
    ] = None,
) -> EventSourceResponse:
    """Server-sent events: status, round_started, round_finished, client_progress,
    client_finished, metrics (the new metric records), and a final ``end``."""
    if await hub.read(read_status, experiment_id) is None:
        raise HTTPException(404, f"experiment {experiment_id!r} not found")
    start = last_event_id if last_event_id is not None else (after or 0)
    return SlotEventSourceResponse(
        _body(hub, experiment_id, start),
        slots=request.app.state.event_slots,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
