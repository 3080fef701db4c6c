"""Live events of an experiment as server-sent events, resumable with Last-Event-ID.

The stream replays the stored events after the given id, then follows new ones (polling the
events table: works the same with any number of API processes, and a reconnecting browser
misses nothing). It ends with an ``end`` event once the experiment has finished and
everything was sent. Each poll uses its own short session: an open stream holds no
database connection. A client address holds at most ``max_event_streams_per_client``
streams at once in one API process (429 beyond; backend.api.limits).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from backend.api.deps import Read, SettingsDep
from backend.api.limits import SlotStreamingResponse
from backend.api.schemas import MAX_EVENT_ID
from backend.core.settings import Settings
from backend.db.engine import get_engine
from backend.db.events import event_payload, events_after
from backend.db.experiments import experiment_status
from backend.db.models import ACTIVE

router = APIRouter(prefix="/experiments/{experiment_id}", tags=["events"], dependencies=[Read])

POLL_S = 0.25
KEEPALIVE_S = 15.0


def _poll(settings: Settings, experiment_id: str, after: int) -> tuple[list[str], int, str | None]:
    """(formatted new events, last id, experiment status or None if it is gone)."""
    with Session(get_engine(settings.database_url)) as session:
        status = experiment_status(session, experiment_id=experiment_id)
        if status is None:
            return [], after, None
        rows = events_after(session, experiment_id=experiment_id, after=after)
    out = []
    for e in rows:
        payload = json.dumps(event_payload(e))
        out.append(f"id: {e.id}\nevent: {e.type}\ndata: {payload}\n\n")
        after = e.id
    return out, after, status


async def _polled(
    request: Request, settings: Settings, experiment_id: str, after: int
) -> tuple[list[str], int, str | None]:
    """``_poll`` in a worker thread, within one of the app's database slots."""
    async with request.app.state.db_slots:
        return await run_in_threadpool(_poll, settings, experiment_id, after)


async def _stream(
    request: Request, settings: Settings, experiment_id: str, after: int
) -> AsyncIterator[str]:
    yield "retry: 2000\n\n"  # the browser reconnects after 2 s, sending Last-Event-ID
    last_sent = time.monotonic()
    while not await request.is_disconnected():
        chunks, after, status = await _polled(request, settings, experiment_id, after)
        for chunk in chunks:
            yield chunk
        if chunks:
            last_sent = time.monotonic()
            continue
        if status not in ACTIVE:  # finished (or deleted) and everything sent
            yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
            return
        if time.monotonic() - last_sent > KEEPALIVE_S:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(POLL_S)


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "an SSE stream"},
        429: {"description": "this client already holds its limit of open event streams"},
    },
)
async def events(
    experiment_id: str,
    request: Request,
    settings: SettingsDep,
    last_event_id: Annotated[int | None, Header(ge=0, le=MAX_EVENT_ID)] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_EVENT_ID, description="resume after this event id")
    ] = None,
) -> StreamingResponse:
    """Server-sent events: status, round_started, round_finished, client_progress,
    client_finished, metrics (the new metric records), and a final ``end``."""
    _, _, status = await _polled(request, settings, experiment_id, 2**62)
    if status is None:
        raise HTTPException(404, f"experiment {experiment_id!r} not found")
    start = last_event_id if last_event_id is not None else (after or 0)
    return SlotStreamingResponse(
        _stream(request, settings, experiment_id, start),
        slots=request.app.state.event_slots,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
