"""Convergence of every strategy on the same config, seed and split.

    .venv/bin/python benchmarks/convergence.py [--config examples/demo.yaml] [--rounds N]
        [--strategies fedmomentum,fedit,...] [--target 0.6] [--out runs/convergence] [--json]

Prints a table of final accuracy and eval loss, the first round reaching --target accuracy,
and the summed wall seconds of the rounds per strategy (read back from each run's
metrics.jsonl). Each strategy runs in its own run directory under --out
(re-running resumes finished ones, so an interrupted benchmark loses nothing).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from backend.core.catalog import STRATEGIES
from backend.core.config import load_config
from workers.runner import run


def measure(config: Path, strategy: str, rounds: int | None, out: Path) -> dict[str, object]:
    cfg = load_config(config)
    fed = cfg.federation.model_copy(update={"rounds": rounds or cfg.federation.rounds})
    cfg = cfg.model_copy(
        update={"strategy": strategy, "name": f"bench-{strategy}", "federation": fed}
    )
    run(cfg, out / strategy, progress=False)  # resumes a finished or interrupted run
    records = [json.loads(line) for line in (out / strategy / "metrics.jsonl").open()]
    rounds = [r for r in records if r["kind"] == "round"]
    return {
        "strategy": strategy,
        "initial_accuracy": next(r["accuracy"] for r in records if r["kind"] == "eval"),
        "accuracy": [r["accuracy"] for r in rounds],
        "eval_loss": [r["eval_loss"] for r in rounds],
        "seconds": sum(r["round_seconds"] for r in rounds),  # the rounds' own wall time
    }


def first_round_at(accuracies: list[float], target: float) -> int | None:
    return next((i + 1 for i, a in enumerate(accuracies) if a >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=Path("examples/demo.yaml"))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--target", type=float, default=0.6, help="accuracy to reach")
    parser.add_argument("--out", type=Path, default=Path("runs/convergence"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for strategy in args.strategies.split(","):
        row = measure(args.config, strategy, args.rounds, args.out)
        row["rounds_to_target"] = first_round_at(row["accuracy"], args.target)  # type: ignore[arg-type]
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
    if not args.json:
        print(
            f"{'strategy':<12} {'acc@0':>6} {'final acc':>9} {'final loss':>10} "
            f"{'rounds->' + str(args.target):>12} {'seconds':>8}"
        )
        for r in rows:
            reach = r["rounds_to_target"] or "-"
            print(
                f"{r['strategy']:<12} {r['initial_accuracy']:>6.3f} {r['accuracy'][-1]:>9.3f} "
                f"{r['eval_loss'][-1]:>10.4f} {reach!s:>12} {r['seconds']:>8.0f}"
            )


if __name__ == "__main__":
    main()
