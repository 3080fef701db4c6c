"""Convergence of every strategy over seeds and settings, built on sweeps: the evidence for
FedMomentum's default.

    .venv/bin/python benchmarks/convergence.py                       # every setting, full size
    .venv/bin/python benchmarks/convergence.py --settings demo,drift --seeds 2 --rounds 4 \\
        --set training.local_steps=4 --out runs/convergence-quick    # a quick look

Settings (each one base config; every strategy runs it with the same hyperparameters):

- demo:   the demo (examples/demo.yaml): SmolLM2-135M, WordNet topics, 5 clients,
          Dirichlet(0.5), 8 local steps.
- noniid: strongly non-IID: label shards (2 topics per client), 10 clients with 5 sampled
          per round, 16 local steps.
- arith:  GSM8K-style arithmetic, clients split by operation (one operation per client),
          exact-match accuracy.
- drift:  high client drift: 32 local steps at lr 3e-3 on Dirichlet(0.1), the regime where
          averaging A and B separately loses a real share of the update (FedIT's naive-average
          error, the dashboard's own diagnostic, well above the demo's ~1%).

Per setting two sweeps share seeds (so splits and initial adapters): every strategy with its
defaults, and FedMomentum once per factor split (``--splits``). Each setting's leaderboard
(final accuracy mean +- std over seeds, best, rounds to reach the best final mean, area
under the curve, traffic, wall time) is printed with the setting's mean naive-average error
(FedIT's runs, over rounds and layers), and the two targets: the default FedMomentum ends at
or above the best baseline's mean final accuracy; and reaches it within 70% of the rounds.
Everything is written under --out (resumable: finished runs are kept), with convergence.md
and convergence.json beside the sweeps.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from backend.cli.sweep import client_ranks, parse_sets, read_metrics, run_dirs, run_sweep
from backend.core.catalog import STRATEGIES
from backend.core.config import AggregationConfig
from backend.core.leaderboard import (
    RunMetrics,
    final_accuracy,
    from_records,
    leaderboard,
    to_markdown,
)
from backend.core.sweeps import expand, parse_sweep

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.yaml"
ROUNDS = 8
SETTINGS: dict[str, dict[str, Any]] = {
    "demo": {},
    "noniid": {
        "data.partition": "shards",
        "data.shards_per_client": 2,
        "federation.num_clients": 10,
        "federation.clients_per_round": 5,
        "training.local_steps": 16,
    },
    "arith": {
        "dataset": "arith",
        "data.n_train": 1000,
        "data.partition": "shards",
        "data.shards_per_client": 1,
        "federation.num_clients": 4,
        "federation.clients_per_round": 4,
    },
    "drift": {
        "data.alpha": 0.1,
        "training.local_steps": 32,
        "training.lr": 3e-3,
    },
}
DEFAULT_SPLIT = AggregationConfig.model_fields["factor_split"].default
SPLITS = AggregationConfig.model_fields["factor_split"].annotation.__args__  # type: ignore[union-attr]


def _set(base: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = base
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def base_config(setting: str, rounds: int, overrides: dict[str, list[Any]]) -> dict[str, Any]:
    """The setting's config: the demo, the setting's changes, then --set overrides."""
    base: dict[str, Any] = yaml.safe_load(DEMO.read_text())
    _set(base, "federation.rounds", rounds)
    for path, value in SETTINGS[setting].items():
        _set(base, path, value)
    for path, values in overrides.items():
        if len(values) != 1:
            raise SystemExit(f"--set {path}: one value per benchmark setting (got {values})")
        _set(base, path, values[0])
    base["name"] = f"convergence-{setting}"
    return base


def sweeps(
    setting: str, base: dict[str, Any], strategies: list[str], seeds: list[int], splits: list[str]
) -> list[dict[str, Any]]:
    """The setting's sweep specs: every strategy with its defaults, FedMomentum per split."""
    specs = [{"name": f"{setting}", "base": base, "strategies": strategies, "seeds": seeds}]
    extra = [
        s for s in splits if s != base.get("aggregation", {}).get("factor_split", DEFAULT_SPLIT)
    ]
    if "fedmomentum" in strategies and extra:
        specs.append(
            {
                "name": f"{setting}-splits",
                "base": base,
                "strategies": ["fedmomentum"],
                "seeds": seeds,
                "grid": {"aggregation.factor_split": extra},
            }
        )
    return specs


