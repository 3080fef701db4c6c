"""Download an experiment's export as a zip, streamed."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException
from fastapi.responses import StreamingResponse

from backend.api.deps import ExperimentDep, SettingsDep
from backend.runs import EXPORTS, export_path, run_dir, zip_stream

router = APIRouter(prefix="/experiments/{experiment_id}", tags=["downloads"])

Format = Literal[tuple(EXPORTS)]  # type: ignore[valid-type]


@router.get(
    "/download",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}, "description": "a zip archive"}},
)
def download(
    experiment: ExperimentDep, settings: SettingsDep, format: Format = "adapter"
) -> StreamingResponse:
    """A zip of the export: merged model, PEFT adapter, backbone delta, or rank-N adapter."""
    try:
        target = export_path(settings.runs_dir, experiment.id, format)
    except (FileNotFoundError, ValueError) as e:
        raise HTTPException(404, str(e)) from None
    filename = f"fedmomentum-{experiment.id}-{format}.zip"
    return StreamingResponse(
        zip_stream(target, run_dir(settings.runs_dir, experiment.id)),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
