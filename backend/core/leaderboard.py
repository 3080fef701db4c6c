"""A sweep's leaderboard: per cell (strategy and grid values), statistics over its seeds.
Pure: it takes the runs' metrics records and returns rows; the API, the CLI and the report
render them.

Definitions (``round`` is a metrics record's round: -1 is the evaluation before training,
round t's evaluation is of the model after t + 1 rounds):

- final accuracy: each run's accuracy at the last round it has evaluated; the row shows the
  mean and the sample standard deviation over the cell's seeds (None with one seed).
- best accuracy: the mean over seeds of each run's best accuracy after training (round >= 0).
- rounds to best: the number of rounds after which the cell's mean accuracy curve first
  reaches the highest final mean of all cells (0: the initial model already does); None if
  it never does. The leader reaches it at its last round at the latest.
- AUC: the area under the mean accuracy curve, trapezoids between evaluations, x in rounds
  trained (the initial evaluation at 0), divided by the rounds it spans: the run's average
  accuracy, 1.0 at most. Comparable between cells with the same number of rounds.
- bytes up/down and wall time: totals over a run's rounds, mean over seeds. Up: every
  client's upload; down: every sampled client's download of its rank group's adapter. Wall
  time: the sum of the rounds' ``round_seconds`` (the initial evaluation is not counted).
- rank advisor: the mean over layers and seeds of the last round's ``rank_for_energy["0.99"]``
  (the rank that would have kept 99% of the update's energy); None where not recorded.
- within noise: two neighbouring rows (sorted by final mean) are flagged when their final
  means differ by no more than their seed spread, the larger of their two sample standard
  deviations: such a difference is within the seed-to-seed variation of either cell and is
  no evidence of an order (equal means always are). It is None (cannot tell) when either
  cell has fewer than two seeds with an evaluation, so no spread is measured.

While a sweep runs, runs of one cell may have reached different rounds: the curves are over
the runs that have each round (``n`` per point) and "final" is each run's latest round.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_EPS = 1e-12  # a mean curve "reaches" a mean computed the same way in another order
ENERGY = "0.99"  # the rank advisor's energy level


@dataclass(frozen=True)
class RunMetrics:
    """What the leaderboard needs of one run (see ``from_records``)."""

    label: str  # the run's cell
    seed: int
    evals: dict[int, dict[str, float]]  # round -> {"accuracy": ..., "eval_loss": ...}
    rounds: dict[int, dict[str, Any]]  # round -> totals {"bytes_up", "bytes_down", "round_seconds"}
    diagnostics: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # round -> layers


@dataclass(frozen=True)
class Point:
    """One round of a cell's mean curve, with its min..max band over seeds."""

    round: int
    mean: float
    min: float
    max: float
    n: int  # seeds that have this round


@dataclass
class Row:
    """One cell of the leaderboard (see the module docstring for each column)."""

    label: str
    seeds: list[int]
    rounds_done: int  # rounds every seed of the cell has evaluated
    final_mean: float | None
    final_std: float | None
    best_mean: float | None
    rounds_to_best: int | None
    auc: float | None
    bytes_up: float
    bytes_down: float
    wall_seconds: float
    rank_99: float | None
    kept_energy: float | None
    accuracy: list[Point]
    eval_loss: list[Point]
    within_noise_of_next: bool | None = None  # this row and the one below it

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Row:
        """A row back from its JSON form (``dataclasses.asdict``)."""
        curves = {k: [Point(**p) for p in data[k]] for k in ("accuracy", "eval_loss")}
        return cls(**{**data, **curves})


def from_records(
    label: str,
    seed: int,
    records: Iterable[Mapping[str, Any]],
    client_ranks: Sequence[int] | None = None,
) -> RunMetrics:
    """A run's metrics from its records (metrics.jsonl lines or stored metric rows as
    ``{"kind", "round", "layer", ...values}``); other kinds are ignored. ``client_ranks``
    (client -> LoRA rank) prices each client's download at its rank group's size; without it
    every client must be in the one rank group."""
    evals: dict[int, dict[str, float]] = {}
    rounds: dict[int, dict[str, Any]] = {}
    diagnostics: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        t = int(r["round"])
        if r["kind"] == "eval":
            evals[t] = {k: r[k] for k in ("accuracy", "eval_loss") if r.get(k) is not None}
        elif r["kind"] == "round":
            rounds[t] = round_totals(r, client_ranks)
        elif r["kind"] == "diagnostics":
            diagnostics.setdefault(t, []).append(dict(r))
    return RunMetrics(label, seed, evals, rounds, diagnostics)


