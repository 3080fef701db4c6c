"""One Settings object (env prefix FEDMOMENTUM_), shared by the backend and the workers."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache() -> Path:
    # Converted model weights are shared by every checkout and run of this user.
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fedmomentum"


class Settings(BaseSettings):
    """Configuration; every field can be set as FEDMOMENTUM_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="FEDMOMENTUM_")

    data_dir: Path = Path("data")  # runs, artifacts and the embedded SQLite database
    cache_dir: Path = _default_cache()  # converted models (e.g. SmolLM2 GGUF -> safetensors)
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda[:N]"


@lru_cache
def get_settings() -> Settings:
    return Settings()
