"""One Settings object (env prefix FEDMOMENTUM_), shared by the backend and the workers."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache() -> Path:
    # Converted model weights are shared by every checkout and run of this user.
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fedmomentum"


def _default_database_url(data: dict[str, Any]) -> str:
    # Absolute, so the API and workers started from elsewhere open the same file.
    return f"sqlite:///{(Path(data['data_dir']) / 'fedmomentum.db').absolute()}"


class Settings(BaseSettings):
    """Configuration; every field can be set as FEDMOMENTUM_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="FEDMOMENTUM_")

    data_dir: Path = Path("data")  # runs, artifacts and the embedded SQLite database
    cache_dir: Path = _default_cache()  # converted models (e.g. SmolLM2 GGUF -> safetensors)
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda[:N]"
    # SQLAlchemy URL; default: SQLite under data_dir. Deployment: postgresql+psycopg://...
    database_url: str = Field(default_factory=_default_database_url)
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, gt=0, lt=65536)

    @property
    def runs_dir(self) -> Path:
        """One directory per experiment (``runs_dir / <experiment id>``)."""
        return self.data_dir / "runs"


@lru_cache
def get_settings() -> Settings:
    return Settings()
