"""`fedmomentum sweep` on tiny-llama: every run directory, the leaderboard recomputed by hand
from the runs' metrics.jsonl, runs of one seed sharing split and initial adapter, resume."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from backend.cli import main

TINY = {
    "name": "tiny",
    "model": "tiny-llama",
    "dataset": "arith",
    "device": "cpu",
    "data": {"n_train": 48, "n_eval": 8, "partition": "iid"},
    "lora": {"rank": 4, "alpha": 8, "dropout": 0.0},
    "federation": {"num_clients": 3, "clients_per_round": 2, "rounds": 2},
    "training": {"local_steps": 2, "batch_size": 4, "max_length": 48, "lr": 0.01},
    "eval": {"batch_size": 8, "max_new_tokens": 4},
}
DIRS = ["fedit-seed0", "fedit-seed1", "fedmomentum-seed0", "fedmomentum-seed1"]


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _sweep(tmp: Path, *args: str) -> int:
    config = tmp / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    return main(["sweep", str(config), "--out", str(tmp / "out"), "--quiet", *args])


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sweep")
    assert _sweep(tmp, "--strategies", "fedit,fedmomentum", "--seeds", "2") == 0
    return tmp / "out"


def test_every_run_has_its_directory(swept):
    assert sorted(p.name for p in swept.iterdir() if p.is_dir()) == DIRS
    for name in DIRS:
        cfg = yaml.safe_load((swept / name / "config.yaml").read_text())
        strategy, seed = name.rsplit("-seed", 1)
        assert (cfg["strategy"], cfg["seed"]) == (strategy, int(seed))
        assert cfg["name"] == f"tiny / {strategy} / seed {seed}"
        assert not (swept / name / "export").exists()  # no exports unless asked for
    doc = json.loads((swept / "sweep.json").read_text())
    assert [(r["dir"], r["status"], r["rounds_done"]) for r in doc["runs"]] == [
        ("fedit-seed0", "completed", 2),
        ("fedmomentum-seed0", "completed", 2),
        ("fedit-seed1", "completed", 2),
        ("fedmomentum-seed1", "completed", 2),
    ]


def test_runs_of_one_seed_share_split_and_initial_adapter(swept):
    def files(name: str) -> tuple[bytes, bytes]:
        split = json.loads((swept / name / "split.json").read_text())["clients"]
        adapter = (swept / name / "state" / "round-0000" / "adapter-r4.safetensors").read_bytes()
        return json.dumps(split).encode(), adapter

    assert files("fedit-seed0") == files("fedmomentum-seed0")
    assert files("fedit-seed1") == files("fedmomentum-seed1")
    assert files("fedit-seed0")[1] != files("fedit-seed1")[1]  # another seed, another start


def _by_hand(swept: Path, strategy: str) -> dict:
    """The leaderboard numbers of one cell, recomputed from its runs' metrics.jsonl."""
    runs = [_lines(swept / f"{strategy}-seed{s}") for s in (0, 1)]
    evals = [{r["round"]: r for r in lines if r["kind"] == "eval"} for lines in runs]
    rounds = [[r for r in lines if r["kind"] == "round"] for lines in runs]
    finals = [e[1]["accuracy"] for e in evals]
    loss = [statistics.fmean(e[t]["eval_loss"] for e in evals) for t in (-1, 0, 1)]
    acc = [statistics.fmean(e[t]["accuracy"] for e in evals) for t in (-1, 0, 1)]
    # every client downloads the one rank-4 group's adapter
    down = [sum(len(r["clients"]) * r["bytes_down"]["4"] for r in rs) for rs in rounds]
    return {
        "final_mean": statistics.fmean(finals),
        "final_std": statistics.stdev(finals),
        "best_mean": statistics.fmean(max(e[0]["accuracy"], e[1]["accuracy"]) for e in evals),
        "auc": ((acc[0] + acc[1]) / 2 + (acc[1] + acc[2]) / 2) / 2,
        "bytes_up": statistics.fmean(sum(sum(r["bytes_up"].values()) for r in rs) for rs in rounds),
        "bytes_down": statistics.fmean(down),
        "wall_seconds": statistics.fmean(sum(r["round_seconds"] for r in rs) for rs in rounds),
        "loss_curve": loss,
        "loss_min": [min(e[t]["eval_loss"] for e in evals) for t in (-1, 0, 1)],
    }


