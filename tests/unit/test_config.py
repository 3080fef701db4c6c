"""Experiment config validation: every error names the field and the allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.cli import main
from backend.core.config import ConfigError, ExperimentConfig, load_config, parse_config

EXAMPLES = Path(__file__).parents[2] / "examples"


def test_defaults_are_the_demo():
    cfg = ExperimentConfig()
    assert (cfg.model, cfg.dataset, cfg.strategy) == (
        "smollm2-135m",
        "wordnet-topics",
        "fedmomentum",
    )
    assert cfg.rank_groups() == [8]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_is_valid(path):
    assert load_config(path).name


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"strategy": "fedavg"},
            r"strategy: unknown strategy 'fedavg'; allowed: fedmomentum, fedit",
        ),
        ({"model": "gpt5"}, r"model: unknown model 'gpt5'; built-in: smollm2-135m, tiny-llama"),
        ({"dataset": "mnist"}, r"dataset: unknown dataset 'mnist'; allowed: wordnet-topics, arith"),
        ({"lora": {"rank": 0}}, r"lora.rank: Input should be greater than 0"),
        (
            {"data": {"partition": "random"}},
            r"data.partition: unknown partition 'random'; allowed: iid",
        ),
        (
            {"federation": {"num_clients": 3, "clients_per_round": 4}},
            r"federation: clients_per_round \(4\) must be <= num_clients \(3\)",
        ),
        (
            {
                "strategy": "fedit",
                "federation": {"num_clients": 2, "clients_per_round": 2, "client_ranks": [4, 8]},
            },
            r"strategy 'fedit' needs equal ranks",
        ),
        ({"training": {"lr": -1}}, r"training.lr: Input should be greater than 0"),
        (
            {"training": {"precision": "fp16"}},
            r"training.precision: Input should be 'fp32' or 'bf16'",
        ),
        ({"trainig": {}}, r"trainig: Extra inputs are not permitted"),
        (
            {"aggregation": {"svd": "qr"}},
            r"aggregation.svd: Input should be 'factored', 'randomized' or 'dense'",
        ),
        (
            {"aggregation": {"max_norm_ratio": 1}},
            r"aggregation.max_norm_ratio: Input should be greater than 1",
        ),
        ({"tracking": {"mlflow": "maybe"}}, r"tracking.mlflow: Input should be a valid boolean"),
        ({"tracking": {"tensorboard": False}}, r"tracking.tensorboard: Extra inputs"),
    ],
)
def test_bad_config_names_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_heterogeneous_ranks_are_accepted_by_fedmomentum():
    cfg = parse_config(
        {"federation": {"num_clients": 3, "clients_per_round": 2, "client_ranks": [4, 8, 4]}}
    )
    assert cfg.rank_groups() == [4, 8]
    assert [cfg.client_rank(c) for c in range(3)] == [4, 8, 4]


def test_cli_rejects_a_bad_config_before_any_work(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("strategy: fedavg\nlora: {rank: -2}\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "strategy: unknown strategy 'fedavg'" in err and "lora.rank" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("silos", "message"),
    [
        (
            {"train": [0]},
            r"silos: bad silo name 'train'; allowed: 1-64 letters.*except train, aggregate, celery",
        ),
        ({"a b": [0]}, r"silos: bad silo name 'a b'; allowed"),
        ({"a": []}, r"silos.a: needs at least one client"),
        ({"a": [4]}, r"silos.a: client 4 does not exist; allowed: 0..3"),
        ({"a": [0, 1], "b": [1]}, r"silos: client 1 is in both 'a' and 'b'"),
    ],
)
def test_bad_silos_name_the_field_and_the_allowed(silos, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"federation": {"num_clients": 4, "clients_per_round": 2, "silos": silos}})


def test_clients_are_pinned_to_their_silo():
    fed = {"num_clients": 4, "clients_per_round": 4, "silos": {"hospital-a": [0, 2], "b.2": [3]}}
    cfg = parse_config({"federation": fed})

    assert [cfg.silo_of(c) for c in range(4)] == ["hospital-a", None, "hospital-a", "b.2"]


def test_token_silos_must_name_silos_of_the_config():
    fed = {"num_clients": 4, "clients_per_round": 2, "silos": {"a": [0]}, "token_silos": ["b"]}
    with pytest.raises(ConfigError, match=r"federation: token_silos: 'b' is not a silo of "
                       r"federation.silos; allowed: a"):  # fmt: skip
        parse_config({"federation": fed})
    cfg = parse_config({"federation": fed | {"silos": {"a": [0], "b": [2]}}})
    assert [cfg.token_silo_of(c) for c in range(4)] == [None, None, "b", None]
    assert cfg.silo_of(0) == "a"  # a silo without a token: its Celery queue, as before
