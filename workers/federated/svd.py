"""Thin SVD of M = B_cat @ A_cat, three ways, and its split into a rank-r LoRA + residual.

``factored`` (default) never forms M: QR of the stacked factors, then the SVD of a K x K core,
O((d_out + d_in) K^2 + K^3). ``randomized`` (the paper's) and ``dense`` (the reference) form M.
All of it is pure tensor math: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .lora import Delta, LowRank

SvdMethod = Literal["factored", "randomized", "dense"]
SVD_METHODS: tuple[str, ...] = ("factored", "randomized", "dense")
FactorSplit = Literal["sqrt", "b", "fresh"]
FACTOR_SPLITS: tuple[str, ...] = ("sqrt", "b", "fresh")


@dataclass(frozen=True)
class Svd:
    """M ~= U diag(S) V^T, S descending. ``complete``: the tail is exact, M = U S V^T."""

    U: Tensor  # (d_out, q)
    S: Tensor  # (q,)
    V: Tensor  # (d_in, q)
    complete: bool


def factored_svd(low: LowRank) -> Svd:
    """Exact thin SVD of B @ A from R factors of B and A^T and the SVD of the small core.

    With B = Q_B R_B and A^T = Q_A R_A, M = Q_B (R_B R_A^T) Q_A^T, so the SVD of the K x K
    core gives M's. R comes from a Cholesky factor of the K x K Gram matrix when that is safe
    (float64, well conditioned): two BLAS-3 products instead of forming Q, about twice as
    fast; then U = B R_B^-1 U_c, and U S V^T = B A holds exactly whatever R's rounding.
    Otherwise (rank-deficient stacks such as round 0 with all B = 0) Householder QR.
    """
    R_B, R_A = _gram_r(low.B), _gram_r(low.A.T)
    if R_B is None or R_A is None:
        return _householder_svd(low)
    U_c, S, V_cT = torch.linalg.svd(R_B @ R_A.T, full_matrices=False)  # (K, K) core
    U = low.B @ torch.linalg.solve_triangular(R_B, U_c, upper=True)  # (d_out, K)
    V = low.A.T @ torch.linalg.solve_triangular(R_A, V_cT.T, upper=True)  # (d_in, K)
    return Svd(U=U, S=S, V=V, complete=True)


# Largest condition number of a stacked factor for the Gram path: its Gram squares it, and
# 1e4^2 * float64 eps keeps singular values well inside 1e-6 of the Householder ones.
_GRAM_MAX_COND = 1e4


def _gram_r(X: Tensor) -> Tensor | None:
    """Upper-triangular R with X^T X = R^T R, or None where Householder QR must be used."""
    if X.dtype != torch.float64 or X.shape[0] < X.shape[1]:
        return None
    L, info = torch.linalg.cholesky_ex(X.T @ X)  # (K, K), lower
    if int(info) != 0:
        return None
    d = torch.diagonal(L)
    if float(d.min()) <= float(d.max()) / _GRAM_MAX_COND:
        return None
    R: Tensor = L.T
    return R


def _householder_svd(low: LowRank) -> Svd:
    """The same from Householder QR: any input, rank-deficient ones included."""
    Q_B, R_B = torch.linalg.qr(low.B)  # (d_out, k1), (k1, K)
    Q_A, R_A = torch.linalg.qr(low.A.T)  # (d_in, k2), (k2, K)
    core = R_B @ R_A.T  # (k1, k2): M = Q_B core Q_A^T
    U_c, S, V_cT = torch.linalg.svd(core, full_matrices=False)
    return Svd(U=Q_B @ U_c, S=S, V=Q_A @ V_cT.T, complete=True)


def dense_svd(low: LowRank) -> Svd:
    """Reference: form M and take its full thin SVD."""
    U, S, VT = torch.linalg.svd(low.dense(), full_matrices=False)
    return Svd(U=U, S=S, V=VT.T, complete=True)


def randomized_svd(low: LowRank, rank: int, oversample: int, power_iters: int) -> Svd:
    """torch.svd_lowrank on the dense M: top rank + oversample directions only."""
    M = low.dense()  # (d_out, d_in)
    q = min(rank + oversample, *M.shape)
    U, S, V = torch.svd_lowrank(M, q=q, niter=power_iters)
    return Svd(U=U, S=S, V=V, complete=False)


def exact_svd(
    low: LowRank,
    method: SvdMethod = "factored",
    *,
    rank: int,
    oversample: int = 10,
    power_iters: int = 2,
) -> Svd:
    """SVD of M = low.B @ low.A by the chosen method.

    The factored path falls back to dense when K >= min(d_out, d_in): then the "small"
    core is no smaller than M and forming M is the cheaper way.
    """
    d_out, d_in = low.B.shape[0], low.A.shape[1]
    if method == "factored":
        return dense_svd(low) if low.rank >= min(d_out, d_in) else factored_svd(low)
    if method == "dense":
        return dense_svd(low)
    if method == "randomized":
        return randomized_svd(low, rank, oversample, power_iters)
    raise ValueError(f"svd: unknown method {method!r}; allowed: {', '.join(SVD_METHODS)}")


# Row norm of a fresh PEFT lora_A row. PEFT draws lora_A with kaiming_uniform(a=sqrt(5)): gain
# sqrt(2 / (1 + a^2)) = 1/sqrt(3), bound sqrt(3) * gain / sqrt(fan_in) = 1/sqrt(d_in), so the
# entries are U(-1/sqrt(d_in), 1/sqrt(d_in)) with variance 1 / (3 d_in), and a row of d_in of
# them has squared norm 1/3 whatever d_in. Used by the ``fresh`` split and to revive directions
# whose singular value is zero.
FRESH_A_ROW_NORM = 1.0 / math.sqrt(3.0)


def _complete_basis(V: Tensor, n: int) -> Tensor:
    """n orthonormal columns: V's own, then deterministic ones orthogonal to them."""
    if V.shape[1] >= n:
        return V[:, :n]
    gen = torch.Generator().manual_seed(0)
    extra = torch.randn(V.shape[0], n - V.shape[1], generator=gen, dtype=V.dtype)
    extra = extra - V @ (V.T @ extra)  # project out V
    Q, _ = torch.linalg.qr(extra)
    return torch.cat([V, Q], dim=1)


