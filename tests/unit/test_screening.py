"""Screening of client uploads on small hand-written tensors: what is excluded, and why."""

from __future__ import annotations

import math

import pytest
import torch

from workers.federated import screen_updates
from workers.federated.screening import check_upload, lower_median, update_norm

A, B = "layers.0.q_proj.lora_A.weight", "layers.0.q_proj.lora_B.weight"
START = {A: torch.tensor([[1.0, 0.0, 0.0]]), B: torch.zeros(2, 1)}  # r = 1, d_in 3, d_out 2


def moved(a: list[float], b: list[float]) -> dict[str, torch.Tensor]:
    """An upload whose A row is ``a`` and whose B column is ``b``."""
    return {A: torch.tensor([a]), B: torch.tensor(b).reshape(2, 1)}


def test_update_norm_is_the_frobenius_norm_of_the_change() -> None:
    upload = moved([1.0, 3.0, 0.0], [0.0, 4.0])  # changes: 3 in A, 4 in B

    assert update_norm(upload, START) == 5.0


def test_lower_median_is_one_of_the_values() -> None:
    assert lower_median([4.0, 1.0, 3.0, 2.0]) == 2.0
    assert lower_median([1.0, 1e6]) == 1.0  # the mean of the middle two would be ~5e5
    assert lower_median([7.0]) == 7.0


NAN, INF, F64 = float("nan"), float("inf"), torch.float64
MALFORMED = {  # upload -> the reason it is excluded
    "nan": ({A: torch.tensor([[NAN, 0.0, 0.0]]), B: START[B]}, "lora_A.weight: NaN or inf"),
    "inf": ({A: START[A], B: torch.tensor([[INF], [0.0]])}, "lora_B.weight: NaN or inf"),
    "shape": ({A: torch.zeros(2, 3), B: START[B]}, "lora_A.weight: shape (2, 3), expected (1, 3)"),
    "dtype": ({A: START[A], B: torch.zeros(2, 1, dtype=F64)}, "float64, expected torch.float32"),
    "missing": ({A: START[A]}, f"missing tensor {B!r}"),
    "extra": ({**START, "head.weight": torch.zeros(1)}, "unexpected tensor 'head.weight'"),
}


@pytest.mark.parametrize(("upload", "reason"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_or_non_finite_upload_is_excluded_with_its_reason(
    upload: dict[str, torch.Tensor], reason: str
) -> None:
    uploads = {"0": moved([1.0, 0.1, 0.0], [0.1, 0.0]), "1": upload}

    result = screen_updates(uploads, {"0": START, "1": START}, max_norm_ratio=10)

    assert result.kept == ["0"]
    assert list(result.excluded) == ["1"]
    assert reason in result.excluded["1"]
    assert check_upload(upload, START) == result.excluded["1"]
    assert list(result.norms) == ["0"]  # no norm is taken of a malformed upload


def test_an_outsized_update_is_excluded_even_with_two_clients() -> None:
    honest = moved([1.0, 0.1, 0.0], [0.0, 0.1])  # norm 0.1414
    scaled = {k: v * 1e6 for k, v in honest.items()}  # a blown-up copy: norm ~1.01e6

    result = screen_updates({"0": honest, "1": scaled}, {"0": START, "1": START}, 10)

    assert result.kept == ["0"]
    assert result.excluded["1"].startswith("update norm 1.01e+06 is more than 10 x")
    assert "median 0.141" in result.excluded["1"]
    assert result.norms["0"] == pytest.approx(math.sqrt(0.02))


def test_honest_spread_below_the_ratio_is_kept_and_the_rule_can_be_off() -> None:
    uploads = {
        "0": moved([1.0, 0.1, 0.0], [0.0, 0.0]),  # norm 0.1
        "1": moved([1.0, 0.0, 0.5], [0.0, 0.0]),  # norm 0.5: 5x the median, under 10x
        "2": moved([1.0, 0.0, 0.0], [0.2, 0.0]),  # norm 0.2
    }
    starts = dict.fromkeys(uploads, START)

    kept = screen_updates(uploads, starts, 10)
    strict = screen_updates(uploads, starts, 2)
    off = screen_updates({**uploads, "3": moved([1e9, 0.0, 0.0], [0.0, 0.0])},
                         {**starts, "3": START}, None)  # fmt: skip

    assert kept.kept == ["0", "1", "2"] and kept.excluded == {}
    assert strict.kept == ["0", "2"] and list(strict.excluded) == ["1"]  # median 0.2, 0.5 > 0.4
    assert off.kept == ["0", "1", "2", "3"]


def test_each_client_is_measured_from_its_own_rank_groups_start() -> None:
    start_r2 = {A: torch.ones(2, 3), B: torch.ones(2, 2)}
    uploads = {
        "0": moved([1.0, 0.1, 0.0], [0.1, 0.0]),
        "1": {A: torch.ones(2, 3) * 1.1, B: torch.ones(2, 2)},
    }

    result = screen_updates(uploads, {"0": START, "1": start_r2}, 10)

    assert result.kept == ["0", "1"]
    assert result.norms["1"] == pytest.approx(math.sqrt(6 * 0.01))  # the change, not the factor


def test_every_upload_excluded_leaves_nothing_kept() -> None:
    nan = {A: torch.full((1, 3), float("nan")), B: torch.zeros(2, 1)}

    result = screen_updates({"0": nan, "1": {A: torch.zeros(5, 5)}}, {"0": START, "1": START}, 10)

    assert result.kept == [] and set(result.excluded) == {"0", "1"}


def test_a_ratio_of_one_or_less_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="max_norm_ratio: must be > 1"):
        screen_updates({}, {}, 1.0)
