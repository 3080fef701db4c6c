"""The choices a config form offers, with descriptions and defaults."""

from __future__ import annotations

from functools import lru_cache

from fastapi import APIRouter

from backend.api.deps import Read
from backend.api.responses import errors
from backend.api.schemas import CatalogEntry, CatalogPublic
from backend.core.catalog import DATASETS, MODELS, PARTITIONS, STRATEGIES
from backend.core.config import ExperimentConfig
from backend.core.runs import EXPORT_HELP

router = APIRouter(tags=["catalog"], dependencies=[Read], responses=errors(401))


def _entries(items: dict[str, str]) -> list[CatalogEntry]:
    return [CatalogEntry(name=k, description=v) for k, v in items.items()]


@lru_cache
def _catalog() -> CatalogPublic:
    return CatalogPublic(
        strategies=_entries(STRATEGIES),
        models=_entries(MODELS),
        datasets=_entries(DATASETS),
        partitions=list(PARTITIONS),
        exports=_entries(EXPORT_HELP),
        defaults=ExperimentConfig().model_dump(mode="json"),
        config_schema=ExperimentConfig.model_json_schema(),
    )


@router.get("/catalog", response_model=CatalogPublic)
def read_catalog() -> CatalogPublic:
    """Strategies, models, datasets, partitions and export formats; config defaults and schema."""
    return _catalog()