def split_top_r(svd: Svd, r: int, scaling: float, split: FactorSplit) -> tuple[Tensor, Tensor, int]:
    """Top-r directions as LoRA factors (B (d_out, r), A (r, d_in)) with s B A = U_r S_r V_r^T.

    ``sqrt`` puts (S/s)^(1/2) in each factor (same scale), ``b`` puts all of S in B (A's rows
    orthonormal), ``fresh`` gives A's rows the norm c of a fresh LoRA's (A = c V_r^T,
    B = U_r S_r / (s c)), so AdamW's roughly fixed step per entry moves the product as it does
    from a fresh LoRA. All three have the same product U_r S_r V_r^T.
    A kept direction with a (numerically) zero singular value would have zero rows in both
    factors and so zero gradient forever; it gets B = 0 and a fresh unit-scale A row
    instead (its product is zero, so the model is unchanged). Returns (B, A, n_live).
    """
    if split not in FACTOR_SPLITS:
        raise ValueError(f"factor_split: unknown {split!r}; allowed: {', '.join(FACTOR_SPLITS)}")
    S = torch.zeros(r, dtype=svd.S.dtype)
    k = min(r, svd.S.shape[0])
    S[:k] = svd.S[:k]
    s_max = float(svd.S[0]) if svd.S.numel() else 0.0
    tol = max(svd.U.shape[0], svd.V.shape[0]) * torch.finfo(S.dtype).eps * s_max
    live = int((S > tol).sum())  # S is descending, so these are the leading ones
    U = _complete_basis(svd.U, r)  # (d_out, r)
    V = _complete_basis(svd.V, r)  # (d_in, r)
    if split == "sqrt":
        b_scale = torch.sqrt(S / scaling)  # (r,)
        a_scale = torch.sqrt(S / scaling)
    elif split == "b":
        b_scale, a_scale = S / scaling, torch.ones_like(S)
    else:
        b_scale = S / (scaling * FRESH_A_ROW_NORM)
        a_scale = torch.full_like(S, FRESH_A_ROW_NORM)
    a_scale[live:] = FRESH_A_ROW_NORM
    b_scale[live:] = 0.0
    B = U * b_scale  # (d_out, r)
    A = (V * a_scale).T  # (r, d_in)
    return B, A, live


def residual_after_split(
    svd: Svd, low: LowRank, B: Tensor, A: Tensor, scaling: float, n_live: int
) -> Delta:
    """R = M - s B A, the part of M the new adapter does not carry.

    From a complete SVD this is the tail U[:, n:] S[n:] V[:, n:]^T (rank <= K - r), kept
    factored; from a partial (randomized) SVD it is formed densely from the factors sent.
    """
    if svd.complete:
        tail = slice(n_live, None)
        return LowRank(B=svd.U[:, tail] * svd.S[tail], A=svd.V[:, tail].T)
    return low.dense() - scaling * (B @ A)
