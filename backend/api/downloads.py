"""Downloads: an experiment's exports and round adapters as streamed zips, its HTML report."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import HTMLResponse, StreamingResponse

from backend.api import report
from backend.api.deps import ExperimentDep, SessionDep, SettingsDep, Write
from backend.api.responses import errors
from backend.core.runs import (
    EXPORTS,
    check_export_rank,
    export_path,
    round_state_path,
    run_dir,
    zip_stream,
)
from backend.core.settings import Settings

# Downloads are the private adapters: always behind the token, even with open reads.
router = APIRouter(
    prefix="/experiments/{experiment_id}",
    tags=["downloads"],
    dependencies=[Write],
    responses=errors(401, 404),
)

Format = Literal[tuple(EXPORTS)]  # type: ignore[valid-type]


@router.get(
    "/download",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}, "description": "a zip archive"}},
)
def download(
    experiment: ExperimentDep,
    settings: SettingsDep,
    format: Format = "adapter",
    rank: Annotated[
        int | None, Query(gt=0, description="adapter-rank: the rank wanted (default: exported)")
    ] = None,
) -> StreamingResponse:
    """A zip of the export: merged model, PEFT adapter, backbone delta, or rank-N adapter."""
    try:
        target = export_path(settings.runs_store(), experiment.id, format)
        if format == "adapter-rank" and rank is not None:
            check_export_rank(settings.runs_store(), experiment.id, rank)
    except (FileNotFoundError, ValueError) as e:
        raise HTTPException(404, str(e)) from None
    return _zip_response(settings, experiment.id, target, f"{format}.zip")


@router.get(
    "/rounds/{round}/adapter",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}, "description": "a zip archive"}},
)
def download_round_adapter(
    experiment: ExperimentDep, settings: SettingsDep, round: Annotated[int, Path(ge=0)]
) -> StreamingResponse:
    """A zip of the global adapter that round ``round`` produced (with the server state)."""
    try:
        target = round_state_path(settings.runs_store(), experiment.id, round)
    except (FileNotFoundError, ValueError) as e:
        raise HTTPException(404, str(e)) from None
    return _zip_response(settings, experiment.id, target, f"round-{round}.zip")


@router.get("/report", response_class=HTMLResponse)
def download_report(
    session: SessionDep, experiment: ExperimentDep, settings: SettingsDep
) -> HTMLResponse:
    """One self-contained HTML file with every chart of the run (opens offline)."""
    page = report.render(report.data_from_db(session, settings.runs_store(), experiment))
    filename = f"fedmomentum-{experiment.id}-report.html"
    return HTMLResponse(page, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _zip_response(
    settings: Settings, experiment_id: str, target: str, suffix: str
) -> StreamingResponse:
    """``target`` (inside the run directory) streamed as fedmomentum-<id>-<suffix>."""
    filename = f"fedmomentum-{experiment_id}-{suffix}"
    return StreamingResponse(
        zip_stream(target, run_dir(settings.runs_store(), experiment_id)),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
