"""Aggregation kernel: exact SVD of M = sum_i p_i s_i B_i A_i, factored vs randomized vs dense.

    .venv/bin/python benchmarks/aggregation.py [--quick] [--json] [--dtype float64|float32]
        [--device cpu|cuda] [--threads N] [--shapes 4096x4096,...] [--dense-all] [--clients N]

One run, the same seeded inputs for every method: N = 10 clients (``--clients``) at rank
r = 16 (K = 16 N: 160 by default),
layer shapes 4096x4096 and 4096x11008 (Llama-7B-like), 576x576 and 576x192 (SmolLM2);
``--quick`` runs only the SmolLM2 shapes. Client factors look trained: A_i ~ N(0, 1/d_in),
B_i ~ N(0, 1e-4); p_i from seeded sample counts, s_i = alpha / r. The layer is built with
``workers.federated.exact_update`` and every method is one full ``exact_svd`` call with the
server's defaults (randomized: oversample 10, power_iters 2).

Per (method, shape):
- seconds: median over a few timed calls (5 on SmolLM2 shapes, 3 on Llama shapes, 1 for dense
  on Llama shapes); one untimed warm-up call comes first.
- peak_mb: extra memory the method needs on top of its inputs. Each measurement runs in a
  fresh subprocess, which first calls the method once on a small 320x320 layer so that the
  BLAS/LAPACK code and thread pool are already resident. On CPU the kernel's peak-RSS mark
  (VmHWM) is then reset once the inputs exist, and the growth of the mark over the resident
  size at that moment is reported (ru_maxrss growth where /proc/self/clear_refs is missing);
  it includes what the allocator holds, so it bounds live tensors from above. On CUDA:
  torch.cuda.max_memory_allocated over the allocation after the inputs.
- rel_error: ||S[:k] - S_ref[:k]|| / ||S_ref[:k]|| over the k = min(K, len) values the method
  returns (randomized: its top r + oversample). The reference is dense; dense is skipped above
  4096x4096 unless --dense-all, and there the factored values are the reference for randomized
  and factored's own rel_error is null.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import the repo's workers
    sys.path.insert(0, str(ROOT))

from workers.federated import LoraFactors, LowRank, exact_svd, exact_update  # noqa: E402
from workers.federated.strategies import Weighted  # noqa: E402

Shape = tuple[int, int]
LLAMA_SHAPES: list[Shape] = [(4096, 4096), (4096, 11008)]
SMOL_SHAPES: list[Shape] = [(576, 576), (576, 192)]
METHODS = ("factored", "randomized", "dense")
N_CLIENTS, RANK, ALPHA = 10, 16, 32.0
DENSE_MAX_NUMEL = 4096 * 4096  # dense skipped above this unless --dense-all
SEED = 0
PRIME_SHAPE: Shape = (320, 320)  # small, K < 320: pages in each method's code before the baseline


def shape_name(shape: Shape) -> str:
    return f"{shape[0]}x{shape[1]}"


def parse_shape(text: str) -> Shape:
    d_out, d_in = text.split("x")
    return int(d_out), int(d_in)


def make_layer(
    shape: Shape, dtype: torch.dtype, device: str, n_clients: int = N_CLIENTS
) -> LowRank:
    """The seeded layer: the clients' (B_i, A_i) stacked with p_i s_i folded into A."""
    d_out, d_in = shape
    gen = torch.Generator().manual_seed(SEED)
    counts = torch.randint(100, 1000, (n_clients,), generator=gen, dtype=torch.float64)
    weights = (counts / counts.sum()).tolist()
    clients = []
    for i, p in enumerate(weights):
        A = torch.randn(RANK, d_in, generator=gen, dtype=torch.float64) / d_in**0.5
        B = torch.randn(d_out, RANK, generator=gen, dtype=torch.float64) * 0.01
        f = LoraFactors(A=A.to(device, dtype), B=B.to(device, dtype), alpha=ALPHA)
        clients.append(Weighted(client_id=f"client{i}", p=p, f=f))
    return exact_update(clients)


