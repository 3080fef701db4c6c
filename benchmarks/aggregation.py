"""Aggregation kernel: exact SVD of M = sum_i p_i s_i B_i A_i by factored, randomized and dense.

    .venv/bin/python benchmarks/aggregation.py [--quick] [--json] [--dtype float64|float32]
        [--device cpu|cuda] [--dense-all]

Same seeded inputs for every method: N = 10 clients, r = 16 (K = 160), shapes 4096x4096 and
4096x11008 (Llama-7B-like) and 576x576, 576x192 (SmolLM2). Per method and shape: median
seconds of ``exact_svd`` (warm-up excluded), peak memory, and the relative error of the
singular values against the dense reference, ||S[:k] - S_ref[:k]|| / ||S_ref[:k]||.
Dense is skipped above 4096x4096 unless --dense-all; there the factored values are the
reference for randomized and factored's own error is null.

Peak memory: each measurement runs in a fresh process; on CPU it is the growth of the
process's peak RSS over what the inputs already took, on CUDA torch's peak allocation.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import time

import torch

SHAPES = [(4096, 4096), (4096, 11008), (576, 576), (576, 192)]
QUICK = [(576, 576), (576, 192)]
METHODS = ("factored", "randomized", "dense")
N_CLIENTS, RANK = 10, 16


def inputs(d_out: int, d_in: int, dtype: torch.dtype, device: str):  # noqa: ANN201 - LowRank
    """Trained-looking client factors, seeded: A ~ N(0, 1/d_in), B ~ N(0, 1e-4)."""
    from workers.federated import LoraFactors
    from workers.federated.strategies import Weighted, exact_update

    gen = torch.Generator().manual_seed(d_out * 100_003 + d_in)
    counts = torch.randint(50, 500, (N_CLIENTS,), generator=gen).tolist()
    clients = []
    for i, n in enumerate(counts):
        A = torch.randn(RANK, d_in, generator=gen, dtype=dtype) / d_in**0.5
        B = torch.randn(d_out, RANK, generator=gen, dtype=dtype) * 0.01
        f = LoraFactors(A=A.to(device), B=B.to(device), alpha=2.0 * RANK)
        clients.append(Weighted(str(i), n / sum(counts), f))
    return exact_update(clients)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(
    method: str, shape: tuple[int, int], dtype_name: str, device: str, repeats: int
) -> dict:
    """One (method, shape) in this process: seconds, peak MB and the singular values."""
    from workers.federated import exact_svd

    low = inputs(*shape, getattr(torch, dtype_name), device)
    _sync(device)
    if device.startswith("cuda"):  # baseline: the inputs only
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run = lambda: exact_svd(low, method, rank=RANK)  # noqa: E731 - defaults as the server uses them
    run()  # warm-up (kernels, thread pools); not timed, but its memory counts
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        svd = run()
        _sync(device)
        times.append(time.perf_counter() - start)
    if device.startswith("cuda"):
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:  # ru_maxrss: the process's peak, in KiB on Linux
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    S = svd.S.double().cpu().tolist()
    return {"seconds": statistics.median(times), "peak_mb": peak_mb, "S": S}


def _measure_fresh(args: tuple) -> dict:
    return measure(*args)


def peak_in_fresh_process(method, shape, dtype_name, device, repeats) -> dict:  # noqa: ANN001
    """Run ``measure`` in a new process so one method's peak never hides another's."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure_fresh, ((method, shape, dtype_name, device, repeats),))


def rel_error(S: list[float], ref: list[float] | None) -> float | None:
    if ref is None:
        return None
    k = min(len(S), len(ref))
    a, b = torch.tensor(S[:k]), torch.tensor(ref[:k])
    return float((a - b).norm() / b.norm())


def run_shape(shape: tuple[int, int], args: argparse.Namespace) -> list[dict]:
    big = shape[0] * shape[1] > 4096 * 4096
    methods = [m for m in METHODS if m != "dense" or not big or args.dense_all]
    results = {}
    for method in methods:
        repeats = 1 if method == "dense" and shape[0] >= 4096 else (3 if shape[0] >= 4096 else 7)
        results[method] = peak_in_fresh_process(method, shape, args.dtype, args.device, repeats)
    reference = results.get("dense", results["factored"])["S"]
    rows = []
    for method, r in results.items():
        own_reference = "dense" not in results and method == "factored"
        rows.append(
            {
                "method": method,
                "shape": f"{shape[0]}x{shape[1]}",
                "n_clients": N_CLIENTS,
                "rank": RANK,
                "seconds": r["seconds"],
                "rel_error": None if own_reference else rel_error(r["S"], reference),
                "peak_mb": r["peak_mb"],
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    cols = ("shape", "method", "seconds", "rel_error", "peak_MB", "x fact")
    print(" ".join(f"{c:>{w}}" for c, w in zip(cols, (11, 10, 10, 10, 9, 8), strict=True)))
    for shape in dict.fromkeys(r["shape"] for r in rows):
        group = [r for r in rows if r["shape"] == shape]
        fact = next(r["seconds"] for r in group if r["method"] == "factored")
        for r in group:
            err = "-" if r["rel_error"] is None else f"{r['rel_error']:.1e}"
            print(
                f"{shape:>11} {r['method']:>10} {r['seconds']:>10.4f} {err:>10} "
                f"{r['peak_mb']:>9.1f} {r['seconds'] / fact:>7.1f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="only the SmolLM2 shapes")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dense-all", action="store_true", help="dense also above 4096x4096")
    args = parser.parse_args()
    rows = []
    for shape in QUICK if args.quick else SHAPES:
        for row in run_shape(shape, args):
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    if not args.json:
        print_table(rows)


if __name__ == "__main__":
    main()
