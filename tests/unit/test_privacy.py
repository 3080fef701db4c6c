"""Differential privacy: clipping, noise, accounting, exactness, and the config's rules."""

from __future__ import annotations

import math

import pytest
import torch
from opacus.accountants import RDPAccountant

from backend.core.config import ConfigError, parse_config
from workers.federated import (
    STRATEGIES,
    ClientUpdate,
    LayerState,
    LoraFactors,
    aggregate_round,
    get_strategy,
    merge_delta,
    to_dense,
)
from workers.federated.privacy import (
    PRODUCT,
    RELEASED,
    DpParams,
    central_round,
    gram_norm_sq,
    local_release,
    product_change,
    update_norm,
)
from workers.federated.strategies import exact_update
from workers.runner.privacy import (
    PrivacyBudgetExceeded,
    _epsilon_floor,
    check_budget,
    epsilon,
    noise_multiplier,
    privacy_summary,
    spent_after,
)

LAYERS = ("model.layers.0.q_proj", "model.layers.0.v_proj")
SHAPES = {LAYERS[0]: (24, 16), LAYERS[1]: (12, 16)}
RANK = 4
EQUAL = (10, 10, 10, 10)  # equal example counts: uniform weights are then today's weights
BIG = 1e9  # a clipping norm no update reaches


def broadcast(seed: int, rank: int = RANK) -> dict[str, LayerState]:
    """Round-t layer states: the adapter every client trained from, B nonzero."""
    gen = torch.Generator().manual_seed(seed)
    states = {}
    for name, (d_out, d_in) in SHAPES.items():
        f = LoraFactors(
            A=torch.randn(rank, d_in, generator=gen),
            B=torch.randn(d_out, rank, generator=gen),
            alpha=8.0,
        )
        states[name] = LayerState(ranks=frozenset({rank}), adapters={rank: f})
    return states


def trained(
    states: dict[str, LayerState],
    seed: int,
    counts=EQUAL,
    scale=(0.1, 0.1, 0.1, 0.1),
    shared_a: bool = False,
) -> list[ClientUpdate]:
    """Clients that moved away from the broadcast by ``scale[i]`` (per entry)."""
    gen = torch.Generator().manual_seed(seed)
    updates = []
    for i, (n, s) in enumerate(zip(counts, scale, strict=True)):
        layers = {}
        for name, st in states.items():
            f = st.adapters[RANK]
            A = f.A if shared_a else f.A + s * torch.randn(f.A.shape, generator=gen)
            layers[name] = f.with_factors(A=A, B=f.B + s * torch.randn(f.B.shape, generator=gen))
        updates.append(ClientUpdate(f"c{i}", n, layers))
    return updates


def starts(states: dict[str, LayerState]) -> dict[str, LoraFactors]:
    return {k: s.adapters[RANK] for k, s in states.items()}


def test_the_table_covers_every_strategy():
    assert set(RELEASED) == set(STRATEGIES)


def test_gram_norm_of_the_product_change_matches_the_dense_one():
    states = broadcast(0)
    u = trained(states, 1)[0]
    for name, f in u.layers.items():
        f0 = states[name].adapters[RANK]
        dense = _f64(f).delta() - _f64(f0).delta()
        assert math.sqrt(gram_norm_sq(product_change(f, f0))) == pytest.approx(
            float(torch.linalg.norm(dense)), rel=1e-10
        )


def _m_of(private, strategy: str, layer: str) -> torch.Tensor:
    """The aggregate M the strategy sees for one layer (dense), perturbation included."""
    from workers.federated.strategies import Weighted, _Perturbed  # noqa: PLC0415

    n = len(private.updates)
    clients = [Weighted(u.client_id, 1.0 / n, _f64(u.layers[layer])) for u in private.updates]
    pert = private.perturbations.get(layer)
    seq = _Perturbed(clients, pert) if pert is not None else clients
    return exact_update(seq).dense()


def _f64(f: LoraFactors) -> LoraFactors:
    return f.with_factors(A=f.A.double(), B=f.B.double())


