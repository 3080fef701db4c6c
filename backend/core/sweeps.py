"""Sweeps: one base config, a grid of strategies, seeds and any other config fields, expanded
into the experiments that compare them. Pure and torch-free: no I/O, no database.

A sweep's experiments differ only in the grid's fields, the strategy and the seed. Runs with
the same seed share the data split and the initial adapter by construction: the runner
derives from ``cfg.seed`` (and from the config fields named here, never from the strategy or
the aggregation and training fields) the dataset sample (``dataset``, ``data.n_train``,
``data.n_eval``), the clients' partition (``data.*``, ``federation.num_clients``,
``federation.silos``), the model's random weights (tiny-llama, classifier heads), the
initial LoRA factors (``model``, ``lora.*``), the clients sampled in each round
(``federation.num_clients``, ``federation.clients_per_round``) and each client's batch order
and dropout masks. So a grid over strategies, ``aggregation.*`` or ``training.*`` compares
runs that start from the same split and adapter; a grid over one of the fields above changes
them on purpose, and runs of one seed still share everything that field leaves alone.

Expansion is seed-major (every cell at seed 0, then every cell at seed 1, ...) so that a sweep
run in order shows a first comparison of every cell as early as possible.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from backend.core.catalog import STRATEGIES
from backend.core.config import ExperimentConfig, storable_text

MAX_EXPERIMENTS = 200  # one sweep; more is refused with the count
MAX_SEED = 2**32  # ExperimentConfig.seed's bound
# Fields the sweep sets itself: the grid may not name them.
RESERVED = {
    "strategy": "set by strategies; list them there",
    "seed": "set by seeds; list them there",
    "name": "set by the sweep: '<sweep name> / <cell> / seed <s>'",
}

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]  # (where in the sweep spec, message)


class SweepSpec(BaseModel):
    """What a user submits: a base config and the grid to expand it over."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=200, description="the sweep's name")
    base: dict[str, Any] = Field(
        default_factory=dict,
        description="an experiment config; its strategy, seed and name are set per run",
    )
    strategies: list[str] | Literal["all"] = Field(
        "all", description="strategies to compare, or all of them"
    )
    seeds: list[int] | int = Field(3, description="seeds to run, or a count n: seeds 0..n-1")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="dotted config path -> values, e.g. {'lora.rank': [4, 8]}",
    )

    @field_validator("*")
    @classmethod
    def _storable(cls, v: Any) -> Any:
        return json_storable(storable_text(v))


def json_storable(value: Any) -> Any:
    """``value`` unchanged if JSON and the database can hold all of it: base fields the sweep
    overrides (name, seed, strategy) are stored as given, so every value is checked here."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number; JSON has no NaN or infinity")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("contains a lone surrogate; allowed: UTF-8 text") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            json_storable(k)
            json_storable(v)
    elif isinstance(value, list):
        for v in value:
            json_storable(v)
    return value


@dataclass(frozen=True)
class SweepRun:
    """One experiment of a sweep: its cell (strategy and grid values), seed and config."""

    label: str  # the cell's label, the same for every seed of the cell
    cell: dict[str, Any]  # {"strategy": ..., <dotted path>: value, ...}
    seed: int
    config: ExperimentConfig


class SweepError(ValueError):
    """An invalid sweep; ``problems`` holds (location, message) pairs, str() one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(_line(loc, msg) for loc, msg in problems))


def where(loc: Loc) -> str:
    """A location as the user writes it: ``grid.lora.rank[1]``, ``strategies[2]``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _line(loc: Loc, msg: str) -> str:
    return f"{where(loc)}: {msg}" if loc else msg


def parse_sweep(data: Any) -> SweepSpec:
    """A SweepSpec from a mapping (API body, YAML); SweepError naming each bad field."""
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as e:
        raise SweepError(
            [(tuple(err["loc"]), err["msg"].removeprefix("Value error, ")) for err in e.errors()]
        ) from None


def seed_list(spec: SweepSpec) -> list[int]:
    """The sweep's seeds: the list given, or 0..n-1 for a count n."""
    return list(range(spec.seeds)) if isinstance(spec.seeds, int) else list(spec.seeds)


def strategy_list(spec: SweepSpec) -> list[str]:
    """The sweep's strategies, in the catalog's order for ``all``."""
    return list(STRATEGIES) if spec.strategies == "all" else list(spec.strategies)


