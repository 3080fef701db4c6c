"""Accuracy against epsilon: central differential privacy on the demo at several noise levels.

    .venv/bin/python benchmarks/privacy.py [--config examples/demo.yaml]
        [--strategies fedmomentum,fedit] [--noise 0.01,0.1,1.0] [--rounds N]
        [--local-steps N] [--lr LR] [--delta 1e-5] [--out runs/privacy] [--json]

Per strategy, first a run with privacy on but no noise and no clipping (sigma 0, clip 1e9:
the strategy with uniform client weights, the reference); its round-0 median update norm is
then the clipping norm C of the noised runs (clipping at the median, as DP-FedAvg does; a
norm read from the clients' data is a tuning step that is not itself private). Then one run
per noise multiplier. Prints accuracy after every round, the final eval loss, the epsilon at
--delta after the last round (Opacus's RDP accountant) and how many client updates were
clipped. Each run has its own directory under --out; re-running resumes finished ones.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
from pathlib import Path

from backend.core.config import ExperimentConfig, load_config
from workers.runner import run

NO_CLIP = 1e9


def variant(
    base: ExperimentConfig, strategy: str, sigma: float, clip: float, delta: float
) -> ExperimentConfig:
    """The base config with this strategy and central DP at (sigma, clip, delta)."""
    data = base.model_dump()
    data.update(name=f"privacy-{strategy}-{sigma:g}", strategy=strategy)
    data["privacy"] = {"mode": "central", "clip": clip, "noise_multiplier": sigma, "delta": delta}
    return ExperimentConfig.model_validate(data)


def _run(cfg_json: str, out: Path) -> None:
    run(ExperimentConfig.model_validate_json(cfg_json), out, progress=False)


def measure(cfg: ExperimentConfig, out: Path) -> dict[str, object]:
    # Each run in a fresh process: the runner caches loaded models per process, and a cached
    # classifier head keeps what the previous run trained into it.
    proc = multiprocessing.get_context("spawn").Process(
        target=_run, args=(cfg.model_dump_json(), out)
    )
    proc.start()  # resumes a finished or interrupted run
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{cfg.name}: the run exited with {proc.exitcode}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    rounds = [r for r in records if r["kind"] == "round"]
    return {
        "strategy": cfg.strategy,
        "noise_multiplier": cfg.privacy.noise_multiplier,
        "clip": cfg.privacy.clip,
        "epsilon": rounds[-1]["epsilon"],  # None: no noise
        "initial_accuracy": next(r["accuracy"] for r in records if r["kind"] == "eval"),
        "accuracy": [r["accuracy"] for r in rounds],
        "eval_loss": rounds[-1]["eval_loss"],
        "clipped": [r["clipped"] for r in rounds],
        "median_norm_round0": rounds[0]["update_norm_median"],
        "seconds": sum(r["round_seconds"] for r in rounds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=Path("examples/demo.yaml"))
    parser.add_argument("--strategies", default="fedmomentum,fedit")
    parser.add_argument("--noise", default="0.01,0.1,1.0", help="noise multipliers sigma")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--local-steps", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--out", type=Path, default=Path("runs/privacy"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    base = load_config(args.config)
    fed = base.federation.model_copy(update={"rounds": args.rounds or base.federation.rounds})
    train = base.training.model_copy(
        update={
            "local_steps": args.local_steps or base.training.local_steps,
            "lr": args.lr or base.training.lr,
        }
    )
    base = base.model_copy(update={"federation": fed, "training": train})
    rows = []
    for strategy in args.strategies.split(","):
        ref = measure(variant(base, strategy, 0.0, NO_CLIP, args.delta), args.out / strategy / "0")
        rows.append(ref)
        clip = float(ref["median_norm_round0"])  # type: ignore[arg-type]
        for sigma in (float(s) for s in args.noise.split(",") if s):
            cfg = variant(base, strategy, sigma, clip, args.delta)
            rows.append(measure(cfg, args.out / strategy / f"{sigma:g}"))
    if args.json:
        print(json.dumps(rows, indent=2))
    print("| strategy | sigma | clip C | epsilon | accuracy after rounds | eval loss | clipped |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        eps = "inf" if r["epsilon"] is None else f"{r['epsilon']:.3g}"
        accs = " ".join(f"{a:.2f}" for a in r["accuracy"])  # type: ignore[attr-defined]
        clipped = " ".join(str(c) for c in r["clipped"])  # type: ignore[attr-defined]
        print(
            f"| {r['strategy']} | {r['noise_multiplier']:g} | {r['clip']:.3g} | {eps} | "
            f"{r['initial_accuracy']:.2f} -> {accs} | {r['eval_loss']:.3f} | {clipped} |"
        )


if __name__ == "__main__":
    main()
