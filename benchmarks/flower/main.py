"""Start the Flower side of ``benchmarks/vs_flower.py`` (never run by hand).

    benchmarks/.flower-venv/bin/python benchmarks/flower/main.py --job JOB.json --threads 2 \
        --out final.safetensors --ray-tmp DIR

Runs ``flwr.simulation.run_simulation`` with one virtual SuperNode per client and one Ray
actor: ``num_cpus`` of the actor equals the Ray cluster's, so clients train one after the
other, each with ``--threads`` torch threads, as the runner trains them in one process.
``run_simulation`` is Flower's Python entry to the same Simulation Engine that ``flwr run``
starts for a local-simulation federation (there through a SuperLink process and a packaged
app); this entry lets the benchmark hand the ServerApp its pipes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # this repository, for backend/, workers/ and benchmarks/
    sys.path.insert(0, str(ROOT))

from benchmarks.flower.protocol import Channel, die_with_parent, set_threads  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--job", type=Path, required=True, help="ExperimentConfig JSON file")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--out", required=True, help="where the final adapter is saved")
    parser.add_argument("--ray-tmp", required=True, help="Ray's session directory (removed after)")
    args = parser.parse_args()
    die_with_parent()
    channel = Channel()
    set_threads(args.threads)

    from flwr.simulation import run_simulation

    from backend.core.config import ExperimentConfig
    from benchmarks.flower import apps

    job = ExperimentConfig.model_validate_json(args.job.read_text())
    apps.SERVER = apps.Server(job=job, threads=args.threads, out=args.out, channel=channel)
    run_simulation(
        server_app=apps.server_app,
        client_app=apps.client_app,
        num_supernodes=job.federation.num_clients,
        backend_config={
            "client_resources": {"num_cpus": args.threads, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": args.threads,
                "num_gpus": 0,
                "_temp_dir": args.ray_tmp,
                "include_dashboard": False,
            },
        },
    )


if __name__ == "__main__":
    main()