@pytest.mark.parametrize("strategy", ["fedmomentum", "flora", "flexlora", "fedex"])
def test_clipping_bounds_each_clients_contribution_to_m_exactly(strategy):
    states = broadcast(2)
    updates = trained(states, 3, scale=(0.05, 0.5, 1.0, 2.0))
    parts = RELEASED[strategy]
    norms = [update_norm(u.layers, starts(states), parts) for u in updates]
    C = sorted(norms)[1]  # two clients above the bound, one below, one at it
    params = DpParams(clip=C, noise_multiplier=0.0)
    for u, norm in zip(updates, norms, strict=True):  # alone in the round: M - P_0 is its part
        private = central_round(strategy, [u], states, params, torch.Generator())
        assert private.clip_factors[u.client_id] == pytest.approx(min(1.0, C / norm), rel=1e-15)
        squares = 0.0
        for name in LAYERS:
            f0 = states[name].adapters[RANK]
            squares += float(((_m_of(private, strategy, name) - _f64(f0).delta()) ** 2).sum())
            if "A" in parts:  # fedex: the factor means are clipped by the same factor
                got = private.updates[0].layers[name]
                squares += float(((got.A.double() - f0.A.double()) ** 2).sum())
                squares += float(((got.B.double() - f0.B.double()) ** 2).sum())
        assert math.sqrt(squares) == pytest.approx(min(norm, C), rel=1e-9)


@pytest.mark.parametrize("strategy", ["fedit", "ffa", "fedsa"])
def test_clipping_bounds_each_clients_uploaded_factor_change_exactly(strategy):
    states = broadcast(4)
    updates = trained(states, 5, scale=(0.05, 0.5, 1.0, 2.0), shared_a=strategy == "ffa")
    parts = RELEASED[strategy]
    norms = [update_norm(u.layers, starts(states), parts) for u in updates]
    C = sorted(norms)[1]
    private = central_round(strategy, updates, states, DpParams(C, 0.0), torch.Generator())
    for u, norm in zip(private.updates, norms, strict=True):
        got = update_norm(u.layers, starts(states), parts)
        assert got == pytest.approx(min(norm, C), rel=1e-12)
        assert u.n_examples == 1  # uniform weights 1/n
    assert private.perturbations == {}  # no noise, factors clipped in place


def test_the_whole_update_over_all_layers_is_clipped_not_each_layer():
    states = broadcast(6)
    u = trained(states, 7, counts=(10,), scale=(1.0,))[0]
    per_layer = [update_norm({k: u.layers[k]}, starts(states), ("A", "B")) for k in LAYERS]
    C = max(per_layer)  # every layer alone is within C; together they are not
    private = central_round("fedit", [u], states, DpParams(C, 0.0), torch.Generator())
    assert private.clip_factors["c0"] == pytest.approx(C / math.hypot(*per_layer), rel=1e-12)


def _z_bound(n: int) -> float:
    """Relative half-width of a 7-sigma interval for a sample std from n Gaussian draws:
    sd(s)/sigma ~ 1/sqrt(2n); a false failure has odds below 1e-11."""
    return 7.0 / math.sqrt(2 * n)


@pytest.mark.parametrize(("strategy", "n"), [("fedmomentum", 4), ("fedit", 4), ("fedex", 2)])
def test_the_noise_std_is_sigma_c_over_n(strategy, n):
    sigma, C = 1.3, 50.0  # C above every update: the perturbation is the noise alone
    states = broadcast(8)
    draws: dict[str, list[torch.Tensor]] = {}
    for seed in range(12):
        updates = trained(states, seed, counts=EQUAL[:n], scale=(0.01,) * n)
        gen = torch.Generator().manual_seed(1000 + seed)
        private = central_round(strategy, updates, states, DpParams(C, sigma), gen)
        assert all(c == 1.0 for c in private.clip_factors.values())  # noise only
        for pert in private.perturbations.values():
            if pert.M is not None:
                draws.setdefault(PRODUCT, []).append(to_dense(pert.M).flatten())
            for part, x in pert.means.items():
                draws.setdefault(part, []).append(x.flatten())
    assert set(draws) == set(RELEASED[strategy])
    for part, xs in draws.items():
        x = torch.cat(xs)
        want = sigma * C / n
        assert float(x.std()) == pytest.approx(want, rel=_z_bound(x.numel())), part
        assert abs(float(x.mean())) < 7.0 * want / math.sqrt(x.numel()), part


