"""Experiment configuration: one pydantic schema for the CLI, the runner and the API.

Every error names its field and the allowed values; unknown fields are rejected (a typo
must not silently fall back to a default). Defaults are the demo: SmolLM2-135M on WordNet
topics, 5 clients, Dirichlet(0.5), FedMomentum.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from backend.core.catalog import CAPABILITIES, DATASETS, MODELS, PARTITIONS, STRATEGIES
from backend.core.data.files import FILE_SUFFIXES

# The service's Celery queues (backend.core.broker routes by these). A silo's queue is its
# name, so these, and Celery's own default queue, cannot name a silo.
TRAIN_QUEUE = "train"
AGGREGATE_QUEUE = "aggregate"
RESERVED_QUEUES = (TRAIN_QUEUE, AGGREGATE_QUEUE, "celery")
SILO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_EXAMPLES = 100_000  # data.n_train and data.n_eval (unset: the dataset's default or all)


def storable_text(value: Any) -> Any:
    """``value`` unchanged if no string in it (in lists and mappings too) holds a NUL
    character, which PostgreSQL text and JSONB refuse. (Lone surrogates, not UTF-8, are
    refused by pydantic's own str validation.)"""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("contains a NUL character (\\x00); allowed: text without it")
    elif isinstance(value, dict):
        for k, v in value.items():
            storable_text(k)
            storable_text(v)
    elif isinstance(value, list | tuple):
        for v in value:
            storable_text(v)
    return value


class _Strict(BaseModel):
    # Non-finite floats are refused: JSON (the API's and the database's) has no NaN/Infinity.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _storable(cls, v: Any) -> Any:
        return storable_text(v)


def _one_of(value: str, allowed: dict[str, str] | tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")
    return value


class DataConfig(_Strict):
    # Bounded: the API builds a generated dataset of this size to check the config.
    n_train: int | None = Field(
        None, gt=0, le=MAX_EXAMPLES, description="training examples (default per dataset)"
    )
    n_eval: int | None = Field(
        None, gt=0, le=MAX_EXAMPLES, description="held-out examples shared by all clients"
    )
    partition: str = Field("dirichlet", description="iid, dirichlet (over labels) or shards")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration: smaller = more non-IID")
    shards_per_client: int = Field(2, gt=0, description="shards partition: label shards per client")
    # Here rather than under training: it shapes the examples themselves, for evaluation too.
    chat_template: Literal["auto", "off"] = Field(
        "auto",
        description="auto: prompts of language models with a chat template go through it "
        "(the loss stays on the response); off: the plain prompt text",
    )

    @field_validator("partition")
    @classmethod
    def _partition(cls, v: str) -> str:
        return _one_of(v, PARTITIONS, "partition")


class LoraConfig(_Strict):
    rank: int = Field(8, gt=0, le=256, description="LoRA rank r of the global adapter")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; scaling = alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout while training")
    target_modules: list[str] | None = Field(
        None,
        description="default: PEFT's targets for the model's architecture (q_proj/v_proj for "
        "Llama, query/value for BERT)",
    )
    rslora: bool = Field(False, description="scaling alpha / sqrt(r)")


class AggregationConfig(_Strict):
    svd: Literal["factored", "randomized", "dense"] = Field(
        "factored", description="exact factored SVD (never forms M), randomized, or dense"
    )
    oversample: int = Field(10, ge=0, description="randomized SVD: extra sketch columns")
    power_iters: int = Field(2, ge=0, description="randomized SVD: power iterations")
    merge_every: int = Field(1, ge=1, description="fedmomentum: merge the residual every k rounds")
    # Default b, by measurement: over seeds and settings (benchmarks/README.md, convergence)
    # putting S in B and keeping A's rows orthonormal trained faster than the square-root split,
    # whose small A rows slow the next round (Adam moves B by about lr per step, and the product
    # by that times A's norm).
    factor_split: Literal["sqrt", "b", "fresh"] = Field(
        "b",
        description="fedmomentum (and flexlora): how the singular values split between the new "
        "B and A: sqrt (half in each), b (all in B, A's rows orthonormal) or fresh (A's rows at "
        "a fresh LoRA's norm 1/sqrt(3), the rest in B); the product is the same",
    )
    # Honest clients take the same number of local AdamW steps from the same start, and Adam's
    # per-parameter step is about the learning rate whatever the gradient's scale, so their
    # update norms stay close: measured within 1.1x of the round's median with equal local
    # steps (tiny-llama, minilm-l6; Dirichlet(0.3) data), 1.3x with local_epochs on those
    # unequal partitions; twice the steps or 4x the rank about double a norm. A corrupted
    # upload is orders of magnitude off, and a model-replacement attack scales its update by
    # about the number of clients. 10 leaves honest clients ample room.
    max_norm_ratio: float | None = Field(
        10.0,
        gt=1,
        description="exclude a client whose update norm is above this many times the round's "
        "median update norm (empty: no norm limit; NaN, inf and wrong shapes are always excluded)",
    )


class FederationConfig(_Strict):
    num_clients: int = Field(5, gt=0, le=10_000, description="data holders the data is split over")
    clients_per_round: int = Field(5, gt=0, description="clients sampled each round")
    rounds: int = Field(5, gt=0, le=10_000, description="federated rounds (train, aggregate)")
    min_clients_per_round: int = Field(1, gt=0, description="fewer successes retry the round")
    client_ranks: list[int] | None = Field(
        None, description="per-client LoRA ranks (heterogeneous)"
    )
    silos: dict[str, list[int]] | None = Field(
        None,
        description="cross-silo: silo name -> its clients; they train only on workers of the "
        "queue named after the silo, from the data those workers hold (FEDMOMENTUM_SILO_DATA)",
    )
    token_silos: list[str] | None = Field(
        None,
        description="silos of `silos` whose clients train on `fedmomentum silo-client`, which "
        "holds only the silo's token and talks only to the API (no Celery worker, broker, "
        "database or store credentials at the silo)",
    )

    @model_validator(mode="after")
    def _counts(self) -> FederationConfig:
        if self.clients_per_round > self.num_clients:
            raise ValueError(
                f"clients_per_round ({self.clients_per_round}) must be <= num_clients "
                f"({self.num_clients})"
            )
        if self.min_clients_per_round > self.clients_per_round:
            raise ValueError("min_clients_per_round must be <= clients_per_round")
        if self.client_ranks is not None:
            if len(self.client_ranks) != self.num_clients:
                raise ValueError(f"client_ranks needs one rank per client ({self.num_clients})")
            if min(self.client_ranks) <= 0:
                raise ValueError("client_ranks: every rank must be > 0")
        self._check_silos()
        return self

    def _check_silos(self) -> None:
        seen: dict[int, str] = {}
        for name, clients in (self.silos or {}).items():
            if not SILO_NAME.fullmatch(name) or name in RESERVED_QUEUES:
                raise ValueError(
                    f"silos: bad silo name {name!r}; allowed: 1-64 letters, digits, '_', '.', "
                    f"'-' (starting with a letter or digit), except {', '.join(RESERVED_QUEUES)}"
                )
            if not clients:
                raise ValueError(f"silos.{name}: needs at least one client")
            for c in clients:
                if not 0 <= c < self.num_clients:
                    raise ValueError(
                        f"silos.{name}: client {c} does not exist; "
                        f"allowed: 0..{self.num_clients - 1}"
                    )
                if c in seen:
                    raise ValueError(f"silos: client {c} is in both {seen[c]!r} and {name!r}")
                seen[c] = name
        for name in self.token_silos or []:
            if name not in (self.silos or {}):
                raise ValueError(
                    f"token_silos: {name!r} is not a silo of federation.silos; allowed: "
                    f"{', '.join(self.silos or {}) or 'none (set federation.silos first)'}"
                )


class TrainingConfig(_Strict):
    local_steps: int = Field(8, gt=0, description="optimizer steps per client and round")
    local_epochs: float | None = Field(None, gt=0, description="overrides local_steps when set")
    batch_size: int = Field(4, gt=0, description="examples per local step")
    max_length: int = Field(96, ge=8, le=4096, description="tokens per example")
    lr: float = Field(1e-3, gt=0, lt=1, description="AdamW learning rate of the LoRA factors")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(1, ge=0, description="linear learning-rate warmup steps")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="fp32, or bf16 autocast of the local forward pass (the LoRA factors, "
        "their gradients and AdamW stay float32; evaluation is float32)",
    )


class EvalConfig(_Strict):
    batch_size: int = Field(16, gt=0, description="examples per evaluation batch")
    max_new_tokens: int | None = Field(None, gt=0, description="default: longest answer + 2")


class PrivacyConfig(_Strict):
    """Differential privacy of the client updates (workers/federated/privacy.py says how the
    noise enters each strategy). One client is one user."""

    mode: Literal["off", "central", "local"] = Field(
        "off",
        description="central: the server clips each client's update and noises the aggregate "
        "(a trusted server); local: each client clips and noises its own upload",
    )
    clip: float | None = Field(
        None, gt=0, description="clipping norm C of a client's whole update (all layers)"
    )
    noise_multiplier: float | None = Field(
        None, ge=0, description="sigma: noise std sigma*C on the sum of the updates"
    )
    target_epsilon: float | None = Field(
        None, gt=0, description="instead of noise_multiplier: the epsilon the whole run may spend"
    )
    delta: float = Field(1e-5, gt=0, lt=1, description="delta of the (epsilon, delta) reported")

    @model_validator(mode="after")
    def _combination(self) -> PrivacyConfig:
        noise = {"noise_multiplier": self.noise_multiplier, "target_epsilon": self.target_epsilon}
        given = [k for k, v in noise.items() if v is not None]
        if self.mode == "off":
            extra = [k for k, v in {"clip": self.clip, **noise}.items() if v is not None]
            if extra:
                raise ValueError(
                    f"{extra[0]}: set with mode 'off'; allowed: mode 'central' or 'local'"
                )
            return self
        if self.clip is None:
            raise ValueError(f"clip: required with mode {self.mode!r} (a norm > 0)")
        if len(given) != 1:
            both = "both set" if given else "neither set"
            raise ValueError(
                f"noise_multiplier, target_epsilon: {both} with mode {self.mode!r}; "
                "allowed: exactly one of them"
            )
        return self


class TrackingConfig(_Strict):
    """Where a run's metrics go besides metrics.jsonl (TensorBoard event files: always)."""

    mlflow: bool | None = Field(
        None,
        description="log the run to MLflow: true, false, or empty (whenever the service has a "
        "tracking server, FEDMOMENTUM_MLFLOW_TRACKING_URI); true without that setting uses "
        "MLflow's own MLFLOW_TRACKING_URI",
    )


class ExperimentConfig(_Strict):
    """A whole federated fine-tuning experiment."""

    name: str = Field("demo", min_length=1, max_length=200, description="shown in lists and files")
    seed: int = Field(
        0, ge=0, lt=2**32, description="data split, sampling and initialisation"
    )  # torch seeds must fit 64 bits, also after the runner's per-round arithmetic
    model: str = Field("smollm2-135m", description="built-in name or a local HF model directory")
    dataset: str = Field(
        "wordnet-topics",
        description="built-in name, a .jsonl/.json/.csv/.parquet path, or "
        "hf:<hub id>[:<config>][@<split>] / hf:<saved directory>[@<split>] (the `hf` extra)",
    )
    strategy: str = Field("fedmomentum", description="how client LoRAs are aggregated")
    device: str = Field("auto", description="auto (CUDA when present), cpu or cuda[:N]")
    data: DataConfig = DataConfig()
    lora: LoraConfig = LoraConfig()
    aggregation: AggregationConfig = AggregationConfig()
    federation: FederationConfig = FederationConfig()
    training: TrainingConfig = TrainingConfig()
    eval: EvalConfig = EvalConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    tracking: TrackingConfig = TrackingConfig()

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        return _one_of(v, STRATEGIES, "strategy")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        # No filesystem look-up here: whether a path exists is the loader's business (and a
        # server must not tell an API caller which of its paths exist; backend.core.checks).
        if v in MODELS or "/" in v:  # built-in, a local directory, or a hub id
            return v
        raise ValueError(
            f"unknown model {v!r}; built-in: {', '.join(MODELS)}; or a local model directory (a "
            "path with a '/', e.g. ./my-model) or a hub id (org/name)"
        )

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        if v in DATASETS or v.lower().endswith(FILE_SUFFIXES) or v.startswith("hf:"):
            return v
        files = "/".join(FILE_SUFFIXES)
        raise ValueError(
            f"unknown dataset {v!r}; allowed: {', '.join(DATASETS)}, a {files} path, or hf:<id>"
        )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or v.startswith("cuda:"):
            return v
        raise ValueError(f"unknown device {v!r}; allowed: auto, cpu, cuda, cuda:N")

    @model_validator(mode="after")
    def _strategy_fits(self) -> ExperimentConfig:
        ranks = self.federation.client_ranks
        if ranks and len(set(ranks)) > 1 and not CAPABILITIES[self.strategy].heterogeneous_ranks:
            able = ", ".join(n for n, c in CAPABILITIES.items() if c.heterogeneous_ranks)
            raise ValueError(
                f"federation.client_ranks: strategy {self.strategy!r} needs equal ranks; "
                f"heterogeneous ranks: {able}"
            )
        return self

    def client_rank(self, client: int) -> int:
        """LoRA rank of one client (the global rank unless client_ranks is set)."""
        ranks = self.federation.client_ranks
        return ranks[client] if ranks else self.lora.rank

    def silo_of(self, client: int) -> str | None:
        """The silo a client is pinned to (its queue), or None for the shared ``train``."""
        return next((s for s, cs in (self.federation.silos or {}).items() if client in cs), None)

    def token_silo_of(self, client: int) -> str | None:
        """The silo of a client that trains on a token silo client (tasks over the API)."""
        silo = self.silo_of(client)
        return silo if silo is not None and silo in (self.federation.token_silos or []) else None

    def rank_groups(self) -> list[int]:
        return sorted({self.client_rank(c) for c in range(self.federation.num_clients)})


class ConfigError(ValueError):
    """A config that failed validation; the message names every bad field."""


def describe(error: ValidationError) -> str:
    """'field.path: message' per problem, one per line."""
    lines = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        lines.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any]) -> ExperimentConfig:
    """Validate a dict; ConfigError naming the fields otherwise."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(describe(e)) from None


def read_config_file(path: Path) -> dict[str, Any]:
    """The fields of a YAML (or JSON) config file, not yet validated."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields")
    return data


def load_config(path: Path) -> ExperimentConfig:
    """Read and validate a YAML config file."""
    return parse_config(read_config_file(path))
