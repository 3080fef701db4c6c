"""``fedmomentum sweep``: every experiment of a sweep in this process, one run directory each.

The output folder holds ``<cell>-seed<s>/`` run directories, ``sweep.json`` (the spec, one
summary per run and the leaderboard: the document ``backend.api.sweep_report`` renders; its
name, spec and leaderboard are shaped as in the API's sweep detail), ``leaderboard.md`` and
``report.html``. It resumes:
a finished run is not run again, an interrupted one continues from its last committed round
(the runner's own resume), and ``sweep.json`` is rewritten after every run, so an interrupted
sweep leaves a readable document.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from backend.core.leaderboard import (
    RunMetrics,
    best_accuracy,
    final_accuracy,
    from_records,
    leaderboard,
    to_markdown,
)
from backend.core.sweeps import SweepError, SweepRun, SweepSpec, expand, parse_sweep

_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def parse_strategies(text: str) -> list[str] | str:
    """``all`` or a comma-separated list of strategy names."""
    return "all" if text.strip() == "all" else [s.strip() for s in text.split(",") if s.strip()]


def parse_seeds(text: str) -> list[int] | int:
    """A count (``3``: seeds 0, 1, 2) or a comma-separated list (``0,1,2``)."""
    try:
        return int(text) if "," not in text else [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SweepError(
            [(("seeds",), f"{text!r} is neither a count nor a comma-separated list of seeds")]
        ) from None


def parse_sets(items: list[str]) -> dict[str, list[Any]]:
    """``--set path=v1,v2`` options as a grid; each value read as YAML (``4`` is a number)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        path, sep, values = item.partition("=")
        if not sep or not path.strip():
            raise SweepError([(("grid",), f"--set {item!r}: expected PATH=VALUE[,VALUE...]")])
        grid[path.strip()] = [yaml.safe_load(v) for v in values.split(",")]
    return grid


def read_base(path: Path) -> dict[str, Any]:
    """The base config file as a mapping (the sweep validates it, cell by cell)."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SweepError([((), f"{path}: {e}")]) from None
    if not isinstance(data, dict):
        raise SweepError([((), f"{path}: expected a mapping of config fields")])
    return data


def build_spec(
    config: Path, *, strategies: str, seeds: str, sets: list[str], name: str | None = None
) -> SweepSpec:
    """The sweep of the command line: the config file as the base, options as the grid."""
    base = read_base(config)
    return parse_sweep(
        {
            "name": name or base.get("name") or config.stem,
            "base": base,
            "strategies": parse_strategies(strategies),
            "seeds": parse_seeds(seeds),
            "grid": parse_sets(sets),
        }
    )


def run_dir_name(run: SweepRun) -> str:
    """A file name for a run: its cell label made path-safe, then its seed."""
    return f"{_UNSAFE.sub('_', run.label.replace(', ', '__')).strip('_')}-seed{run.seed}"


def run_dirs(runs: list[SweepRun]) -> list[str]:
    """Every run's directory name; SweepError when two cells make the same one."""
    names = [run_dir_name(r) for r in runs]
    seen: dict[str, str] = {}
    for run, name in zip(runs, names, strict=True):
        if name in seen and seen[name] != run.label:
            raise SweepError(
                [(("grid",), f"cells {seen[name]!r} and {run.label!r} both map to {name}/")]
            )
        seen[name] = run.label
    return names


def check_existing(out: Path, runs: list[SweepRun], names: list[str]) -> None:
    """SweepError when a run directory already holds a run of another config (the base or
    the grid changed): resuming must not mix its old results into the leaderboard."""
    problems = []
    for run, name in zip(runs, names, strict=True):
        path = out / name / "config.yaml"
        if path.is_file() and yaml.safe_load(path.read_text()) != run.config.model_dump(
            mode="json"
        ):
            problems.append(
                ((), f"{path.parent} holds a run with a different config; choose another --out")
            )
    if problems:
        raise SweepError(problems)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """A run directory's metrics.jsonl records (none before the run starts)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def is_finished(run_dir: Path, rounds: int, *, exported: bool) -> bool:
    """Whether a run directory holds a whole run: every round evaluated (and the export,
    when one is wanted)."""
    evaluated = {r["round"] for r in read_metrics(run_dir) if r["kind"] == "eval"}
    has_export = (run_dir / "export" / "export.json").is_file()
    return set(range(rounds)) <= evaluated and (has_export or not exported)


def client_ranks(run: SweepRun) -> list[int]:
    """Each client's LoRA rank in a run (what its download weighs)."""
    return [run.config.client_rank(c) for c in range(run.config.federation.num_clients)]


