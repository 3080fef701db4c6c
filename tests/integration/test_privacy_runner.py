"""Differential privacy through the in-process runner on tiny-llama: both modes, the epsilon
each round records, and a budget no noise can meet."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from opacus.accountants import RDPAccountant

from backend.core.config import parse_config
from backend.core.runs import RunPaths
from workers.runner import prepare, read_group, run, sample_clients
from workers.runner.privacy import PrivacyBudgetExceeded, epsilon

TINY = {
    "model": "tiny-llama",
    "dataset": "arith",
    "data": {"n_train": 48, "n_eval": 8, "partition": "iid"},
    "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
    "federation": {"num_clients": 4, "clients_per_round": 2, "rounds": 2},
    "training": {"local_steps": 2, "batch_size": 4, "max_length": 48, "lr": 0.01},
    "eval": {"batch_size": 8, "max_new_tokens": 4},
}


def rounds(root: Path) -> list[dict[str, object]]:
    lines = (root / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "round"]


@pytest.mark.parametrize(("strategy", "mode"), [("fedmomentum", "central"), ("fedit", "local")])
def test_private_runs_record_the_accountants_epsilon_every_round(strategy, mode, tmp_path):
    privacy = {"mode": mode, "clip": 0.05, "noise_multiplier": 1.5, "delta": 1e-5}
    cfg = parse_config({**TINY, "strategy": strategy, "privacy": privacy})

    run(cfg, tmp_path, progress=False)

    recs = rounds(tmp_path)
    assert [r["round"] for r in recs] == [0, 1]
    q = 0.5 if mode == "central" else 1.0
    accountant = RDPAccountant()
    taken = [0] * 4
    for r in recs:
        assert math.isfinite(r["eval_loss"]) and r["privacy"] == mode
        if mode == "central":
            accountant.step(noise_multiplier=1.5, sample_rate=q)
            assert r["epsilon"] == accountant.get_epsilon(delta=1e-5)
        else:  # the most-sampled client's rounds so far, no amplification
            for c in sample_clients(cfg, r["round"]):
                taken[c] += 1
            assert r["epsilon"] == epsilon(1.5, q, max(taken), 1e-5)
    if mode == "central":  # the noised M: FedMomentum's model is still W + M exactly
        diags = [
            json.loads(line)
            for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
            if '"diagnostics"' in line
        ]
        assert max(d["exactness_error"] for d in diags) < 1e-5


def test_a_target_epsilon_no_noise_can_meet_refuses_to_start(tmp_path):
    privacy = {"mode": "central", "clip": 1.0, "target_epsilon": 1e-9, "delta": 1e-12}
    cfg = parse_config({**TINY, "privacy": privacy})
    with pytest.raises(PrivacyBudgetExceeded, match="privacy.target_epsilon"):
        prepare(cfg, RunPaths.at(tmp_path))
    assert not (tmp_path / "config.yaml").exists()


@pytest.mark.parametrize("mode", ["central", "local"])
def test_a_classifier_head_is_released_privately_too(mode, tmp_path):
    cfg = parse_config(
        {
            "name": "minilm-dp",
            "model": "minilm-l6",
            "dataset": "wordnet-topics",
            "strategy": "fedex",
            "data": {"n_train": 40, "n_eval": 10, "partition": "iid"},
            "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
            "federation": {"num_clients": 2, "clients_per_round": 2, "rounds": 1},
            "training": {"local_steps": 2, "batch_size": 8, "max_length": 48, "lr": 0.005},
            "privacy": {"mode": mode, "clip": 0.5, "noise_multiplier": 0.5},
        }
    )

    run(cfg, tmp_path, progress=False)

    paths = RunPaths.at(tmp_path)
    before, _ = read_group(paths, 0, 4)
    after, _ = read_group(paths, 1, 4)
    heads = [k for k in after if k.startswith("head.")]
    assert heads and all(torch.isfinite(after[k]).all() for k in heads)
    change = math.sqrt(sum(float(((after[k] - before[k]) ** 2).sum()) for k in heads))
    # The noise on the head's numbers has std 0.125 (central: sigma C / n) or, the mean of the
    # two clients' own noise of std sigma C = 0.25, 0.25 / sqrt(2) (local); the clipped
    # change itself is at most C. Thousands of numbers: the noise's norm is within a few %.
    numel = sum(after[k].numel() for k in heads)
    noise = (0.125 if mode == "central" else 0.25 / math.sqrt(2)) * math.sqrt(numel)
    assert 0.8 * noise - 0.5 < change < 1.2 * noise + 0.5
    (rec,) = rounds(tmp_path)
    assert rec["privacy"] == mode and rec["epsilon"] == epsilon(0.5, 1.0, 1, 1e-5)
