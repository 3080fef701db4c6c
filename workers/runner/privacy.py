"""Differential privacy in the runner: a run's noise multiplier, the privacy spent after each
round (Opacus's RDP accountant), the budget check, and the noise generator.

Accounting: each round is one step of the sampled Gaussian mechanism with noise multiplier
sigma. Central mode: sample rate q = clients_per_round / num_clients (the chance a given user
takes part in a round). Opacus's analysis is for Poisson sampling; the runner samples a fixed
number of clients, the usual approximation of DP-FedAvg. Local mode: the server sees who was
sampled, so there is no amplification by sampling (q = 1), and a client spends privacy only in
the rounds it takes part in; the epsilon reported is that of the client sampled most often.
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections import Counter
from functools import lru_cache

import torch

from backend.core.config import ExperimentConfig
from workers.federated.privacy import DpParams
from workers.runner.clients import sample_clients

_EPS_SLACK = 1e-9  # relative: the calibrated run ends at most at the target, up to rounding


class PrivacyBudgetExceeded(ValueError):
    """A round that would spend more than ``privacy.target_epsilon``."""


def sample_rate(cfg: ExperimentConfig) -> float:
    """q of the sampled Gaussian mechanism (see the module docstring)."""
    f = cfg.federation
    return 1.0 if cfg.privacy.mode == "local" else f.clients_per_round / f.num_clients


def steps_after(cfg: ExperimentConfig, round_num: int) -> int:
    """Mechanism steps once round ``round_num`` is released: rounds so far (central), or the
    most rounds any one client has taken part in (local)."""
    if cfg.privacy.mode != "local":
        return round_num + 1
    taken = Counter(c for t in range(round_num + 1) for c in sample_clients(cfg, t))
    return max(taken.values())


def epsilon(noise_multiplier: float, q: float, steps: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``steps`` steps (inf without noise)."""
    if steps == 0:
        return 0.0
    if noise_multiplier == 0.0:
        return math.inf
    from opacus.accountants import RDPAccountant  # Opacus (and SciPy) only for private runs

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, q, steps)]
    with warnings.catch_warnings():  # "optimal order is the largest alpha": still an upper bound
        warnings.simplefilter("ignore", UserWarning)
        return float(accountant.get_epsilon(delta=delta))


def _epsilon_floor(delta: float) -> float:
    """The epsilon of infinite noise (every order's RDP zero): no noise multiplier spends
    less, whatever q and the steps."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import get_privacy_spent

    orders = RDPAccountant.DEFAULT_ALPHAS
    with warnings.catch_warnings():  # "optimal order is the largest alpha": still a floor
        warnings.simplefilter("ignore", UserWarning)
        return float(get_privacy_spent(orders=orders, rdp=[0.0] * len(orders), delta=delta)[0])


@lru_cache(maxsize=32)
def _calibrated(target: float, delta: float, q: float, steps: int) -> float:
    floor = _epsilon_floor(delta)
    if target < floor:  # refused at once: Opacus's search would double sigma up to 1e6 first
        raise PrivacyBudgetExceeded(
            f"privacy.target_epsilon: {target:g} cannot be met over {steps} round(s) at "
            f"delta {delta:g} with any noise multiplier (even infinite noise spends {floor:.4g})"
        )
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():  # the search's far-off trial sigmas warn about orders
            warnings.simplefilter("ignore", UserWarning)
            return float(
                get_noise_multiplier(
                    target_epsilon=target, target_delta=delta, sample_rate=q, steps=steps
                )
            )
    except ValueError as e:  # Opacus: "The privacy budget is too low."
        raise PrivacyBudgetExceeded(
            f"privacy.target_epsilon: {target:g} cannot be met over {steps} round(s) at "
            f"delta {delta:g} with any noise multiplier up to 1e6 ({e})"
        ) from None


def noise_multiplier(cfg: ExperimentConfig) -> float:
    """sigma: the config's, or calibrated so the whole run spends at most target_epsilon."""
    p = cfg.privacy
    if p.noise_multiplier is not None:
        return p.noise_multiplier
    if p.target_epsilon is None:
        raise ValueError("privacy: neither noise_multiplier nor target_epsilon is set")
    planned = steps_after(cfg, cfg.federation.rounds - 1)
    return _calibrated(p.target_epsilon, p.delta, sample_rate(cfg), planned)


def dp_params(cfg: ExperimentConfig) -> DpParams:
    """Clipping norm and noise multiplier of a private run."""
    if cfg.privacy.clip is None:
        raise ValueError(f"privacy.clip: required with mode {cfg.privacy.mode!r}")
    return DpParams(clip=cfg.privacy.clip, noise_multiplier=noise_multiplier(cfg))


def spent_after(cfg: ExperimentConfig, round_num: int) -> float:
    """Epsilon spent once round ``round_num`` is released."""
    return epsilon(
        noise_multiplier(cfg), sample_rate(cfg), steps_after(cfg, round_num), cfg.privacy.delta
    )


def check_budget(cfg: ExperimentConfig, round_num: int) -> None:
    """PrivacyBudgetExceeded if releasing round ``round_num`` would exceed target_epsilon (or
    the target cannot be met at all); nothing for a run without a target."""
    target = cfg.privacy.target_epsilon
    if cfg.privacy.mode == "off" or target is None:
        return
    spent = spent_after(cfg, round_num)
    if spent > target * (1 + _EPS_SLACK):
        raise PrivacyBudgetExceeded(
            f"round {round_num}: privacy.target_epsilon {target:g} would be exceeded "
            f"(epsilon {spent:.4g} at delta {cfg.privacy.delta:g} after this round); "
            "the run stops before it"
        )


def privacy_summary(cfg: ExperimentConfig, round_num: int) -> dict[str, object]:
    """The privacy fields of a round's summary (epsilon None: no noise, nothing guaranteed)."""
    spent = spent_after(cfg, round_num)
    return {
        "privacy": cfg.privacy.mode,
        "noise_multiplier": noise_multiplier(cfg),
        "clip": cfg.privacy.clip,
        "delta": cfg.privacy.delta,
        "epsilon": spent if math.isfinite(spent) else None,  # JSON has no infinity
    }


def noise_generator() -> torch.Generator:
    """A generator seeded from the operating system's entropy. Never the experiment's seed:
    anyone who reads the config could regenerate the noise and subtract it. (torch's
    generator is not a cryptographic one; Opacus's secure_mode has the same caveat.)"""
    return torch.Generator().manual_seed(secrets.randbits(63))
