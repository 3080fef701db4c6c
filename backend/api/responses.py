"""The error answers of the routes, as the OpenAPI schema declares them: one table, each route
picks the codes it can answer (``responses=errors(404, 409)``). 422 is FastAPI's own: it
declares it on every route that takes parameters or a body."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class Problem(BaseModel):
    """An error: what went wrong, in words."""

    detail: str


_ERRORS: dict[int, dict[str, Any]] = {
    400: {"model": Problem, "description": "the request body was cut off before its end"},
    401: {
        "model": Problem,
        "description": "no or a wrong API token: send `Authorization: Bearer <token>` "
        "(FEDMOMENTUM_API_TOKEN of the server; reads stay open with FEDMOMENTUM_OPEN_READS)",
    },
    404: {
        "model": Problem,
        "description": "no such experiment, sweep or dataset, or not produced yet",
    },
    409: {"model": Problem, "description": "not possible in its current status"},
    413: {
        "model": Problem,
        "description": "request body over its limit: FEDMOMENTUM_MAX_BODY_BYTES "
        "(FEDMOMENTUM_MAX_DATASET_BYTES for a dataset upload)",
    },
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The declared responses of ``codes``."""
    return {code: _ERRORS[code] for code in codes}