@pytest.mark.parametrize("strategy", ["fedit", "fedmomentum"])
def test_leaderboard_equals_the_numbers_recomputed_from_the_runs(swept, strategy):
    doc = json.loads((swept / "sweep.json").read_text())
    (row,) = [r for r in doc["leaderboard"] if r["label"] == strategy]
    expected = _by_hand(swept, strategy)
    for key in ("final_mean", "final_std", "best_mean", "auc"):
        assert row[key] == pytest.approx(expected[key]), key
    for key in ("bytes_up", "bytes_down", "wall_seconds"):
        assert row[key] == pytest.approx(expected[key]), key
    assert row["bytes_up"] > 0 and row["bytes_down"] > 0
    assert [p["mean"] for p in row["eval_loss"]] == pytest.approx(expected["loss_curve"])
    assert [p["min"] for p in row["eval_loss"]] == pytest.approx(expected["loss_min"])
    assert row["seeds"] == [0, 1] and row["rounds_done"] == 2


def test_leaderboard_markdown_and_report(swept):
    text = (swept / "leaderboard.md").read_text()
    assert text.startswith("# Sweep tiny")
    assert "| fedit | 2 | 2 |" in text and "| fedmomentum | 2 | 2 |" in text
    page = (swept / "report.html").read_text()
    assert "FedMomentum sweep: tiny" in page and 'id="chart-eval_loss"' in page
    assert "https://" not in page.split("<script>", 1)[0]  # nothing fetched before plotly


def test_a_second_sweep_resumes_and_runs_only_what_is_new(swept):
    tmp = swept.parent
    before = {n: (swept / n / "metrics.jsonl").stat().st_mtime_ns for n in DIRS}

    assert _sweep(tmp, "--strategies", "fedit,fedmomentum", "--seeds", "0,1,2") == 0

    assert {n: (swept / n / "metrics.jsonl").stat().st_mtime_ns for n in DIRS} == before
    doc = json.loads((swept / "sweep.json").read_text())
    assert len(doc["runs"]) == 6 and {r["status"] for r in doc["runs"]} == {"completed"}
    assert [r["seeds"] for r in doc["leaderboard"]] == [[0, 1, 2], [0, 1, 2]]


def test_a_changed_base_is_refused_instead_of_resumed(swept, capsys):
    tmp = swept.parent
    config = tmp / "changed.yaml"
    config.write_text(yaml.safe_dump({**TINY, "training": {**TINY["training"], "lr": 0.02}}))
    args = ["--strategies", "fedit", "--seeds", "1", "--out", str(swept), "--quiet"]

    assert main(["sweep", str(config), *args]) == 2

    err = capsys.readouterr().err
    assert f"{swept / 'fedit-seed0'} holds a run with a different config" in err


def test_a_grid_by_set_with_exports(tmp_path):
    args = [
        "--export",
        "--strategies",
        "fedmomentum",
        "--seeds",
        "1",
        "--set",
        "aggregation.factor_split=sqrt,b",
    ]
    assert _sweep(tmp_path, *args) == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "fedmomentum__aggregation.factor_split=b-seed0",
        "fedmomentum__aggregation.factor_split=sqrt-seed0",
    ]
    cfg = yaml.safe_load(
        (out / "fedmomentum__aggregation.factor_split=b-seed0/config.yaml").read_text()
    )
    assert cfg["aggregation"]["factor_split"] == "b"
    assert all((d / "export" / "export.json").is_file() for d in out.iterdir() if d.is_dir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategies", "fedit,fedavg"], "strategies[1]: unknown strategy 'fedavg'"),
        (["--set", "lora.rnak=4,8"], "grid.lora.rnak: unknown config field"),
        (["--set", "lora.rank=4,0"], "grid.lora.rank[1]: Input should be greater than 0"),
        (["--seeds", "x"], "seeds: 'x' is neither a count nor"),
        (
            ["--seeds", "30", "--set", "lora.rank=1,2,3"],
            "this sweep expands to 630 experiments; at most 200",
        ),
    ],
)
def test_bad_sweeps_are_refused_before_any_run(tmp_path, capsys, args, message):
    assert _sweep(tmp_path, *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
