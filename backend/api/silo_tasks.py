"""What a token silo does over the API (``fedmomentum silo-client``): claim its next train
task (long poll), download the round's global adapter and backbone delta, report step
losses, upload its update or report its failure. Every route needs a live silo token and
sees only that silo's tasks: another silo's task, or none, is 404.

An upload is keyed by its task (experiment, round, client, attempt, generation): a retried
upload is answered ``accepted: false`` and counts once. The update is screened like every
upload (NaN, wrong shapes, outlier norms) when the round aggregates.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from backend.api.deps import SessionDep, SettingsDep, SiloDep
from backend.api.responses import errors
from backend.api.schemas import SiloFailure, SiloProgress, SiloTaskPublic, SiloUploadResult
from backend.core.config import ExperimentConfig
from backend.core.runs import RunPaths, run_dir
from backend.core.settings import Settings
from backend.core.tensorfile import read_header
from backend.db import lifecycle, silos
from backend.db.engine import get_engine
from backend.db.events import add_event
from backend.db.metrics import add_metrics
from backend.db.models import Experiment, SiloTask

router = APIRouter(prefix="/silo", tags=["silo"], responses=errors(401))

MAX_WAIT_S = 25.0  # the longest long poll: under common proxies' idle timeouts
POLL_S = 0.5
_CHUNK = 1 << 20


def _paths(settings: Settings, experiment_id: str) -> RunPaths:
    return RunPaths(run_dir(settings.runs_store(), experiment_id))


def _public(settings: Settings, session: Session, task: SiloTask) -> dict[str, Any]:
    exp = session.get(Experiment, task.experiment_id)
    assert exp is not None  # a live task's experiment exists
    rank = ExperimentConfig.model_validate(exp.config).client_rank(task.client)
    paths = _paths(settings, task.experiment_id)
    backbone = paths.store.exists(f"{paths.state(task.round)}/{paths.backbone_file(rank)}")
    return SiloTaskPublic(
        id=task.id,
        experiment_id=task.experiment_id,
        round=task.round,
        client=task.client,
        attempt=task.attempt,
        generation=task.generation,
        rank=rank,
        config=exp.config,
        backbone=backbone,
    ).model_dump(mode="json")


def _claim(settings: Settings, silo: str) -> dict[str, Any] | None:
    with Session(get_engine(settings.database_url)) as session:
        task = silos.claim_next(session, silo=silo, reclaim_after_s=settings.silo_reclaim_s)
        if task is None:
            return None
        lifecycle.heartbeat(session, experiment_id=task.experiment_id)
        return _public(settings, session, task)


@router.get(
    "/tasks",
    response_model=SiloTaskPublic,
    responses={204: {"description": "no task arrived while waiting: ask again"}},
)
async def next_task(
    request: Request,
    silo: SiloDep,
    settings: SettingsDep,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="seconds to wait")] = 25.0,
) -> Response:
    """This silo's next train task (claimed for it), waiting up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        async with request.app.state.db_slots:
            found = await anyio.to_thread.run_sync(_claim, settings, silo)
        if found is not None:
            return JSONResponse(found)
        left = deadline - time.monotonic()
        if left <= 0 or await request.is_disconnected():
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        await anyio.sleep(min(POLL_S, left))


def _task(session: Session, silo: str, task_id: int) -> SiloTask:
    task = silos.get_task(session, silo=silo, task_id=task_id)
    if task is None:
        raise HTTPException(404, f"task {task_id} not found")
    return task


def _live(session: Session, task: SiloTask) -> None:
    """409 unless the task is claimed and its experiment still wants it."""
    if task.status != "claimed" or not silos.is_live(session, task=task):
        raise HTTPException(
            409,
            f"task {task.id} is no longer wanted (it is {task.status}, or its experiment was "
            "cancelled or re-dispatched): drop it and claim the next",
        )


@router.get("/tasks/{task_id}", response_model=SiloTaskPublic, responses=errors(404))
def get_task(task_id: int, silo: SiloDep, session: SessionDep, settings: SettingsDep) -> Any:
    """One of this silo's tasks."""
    return _public(settings, session, _task(session, silo, task_id))


def _stream(settings: Settings, experiment_id: str, key: str) -> Iterator[bytes]:
    with _paths(settings, experiment_id).store.open(key) as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _download(
    session: Session, settings: Settings, silo: str, task_id: int, which: str
) -> StreamingResponse:
    task = _task(session, silo, task_id)
    exp = session.get(Experiment, task.experiment_id)
    assert exp is not None
    rank = ExperimentConfig.model_validate(exp.config).client_rank(task.client)
    paths = _paths(settings, task.experiment_id)
    name = paths.adapter_file(rank) if which == "adapter" else paths.backbone_file(rank)
    key = f"{paths.state(task.round)}/{name}"
    if not paths.store.exists(key):
        raise HTTPException(404, f"task {task_id}: round {task.round} has no {which} ({name})")
    return StreamingResponse(
        _stream(settings, task.experiment_id, key),
        media_type="application/octet-stream",
        headers={"Content-Length": str(paths.store.size(key))},
    )


_FILE = {200: {"content": {"application/octet-stream": {}}, "description": "safetensors"}}


