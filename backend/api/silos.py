"""Silo credentials (admin, behind the API token): issue a silo's token, list, revoke."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status

from backend.api.deps import LimitDep, OffsetDep, SessionDep, Write
from backend.api.responses import errors
from backend.api.schemas import SiloCreate, SiloCreated, SiloPublic, SilosPublic
from backend.db import silos

router = APIRouter(prefix="/silos", tags=["silos"], dependencies=[Write], responses=errors(401))


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=SiloCreated, responses=errors(409)
)
def create_silo(body: SiloCreate, session: SessionDep) -> SiloCreated:
    """Issue the token of a silo (a revoked one gets a new token). The token is shown once."""
    try:
        row, token = silos.create_silo(session, name=body.name)
    except silos.SiloExists as e:
        raise HTTPException(409, str(e)) from None
    return SiloCreated(**SiloPublic.model_validate(row).model_dump(), token=token)


@router.get("", response_model=SilosPublic)
def list_silos(session: SessionDep, offset: OffsetDep = 0, limit: LimitDep = 100) -> SilosPublic:
    """The silos by name, with their token's state and last use."""
    rows, count = silos.list_silos(session, offset=offset, limit=limit)
    return SilosPublic(data=[SiloPublic.model_validate(r) for r in rows], count=count)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=errors(404))
def revoke_silo(name: str, session: SessionDep) -> Response:
    """Revoke a silo's token: refused from the next request on."""
    if silos.revoke_silo(session, name=name) is None:
        raise HTTPException(404, f"silo {name!r} not found")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
