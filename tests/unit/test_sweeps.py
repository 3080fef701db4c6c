"""Sweep expansion: grid x seeds, dotted paths, every bad entry named, the 200 limit."""

from __future__ import annotations

import pytest

from backend.core.catalog import STRATEGIES
from backend.core.sweeps import (
    MAX_EXPERIMENTS,
    SweepError,
    expand,
    leaf_paths,
    parse_run_name,
    parse_sweep,
)

BASE = {"model": "tiny-llama", "federation": {"num_clients": 2, "clients_per_round": 2}}


def _sweep(**fields):
    return parse_sweep({"name": "cmp", "base": BASE, **fields})


def _error(**fields) -> str:
    with pytest.raises(SweepError) as e:
        expand(_sweep(**fields))
    return str(e.value)


def test_strategies_times_grid_times_seeds():
    runs = expand(
        _sweep(
            strategies=["fedit", "fedmomentum"],
            seeds=2,
            grid={"aggregation.factor_split": ["sqrt", "b"]},
        )
    )
    assert len(runs) == 2 * 2 * 2
    # seed-major: every cell at seed 0 first
    assert [r.seed for r in runs] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [r.label for r in runs[:4]] == [
        "fedit, aggregation.factor_split=sqrt",
        "fedit, aggregation.factor_split=b",
        "fedmomentum, aggregation.factor_split=sqrt",
        "fedmomentum, aggregation.factor_split=b",
    ]
    last = runs[-1]
    assert last.cell == {"strategy": "fedmomentum", "aggregation.factor_split": "b"}
    assert last.config.strategy == "fedmomentum"
    assert last.config.aggregation.factor_split == "b"
    assert last.config.seed == 1
    assert last.config.name == "cmp / fedmomentum, aggregation.factor_split=b / seed 1"


def test_runs_differ_only_in_grid_strategy_and_seed():
    runs = expand(_sweep(strategies="all", seeds=[3, 7], grid={"lora.rank": [4, 8]}))
    assert len(runs) == len(STRATEGIES) * 2 * 2
    assert {r.config.strategy for r in runs} == set(STRATEGIES)
    assert {r.seed for r in runs} == {3, 7}
    strip = {"strategy", "seed", "name", "lora"}
    dumps = [r.config.model_dump(exclude=strip) for r in runs]
    assert all(d == dumps[0] for d in dumps)
    # the base's other fields survive a dotted path into the same section
    assert {r.config.lora.rank for r in runs} == {4, 8}
    assert all(r.config.federation.num_clients == 2 for r in runs)
    assert {r.config.model for r in runs} == {"tiny-llama"}


def test_labels_do_not_depend_on_the_grid_order():
    a = expand(_sweep(strategies=["fedit"], seeds=1, grid={"lora.rank": [4], "training.lr": [0.1]}))
    b = expand(_sweep(strategies=["fedit"], seeds=1, grid={"training.lr": [0.1], "lora.rank": [4]}))
    assert a[0].label == b[0].label == "fedit, lora.rank=4, training.lr=0.1"


def test_base_strategy_seed_and_name_are_overridden():
    runs = expand(
        parse_sweep(
            {
                "name": "s",
                "base": {**BASE, "strategy": "ffa", "seed": 9, "name": "old"},
                "strategies": ["fedex"],
                "seeds": [5],
            }
        )
    )
    assert [(r.config.strategy, r.config.seed, r.config.name) for r in runs] == [
        ("fedex", 5, "s / fedex / seed 5")
    ]