def _runs(spec: dict[str, Any], out: Path) -> list[RunMetrics]:
    parsed = parse_sweep(spec)
    runs = expand(parsed)
    return [
        from_records(r.label, r.seed, read_metrics(out / name), client_ranks(r))
        for r, name in zip(runs, run_dirs(runs), strict=True)
    ]


def naive_error(runs: list[RunMetrics]) -> float | None:
    """Mean over FedIT's rounds and layers (and seeds) of its naive-average error."""
    values = [
        float(d["naive_error"])
        for r in runs
        if r.label == "fedit"
        for layers in r.diagnostics.values()
        for d in layers
        if d.get("naive_error") is not None and math.isfinite(d["naive_error"])
    ]
    return statistics.fmean(values) if values else None


def targets(rows: list[Any], rounds: int) -> dict[str, Any]:
    """The default FedMomentum against the best baseline: ends at or above its mean final
    accuracy; reaches that accuracy within 70% of the rounds."""
    ours = next((r for r in rows if r.label == "fedmomentum"), None)
    baselines = [
        r for r in rows if not r.label.startswith("fedmomentum") and r.final_mean is not None
    ]
    if ours is None or ours.final_mean is None or not baselines:
        return {}
    best = max(baselines, key=lambda r: r.final_mean)
    reach = next(
        (p.round + 1 for p in ours.accuracy if p.round >= 0 and p.mean >= best.final_mean - 1e-12),
        None,
    )
    return {
        "best_baseline": best.label,
        "best_baseline_final": best.final_mean,
        "fedmomentum_final": ours.final_mean,
        "ends_at_or_above": ours.final_mean >= best.final_mean - 1e-12,
        "rounds_to_best_baseline_final": reach,
        "within_70_percent": reach is not None and reach <= 0.7 * rounds,
    }


def paired(runs: list[RunMetrics], reference: str) -> dict[str, dict[str, Any]]:
    """Each cell's final accuracy minus ``reference``'s on the same seed (the same split and
    initial adapter): a difference the seeds agree on is evidence even where the unpaired
    spreads overlap. Per cell: the differences by seed, their mean, and the seeds it won."""
    ref = {r.seed: final_accuracy(r) for r in runs if r.label == reference}
    out: dict[str, dict[str, Any]] = {}
    for run in runs:
        mine, theirs = final_accuracy(run), ref.get(run.seed)
        if run.label == reference or mine is None or theirs is None:
            continue
        cell = out.setdefault(run.label, {"diffs": {}})
        cell["diffs"][run.seed] = mine - theirs
    for cell in out.values():
        diffs = list(cell["diffs"].values())
        cell["mean"] = statistics.fmean(diffs)
        cell["wins"] = sum(d > 0 for d in diffs)
        cell["losses"] = sum(d < 0 for d in diffs)
    return out


DYNAMICS = ("a_row_norm", "b_col_norm", "global_change_norm")


def dynamics(runs: list[RunMetrics]) -> dict[str, dict[int, dict[str, float]]]:
    """Per cell and round, the mean over seeds and layers of the broadcast A's row norm, B's
    column norm, and the norm of the change of the global model that round: how fast each
    strategy's adapter moves the model."""
    sums: dict[str, dict[int, dict[str, list[float]]]] = {}
    for run in runs:
        for t, layers in run.diagnostics.items():
            cell = sums.setdefault(run.label, {}).setdefault(t, {k: [] for k in DYNAMICS})
            for d in layers:
                for k in DYNAMICS:
                    if d.get(k) is not None and math.isfinite(d[k]):
                        cell[k].append(float(d[k]))
    return {
        label: {
            t: {k: statistics.fmean(v) for k, v in cell.items() if v}
            for t, cell in sorted(by_round.items())
        }
        for label, by_round in sums.items()
    }


