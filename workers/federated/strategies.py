"""The seven aggregation strategies behind one interface.

A strategy turns the clients' LoRA factors of one layer into the next global adapter per
rank group and, for strategies that change the backbone, a residual to merge into it.
Diagnostics are computed once, in the base class, for every strategy alike.

Rank groups: clients of equal rank share a backbone and an adapter. With heterogeneous
ranks (flora, flexlora, fedmomentum) each group gets its own truncation; for fedmomentum
each group's new model is still exactly the average of the client models (see _group_target).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from .diagnostics import (
    LayerDiagnostics,
    kept_energy,
    mean_row_norm,
    norm_of_sum,
    rank_for_energy,
    relative,
    subspace_momentum,
)
from .lora import Delta, LoraFactors, LowRank, cheaper_form, lora_scaling, stack_lowrank, to_dense
from .svd import (
    FACTOR_SPLITS,
    SVD_METHODS,
    FactorSplit,
    Svd,
    SvdMethod,
    exact_svd,
    residual_after_split,
    split_top_r,
)


@dataclass(frozen=True)
class ClientUpdate:
    """One client's upload: its LoRA factors per layer and its example count."""

    client_id: str
    n_examples: int
    layers: Mapping[str, LoraFactors]


@dataclass(frozen=True)
class Weighted:
    """One client's factors for one layer with its weight p_i."""

    client_id: str
    p: float
    f: LoraFactors


@dataclass(frozen=True)
class Perturbation:
    """What central differential privacy adds to one layer's aggregate (built by
    ``workers.federated.privacy``): ``M`` is added to the exact update M (clipping
    correction and Gaussian noise; dense or factored), ``means`` to the weighted factor
    means ("A", "B"). Every strategy then runs unchanged on the perturbed aggregate."""

    M: Delta | None = None
    means: Mapping[str, Tensor] = field(default_factory=dict)


class _Perturbed(tuple[Weighted, ...]):
    """One layer's weighted clients carrying the round's Perturbation: ``exact_update``,
    ``_group_target`` and ``_mean`` add it, so no strategy needs to know about it."""

    perturbation: Perturbation

    def __new__(cls, clients: Sequence[Weighted], perturbation: Perturbation) -> _Perturbed:
        obj = super().__new__(cls, clients)
        obj.perturbation = perturbation
        return obj


@dataclass(frozen=True)
class LayerState:
    """Server state of one layer between rounds."""

    ranks: frozenset[int]  # rank groups of the federation
    adapters: Mapping[int, LoraFactors] = field(default_factory=dict)  # last broadcast per group
    basis: Tensor | None = None  # top-r left singular vectors of last round's M
    pending: Mapping[int, Delta] = field(default_factory=dict)  # unmerged residual (merge_every)


@dataclass(frozen=True)
class LayerRound:
    """One layer's aggregation result."""

    state: LayerState  # next state: the adapters to broadcast
    residuals: Mapping[int, Delta]  # merge into each rank group's backbone now
    diagnostics: LayerDiagnostics


@dataclass(frozen=True)
class Proposal:
    """What a strategy computes; the base class adds diagnostics and bookkeeping."""

    adapters: dict[int, LoraFactors]
    residuals: dict[int, Delta]
    targets: dict[int, LowRank] | None = None  # exact new update per group (default M)
    svd: Svd | None = None  # SVD of M when the strategy computed a complete one
    pending: dict[int, Delta] = field(default_factory=dict)


