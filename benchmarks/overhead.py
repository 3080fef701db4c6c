"""Runner overhead: round wall time against pure client-training compute.

    .venv/bin/python benchmarks/overhead.py [--config examples/demo.yaml] [--rounds 2] [--json]

Per round: wall seconds, seconds inside the optimizer loops (pure training compute),
seconds of evaluation, and the rest (loading state into the model, writing uploads,
aggregation, committing the next state) as overhead, absolute and as a share of the round.
Evaluation is work the user asked for, so it is reported beside, not counted as overhead.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from backend.core.config import load_config
from workers.runner import run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=Path("examples/demo.yaml"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cfg = load_config(args.config)
    cfg = cfg.model_copy(
        update={"federation": cfg.federation.model_copy(update={"rounds": args.rounds})}
    )
    with tempfile.TemporaryDirectory() as out:
        summaries = run(cfg, Path(out), progress=False)
    for s in summaries:
        wall, compute, ev = s["round_seconds"], s["compute_seconds"], s["eval_seconds"]
        overhead = wall - compute - ev  # type: ignore[operator]
        row = {
            "round": s["round"],
            "round_seconds": wall,
            "compute_seconds": compute,
            "eval_seconds": ev,
            "aggregate_seconds": s["aggregate_seconds"],
            "overhead_seconds": overhead,
            "overhead_share": overhead / wall,  # type: ignore[operator]
        }
        print(
            json.dumps(row)
            if args.json
            else "  ".join(
                f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            )
        )


if __name__ == "__main__":
    main()