def _summary(run: SweepRun, name: str, metrics: RunMetrics, status: str, error: str | None):
    rounds = [t for t in metrics.evals if t >= 0]
    return {
        "label": run.label,
        "cell": run.cell,
        "seed": run.seed,
        "dir": name,
        "status": status,
        "error": error,
        "rounds_done": max(rounds) + 1 if rounds else 0,
        "total_rounds": run.config.federation.rounds,
        "final_accuracy": final_accuracy(metrics),
        "best_accuracy": best_accuracy(metrics),
        "wall_seconds": sum(r.get("round_seconds") or 0 for r in metrics.rounds.values()),
    }


def document(
    spec: SweepSpec, runs: list[SweepRun], names: list[str], out: Path, states: dict[str, Any]
) -> dict[str, Any]:
    """The sweep document of the output folder: spec, per-run summaries, leaderboard."""
    metrics = [
        from_records(r.label, r.seed, read_metrics(out / n), client_ranks(r))
        for r, n in zip(runs, names, strict=True)
    ]
    summaries = [
        _summary(r, n, m, *states.get(n, ("pending", None)))
        for r, n, m in zip(runs, names, metrics, strict=True)
    ]
    return {
        "name": spec.name,
        "spec": spec.model_dump(mode="json"),
        "runs": summaries,
        "leaderboard": [asdict(row) for row in leaderboard(m for m in metrics if m.evals)],
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)  # readers never see half a file


def run_sweep(
    spec: SweepSpec, out: Path, *, progress: bool = True, exports: bool = False
) -> dict[str, Any]:
    """Run (or resume) every experiment of a sweep under ``out``; returns the sweep document
    (also written there with the leaderboard and the HTML report). A run that fails is
    recorded with its error and the sweep goes on. Without ``exports`` no run writes
    export/ (a merged model per run adds up: `fedmomentum export <run dir>` writes the one
    wanted)."""
    runs = expand(spec)  # every error before any work starts
    names = run_dirs(runs)
    check_existing(out, runs, names)
    from tqdm.auto import tqdm

    from workers.runner import run  # torch only from here on

    out.mkdir(parents=True, exist_ok=True)
    states: dict[str, tuple[str, str | None]] = {}
    bar = tqdm(total=len(runs), desc="sweep", unit="run", disable=not progress)
    for r, name in zip(runs, names, strict=True):
        bar.set_postfix_str(f"{r.label} seed {r.seed}")
        if not is_finished(out / name, r.config.federation.rounds, exported=exports):
            try:
                tags = {"sweep": spec.name}
                run(r.config, out / name, progress=progress, write_export=exports, tags=tags)
            except Exception as e:  # noqa: BLE001 - one failed run must not end the sweep
                states[name] = ("failed", f"{type(e).__name__}: {e}")
        states.setdefault(name, ("completed", None))
        _write_json(out / "sweep.json", document(spec, runs, names, out, states))
        bar.update(1)
    bar.close()
    return write_outputs(out, document(spec, runs, names, out, states))


def write_outputs(out: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """sweep.json, leaderboard.md and report.html of a sweep document."""
    from backend.api.sweep_report import render
    from backend.core.leaderboard import Row

    _write_json(out / "sweep.json", doc)
    rows = [Row.from_dict(row) for row in doc["leaderboard"]]
    (out / "leaderboard.md").write_text(f"# Sweep {doc['name']}\n\n{to_markdown(rows)}")
    (out / "report.html").write_text(render(doc))
    return doc