@dataclass(frozen=True)
class AggregationOptions:
    """Server-side options; validated on construction."""

    svd: SvdMethod = "factored"
    oversample: int = 10
    power_iters: int = 2
    merge_every: int = 1
    factor_split: FactorSplit = "b"  # as the config's default
    dtype: torch.dtype = torch.float64  # server math; adapters are sent as float32

    def __post_init__(self) -> None:
        if self.svd not in SVD_METHODS:
            raise ValueError(f"svd: unknown {self.svd!r}; allowed: {', '.join(SVD_METHODS)}")
        if self.factor_split not in FACTOR_SPLITS:
            raise ValueError(
                f"factor_split: unknown {self.factor_split!r}; allowed: {', '.join(FACTOR_SPLITS)}"
            )
        for name in ("oversample", "power_iters"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.merge_every < 1:
            raise ValueError(f"merge_every: must be >= 1, got {self.merge_every}")


def _fp32(f: LoraFactors, A: Tensor, B: Tensor) -> LoraFactors:
    return f.with_factors(A=A.to(torch.float32).contiguous(), B=B.to(torch.float32).contiguous())


def _mean(clients: Sequence[Weighted], which: str) -> Tensor:
    total: Tensor = torch.stack([c.p * getattr(c.f, which) for c in clients]).sum(0)
    if isinstance(clients, _Perturbed) and which in clients.perturbation.means:
        total = total + clients.perturbation.means[which]
    return total


def exact_update(clients: Sequence[Weighted]) -> LowRank:
    """M = sum_i p_i s_i B_i A_i, factored: B_cat (d_out, K), A_cat (K, d_in)."""
    return _perturbed(stack_lowrank([(c.p * c.f.scaling, c.f.B, c.f.A) for c in clients]), clients)


def _perturbed(M: LowRank, clients: Sequence[Weighted]) -> LowRank:
    """M plus the clients' Perturbation.M, still one LowRank (a dense term as I @ D or D @ I)."""
    extra = clients.perturbation.M if isinstance(clients, _Perturbed) else None
    if extra is None:
        return M
    if not isinstance(extra, LowRank):
        d_out, d_in = extra.shape
        eye = torch.eye(min(d_out, d_in), dtype=extra.dtype)
        extra = LowRank(B=eye, A=extra) if d_out <= d_in else LowRank(B=extra, A=eye)
    return LowRank(B=torch.cat([M.B, extra.B], 1), A=torch.cat([M.A, extra.A], 0))


class Strategy(ABC):
    """Aggregation of one layer; the round loop over layers is ``aggregate_round``."""

    name: ClassVar[str]
    trains: ClassVar[tuple[str, ...]] = ("A", "B")
    uploads: ClassVar[tuple[str, ...]] = ("A", "B")
    downloads: ClassVar[tuple[str, ...]] = ("A", "B")
    changes_backbone: ClassVar[bool] = False
    reinit_lora: ClassVar[bool] = False  # clients start every round from a fresh LoRA
    personalised: ClassVar[bool] = False  # no single global model: evaluate per client
    heterogeneous_ranks: ClassVar[bool] = False

    def __init__(self, options: AggregationOptions | None = None) -> None:
        self.options = options or AggregationOptions()

    @abstractmethod
    def propose(
        self, round_num: int, layer: str, clients: Sequence[Weighted], state: LayerState
    ) -> Proposal:
        """Next adapters and residuals per rank group from the weighted client factors."""

    def _svd(self, low: LowRank, rank: int) -> Svd:
        o = self.options
        return exact_svd(low, o.svd, rank=rank, oversample=o.oversample, power_iters=o.power_iters)

    def aggregate_layer(
        self,
        round_num: int,
        layer: str,
        clients: Sequence[Weighted],
        state: LayerState,
        perturbation: Perturbation | None = None,
    ) -> LayerRound:
        """Run the strategy on one layer, in the server dtype, and record diagnostics;
        ``perturbation``: what central DP adds to this layer's aggregate (None: nothing)."""
        dt = self.options.dtype
        clients = [
            Weighted(c.client_id, c.p, c.f.with_factors(A=c.f.A.to(dt), B=c.f.B.to(dt)))
            for c in clients
        ]
        if perturbation is not None:
            clients = _Perturbed(clients, _perturbation_in(perturbation, dt))
        proposal = self.propose(round_num, layer, clients, state)
        adapters = {k: _fp32(f, f.A, f.B) for k, f in proposal.adapters.items()}
        residuals = {k: _as_fp32(cheaper_form(r)) for k, r in proposal.residuals.items()}
        kept = max(state.ranks)
        diag, basis = self._diagnostics(clients, state, proposal, adapters, residuals, kept)
        next_state = LayerState(
            ranks=state.ranks, adapters=adapters, basis=basis, pending=proposal.pending
        )
        return LayerRound(state=next_state, residuals=residuals, diagnostics=diag)

    def _diagnostics(
        self,
        clients: Sequence[Weighted],
        state: LayerState,
        proposal: Proposal,
        adapters: Mapping[int, LoraFactors],
        residuals: Mapping[int, Delta],
        kept: int,
    ) -> tuple[LayerDiagnostics, Tensor | None]:
        adapter = adapters.get(kept)  # None: clients start from a fresh LoRA (flora)
        a_norm = None if adapter is None else mean_row_norm(adapter.A)
        if "B" not in self.uploads:  # fedsa: the server never sees B, M is unknown
            return LayerDiagnostics(None, kept, None, None, None, None, a_row_norm=a_norm), None
        M = exact_update(clients)
        svd = proposal.svd or exact_svd(M, "factored", rank=kept)
        U_r = svd.U[:, :kept]
        targets = proposal.targets or {k: M for k in state.ranks}
        exactness, energy = 0.0, None
        for k, target in targets.items():
            t_norm = norm_of_sum([(1.0, target)])
            carried = _carried(adapters.get(k), target.B.dtype)
            merged = [(1.0, residuals[k])] if k in residuals else []
            pend = [(-1.0, p) for p in _as_list(state.pending.get(k))]
            err = norm_of_sum([*merged, *carried, (-1.0, target), *pend])
            exactness = max(exactness, relative(err, t_norm))
            if k == kept:
                energy = relative(norm_of_sum([(1.0, target), *_neg(carried)]), t_norm) ** 2
        spectrum = [float(s) for s in svd.S]
        return (
            LayerDiagnostics(
                singular_values=spectrum,
                kept_rank=kept,
                residual_energy=energy,
                naive_error=_naive_error(clients, M),
                exactness_error=exactness,
                subspace_momentum=subspace_momentum(U_r, state.basis),
                a_row_norm=a_norm,
                b_col_norm=None if adapter is None else mean_row_norm(adapter.B.T),
                global_change_norm=_global_change_norm(state, adapters, residuals, kept, M.B.dtype),
                rank_for_energy=rank_for_energy(spectrum),
                kept_energy=kept_energy(spectrum, kept),
            ),
            U_r.to(torch.float32),
        )

    def download_numel(self, adapter: LoraFactors | None, residual: Delta | None) -> int:
        """Numbers one client of a rank group downloads for one layer."""
        n = 0 if adapter is None else sum(getattr(adapter, w).numel() for w in self.downloads)
        return n + (0 if residual is None else residual.numel())

    def upload_numel(self, f: LoraFactors) -> int:
        """Numbers one client uploads for one layer."""
        return sum(getattr(f, w).numel() for w in self.uploads)


def _perturbation_in(p: Perturbation, dtype: torch.dtype) -> Perturbation:
    M = p.M
    if isinstance(M, LowRank):
        M = LowRank(B=M.B.to(dtype), A=M.A.to(dtype))
    elif M is not None:
        M = M.to(dtype)
    return Perturbation(M=M, means={k: v.to(dtype) for k, v in p.means.items()})


def _as_fp32(delta: Delta) -> Delta:
    if isinstance(delta, LowRank):
        return LowRank(B=delta.B.to(torch.float32), A=delta.A.to(torch.float32))
    return delta.to(torch.float32)


def _as_list(delta: Delta | None) -> list[Delta]:
    return [] if delta is None else [delta]


def _neg(terms: list[tuple[float, Delta]]) -> list[tuple[float, Delta]]:
    return [(-c, x) for c, x in terms]


def _carried(f: LoraFactors | None, dtype: torch.dtype) -> list[tuple[float, Delta]]:
    """s B A of the adapter as sent (float32 factors, evaluated in the server dtype)."""
    if f is None:
        return []
    return [(f.scaling, LowRank(B=f.B.to(dtype), A=f.A.to(dtype)))]


def _global_change_norm(
    state: LayerState,
    adapters: Mapping[int, LoraFactors],
    residuals: Mapping[int, Delta],
    k: int,
    dtype: torch.dtype,
) -> float:
    """||(W' + s B'A') - (W + s B A)||_F of rank group k: merged residual, new minus old product.

    Factored (QR of the stacked factors, rank <= K + 2r) unless the residual travels dense.
    """
    merged = [(1.0, residuals[k])] if k in residuals else []
    new = _carried(adapters.get(k), dtype)
    old = _carried(state.adapters.get(k), dtype)
    return norm_of_sum([*merged, *new, *_neg(old)])


def _naive_error(clients: Sequence[Weighted], M: LowRank) -> float | None:
    """||s B_bar A_bar - M|| / ||M||; defined for equal ranks only."""
    if len({c.f.r for c in clients}) != 1:
        return None
    f = clients[0].f
    naive = LowRank(B=_mean(clients, "B"), A=_mean(clients, "A"))
    return relative(norm_of_sum([(f.scaling, naive), (-1.0, M)]), norm_of_sum([(1.0, M)]))


def _add(a: Delta | None, b: Delta) -> Delta:
    if a is None:
        return b
    if isinstance(a, LowRank) and isinstance(b, LowRank):
        return cheaper_form(LowRank(B=torch.cat([a.B, b.B], 1), A=torch.cat([a.A, b.A], 0)))
    return to_dense(a) + to_dense(b)


class FedIT(Strategy):
    name = "fedit"

    def propose(
        self, round_num: int, layer: str, clients: Sequence[Weighted], state: LayerState
    ) -> Proposal:
        f = clients[0].f
        return Proposal({f.r: f.with_factors(A=_mean(clients, "A"), B=_mean(clients, "B"))}, {})


class FFA(Strategy):
    name = "ffa"
    trains = uploads = downloads = ("B",)

    def propose(
        self, round_num: int, layer: str, clients: Sequence[Weighted], state: LayerState
    ) -> Proposal:
        A = clients[0].f.A
        for c in clients[1:]:
            if not torch.allclose(c.f.A, A, rtol=0.0, atol=1e-6 * float(A.abs().max())):
                raise ValueError(
                    f"layer {layer!r}, client {c.client_id!r}: ffa needs the shared frozen A; "
                    f"this client's A differs from client {clients[0].client_id!r}'s"
                )
        f = clients[0].f
        return Proposal({f.r: f.with_factors(A=A, B=_mean(clients, "B"))}, {})


class FLoRA(Strategy):
    name = "flora"
    downloads = ()  # the stacked factors travel as the residual; the new LoRA comes from a seed
    changes_backbone = True
    reinit_lora = True
    heterogeneous_ranks = True

    def propose(
        self, round_num: int, layer: str, clients: Sequence[Weighted], state: LayerState
    ) -> Proposal:
        M = exact_update(clients)
        return Proposal({}, {k: M for k in state.ranks})


class FlexLoRA(Strategy):
    name = "flexlora"
    heterogeneous_ranks = True

    def propose(
        self, round_num: int, layer: str, clients: Sequence[Weighted], state: LayerState
    ) -> Proposal:
        M = exact_update(clients)
        svd = self._svd(M, max(state.ranks))
        adapters: dict[int, LoraFactors] = {}
        for k in state.ranks:
            f = _group_template(clients, k)
            B, A, _ = split_top_r(svd, k, f.scaling, self.options.factor_split)
            adapters[k] = f.with_factors(A=A, B=B)
        return Proposal(adapters, {}, svd=svd if svd.complete else None)


class FedEx(Strategy):
    name = "fedex"
    changes_backbone = True

    def propose(
        self, round_num: int, layer: str, clients: Sequence[Weighted], state: LayerState
    ) -> Proposal:
        f = clients[0].f
        A, B = _mean(clients, "A"), _mean(clients, "B")
        M = exact_update(clients)
        R = stack_lowrank([(1.0, M.B, M.A), (-f.scaling, B, A)])  # rank K + r
        return Proposal({f.r: f.with_factors(A=A, B=B)}, {f.r: R})


class FedSA(Strategy):
    name = "fedsa"
    uploads = downloads = ("A",)
    personalised = True

    def propose(
        self, round_num: int, layer: str, clients: Sequence[Weighted], state: LayerState
    ) -> Proposal:
        # B stays local; the global B is the zero a client without its own B starts from.
        f = clients[0].f
        B = torch.zeros_like(f.B)
        return Proposal({f.r: f.with_factors(A=_mean(clients, "A"), B=B)}, {})


class FedMomentum(Strategy):
    name = "fedmomentum"
    changes_backbone = True
    heterogeneous_ranks = True

    def propose(
        self, round_num: int, layer: str, clients: Sequence[Weighted], state: LayerState
    ) -> Proposal:
        adapters: dict[int, LoraFactors] = {}
        residuals: dict[int, Delta] = {}
        targets: dict[int, LowRank] = {}
        pending: dict[int, Delta] = {}
        svd_of_M: Svd | None = None
        merge_now = (round_num + 1) % self.options.merge_every == 0
        for k in sorted(state.ranks):
            f = _group_template(clients, k)
            target = _group_target(clients, state, k)
            svd = self._svd(target, k)
            B, A, live = split_top_r(svd, k, f.scaling, self.options.factor_split)
            R = residual_after_split(svd, target, B, A, f.scaling, live)
            total = _add(state.pending.get(k), R)
            if merge_now:
                residuals[k] = total
            else:
                pending[k] = total
            adapters[k], targets[k] = f.with_factors(A=A, B=B), target
            if len(state.ranks) == 1 and svd.complete:
                svd_of_M = svd
        return Proposal(adapters, residuals, targets, svd_of_M, pending)


def _group_template(clients: Sequence[Weighted], k: int) -> LoraFactors:
    """Settings (alpha, rsLoRA, fan_in_fan_out) of the clients, at rank k (factors unused)."""
    f = clients[0].f
    return f.with_factors(A=f.A.new_zeros(k, f.d_in), B=f.B.new_zeros(f.d_out, k))


def _group_target(clients: Sequence[Weighted], state: LayerState, k: int) -> LowRank:
    """Rank group k's exact new LoRA product.

    L_k = s_k B_k A_k + sum_i p_i (s_i B_i A_i - s_g B_g A_g), g the group of client i.

    Client i trained from its group's broadcast adapter on its group's backbone; every
    group's model W_g + s_g B_g A_g is the same, so the average of the client models is that
    model plus the weighted sum of the client changes. Giving group k the SVD split of L_k
    makes W_k + R_k + s_k B'_k A'_k exactly that average. With one rank group the broadcast
    terms cancel and L = M = sum_i p_i s_i B_i A_i, the paper's formula.
    """
    parts = [(c.p * c.f.scaling, c.f.B, c.f.A) for c in clients]
    coef = {g: 0.0 for g in state.adapters}
    for c in clients:
        if c.f.r in coef:
            coef[c.f.r] -= c.p
    if k in coef:
        coef[k] += 1.0
    for g, w in coef.items():
        if abs(w) > 1e-9:  # weights summing to 1 cancel the group's own broadcast term
            f = state.adapters[g]
            dt = clients[0].f.A.dtype
            parts.append((w * f.scaling, f.B.to(dt), f.A.to(dt)))
    return _perturbed(stack_lowrank(parts), clients)


STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (FedIT, FFA, FLoRA, FlexLoRA, FedEx, FedSA, FedMomentum)
}


def get_strategy(name: str, options: AggregationOptions | None = None) -> Strategy:
    """The strategy registered under ``name``."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy: unknown {name!r}; allowed: {', '.join(STRATEGIES)}")
    return STRATEGIES[name](options)


__all__ = [
    "STRATEGIES",
    "AggregationOptions",
    "ClientUpdate",
    "LayerRound",
    "LayerState",
    "Perturbation",
    "Strategy",
    "Weighted",
    "exact_update",
    "get_strategy",
    "lora_scaling",
]