def test_dotted_paths_reach_every_plain_field():
    paths = leaf_paths()
    assert {"lora.rank", "aggregation.factor_split", "federation.rounds", "model"} <= set(paths)
    assert "lora" not in paths and "strategy" in paths  # a section is not a field


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"grid": {"lora.rank": [4, 0]}}, "grid.lora.rank[1]: Input should be greater than 0"),
        (
            {"grid": {"lora.rnak": [4]}},
            "grid.lora.rnak: unknown config field; allowed: rank, alpha, dropout",
        ),
        ({"grid": {"lorra.rank": [4]}}, "grid.lorra.rank: unknown config field; allowed: name"),
        ({"grid": {"lora": [{"rank": 4}]}}, "grid.lora: a config section, not a field; allowed"),
        ({"grid": {"model.x": [1]}}, "grid.model.x: model is a field, not a config section"),
        ({"grid": {"strategy": ["fedit"]}}, "grid.strategy: set by strategies"),
        ({"grid": {"seed": [1]}}, "grid.seed: set by seeds"),
        ({"grid": {"lora.rank": []}}, "grid.lora.rank: needs at least one value"),
        ({"grid": {"lora.rank": [4, 8, 4]}}, "grid.lora.rank[2]: 4 is listed twice"),
        (
            {"grid": {"data.partition": ["iid", "random"]}},
            "grid.data.partition[1]: unknown partition 'random'; allowed: iid",
        ),
        (
            {"strategies": ["fedit", "fedex", "fedavg"]},
            "strategies[2]: unknown strategy 'fedavg'; allowed: fedmomentum, fedit",
        ),
        ({"strategies": ["fedit", "fedit"]}, "strategies[1]: 'fedit' is listed twice"),
        ({"strategies": []}, "strategies: needs at least one strategy"),
        ({"seeds": 0}, "seeds: a count of seeds must be 1..200"),
        ({"seeds": [0, -1]}, "seeds[1]: seed -1 out of range"),
        ({"seeds": [2, 2]}, "seeds[1]: seed 2 is listed twice"),
        ({"seeds": []}, "seeds: needs at least one seed"),
        (
            {"base": {**BASE, "lora": {"rank": -2}}},
            "base.lora.rank: Input should be greater than 0",
        ),
        ({"base": {**BASE, "trainig": {}}}, "base.trainig: Extra inputs are not permitted"),
    ],
)
def test_each_bad_entry_is_named(fields, message):
    assert message in _error(**{"seeds": 1, **fields})


def test_every_problem_is_reported_at_once():
    text = _error(strategies=["fedavg"], seeds=[-1], grid={"lora.rnak": [1]})
    assert "strategies[0]:" in text and "seeds[0]:" in text and "grid.lora.rnak:" in text


def test_a_clash_between_grid_values_names_the_cell():
    text = _error(seeds=1, strategies=["fedit"], grid={"federation.clients_per_round": [2, 3]})
    assert text == (
        "cell 'fedit, federation.clients_per_round=3': federation: clients_per_round (3) "
        "must be <= num_clients (2)"
    )


def test_a_strategy_that_does_not_fit_the_base_names_its_cell():
    base = {**BASE, "federation": {**BASE["federation"], "client_ranks": [4, 8]}}
    with pytest.raises(SweepError, match=r"cell 'fedit': .*strategy 'fedit' needs equal ranks"):
        expand(parse_sweep({"name": "h", "base": base, "strategies": ["fedmomentum", "fedit"]}))


def test_a_grid_value_overrides_a_bad_base_value():
    base = {**BASE, "lora": {"rank": 0}}
    spec = parse_sweep({"name": "g", "base": base, "seeds": 1, "grid": {"lora.rank": [4]}})
    assert {r.config.lora.rank for r in expand(spec)} == {4}


def test_more_than_200_experiments_is_refused_with_the_count():
    grid = {"lora.rank": [1, 2, 3], "training.lr": [0.1, 0.2, 0.3], "lora.alpha": [1, 2, 3]}
    text = _error(strategies=["fedit", "fedex", "ffa"], seeds=3, grid=grid)
    assert text == "this sweep expands to 243 experiments; at most 200"


def test_exactly_200_experiments_expand():
    runs = expand(_sweep(strategies=["fedit", "fedex"], seeds=100))
    assert len(runs) == MAX_EXPERIMENTS


def test_too_long_experiment_names_are_named():
    with pytest.raises(SweepError, match=r"^name: an experiment's name would be too long"):
        expand(parse_sweep({"name": "x" * 190, "base": BASE, "strategies": ["fedit"], "seeds": 1}))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "s", "grid": {"lora.rank": 4}}, "grid.lora.rank: Input should be a valid list"),
        ({"name": "s", "sedes": 3}, "sedes: Extra inputs are not permitted"),
        ({"base": {}}, "name: Field required"),
        ({"name": "a\x00b"}, "name: contains a NUL character"),
        ({"name": "s", "base": {"seed": float("nan")}}, "base: nan is not a finite number"),
        ({"name": "s", "base": {"name": "\ud800"}}, "base: contains a lone surrogate"),
        ({"name": "s", "grid": {"lora.alpha": [float("inf")]}}, "grid: inf is not a finite"),
    ],
)
def test_the_spec_shape_is_checked(data, message):
    with pytest.raises(SweepError) as e:
        parse_sweep(data)
    assert message in str(e.value)


def test_a_runs_name_gives_back_its_cell_and_seed():
    runs = expand(_sweep(seeds=[0, 12], strategies=["fedit"], grid={"lora.rank": [4, 8]}))
    assert [parse_run_name("cmp", r.config.name) for r in runs] == [(r.label, r.seed) for r in runs]
    assert parse_run_name("other", runs[0].config.name) is None
    assert parse_run_name("cmp", "cmp / fedit / seed x") is None