def repeats_for(method: str, shape: Shape) -> int:
    if max(shape) < 4096:
        return 5
    return 1 if method == "dense" else 3


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class PeakMemory:
    """Extra memory over the moment of construction: CUDA allocations or CPU peak RSS."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        elif self._reset_hwm():
            self.base = self._status_kb("VmRSS") * 1024
        else:
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    @staticmethod
    def _reset_hwm() -> bool:
        """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0)."""
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    @staticmethod
    def _status_kb(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def extra_mb(self) -> float:
        if self.cuda:
            peak = torch.cuda.max_memory_allocated()
        elif Path("/proc/self/status").exists():
            peak = self._status_kb("VmHWM") * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(peak - self.base, 0) / 2**20


def time_calls(call: Callable[[], Any], repeats: int, device: str) -> float:
    """Median seconds of ``repeats`` calls after one untimed warm-up call."""
    call()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        call()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(
    method: str, shape: Shape, dtype: torch.dtype, device: str, n_clients: int = N_CLIENTS
) -> dict[str, Any]:
    """One (method, shape) in this process: median seconds, extra MB, singular values."""
    exact_svd(make_layer(PRIME_SHAPE, dtype, device), method, rank=RANK)  # load code, threads
    torch.manual_seed(SEED)  # svd_lowrank's random test matrix
    low = make_layer(shape, dtype, device, n_clients)
    _sync(device)
    memory = PeakMemory(device)  # baseline: inputs and library code in memory, nothing else

    def call() -> Any:
        return exact_svd(low, method, rank=RANK)  # the server's defaults otherwise

    seconds = time_calls(call, repeats_for(method, shape), device)
    peak_mb = memory.extra_mb()
    S = exact_svd(low, method, rank=RANK).S.double().cpu().tolist()
    return {"seconds": seconds, "peak_mb": peak_mb, "S": S, "threads": torch.get_num_threads()}


def measure_in_subprocess(method: str, shape: Shape, args: argparse.Namespace) -> dict[str, Any]:
    """Run ``measure`` in a fresh interpreter so no other measurement's memory is counted."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method, shape_name(shape)]
    cmd += ["--dtype", args.dtype, "--device", args.device, "--clients", str(args.clients)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


def rel_error(S: list[float], ref: list[float]) -> float:
    k = min(len(S), len(ref))
    got, want = torch.tensor(S[:k], dtype=torch.float64), torch.tensor(ref[:k], dtype=torch.float64)
    return float((got - want).norm() / want.norm())


def methods_for(shape: Shape, dense_all: bool) -> list[str]:
    skip_dense = shape[0] * shape[1] > DENSE_MAX_NUMEL and not dense_all
    return [m for m in METHODS if not (m == "dense" and skip_dense)]


def rows_for_shape(shape: Shape, args: argparse.Namespace) -> tuple[list[dict[str, Any]], int]:
    """Measure every method on one shape; rows in the JSON schema, plus the thread count."""
    results = {m: measure_in_subprocess(m, shape, args) for m in methods_for(shape, args.dense_all)}
    ref_method = "dense" if "dense" in results else "factored"
    ref = results[ref_method]["S"]
    rows = []
    for method, res in results.items():
        err = None if method == ref_method == "factored" else rel_error(res["S"], ref)
        rows.append(
            {
                "method": method,
                "shape": shape_name(shape),
                "n_clients": args.clients,
                "rank": RANK,
                "seconds": res["seconds"],
                "rel_error": err,
                "peak_mb": res["peak_mb"],
            }
        )
    return rows, results["factored"]["threads"]


def speedups(rows: list[dict[str, Any]]) -> str:
    by_method = {r["method"]: r["seconds"] for r in rows}
    parts = [
        f"{by_method[m] / by_method['factored']:.1f}x over {m}"
        for m in ("randomized", "dense")
        if m in by_method
    ]
    return "factored speedup: " + ", ".join(parts)


def print_table(
    rows_by_shape: list[list[dict[str, Any]]], args: argparse.Namespace, threads: int
) -> None:
    print(
        f"exact_svd per layer: N={args.clients} clients, r={RANK} (K={args.clients * RANK}), "
        f"dtype={args.dtype}, device={args.device}, torch threads={threads}"
    )
    header = f"{'shape':>11} {'method':>10} {'seconds':>11} {'rel_error':>10} {'peak_MB':>9}"
    print(header)
    print("-" * len(header))
    for rows in rows_by_shape:
        for r in rows:
            err = "null" if r["rel_error"] is None else f"{r['rel_error']:.2e}"
            print(
                f"{r['shape']:>11} {r['method']:>10} {r['seconds']:>11.5f} {err:>10} "
                f"{r['peak_mb']:>9.1f}"
            )
        print(f"{'':>11} {speedups(rows)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="only the SmolLM2 shapes")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--shapes",
        type=lambda t: [parse_shape(x) for x in t.split(",")],
        help="comma-separated d_outxd_in list instead of the default set, e.g. 4096x4096",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--dense-all", action="store_true", help="dense above 4096x4096 too")
    parser.add_argument("--clients", type=int, default=N_CLIENTS, help="clients N (default 10)")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.clients <= 0:
        parser.error("--clients must be positive")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:  # hidden: one measurement, result as one JSON line on stdout
        method, shape = args.worker
        dtype = getattr(torch, args.dtype)
        res = measure(method, parse_shape(shape), dtype, args.device, args.clients)
        print(json.dumps(res))
        return
    shapes = args.shapes or (SMOL_SHAPES if args.quick else LLAMA_SHAPES + SMOL_SHAPES)
    all_rows, threads = [], 0
    for shape in shapes:
        rows, threads = rows_for_shape(shape, args)
        all_rows.append(rows)
        if args.json:
            for row in rows:
                print(json.dumps(row), flush=True)
    if not args.json:
        print_table(all_rows, args, threads)


if __name__ == "__main__":
    main()