def test_local_release_clips_the_whole_upload_and_adds_sigma_c():
    gen = torch.Generator().manual_seed(0)
    start = {"a": torch.randn(30, 20, generator=gen), "head.w": torch.randn(5, generator=gen)}
    upload = {k: v + 3.0 * torch.randn(v.shape, generator=gen) for k, v in start.items()}
    clipped, norm = local_release(upload, start, DpParams(2.0, 0.0), gen)
    change = math.sqrt(sum(float(((clipped[k] - start[k]).double() ** 2).sum()) for k in start))
    assert norm > 2.0 and change == pytest.approx(2.0, rel=1e-6)  # float32 tensors come back
    assert all(clipped[k].dtype == upload[k].dtype for k in upload)
    noise = []
    for _ in range(40):
        noised, _ = local_release(upload, start, DpParams(2.0, 0.9), gen)
        noise += [(noised[k].double() - clipped[k].double()).flatten() for k in start]
    x = torch.cat(noise)
    assert float(x.std()) == pytest.approx(0.9 * 2.0, rel=_z_bound(x.numel()) + 1e-6)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_sigma_zero_without_clipping_is_todays_strategy_bit_for_bit(strategy):
    states = broadcast(9)
    updates = trained(states, 10, shared_a=strategy == "ffa")
    private = central_round(strategy, updates, states, DpParams(BIG, 0.0), torch.Generator())
    assert private.perturbations == {}
    s = get_strategy(strategy)
    want = aggregate_round(s, 0, updates, states)
    got = aggregate_round(s, 0, private.updates, states, private.perturbations)
    for name in LAYERS:
        w, g = want.layers[name], got.layers[name]
        for k, f in w.state.adapters.items():
            assert torch.equal(f.A, g.state.adapters[k].A) and torch.equal(
                f.B, g.state.adapters[k].B
            )
        for k, r in w.residuals.items():
            assert torch.equal(to_dense(r), to_dense(g.residuals[k]))
        assert w.diagnostics == g.diagnostics


def test_fedmomentum_is_exact_with_respect_to_the_noised_aggregate():
    states = broadcast(11)
    updates = trained(states, 12, scale=(0.05, 0.5, 1.0, 2.0))
    norms = [update_norm(u.layers, starts(states), (PRODUCT,)) for u in updates]
    params = DpParams(clip=sorted(norms)[1], noise_multiplier=0.8)
    private = central_round(
        "fedmomentum", updates, states, params, torch.Generator().manual_seed(3)
    )
    result = aggregate_round(
        get_strategy("fedmomentum"), 1, private.updates, states, private.perturbations
    )
    n = len(updates)
    for name in LAYERS:
        f0 = states[name].adapters[RANK]
        P0 = _f64(f0).delta()
        noise = to_dense(private.perturbations[name].M).double()
        clipped = (
            sum(
                P0 + c * (_f64(u.layers[name]).delta() - P0)
                for u, c in zip(updates, private.clip_factors.values(), strict=True)
            )
            / n
        )
        # The perturbation is the clipping correction plus Gaussian noise: recover the latter.
        gaussian = noise - (clipped - sum(_f64(u.layers[name]).delta() for u in updates) / n)
        target = clipped + gaussian  # the noised aggregate M, W_t = 0
        lr = result.layers[name]
        W = torch.zeros_like(P0)
        model = merge_delta(W, lr.residuals[RANK]) + _f64(lr.state.adapters[RANK]).delta()
        assert float(torch.linalg.norm(model - target) / torch.linalg.norm(target)) < 1e-6
        assert lr.diagnostics.exactness_error < 1e-6
        want = params.noise_multiplier * params.clip / n
        assert float(gaussian.std()) == pytest.approx(want, rel=_z_bound(gaussian.numel()))
    assert min(private.clip_factors.values()) < 1.0  # clipped and noised at once


def test_heads_are_clipped_with_the_update_and_noised():
    states = broadcast(13)
    updates = trained(states, 14, counts=(10, 10), scale=(0.1, 0.1))
    h0 = [{"w": torch.zeros(6)}, {"w": torch.zeros(6)}]
    heads = [{"w": torch.full((6,), 100.0)}, {"w": torch.full((6,), -100.0)}]
    private = central_round(
        "fedit", updates, states, DpParams(1.0, 0.0), torch.Generator(), heads, h0
    )
    assert all(c < 0.01 for c in private.clip_factors.values())  # the head dominates the norm
    assert torch.allclose(private.extras["w"], torch.zeros(6), atol=1e-6)  # +-c*100 cancel
    noised = central_round(
        "fedit", updates, states, DpParams(1.0, 2.0), torch.Generator().manual_seed(0), heads, h0
    )
    assert float(noised.extras["w"].abs().max()) > 0.01


def test_epsilon_is_opacus_rdp_accountant_stepped_round_by_round():
    for sigma, q, steps, delta in [
        (1.1, 0.2, 10, 1e-5),
        (0.7, 1.0, 3, 1e-6),
        (3.0, 0.05, 100, 1e-5),
    ]:
        accountant = RDPAccountant()
        for _ in range(steps):
            accountant.step(noise_multiplier=sigma, sample_rate=q)
        assert epsilon(sigma, q, steps, delta) == accountant.get_epsilon(delta=delta)
    assert epsilon(0.0, 0.5, 3, 1e-5) == math.inf and epsilon(1.0, 0.5, 0, 1e-5) == 0.0


def _cfg(**privacy: object):
    return parse_config(
        {
            "federation": {"num_clients": 10, "clients_per_round": 3, "rounds": 8},
            "privacy": {"mode": "central", "clip": 1.0, **privacy},
        }
    )