def _paired_md(table: dict[str, dict[str, Any]], reference: str) -> list[str]:
    if not table:
        return []
    lines = [
        f"Paired by seed against {reference} (final accuracy, this cell minus {reference}):",
        "",
        "| cell | by seed | mean | won / lost |",
        "|---|---|---|---|",
    ]
    for label, cell in sorted(table.items(), key=lambda kv: -kv[1]["mean"]):
        seeds = " ".join(f"{d:+.3f}" for _, d in sorted(cell["diffs"].items()))
        record = f"{cell['wins']} / {cell['losses']} of {len(cell['diffs'])}"
        lines.append(f"| {label} | {seeds} | {cell['mean']:+.3f} | {record} |")
    return [*lines, ""]


def _dynamics_md(table: dict[str, dict[int, dict[str, float]]]) -> list[str]:
    if not table:
        return []
    lines = [
        "Mean A row norm / B column norm / change of the global model, by round:",
        "",
        "| cell | " + " | ".join(f"round {t}" for t in next(iter(table.values()))) + " |",
        "|---|" + "---|" * len(next(iter(table.values()))),
    ]
    for label, by_round in table.items():
        cells = [
            " / ".join(f"{v[k]:.3f}" if k in v else "-" for k in DYNAMICS)
            for v in by_round.values()
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def report(
    setting: str,
    rows: list[Any],
    naive: float | None,
    goal: dict[str, Any],
    runs: list[RunMetrics] | None = None,
) -> str:
    lines = [
        f"## {setting}",
        "",
        f"mean naive-average error (FedIT): {'-' if naive is None else f'{naive:.1%}'}",
        "",
        to_markdown(rows),
    ]
    if runs:
        reference = "fedmomentum" if any(r.label == "fedmomentum" for r in runs) else None
        if reference is not None:
            lines += _paired_md(paired(runs, reference), reference)
        lines += _dynamics_md(dynamics(runs))
    if goal:
        lines += [
            f"default FedMomentum final {goal['fedmomentum_final']:.3f} vs best baseline "
            f"{goal['best_baseline']} {goal['best_baseline_final']:.3f}: "
            f"{'at or above' if goal['ends_at_or_above'] else 'below'}; reaches it after "
            f"{goal['rounds_to_best_baseline_final'] or 'never'} rounds "
            f"({'within' if goal['within_70_percent'] else 'not within'} 70%)",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..n-1 (default 3)")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--splits", default=",".join(SPLITS), help="FedMomentum factor splits")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a config field in every setting (scale down)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/convergence"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    overrides = parse_sets(args.set)
    strategies, seeds = args.strategies.split(","), list(range(args.seeds))
    splits = [s for s in args.splits.split(",") if s]
    summary: dict[str, Any] = {}
    parts = ["# Convergence", ""]
    for setting in args.settings.split(","):
        base = base_config(setting, args.rounds, overrides)
        runs: list[RunMetrics] = []
        for spec in sweeps(setting, base, strategies, seeds, splits):
            out = args.out / spec["name"]
            run_sweep(parse_sweep(spec), out, progress=not args.quiet)
            runs += _runs(spec, out)
        rows = leaderboard(runs)
        naive, goal = naive_error(runs), targets(rows, args.rounds)
        summary[setting] = {
            "naive_error": naive,
            "targets": goal,
            "leaderboard": [asdict(r) for r in rows],
            "paired_vs_default": paired(runs, "fedmomentum"),
            "dynamics": dynamics(runs),
        }
        parts.append(report(setting, rows, naive, goal, runs))
        print(parts[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "convergence.md").write_text("\n".join(parts))
    (args.out / "convergence.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
