"""Per-layer diagnostics: norms of sums of low-rank and dense terms, subspace momentum, factor
scales, and the rank advisor (the rank that would keep a share of the update's energy).

Norms of factored sums use ||B A||_F = ||R_B R_A^T||_F (thin QR of B and A^T): no d_out x d_in
matrix and no squaring, so a relative error of 1e-7 is still resolved in float64.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .lora import Delta, LowRank, to_dense


@dataclass(frozen=True)
class LayerDiagnostics:
    """What the dashboard plots for one layer and round (None: not defined for the strategy)."""

    singular_values: list[float] | None  # of M, descending, all min(K, d_out, d_in) of them
    kept_rank: int
    residual_energy: float | None  # ||M - s B'A'||^2 / ||M||^2: the part the adapter does not carry
    naive_error: float | None  # ||s B_bar A_bar - M|| / ||M||: what FedIT would lose
    exactness_error: float | None  # ||(W' + s B'A') - (W + M)|| / ||M||
    subspace_momentum: float | None  # ||U_r(t)^T U_r(t-1)||_F^2 / r
    a_row_norm: float | None = None  # mean row norm of the A clients start the next round from
    b_col_norm: float | None = None  # mean column norm of that B
    global_change_norm: float | None = None  # ||(W' + s B'A') - (W + s B A)||_F this round
    rank_for_energy: dict[str, int] | None = None  # ENERGY_LEVELS -> rank keeping that share
    kept_energy: float | None = None  # share of the energy in the first kept_rank directions


# Shares of the update's energy the rank advisor answers for (keys of ``rank_for_energy``).
ENERGY_LEVELS: tuple[str, ...] = ("0.9", "0.95", "0.99")

# Relative slack on the energy comparison: a spectrum that holds exactly 90% in its first k
# directions must answer k, not k + 1, after float rounding of the sums.
_ENERGY_RTOL = 1e-12


def rank_for_energy(
    singular_values: Sequence[float], levels: Sequence[str] = ENERGY_LEVELS
) -> dict[str, int]:
    """For each share p, the smallest k with sum_{j<k} S_j^2 >= p * sum_j S_j^2 (0: zero update).

    ``singular_values`` must be descending (as an SVD returns them).
    """
    energies = [float(x) ** 2 for x in singular_values]
    total = math.fsum(energies)
    out = {}
    for level in levels:
        p = float(level)
        if not 0.0 < p <= 1.0:
            raise ValueError(f"rank_for_energy: level must be in (0, 1], got {level!r}")
        out[level] = _smallest_rank(energies, p * total * (1.0 - _ENERGY_RTOL)) if total else 0
    return out


def _smallest_rank(energies: list[float], need: float) -> int:
    """The number of leading energies whose sum first reaches ``need`` (all of them at most)."""
    for k, running in enumerate(itertools.accumulate(energies), start=1):
        if running >= need:
            return k
    return len(energies)


def kept_energy(singular_values: Sequence[float], rank: int) -> float:
    """sum_{j<rank} S_j^2 / sum_j S_j^2: the share a rank-``rank`` adapter carries (1: zero update).

    A zero update loses nothing, so it counts as fully kept (and residual_energy is 0).
    """
    if rank < 0:
        raise ValueError(f"kept_energy: rank must be >= 0, got {rank}")
    energies = [float(x) ** 2 for x in singular_values]
    total = math.fsum(energies)
    return 1.0 if total == 0.0 else min(1.0, math.fsum(energies[:rank]) / total)


def mean_row_norm(X: Tensor) -> float:
    """Mean Euclidean norm of the rows of X (0 for no rows)."""
    return float(X.norm(dim=1).mean()) if X.shape[0] else 0.0


def lowrank_norm(low: LowRank) -> float:
    """||B @ A||_F without forming the product."""
    if low.rank == 0:
        return 0.0
    if low.rank >= min(low.B.shape[0], low.A.shape[1]):
        return float(torch.linalg.norm(low.dense()))
    _, R_B = torch.linalg.qr(low.B)  # (q, q)
    _, R_A = torch.linalg.qr(low.A.T)  # (q, q)
    return float(torch.linalg.norm(R_B @ R_A.T))


def norm_of_sum(terms: list[tuple[float, Delta]]) -> float:
    """||sum_j c_j X_j||_F, factored when every term is low-rank."""
    live = [(c, x) for c, x in terms if c != 0.0]
    if not live:
        return 0.0
    low = [(c, x) for c, x in live if isinstance(x, LowRank)]
    if len(low) == len(live):
        B = torch.cat([x.B for _, x in low], dim=1)
        A = torch.cat([c * x.A for c, x in low], dim=0)
        return lowrank_norm(LowRank(B=B, A=A))
    total = torch.stack([c * to_dense(x) for c, x in live]).sum(0)
    return float(torch.linalg.norm(total))


def relative(num: float, den: float) -> float:
    """num / den, 0 when both are 0 (an all-zero update loses nothing)."""
    return 0.0 if den == 0.0 else num / den


def subspace_momentum(U: Tensor, U_prev: Tensor | None) -> float | None:
    """||U^T U_prev||_F^2 / k: 1 when the kept directions persist, 0 when orthogonal."""
    if U_prev is None or U_prev.shape[0] != U.shape[0]:
        return None
    k = min(U.shape[1], U_prev.shape[1])
    if k == 0:
        return None
    overlap = U[:, :k].T @ U_prev[:, :k].to(U.dtype)  # (k, k)
    return min(1.0, float((overlap**2).sum()) / k)  # float32 bases can round above 1
