"""API schemas: one per direction (``...Create`` in, ``...Public`` out), lists as {data, count}."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from backend.core.config import SILO_NAME, ExperimentConfig, storable_text
from backend.core.leaderboard import Row
from backend.core.sweeps import SweepSpec
from backend.db.models import NO_INT, NO_LAYER, ExperimentStatus

MAX_LIMIT = 500
# The largest value the database's INTEGER columns hold: integer query parameters compared
# with them stay within it (SQLite cannot even bind a larger Python int).
MAX_INT = 2**31 - 1
MAX_EVENT_ID = 2**63 - 1  # event ids are BIGINT

# The request body of POST /experiments is the experiment config itself.
ExperimentCreate = ExperimentConfig


class ExperimentClone(BaseModel):
    """Optional body of POST /experiments/{id}/clone."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        None, min_length=1, max_length=200, description="default: '<name> (copy)'"
    )

    @field_validator("name")
    @classmethod
    def _storable(cls, v: str | None) -> str | None:
        return storable_text(v)


class _FromORM(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ExperimentPublic(_FromORM):
    """An experiment as the API shows it."""

    id: str
    name: str
    status: ExperimentStatus
    strategy: str
    model: str
    dataset: str
    current_round: int
    total_rounds: int
    best_accuracy: float | None
    error: str | None
    config: dict[str, Any] = Field(description="the ExperimentConfig it was created with")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    sweep_id: str | None = Field(description="the sweep that created it, if any")


class ExperimentsPublic(BaseModel):
    data: list[ExperimentPublic]
    count: int = Field(description="rows matching the filters (all pages)")


class RoundPublic(_FromORM):
    """One federated round; ``summary`` is the round record (accuracy, loss, bytes...)."""

    round: int
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    summary: dict[str, Any] | None


class RoundsPublic(BaseModel):
    data: list[RoundPublic]
    count: int


class AttemptPublic(_FromORM):
    """One client's training attempt in a round (``attempt`` counts the round's retries)."""

    round: int
    client: int
    attempt: int
    ok: bool
    n_examples: int
    seconds: float
    error: str | None


class AttemptsPublic(BaseModel):
    data: list[AttemptPublic]
    count: int


class MetricPublic(_FromORM):
    """One metrics record; client, step and layer are null where they do not apply."""

    id: int
    kind: str
    round: int
    client: int | None
    step: int | None
    layer: str | None
    values: dict[str, Any]

    @field_validator("client", "step", mode="before")
    @classmethod
    def _no_int(cls, v: int | None) -> int | None:
        return None if v == NO_INT else v

    @field_validator("layer", mode="before")
    @classmethod
    def _no_layer(cls, v: str | None) -> str | None:
        return None if v == NO_LAYER else v


class MetricsPublic(BaseModel):
    data: list[MetricPublic]
    count: int


class DiagnosticPublic(BaseModel):
    """Diagnostics of one layer in one round (null: not defined for the strategy)."""

    model_config = ConfigDict(extra="allow")  # future diagnostics pass through

    round: int
    layer: str
    singular_values: list[float] | None = Field(None, description="of the exact update, descending")
    kept_rank: int | None = None
    residual_energy: float | None = None
    naive_error: float | None = None
    exactness_error: float | None = None
    subspace_momentum: float | None = None


class DiagnosticsPublic(BaseModel):
    data: list[DiagnosticPublic]
    count: int
    layers: list[str] = Field(description="every layer with diagnostics in this experiment")


class CatalogEntry(BaseModel):
    name: str
    description: str


class CatalogPublic(BaseModel):
    """What a form needs: the choices with descriptions, the defaults and the JSON schema."""

    strategies: list[CatalogEntry]
    models: list[CatalogEntry]
    datasets: list[CatalogEntry]
    partitions: list[str]
    exports: list[CatalogEntry] = Field(description="download formats of a completed experiment")
    defaults: dict[str, Any] = Field(description="ExperimentConfig() as JSON")
    config_schema: dict[str, Any] = Field(description="JSON schema of ExperimentConfig")


class HealthPublic(BaseModel):
    status: Literal["ok", "error"]
    database: str
    auth: Literal["none", "writes", "all"] = Field(
        "none", description="what needs the API token: nothing, writes and downloads, or all"
    )


# The request body of POST /sweeps is the sweep spec itself.
SweepCreate = SweepSpec
SweepStatus = Literal["queued", "running", "completed", "failed", "cancelled", "empty"]


class SweepPublic(BaseModel):
    """A sweep as the API shows it; its status comes from its experiments'."""

    id: str
    name: str
    spec: dict[str, Any] = Field(description="the SweepSpec it was created with")
    status: SweepStatus
    counts: dict[str, int] = Field(description="its experiments per status")
    n_experiments: int = Field(description="how many experiments it has (deleted ones gone)")
    created_at: datetime


class SweepsPublic(BaseModel):
    data: list[SweepPublic]
    count: int = Field(description="all sweeps (all pages)")


class SweepDetail(SweepPublic):
    """A sweep with its experiments and the leaderboard of their stored metrics."""

    experiments: list[ExperimentPublic]
    leaderboard: list[Row] = Field(
        description="one row per cell, best final mean first (see backend.core.leaderboard)"
    )


class DatasetPublic(BaseModel):
    """An uploaded dataset's summary."""

    name: str
    path: str = Field(description="what an experiment config's `dataset` names")
    filename: str = Field(description="the uploaded file's name")
    format: str
    bytes: int
    sha256: str
    uploaded_at: datetime
    layout: str = Field(description="chat, alpaca, prompt/response or text/label")
    n_examples: int
    preview: list[dict[str, str]] = Field(
        description="the first examples: {prompt, response}, or {text, label} for text/label"
    )
    count_by: Literal["label", "topic"]
    counts: dict[str, int] = Field(description="examples per label (text/label) or topic")


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int = Field(description="uploaded datasets (all pages)")


class SiloCreate(BaseModel):
    """Body of POST /silos."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1, max_length=64, description="the silo's name, as in federation.silos"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not SILO_NAME.fullmatch(v):
            raise ValueError(
                f"bad silo name {v!r}; allowed: 1-64 letters, digits, '_', '.', '-' "
                "(starting with a letter or digit)"
            )
        return v


class SiloPublic(_FromORM):
    """A silo's credential, without its token."""

    name: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class SiloCreated(SiloPublic):
    token: str = Field(description="the silo's token: shown once, stored only as its sha256")


class SilosPublic(BaseModel):
    data: list[SiloPublic]
    count: int


class SiloClientPublic(BaseModel):
    """A silo client's newest state: ``pending``, ``claimed`` (training), ``done`` or
    ``failed`` for a token silo's task; ``sent`` (to the silo's queue), ``done`` or
    ``failed`` for a Celery silo; null before the client was first sampled."""

    model_config = ConfigDict(from_attributes=True)

    client: int
    round: int | None
    attempt: int | None
    status: Literal["pending", "claimed", "sent", "done", "failed"] | None
    seen_at: datetime | None = Field(description="the token silo's last word on the task")
    error: str | None


class ExperimentSiloPublic(BaseModel):
    name: str
    token: bool = Field(description="a token silo (`fedmomentum silo-client`), else a Celery "
                        "silo worker")  # fmt: skip
    clients: list[SiloClientPublic]


class ExperimentSilosPublic(BaseModel):
    data: list[ExperimentSiloPublic]
    count: int


class SiloTaskPublic(BaseModel):
    """A training task handed to a silo: what its client needs to train and upload."""

    id: int
    experiment_id: str
    round: int
    client: int
    attempt: int
    generation: int
    rank: int = Field(description="the client's LoRA rank (its rank group's global state)")
    config: dict[str, Any] = Field(description="the experiment's config")
    backbone: bool = Field(description="whether the round has a backbone delta to download")


class SiloStep(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    step: int = Field(ge=0, le=MAX_INT)
    loss: float


class SiloProgress(BaseModel):
    """Body of POST /silo/tasks/{id}/progress: the step losses since the last one (none: a
    sign of life)."""

    model_config = ConfigDict(extra="forbid")

    steps: list[SiloStep] = Field(default_factory=list, max_length=100_000)


class SiloFailure(BaseModel):
    """Body of POST /silo/tasks/{id}/failure."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=10_000)

    @field_validator("reason")
    @classmethod
    def _storable(cls, v: str) -> str:
        return storable_text(v)


class SiloUploadResult(BaseModel):
    accepted: bool = Field(description="false: this task's update was received before")
    n_examples: int
