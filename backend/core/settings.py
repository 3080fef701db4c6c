"""One Settings object (env prefix FEDMOMENTUM_), shared by the backend and the workers."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import fsspec
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from backend.core.store import Store


def _default_cache() -> Path:
    # Converted model weights are shared by every checkout and run of this user.
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fedmomentum"


def _default_database_url(data: dict[str, Any]) -> str:
    # Absolute, so the API and workers started from elsewhere open the same file.
    return f"sqlite:///{(Path(data['data_dir']) / 'fedmomentum.db').absolute()}"


class Settings(BaseSettings):
    """Configuration; every field can be set as FEDMOMENTUM_<NAME>."""

    # An empty variable means the default (docker-compose passes unset options as "").
    model_config = SettingsConfigDict(env_prefix="FEDMOMENTUM_", env_ignore_empty=True)

    data_dir: Path = Path("data")  # runs, artifacts and the embedded SQLite database
    cache_dir: Path = _default_cache()  # converted models (e.g. SmolLM2 GGUF -> safetensors)
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda[:N]"
    # SQLAlchemy URL; default: SQLite under data_dir. Deployment: postgresql+psycopg://...
    database_url: str = Field(default_factory=_default_database_url)
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, gt=0, lt=65536)
    # `fedmomentum up`: API processes on that port (one event loop, so one core, each); each
    # has its own event pollers, reconciler and per-client stream limit.
    api_workers: int = Field(1, gt=0)
    # Celery. Default: kombu's filesystem transport under data_dir (no server needed) with
    # results in SQLite. Deployment: redis://host:6379/0 (results then default to it too).
    broker_url: str = "filesystem://"
    result_backend: str | None = None  # default: the Redis broker, else db+sqlite in data_dir
    broker_key_prefix: str = ""  # Redis only: prefix of every key (isolates test sessions)
    # The longest task (one client's local training, or aggregation plus evaluation) must
    # finish within this; Redis re-delivers a task unacknowledged for longer.
    task_time_limit_s: int = Field(6 * 3600, gt=0)
    max_round_attempts: int = Field(3, gt=0, description="a round below min_clients is retried")
    # Reconciler: an active experiment with no sign of life (heartbeat) for stale_after_s is
    # re-dispatched; it runs at service start and every reconcile_interval_s (0: never).
    stale_after_s: float = Field(900.0, gt=0)
    reconcile_interval_s: float = Field(30.0, ge=0)
    progress_interval_s: float = Field(1.0, ge=0)  # client progress events / step metrics
    # Watchdog of `fedmomentum up`'s embedded worker: active experiments but no heartbeat for
    # this long, and the worker's Python stacks are written to the log and it is restarted
    # (0: never). Keep it below stale_after_s: a re-dispatch counts as a sign of life.
    worker_stall_s: float = Field(300.0, ge=0)
    torch_threads: int = Field(0, ge=0)  # per worker process; 0: torch's default
    # Artifact store (run directories: adapters, uploads, exports), any fsspec URL:
    # default data_dir/runs; s3://bucket/prefix with the `s3` extra (any S3-compatible store).
    artifact_url: str = ""
    # fsspec storage options as JSON, e.g. {"endpoint_url": "http://minio:9000"}; S3
    # credentials, region and endpoint also come from botocore's standard variables
    # (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL).
    artifact_options: dict[str, Any] = {}
    # Auth: when set, every write and download needs `Authorization: Bearer <api_token>`,
    # and so do reads unless open_reads (the dashboard asks for the token once per session).
    api_token: SecretStr | None = None
    open_reads: bool = False
    # Cross-silo: silo name -> this worker's data for the clients pinned to that silo (a
    # data file or hf: dataset on this machine), as JSON, e.g. {"hospital-a": "/data/a.jsonl"}.
    silo_data: dict[str, str] = {}
    # Token silos (`fedmomentum silo-client`): a task without a word from its silo for
    # silo_timeout_s is that client's failure; a claimed task silent for silo_reclaim_s may be
    # claimed again (its client restarted); an uploaded update may have max_upload_bytes.
    silo_timeout_s: float = Field(900.0, gt=0)
    silo_reclaim_s: float = Field(60.0, gt=0)
    max_upload_bytes: int = Field(1 << 30, gt=0)
    # Request limits (per API process): the largest request body (413 beyond it; a config is
    # a few kB, a 10,000-client silo map ~60 kB), and the event streams (SSE) one client
    # address may hold open at once (429 beyond; 0: no limit). One dashboard tab holds one
    # stream; 100 lets a team behind one NAT address watch while one runaway script cannot
    # make the process poll the database thousands of times a second.
    max_body_bytes: int = Field(1 << 20, gt=0)
    # The dataset upload route (POST /api/v1/datasets) has its own body limit instead.
    max_dataset_bytes: int = Field(200 << 20, gt=0)
    max_event_streams_per_client: int = Field(100, ge=0)
    # What an API request may name by path (JSON lists of folders; symlinks are resolved, so
    # a link inside a root to a file outside it is refused). Default: data_dir/models and
    # data_dir/datasets. The CLI's in-process `run` is a local user and may use any path.
    model_roots: list[Path] = []
    data_roots: list[Path] = []
    allow_hub: bool = False  # API requests may name hub models and hf: datasets (online)
    # Experiment tracking: when set (e.g. http://127.0.0.1:5000), the workers log every
    # experiment as one run of this MLflow experiment (the `tracking` extra); a config's
    # tracking.mlflow turns it off (false) or on for one experiment (true).
    mlflow_tracking_uri: str = ""
    mlflow_experiment: str = Field("fedmomentum", min_length=1)

    @property
    def runs_dir(self) -> Path:
        """One directory per experiment (``runs_dir / <experiment id>``)."""
        return self.data_dir / "runs"

    @field_validator("artifact_url")
    @classmethod
    def _known_store(cls, v: str) -> str:
        # At start-up, not at the first task: a typo or a missing s3fs must stop the process.
        protocol = fsspec.core.split_protocol(v)[0] if v else None
        if protocol is None:
            return v
        try:
            fsspec.get_filesystem_class(protocol)
        except (ValueError, ImportError) as e:
            raise ValueError(
                f"cannot use {protocol}:// ({e}); allowed: a local path, "
                "file://, memory://, or s3:// (install the `s3` extra: pip install "
                "'fedmomentum[s3]')"
            ) from None
        return v

    def runs_store(self) -> Store:
        """The artifact store folder that holds one run directory per experiment."""
        return Store(self.artifact_url or self.runs_dir, self.artifact_options)

    def datasets_store(self) -> Store:
        """The artifact store folder of uploaded datasets (beside the run directories)."""
        return self.runs_store().sub("datasets")

    @property
    def model_root_dirs(self) -> list[Path]:
        """Folders an API request may name a model directory in."""
        return self.model_roots or [self.data_dir / "models"]

    @property
    def data_root_dirs(self) -> list[Path]:
        """Folders an API request may name a dataset file in."""
        return self.data_roots or [self.data_dir / "datasets"]

    @property
    def broker_dir(self) -> Path:
        """Message folder of the filesystem broker."""
        return self.data_dir / "broker"

    @property
    def celery_result_backend(self) -> str:
        if self.result_backend:
            return self.result_backend
        if self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return f"db+sqlite:///{(self.data_dir / 'celery-results.db').absolute()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