def grid_keys(spec: SweepSpec) -> list[str]:
    """The grid's paths, sorted: labels must not depend on the order a JSON store keeps."""
    return sorted(spec.grid)


def count(spec: SweepSpec) -> int:
    """How many experiments the sweep expands to (without validating them)."""
    cells = len(strategy_list(spec)) * math.prod(len(v) for v in spec.grid.values())
    return cells * len(seed_list(spec))


# ---- checks of the spec's parts ----------------------------------------------------------


def _strategy_problems(spec: SweepSpec) -> list[Problem]:
    if spec.strategies == "all":
        return []
    if not spec.strategies:
        return [(("strategies",), "needs at least one strategy (or 'all')")]
    problems: list[Problem] = []
    for i, s in enumerate(spec.strategies):
        if s not in STRATEGIES:
            allowed = ", ".join(STRATEGIES)
            problems.append((("strategies", i), f"unknown strategy {s!r}; allowed: {allowed}"))
        elif s in spec.strategies[:i]:
            problems.append((("strategies", i), f"{s!r} is listed twice"))
    return problems


def _seed_problems(spec: SweepSpec) -> list[Problem]:
    if isinstance(spec.seeds, int):
        if not 0 < spec.seeds <= MAX_EXPERIMENTS:
            return [(("seeds",), f"a count of seeds must be 1..{MAX_EXPERIMENTS}")]
        return []
    if not spec.seeds:
        return [(("seeds",), "needs at least one seed (or a count)")]
    problems: list[Problem] = []
    for i, s in enumerate(spec.seeds):
        if not 0 <= s < MAX_SEED:
            problems.append((("seeds", i), f"seed {s} out of range; allowed: 0 <= seed < 2**32"))
        elif s in spec.seeds[:i]:
            problems.append((("seeds", i), f"seed {s} is listed twice"))
    return problems


