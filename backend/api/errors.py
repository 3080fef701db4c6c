"""422 responses that always render: an invalid input is echoed back in the error, and it
may be a float JSON cannot write (NaN, Infinity) or a string UTF-8 cannot encode (a lone
surrogate); FastAPI's own handler then fails with a 500."""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by its name ("nan", "inf", "-inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


async def _invalid_request(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    detail = _finite(jsonable_encoder(exc.errors()))
    # ensure_ascii: a lone surrogate becomes the escape \ud800, which any encoder can write.
    body = json.dumps({"detail": detail}, ensure_ascii=True, allow_nan=False)
    return Response(body, 422, media_type="application/json")


def install_error_handlers(app: FastAPI) -> None:
    """Render request validation errors as FastAPI does, but never fail doing so."""
    app.add_exception_handler(RequestValidationError, _invalid_request)