@router.get(
    "/tasks/{task_id}/adapter", response_class=StreamingResponse, responses=_FILE | errors(404)
)
def download_adapter(
    task_id: int, silo: SiloDep, session: SessionDep, settings: SettingsDep
) -> StreamingResponse:
    """The global adapter the task's round starts from (its client's rank group)."""
    return _download(session, settings, silo, task_id, "adapter")


@router.get(
    "/tasks/{task_id}/backbone", response_class=StreamingResponse, responses=_FILE | errors(404)
)
def download_backbone(
    task_id: int, silo: SiloDep, session: SessionDep, settings: SettingsDep
) -> StreamingResponse:
    """The merged backbone delta the task's round starts from (404: none yet)."""
    return _download(session, settings, silo, task_id, "backbone")


@router.post("/tasks/{task_id}/progress", responses=errors(404, 409))
def progress(
    task_id: int, body: SiloProgress, silo: SiloDep, session: SessionDep
) -> dict[str, str]:
    """Step losses since the last report (or none: a sign of life); 409 when the task is no
    longer wanted (the silo client should stop training it)."""
    task = _task(session, silo, task_id)
    _live(session, task)
    records = [
        {"kind": "client_step", "round": task.round, "client": task.client, **s.model_dump()}
        for s in body.steps
    ]
    if records:
        add_metrics(session, experiment_id=task.experiment_id, records=records, emit=True)
        last = records[-1]
        add_event(
            session,
            experiment_id=task.experiment_id,
            type="client_progress",
            data={k: last[k] for k in ("round", "client", "step", "loss")},
        )
    silos.touch(session, task=task)
    lifecycle.heartbeat(session, experiment_id=task.experiment_id)
    return {"status": task.status}


@router.post("/tasks/{task_id}/failure", responses=errors(404, 409))
def failure(
    task_id: int, body: SiloFailure, silo: SiloDep, session: SessionDep, settings: SettingsDep
) -> dict[str, str]:
    """The task failed at the silo (bad data, out of memory...): its client's failure."""
    task = _task(session, silo, task_id)
    _live(session, task)
    error = f"silo {silo!r}: {body.reason}"
    lifecycle.fail_silo_task(settings, session, task=task, error=error)
    return {"status": task.status}


def _accept(
    settings: Settings,
    silo: str,
    task_id: int,
    file: Path,
    seconds: float,
    compute_seconds: float,
) -> SiloUploadResult:
    """Check the received file, store it as the client's upload and record the client."""
    with Session(get_engine(settings.database_url)) as session:
        task = _task(session, silo, task_id)
        if task.status == "done":
            return SiloUploadResult(accepted=False, n_examples=_n_examples(file))
        _live(session, task)
        n_examples = _n_examples(file)
        paths = _paths(settings, task.experiment_id)
        key = paths.upload(task.round, task.client)
        paths.store.put_file(file, key)
        if not silos.close_task(session, task=task, ok=True):  # the same upload, twice at once
            return SiloUploadResult(accepted=False, n_examples=n_examples)
        record = {
            "round": task.round,
            "client": task.client,
            "ok": True,
            "n_examples": n_examples,
            "seconds": seconds,
            "compute_seconds": compute_seconds,
            "path": paths.store.url(key),
            "error": None,
            "worker": f"silo:{silo}",
        }
        client = {"kind": "client", **record, "wait_seconds": None}
        add_metrics(session, experiment_id=task.experiment_id, records=[client], emit=True)
        lifecycle.client_finished(settings, session, task=task, record=record)
        return SiloUploadResult(accepted=True, n_examples=n_examples)


def _n_examples(file: Path) -> int:
    """The examples the update was trained on (its safetensors metadata); 422 for a file
    that is not a safetensors update."""
    try:
        with file.open("rb") as f:
            meta, tensors = read_header(f, file.stat().st_size)
        value = meta.get("n_examples", "")
        n = int(value) if value.isdigit() else 0
        if n <= 0:
            raise ValueError(f"metadata n_examples: {value!r}; allowed: an integer > 0")
        if not tensors:
            raise ValueError("holds no tensors")
    except ValueError as e:
        raise HTTPException(422, f"update: {e}") from None
    return n


@router.post(
    "/tasks/{task_id}/update",
    response_model=SiloUploadResult,
    responses=errors(400, 404, 409, 413),
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": True}},
)
async def upload(
    task_id: int,
    request: Request,
    silo: SiloDep,
    settings: SettingsDep,
    seconds: Annotated[float, Query(ge=0, le=1e9, description="the whole task")] = 0.0,
    compute_seconds: Annotated[float, Query(ge=0, le=1e9, description="training only")] = 0.0,
) -> SiloUploadResult:
    """The client's update: the safetensors file the training wrote (streamed, at most
    FEDMOMENTUM_MAX_UPLOAD_BYTES); ``accepted: false`` for a task uploaded before."""
    with tempfile.TemporaryDirectory(prefix="fm-upload-") as folder:
        file = Path(folder) / "update.safetensors"
        try:
            with file.open("wb") as out:
                async for chunk in request.stream():
                    out.write(chunk)
        except ClientDisconnect:  # the silo client died mid-upload: nothing is kept
            raise HTTPException(400, "update: the upload was cut off") from None
        async with request.app.state.db_slots:
            return await anyio.to_thread.run_sync(
                _accept, settings, silo, task_id, file, seconds, compute_seconds
            )