def test_round_summaries_report_the_accountants_epsilon():
    cfg = _cfg(noise_multiplier=1.2, delta=1e-6)
    for t in (0, 3, 7):
        accountant = RDPAccountant()
        for _ in range(t + 1):
            accountant.step(noise_multiplier=1.2, sample_rate=0.3)
        summary = privacy_summary(cfg, t)
        assert summary["epsilon"] == accountant.get_epsilon(delta=1e-6)
        assert summary["noise_multiplier"] == 1.2 and summary["privacy"] == "central"


def test_target_epsilon_calibrates_the_noise_for_the_whole_run():
    cfg = _cfg(target_epsilon=2.0)
    sigma = noise_multiplier(cfg)
    assert 2.0 - 0.02 <= spent_after(cfg, 7) <= 2.0  # Opacus's search tolerance is 0.01
    assert epsilon(sigma * 0.97, 0.3, 8, 1e-5) > 2.0  # and it is the least such noise
    for t in range(8):
        check_budget(cfg, t)
    with pytest.raises(PrivacyBudgetExceeded, match=r"round 8: privacy.target_epsilon 2"):
        check_budget(cfg, 8)  # a ninth round would overspend: the run stops before it


def test_an_unreachable_target_epsilon_refuses_the_run():
    with pytest.raises(PrivacyBudgetExceeded, match="privacy.target_epsilon"):
        noise_multiplier(_cfg(target_epsilon=1e-9, delta=1e-12))


def test_the_refusal_floor_is_what_ever_more_noise_tends_to():
    floor = _epsilon_floor(1e-5)
    spent = [epsilon(sigma, 0.3, 8, 1e-5) for sigma in (10.0, 100.0, 1000.0)]
    assert spent[0] > spent[1] > spent[2] > floor  # no noise multiplier spends less
    assert spent[2] - floor < 1e-3
    with pytest.raises(PrivacyBudgetExceeded, match="even infinite noise spends 0.1029"):
        noise_multiplier(_cfg(target_epsilon=floor * 0.999))


def test_local_mode_accounts_the_most_sampled_client_without_amplification():
    cfg = parse_config(
        {
            "federation": {"num_clients": 4, "clients_per_round": 2, "rounds": 6},
            "privacy": {"mode": "local", "clip": 1.0, "noise_multiplier": 2.0},
        }
    )
    from workers.runner.clients import sample_clients  # noqa: PLC0415

    counts = [0] * 4
    for t in range(6):
        for c in sample_clients(cfg, t):
            counts[c] += 1
        assert privacy_summary(cfg, t)["epsilon"] == epsilon(2.0, 1.0, max(counts), 1e-5)


@pytest.mark.parametrize(
    ("privacy", "message"),
    [
        (
            {"mode": "central", "clip": 1, "noise_multiplier": 1, "target_epsilon": 3},
            "noise_multiplier, target_epsilon: both set",
        ),
        ({"mode": "central", "noise_multiplier": 1}, "clip: required with mode 'central'"),
        ({"mode": "local", "clip": 1}, "neither set with mode 'local'"),
        ({"mode": "central", "clip": 1, "noise_multiplier": 1, "delta": 1}, "privacy.delta"),
        ({"mode": "central", "clip": 0, "noise_multiplier": 1}, "privacy.clip"),
        ({"mode": "central", "clip": 1, "noise_multiplier": -1}, "privacy.noise_multiplier"),
        ({"clip": 1}, "clip: set with mode 'off'"),
        ({"mode": "secret"}, "privacy.mode"),
    ],
)
def test_bad_privacy_configs_name_the_field(privacy, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_config({"privacy": privacy})


def test_bad_round_inputs_name_the_layer_and_client():
    states = broadcast(15)
    u = trained(states, 16, counts=(10,), scale=(0.1,))[0]
    partial = ClientUpdate("c0", 10, {LAYERS[0]: u.layers[LAYERS[0]]})
    with pytest.raises(ValueError, match=rf"layer '{LAYERS[1]}', client 'c0': missing"):
        central_round("fedit", [partial], states, DpParams(1.0, 1.0), torch.Generator())
    bare = {k: LayerState(ranks=frozenset({RANK})) for k in LAYERS}  # no broadcast adapter
    with pytest.raises(ValueError, match="needs the adapter of rank 4"):
        central_round("fedit", [u], bare, DpParams(1.0, 1.0), torch.Generator())
    with pytest.raises(ValueError, match="strategy: unknown 'fedavg'"):
        central_round("fedavg", [u], states, DpParams(1.0, 1.0), torch.Generator())
    with pytest.raises(ValueError, match="clip: must be a finite number > 0"):
        DpParams(0.0, 1.0)
