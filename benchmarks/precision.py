"""bf16 autocast against float32 local training: the same federated run in each precision.

    .venv/bin/python benchmarks/precision.py --device cuda [--config examples/demo.yaml]
        [--rounds 3] [--json]

The config runs in process (``workers.runner.run``) once with ``training.precision: fp32`` and
once with ``bf16`` (autocast of the forward pass; LoRA factors, gradients and AdamW stay
float32; evaluation is float32 in both), same seed, split and initial adapter. A one-round
fp32 run comes first, untimed, so that neither timed run pays the device's warm-up (CUDA
context, cuBLAS handles, kernel selection). Per precision: the median over rounds of the
clients' optimizer seconds (the part autocast changes) and of the round's wall seconds, and
the accuracy and eval loss after every round; then the speed-up of bf16's optimizer seconds
and the accuracy gap.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import the repo's code
    sys.path.insert(0, str(ROOT))

from backend.core.config import ExperimentConfig, load_config  # noqa: E402
from workers.runner import run  # noqa: E402


def with_precision(
    cfg: ExperimentConfig, precision: str, device: str, rounds: int
) -> ExperimentConfig:
    """The config in one precision on one device, for ``rounds`` rounds."""
    return cfg.model_copy(
        update={
            "device": device,
            "training": cfg.training.model_copy(update={"precision": precision}),
            "federation": cfg.federation.model_copy(update={"rounds": rounds}),
        }
    )


def measure(cfg: ExperimentConfig) -> dict[str, Any]:
    """Run the config in a fresh run directory; per-round figures and their medians."""
    with tempfile.TemporaryDirectory() as out:
        rounds = run(cfg, Path(out), progress=False)
    return {
        "precision": cfg.training.precision,
        "median_compute_seconds": statistics.median(float(r["compute_seconds"]) for r in rounds),
        "median_round_seconds": statistics.median(float(r["round_seconds"]) for r in rounds),
        "accuracy": [r["accuracy"] for r in rounds],
        "eval_loss": [r["eval_loss"] for r in rounds],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=ROOT / "examples" / "demo.yaml")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON object per precision")
    args = parser.parse_args(argv)
    if args.rounds <= 0:
        parser.error("--rounds must be positive")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    cfg = load_config(args.config)
    measure(with_precision(cfg, "fp32", args.device, 1))  # warm-up, discarded
    results = [measure(with_precision(cfg, p, args.device, args.rounds)) for p in ("fp32", "bf16")]
    fp32, bf16 = results
    for r in results:
        print(
            json.dumps(r)
            if args.json
            else f"{r['precision']}: optimizer {r['median_compute_seconds']:.3f} s/round, "
            f"round {r['median_round_seconds']:.3f} s, accuracy {r['accuracy']}, "
            f"eval loss {[round(x, 4) for x in r['eval_loss']]}"
        )
    speedup = fp32["median_compute_seconds"] / bf16["median_compute_seconds"]
    gap = bf16["accuracy"][-1] - fp32["accuracy"][-1]
    summary = {"bf16_optimizer_speedup": speedup, "final_accuracy_bf16_minus_fp32": gap}
    print(
        json.dumps(summary)
        if args.json
        else f"bf16 optimizer speed-up {speedup:.2f}x; final accuracy bf16 - fp32 = {gap:+.3f}"
    )


if __name__ == "__main__":
    main()
