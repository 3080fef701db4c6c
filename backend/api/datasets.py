"""Uploaded datasets: upload (multipart), list, read, delete. The work is in backend.core.uploads.

The app includes this router with its own body limit (``max_dataset_bytes``) instead of the
app-wide ``max_body_bytes``: see ``backend.api.app``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, UploadFile, status
from fastapi.exceptions import RequestValidationError

from backend.api.deps import LimitDep, OffsetDep, Read, SettingsDep, Write
from backend.api.responses import errors
from backend.api.schemas import DatasetPublic, DatasetsPublic
from backend.core import uploads

PATH = "/datasets"
router = APIRouter(prefix=PATH, tags=["datasets"], dependencies=[Read])


def _invalid(e: uploads.UploadError) -> RequestValidationError:
    """A 422 in FastAPI's own shape, at the form field at fault."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body", e.field), "msg": f"Value error, {e}"}]
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublic,
    dependencies=[Write],
    responses=errors(401, 409, 413),
)
def upload_dataset(
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description=".jsonl, .json, .csv or .parquet")],
    name: Annotated[str | None, Form(description="default: the file's name")] = None,
    replace: Annotated[bool, Form(description="replace a dataset of the same name")] = False,
) -> dict[str, Any]:
    """Upload a dataset file: checked like an experiment's data, kept, and summarised (409 when
    the name exists, unless replace)."""
    try:
        return uploads.save(
            settings,
            source=file.file,
            filename=file.filename or "",
            name=name,
            replace=replace,
        )
    except uploads.UploadError as e:
        raise _invalid(e) from None
    except uploads.NameTaken as e:
        raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from None
    except uploads.TooLarge as e:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(e)) from None


@router.get("", response_model=DatasetsPublic, responses=errors(401))
def list_datasets(
    settings: SettingsDep, offset: OffsetDep = 0, limit: LimitDep = 50
) -> DatasetsPublic:
    """The uploaded datasets with their summaries, by name, paginated."""
    rows = uploads.list_all(settings)
    page = [DatasetPublic(**r) for r in rows[offset : offset + limit]]
    return DatasetsPublic(data=page, count=len(rows))


def _named(name: str) -> str:
    try:
        return uploads.check_name(name)
    except uploads.UploadError as e:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(e)) from None


@router.get("/{name}", response_model=DatasetPublic, responses=errors(401, 404))
def read_dataset(settings: SettingsDep, name: str) -> dict[str, Any]:
    """One uploaded dataset's summary."""
    summary = uploads.get(settings, _named(name))
    if summary is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"dataset {name!r} not found")
    return summary


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[Write],
    responses=errors(401, 404),
)
def delete_dataset(settings: SettingsDep, name: str) -> None:
    """Delete an uploaded dataset (experiments that name it can no longer load it)."""
    if not uploads.remove(settings, _named(name)):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"dataset {name!r} not found")