def round_totals(record: Mapping[str, Any], client_ranks: Sequence[int] | None) -> dict[str, Any]:
    """A round record's traffic as totals: its ``bytes_up`` is per client, its
    ``bytes_down`` per rank group (what each client of the group downloads), and every client
    sampled in the round downloads (as the dashboard counts it)."""
    down: Mapping[str, int] = {str(k): v for k, v in (record.get("bytes_down") or {}).items()}
    if client_ranks is None and len(down) > 1:
        raise ValueError(
            f"round {record['round']}: {len(down)} rank groups; client_ranks is needed"
        )
    per_client = [
        down.get(str(client_ranks[c]), 0) if client_ranks else next(iter(down.values()), 0)
        for c in record.get("clients") or []
    ]
    return {
        "bytes_up": sum((record.get("bytes_up") or {}).values()),
        "bytes_down": sum(per_client),
        "round_seconds": record.get("round_seconds") or 0.0,
    }


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _std(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def curve(runs: list[RunMetrics], metric: str) -> list[Point]:
    """Mean and min..max over the runs of ``metric`` at each evaluated round."""
    by_round: dict[int, list[float]] = {}
    for run in runs:
        for t, scores in run.evals.items():
            if metric in scores:
                by_round.setdefault(t, []).append(scores[metric])
    return [
        Point(t, statistics.fmean(v), min(v), max(v), len(v)) for t, v in sorted(by_round.items())
    ]


def final_accuracy(run: RunMetrics) -> float | None:
    """Accuracy at the last round the run has evaluated (None before any evaluation)."""
    scored = [t for t, s in run.evals.items() if "accuracy" in s]
    return run.evals[max(scored)]["accuracy"] if scored else None


def best_accuracy(run: RunMetrics) -> float | None:
    """The run's best accuracy after training (rounds >= 0)."""
    values = [s["accuracy"] for t, s in run.evals.items() if t >= 0 and "accuracy" in s]
    return max(values) if values else None


def auc(points: list[Point]) -> float | None:
    """Trapezoid area under a curve, x = rounds trained (round + 1), over the rounds spanned."""
    if not points:
        return None
    if len(points) == 1:
        return points[0].mean
    area = sum(
        (b.round - a.round) * (a.mean + b.mean) / 2
        for a, b in zip(points, points[1:], strict=False)
    )
    return area / (points[-1].round - points[0].round)


def rounds_to_reach(points: list[Point], target: float | None) -> int | None:
    """Rounds trained when the curve first reaches ``target`` (None: never)."""
    if target is None:
        return None
    return next((p.round + 1 for p in points if p.mean >= target - _EPS), None)


def _total(run: RunMetrics, key: str) -> float:
    return float(sum(r[key] for r in run.rounds.values()))


def rank_advice(run: RunMetrics) -> list[float]:
    """The last round's rank_for_energy["0.99"] of each layer that records it."""
    if not run.diagnostics:
        return []
    layers = run.diagnostics[max(run.diagnostics)]
    return [
        float(d["rank_for_energy"][ENERGY])
        for d in layers
        if isinstance(d.get("rank_for_energy"), Mapping) and ENERGY in d["rank_for_energy"]
    ]


def kept_energy(run: RunMetrics) -> list[float]:
    """The last round's kept_energy of each layer that records it."""
    if not run.diagnostics:
        return []
    layers = run.diagnostics[max(run.diagnostics)]
    return [float(d["kept_energy"]) for d in layers if d.get("kept_energy") is not None]


def _row(label: str, runs: list[RunMetrics]) -> Row:
    finals = [f for f in map(final_accuracy, runs) if f is not None]
    bests = [b for b in map(best_accuracy, runs) if b is not None]
    acc = curve(runs, "accuracy")
    done = [max((t for t in r.evals if t >= 0), default=-1) + 1 for r in runs]
    return Row(
        label=label,
        seeds=sorted(r.seed for r in runs),
        rounds_done=min(done),
        final_mean=_mean(finals),
        final_std=_std(finals),
        best_mean=_mean(bests),
        rounds_to_best=None,  # needs every row: set by leaderboard()
        auc=auc(acc),
        bytes_up=statistics.fmean(_total(r, "bytes_up") for r in runs),
        bytes_down=statistics.fmean(_total(r, "bytes_down") for r in runs),
        wall_seconds=statistics.fmean(_total(r, "round_seconds") for r in runs),
        rank_99=_mean([v for r in runs for v in rank_advice(r)]),
        kept_energy=_mean([v for r in runs for v in kept_energy(r)]),
        accuracy=acc,
        eval_loss=curve(runs, "eval_loss"),
    )


def within_noise(a: Row, b: Row) -> bool | None:
    """Whether two rows' final means differ by no more than the larger seed std (None: a row
    has no measured spread or no final accuracy)."""
    if a.final_mean is None or b.final_mean is None or a.final_std is None or b.final_std is None:
        return None
    return abs(a.final_mean - b.final_mean) <= max(a.final_std, b.final_std)


def _order(row: Row) -> tuple[bool, float, str]:
    return (row.final_mean is None, -(row.final_mean or 0.0), row.label)


def leaderboard(runs: Iterable[RunMetrics]) -> list[Row]:
    """One row per cell, best final mean first (cells without an evaluation last)."""
    by_cell: dict[str, list[RunMetrics]] = {}
    for run in runs:
        by_cell.setdefault(run.label, []).append(run)
    rows = sorted((_row(label, cell) for label, cell in by_cell.items()), key=_order)
    target = max((r.final_mean for r in rows if r.final_mean is not None), default=None)
    for row in rows:
        row.rounds_to_best = rounds_to_reach(row.accuracy, target)
    for a, b in zip(rows, rows[1:], strict=False):
        a.within_noise_of_next = within_noise(a, b)
    return rows


# ---- markdown -----------------------------------------------------------------------------


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _final(row: Row) -> str:
    if row.final_mean is None:
        return "–"
    std = "" if row.final_std is None else f" ± {row.final_std:.3f}"
    return f"{row.final_mean:.3f}{std}"


def _noise_mark(rows: list[Row], i: int) -> str:
    """'≈' on a row within noise of a neighbour, '?' where one cannot tell."""
    pairs = [rows[j].within_noise_of_next for j in (i - 1, i) if 0 <= j < len(rows) - 1]
    if True in pairs:
        return " ≈"
    return " ?" if None in pairs else ""


def to_markdown(rows: list[Row]) -> str:
    """The leaderboard as a markdown table, with a legend for its marks."""
    head = (
        "| # | cell | seeds | rounds | final accuracy | best | rounds to best | AUC "
        "| MB up | MB down | wall s | rank @99% |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {i + 1}{_noise_mark(rows, i)} | {r.label} | {len(r.seeds)} | {r.rounds_done} "
        f"| {_final(r)} | {_num(r.best_mean)} | "
        f"{'–' if r.rounds_to_best is None else r.rounds_to_best} | {_num(r.auc)} "
        f"| {r.bytes_up / 1e6:.3g} | {r.bytes_down / 1e6:.3g} | {r.wall_seconds:.1f} "
        f"| {_num(r.rank_99, 1)} |"
        for i, r in enumerate(rows)
    ]
    legend = (
        "\n≈: final means of this row and a neighbour differ by no more than the larger seed "
        "standard deviation (not evidence of an order); ?: a neighbour has one seed, no spread "
        "measured. Final accuracy: mean ± sample std over seeds; rounds to best: rounds until "
        "the mean curve first reaches the best final mean; AUC: mean accuracy over the rounds.\n"
    )
    return head + "\n".join(lines) + "\n" + legend