def _fields(model: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    """A config section's fields: name -> its section class, or None for a plain field."""
    out: dict[str, type[BaseModel] | None] = {}
    for name, info in model.model_fields.items():
        kind = info.annotation
        out[name] = kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None
    return out


def leaf_paths(model: type[BaseModel] = ExperimentConfig, prefix: str = "") -> list[str]:
    """Every plain field of the config by dotted path (what a grid may name)."""
    paths: list[str] = []
    for name, section in _fields(model).items():
        path = f"{prefix}{name}"
        paths += leaf_paths(section, f"{path}.") if section else [path]
    return paths


def path_problem(path: str) -> str | None:
    """Why a dotted path does not name a plain config field a grid may vary (None: it does)."""
    if path in RESERVED:
        return RESERVED[path]
    model: type[BaseModel] | None = ExperimentConfig
    parts = path.split(".")
    for depth, part in enumerate(parts):
        if model is None:
            return f"{'.'.join(parts[:depth])} is a field, not a config section"
        fields = _fields(model)
        if part not in fields:
            return f"unknown config field; allowed: {', '.join(fields)}"
        model = fields[part]
    if model is not None:
        inner = ", ".join(f"{path}.{name}" for name in _fields(model))
        return f"a config section, not a field; allowed: {inner}"
    return None


def render(value: Any) -> str:
    """A grid value as shown in a label: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _grid_shape_problems(spec: SweepSpec) -> list[Problem]:
    problems: list[Problem] = []
    for path in grid_keys(spec):
        values = spec.grid[path]
        why = path_problem(path)
        if why:
            problems.append((("grid", path), why))
        elif not values:
            problems.append((("grid", path), "needs at least one value"))
        shown = [render(v) for v in values]
        for i, text in enumerate(shown):
            if text in shown[:i]:
                problems.append((("grid", path, i), f"{text} is listed twice"))
    return problems


def _with(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of a config dict with the dotted ``path`` set to ``value`` (sections created)."""
    head, _, rest = path.partition(".")
    if not rest:
        return {**data, head: value}
    inner = data.get(head)
    return {**data, head: _with(inner if isinstance(inner, dict) else {}, rest, value)}


def _errors(data: dict[str, Any]) -> list[tuple[Loc, str]]:
    """ExperimentConfig's errors for a dict, as (location, message)."""
    try:
        ExperimentConfig.model_validate(data)
    except ValidationError as e:
        return [(tuple(err["loc"]), err["msg"].removeprefix("Value error, ")) for err in e.errors()]
    return []


def _value_problems(spec: SweepSpec) -> list[Problem]:
    """Each grid value checked alone in the base; only errors at its own field count here
    (a clash with another field is reported per cell)."""
    problems: list[Problem] = []
    for path in grid_keys(spec):
        parts = tuple(path.split("."))
        for i, value in enumerate(spec.grid[path]):
            for loc, msg in _errors(_with(spec.base, path, value)):
                if loc[: len(parts)] == parts:
                    problems.append((("grid", path, i, *loc[len(parts) :]), msg))
    return problems


# ---- expansion ------------------------------------------------------------------------------


def cells(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every combination of strategy and grid values, strategy first, grid paths sorted."""
    out: list[dict[str, Any]] = [{"strategy": s} for s in strategy_list(spec)]
    for path in grid_keys(spec):
        out = [{**cell, path: v} for cell in out for v in spec.grid[path]]
    return out


def label(cell: dict[str, Any]) -> str:
    """A cell's label: ``fedmomentum`` or ``fedmomentum, aggregation.factor_split=b``."""
    rest = [f"{path}={render(v)}" for path, v in cell.items() if path != "strategy"]
    return ", ".join([cell["strategy"], *rest])


def run_name(sweep_name: str, cell_label: str, seed: int) -> str:
    """An experiment's name in a sweep; ``parse_run_name`` reads it back."""
    return f"{sweep_name} / {cell_label} / seed {seed}"


def parse_run_name(sweep_name: str, name: str) -> tuple[str, int] | None:
    """(cell label, seed) of an experiment named by ``run_name`` (None: not of this sweep).
    The name is the one record of a run's cell that survives a change to the schema."""
    head, sep, seed = name.rpartition(" / seed ")
    prefix = f"{sweep_name} / "
    if not sep or not seed.isdigit() or not head.startswith(prefix):
        return None
    return head.removeprefix(prefix), int(seed)


def _cell_config(spec: SweepSpec, cell: dict[str, Any], seed: int) -> dict[str, Any]:
    data = dict(spec.base)
    for path, value in cell.items():
        data = _with(data, path, value)
    return {**data, "seed": seed, "name": run_name(spec.name, label(cell), seed)}


def _cell_problems(spec: SweepSpec, all_cells: list[dict[str, Any]]) -> list[Problem]:
    """Errors of the cells' configs: in every cell, they belong to the base; in some, to the
    cells named (a clash between grid values, or a strategy that does not fit the base)."""
    seed = seed_list(spec)[0]  # the seed is range-checked; it changes no other check
    found: dict[tuple[Loc, str], list[str]] = {}
    for cell in all_cells:
        for loc, msg in _errors(_cell_config(spec, cell, seed)):
            found.setdefault((loc, msg), []).append(label(cell))
    problems: list[Problem] = []
    for (loc, msg), labels in found.items():
        text = f"{where(loc)}: {msg}" if loc else msg
        if loc == ("name",):
            problems.append((("name",), f"an experiment's name would be too long: {msg}"))
        elif len(labels) == len(all_cells):
            problems.append((("base", *loc), msg))
        else:
            problems.append(((), f"cell {labels[0]!r}: {text}" + _more(labels)))
    return problems


def _more(labels: list[str]) -> str:
    return f" (and {len(labels) - 1} more cells)" if len(labels) > 1 else ""


def problems(spec: SweepSpec) -> list[Problem]:
    """Everything wrong with a sweep (empty: it expands). The count limit comes first and
    alone: a sweep too large is not worth checking further."""
    found = _strategy_problems(spec) + _seed_problems(spec) + _grid_shape_problems(spec)
    if found:
        return found
    n = count(spec)
    if n > MAX_EXPERIMENTS:
        return [((), f"this sweep expands to {n} experiments; at most {MAX_EXPERIMENTS}")]
    return _value_problems(spec) or _cell_problems(spec, cells(spec))


def expand(spec: SweepSpec) -> list[SweepRun]:
    """The sweep's experiments, seed-major; SweepError naming every bad field or entry."""
    found = problems(spec)
    if found:
        raise SweepError(found)
    all_cells = cells(spec)
    return [
        SweepRun(
            label=label(cell),
            cell=cell,
            seed=seed,
            config=ExperimentConfig.model_validate(_cell_config(spec, cell, seed)),
        )
        for seed in seed_list(spec)
        for cell in all_cells
    ]
