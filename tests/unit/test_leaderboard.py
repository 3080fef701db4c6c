"""Leaderboard maths on hand-written runs, every number worked out by hand below."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest

from backend.core.leaderboard import Point, Row, auc, from_records, leaderboard, to_markdown


def _records(accuracy, *, up=(40, 60), down=100, seconds=1.0, ranks=None, kept=None):
    """metrics.jsonl records of one run as the runner writes them: accuracy per round from
    -1; every round clients 0 and 1 upload ``up`` bytes and each downloads the rank-4 group's
    ``down``; diagnostics of two layers at every round when given."""
    out = [{"kind": "client_step", "round": 0, "client": 0, "step": 0, "loss": 9.0}]
    for t, acc in enumerate(accuracy, start=-1):
        out.append({"kind": "eval", "round": t, "accuracy": acc, "eval_loss": 1 - acc})
        if t < 0:
            continue
        out.append(
            {
                "kind": "round",
                "round": t,
                "clients": [0, 1],
                "bytes_up": {"0": up[0], "1": up[1]},
                "bytes_down": {"4": down},
                "round_seconds": seconds,
            }
        )
        for layer in range(2):
            diag = {"kind": "diagnostics", "round": t, "layer": f"l{layer}", "naive_error": 0.1}
            if ranks:
                diag["rank_for_energy"] = {"0.9": 1, "0.99": ranks[t][layer]}
            if kept:
                diag["kept_energy"] = kept[t][layer]
            out.append(diag)
    return out


def _runs():
    return [
        # A: finals 0.7, 0.9 -> mean 0.8, std sqrt(0.02) = 0.141421
        from_records(
            "A",
            0,
            _records(
                [0.1, 0.5, 0.7],
                up=(40, 60),
                down=100,
                seconds=2.0,
                ranks=[[2, 2], [3, 5]],
                kept=[[1.0, 1.0], [0.9, 0.7]],
            ),
        ),
        from_records(
            "A",
            1,
            _records([0.1, 0.6, 0.9], up=(70, 80), down=125, seconds=3.0, ranks=[[1, 1], [4, 8]]),
        ),
        # B: finals 0.7, 0.8 -> mean 0.75, std sqrt(0.005) = 0.070711
        from_records("B", 0, _records([0.1, 0.8, 0.7])),
        from_records("B", 1, _records([0.1, 0.7, 0.8])),
        # C: finals 0.3, 0.3 -> mean 0.3, std 0
        from_records("C", 4, _records([0.2, 0.3, 0.3])),
        from_records("C", 5, _records([0.2, 0.25, 0.3])),
        # D: one seed
        from_records("D", 0, _records([0.1, 0.1, 0.1])),
    ]


def test_rows_are_sorted_by_final_mean():
    assert [r.label for r in leaderboard(_runs())] == ["A", "B", "C", "D"]


def test_final_mean_and_sample_std_over_seeds():
    a, b, c, d = leaderboard(_runs())
    assert a.final_mean == pytest.approx(0.8)
    assert a.final_std == pytest.approx(math.sqrt(0.02))  # ((0.1)^2 + (0.1)^2) / (2 - 1)
    assert b.final_mean == pytest.approx(0.75)
    assert b.final_std == pytest.approx(math.sqrt(0.005))
    assert c.final_std == pytest.approx(0.0)
    assert d.final_std is None and d.seeds == [0]
    assert a.seeds == [0, 1] and c.seeds == [4, 5]


def test_best_is_the_mean_of_each_runs_best_after_training():
    a, b, c, d = leaderboard(_runs())
    assert a.best_mean == pytest.approx(0.8)  # (0.7 + 0.9) / 2
    assert b.best_mean == pytest.approx(0.8)  # (0.8 + 0.8) / 2: B peaked before its final
    assert c.best_mean == pytest.approx(0.3)
    assert d.best_mean == pytest.approx(0.1)  # the initial 0.1 does not count; round 0's does


def test_rounds_to_reach_the_best_final_mean():
    a, b, c, d = leaderboard(_runs())
    # target 0.8 (A's final mean); A's mean curve 0.1, 0.55, 0.8: reached after 2 rounds
    assert a.rounds_to_best == 2
    # B's mean curve 0.1, 0.75, 0.75 never reaches it
    assert (b.rounds_to_best, c.rounds_to_best, d.rounds_to_best) == (None, None, None)


def test_rounds_to_reach_counts_the_initial_model_as_zero_rounds():
    runs = [from_records("X", 0, _records([0.5, 0.4])), from_records("Y", 0, _records([0.5, 0.3]))]
    x, y = leaderboard(runs)
    assert (x.label, x.rounds_to_best, y.rounds_to_best) == ("X", 0, 0)


def test_area_under_the_mean_curve_per_round():
    a, b, _, d = leaderboard(_runs())
    # A: ((0.1 + 0.55) / 2 + (0.55 + 0.8) / 2) / 2 rounds = (0.325 + 0.675) / 2
    assert a.auc == pytest.approx(0.5)
    # B: ((0.1 + 0.75) / 2 + (0.75 + 0.75) / 2) / 2 = (0.425 + 0.75) / 2
    assert b.auc == pytest.approx(0.5875)
    assert d.auc == pytest.approx(0.1)


def test_auc_of_uneven_rounds_and_of_one_point():
    points = [Point(-1, 0.0, 0.0, 0.0, 1), Point(0, 1.0, 1.0, 1.0, 1), Point(2, 1.0, 1.0, 1.0, 1)]
    assert auc(points) == pytest.approx((0.5 + 2.0) / 3)
    assert auc(points[:1]) == 0.0 and auc([]) is None


def test_bytes_and_wall_time_are_run_totals_averaged_over_seeds():
    a, b, _, _ = leaderboard(_runs())
    assert a.bytes_up == pytest.approx((200 + 300) / 2)  # 2 rounds of 40 + 60, of 70 + 80
    assert a.bytes_down == pytest.approx((400 + 500) / 2)  # 2 rounds x 2 clients x 100, x 125
    assert a.wall_seconds == pytest.approx((4.0 + 6.0) / 2)
    assert (b.bytes_up, b.bytes_down, b.wall_seconds) == (200, 400, 2.0)


def test_rank_advisor_is_the_last_rounds_mean_over_layers_and_seeds():
    a, b, _, _ = leaderboard(_runs())
    assert a.rank_99 == pytest.approx((3 + 5 + 4 + 8) / 4)  # round 0's ranks do not count
    assert a.kept_energy == pytest.approx((0.9 + 0.7) / 2)  # only seed 0 records it
    assert b.rank_99 is None and b.kept_energy is None


def test_mean_curves_with_min_max_bands():
    a = leaderboard(_runs())[0]
    assert [(p.round, p.n) for p in a.accuracy] == [(-1, 2), (0, 2), (1, 2)]
    assert a.accuracy[1].mean == pytest.approx(0.55)
    assert (a.accuracy[1].min, a.accuracy[1].max) == (0.5, 0.6)
    assert a.eval_loss[2].mean == pytest.approx(0.2)  # 1 - 0.8
    assert (a.eval_loss[2].min, a.eval_loss[2].max) == pytest.approx((0.1, 0.3))


def test_neighbours_within_seed_spread_are_flagged():
    a, b, c, d = leaderboard(_runs())
    assert a.within_noise_of_next is True  # |0.8 - 0.75| = 0.05 < max(0.141, 0.071)
    assert b.within_noise_of_next is False  # 0.45 > max(0.071, 0)
    assert c.within_noise_of_next is None  # D has one seed: no spread measured
    assert d.within_noise_of_next is None  # the last row has no next


def test_equal_means_without_spread_are_within_noise():
    runs = [from_records(x, s, _records([0.1, 0.5])) for x in ("X", "Y") for s in (0, 1)]
    x, y = leaderboard(runs)
    assert (x.final_std, y.final_std, x.within_noise_of_next) == (0.0, 0.0, True)


def test_a_running_cell_uses_each_runs_latest_round():
    runs = [
        from_records("A", 0, _records([0.1, 0.5, 0.7])),
        from_records("A", 1, _records([0.1, 0.6])),  # round 1 not evaluated yet
    ]
    (a,) = leaderboard(runs)
    assert a.rounds_done == 1
    assert a.final_mean == pytest.approx((0.7 + 0.6) / 2)
    assert [p.n for p in a.accuracy] == [2, 2, 1]


def test_markdown_table():
    text = to_markdown(leaderboard(_runs()))
    lines = text.splitlines()
    assert lines[0].startswith("| # | cell | seeds | rounds | final accuracy | best")
    assert lines[2] == (
        "| 1 ≈ | A | 2 | 2 | 0.800 ± 0.141 | 0.800 | 2 | 0.500 | 0.00025 | 0.00045 | 5.0 | 5.0 |"
    )
    assert lines[3].startswith("| 2 ≈ | B | 2 | 2 | 0.750 ± 0.071 | 0.800 | – | 0.588 |")
    assert lines[4].startswith("| 3 ? | C |") and lines[5].startswith("| 4 ? | D | 1 | 2 | 0.100 |")
    assert "≈: final means" in text


def test_rows_survive_json():
    rows = leaderboard(_runs())
    back = [Row.from_dict(json.loads(json.dumps(asdict(r)))) for r in rows]
    assert back == rows


def test_downloads_are_priced_per_rank_group():
    record = {
        "kind": "round",
        "round": 0,
        "clients": [0, 1, 2],
        "bytes_up": {"0": 10, "1": 20, "2": 30},
        "bytes_down": {"4": 100, "8": 200},
        "round_seconds": 1.0,
    }
    run = from_records("H", 0, [record], client_ranks=[8, 4, 8])
    assert run.rounds[0] == {"bytes_up": 60, "bytes_down": 200 + 100 + 200, "round_seconds": 1.0}
    with pytest.raises(ValueError, match="round 0: 2 rank groups; client_ranks is needed"):
        from_records("H", 0, [record])
