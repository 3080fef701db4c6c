"""Per-layer diagnostics: norms of sums of low-rank and dense terms, subspace momentum.

Norms of factored sums use ||B A||_F = ||R_B R_A^T||_F (thin QR of B and A^T): no d_out x d_in
matrix and no squaring, so a relative error of 1e-7 is still resolved in float64.
"""

from __future__ import annotations

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
    if all(isinstance(x, LowRank) for _, x in live):
        B = torch.cat([x.B for _, x in live], dim=1)  # type: ignore[union-attr]
        A = torch.cat([c * x.A for c, x in live], dim=0)  # type: ignore[union-attr]
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
