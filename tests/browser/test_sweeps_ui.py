"""Sweeps in a real browser against a real service: Compare strategies from the form (its
errors under the fields they name), the live sweep page to the end, its band charts and
leaderboard read from the page against GET /api/v1/sweeps/{id}, sorting, links, the list,
the offline report, the launcher on an experiment's page, delete."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import traces
from tests.browser.test_dashboard import fill_tiny_form
from tests.service.conftest import Service, tiny_config
from tests.service.test_service import _children

STRATEGIES = ["fedmomentum", "fedit"]  # the two compared (the catalog lists more)
SEEDS, ROUNDS = 2, 2
SMALLER = {  # on top of the dashboard test's tiny form: four runs of seconds each
    "name": "sweep-base",
    "federation-rounds": str(ROUNDS),
    "federation-num_clients": "2",
    "federation-clients_per_round": "2",
    "training-local_steps": "2",
}


def _final(row: dict[str, Any]) -> str:
    if row["final_mean"] is None:
        return "–"
    std = "" if row["final_std"] is None else f" ± {row['final_std']:.3f}"
    return f"{row['final_mean']:.3f}{std}"


def _noise_mark(rows: list[dict[str, Any]], i: int) -> str:
    """The mark the page must show: from the API's flags between neighbours."""
    flags = [rows[j]["within_noise_of_next"] for j in (i - 1, i) if 0 <= j < len(rows) - 1]
    return "≈" if True in flags else "?" if None in flags else ""


def _by_uid(page: Page, chart: str) -> dict[str, dict[str, Any]]:
    return {t["uid"]: t for t in traces(page, chart)}


def check_bands(page: Page, rows: list[dict[str, Any]]) -> None:
    """Each cell's mean line and min..max band in both charts equal the API's curves."""
    for chart, metric in (("accuracy", "accuracy"), ("eval-loss", "eval_loss")):
        drawn = _by_uid(page, f"sweep-chart-{chart}")
        assert set(drawn) == {f"{kind}:{r['label']}" for r in rows for kind in ("band", "mean")}
        for row in rows:
            points = row[metric]
            assert len(points) == ROUNDS + 1  # before training, then each round
            x = [p["round"] + 1 for p in points]
            mean = drawn[f"mean:{row['label']}"]
            assert mean["x"] == x == list(range(ROUNDS + 1))
            assert mean["y"] == pytest.approx([p["mean"] for p in points])
            band = drawn[f"band:{row['label']}"]
            assert band["x"] == x + x[::-1]
            assert band["y"] == pytest.approx(
                [p["max"] for p in points] + [p["min"] for p in points][::-1]
            )
        if metric == "eval_loss":  # seeds differ in loss even where a tiny model scores 0
            assert any(p["max"] > p["min"] for r in rows for p in r[metric])


def board(page: Page) -> list[dict[str, str]]:
    """The leaderboard as shown: per row its label, noise mark and every column's text."""
    result: list[dict[str, str]] = page.evaluate(
        """() => [...document.querySelectorAll('#leaderboard tbody tr')].map((tr) => ({
            label: tr.dataset.label, noise: tr.dataset.noise,
            ...Object.fromEntries([...tr.querySelectorAll('td[data-col]')].map(
                (td) => [td.dataset.col, td.textContent])),
            links: [...tr.querySelectorAll('td.runs a')].map((a) => a.getAttribute('href')),
        }))"""
    )
    return result


def check_leaderboard(page: Page, sweep: dict[str, Any]) -> None:
    rows = sweep["leaderboard"]
    shown = board(page)
    assert [r["label"] for r in shown] == [r["label"] for r in rows]  # rank order first
    assert {r["label"] for r in rows} == set(STRATEGIES)
    ids = {e["name"]: e["id"] for e in sweep["experiments"]}
    for i, (row, seen) in enumerate(zip(rows, shown, strict=True)):
        mark = _noise_mark(rows, i)
        assert seen["noise"] == mark
        assert seen["final_mean"] == _final(row) + (f" {mark}" if mark else "")
        assert seen["best_mean"] == f"{row['best_mean']:.3f}"
        assert seen["auc"] == f"{row['auc']:.3f}"
        assert seen["rounds_to_best"] == (
            "never" if row["rounds_to_best"] is None else str(row["rounds_to_best"])
        )
        assert seen["seeds"] == str(SEEDS) and seen["rounds_done"] == str(ROUNDS)
        assert seen["rank_99"] == ("–" if row["rank_99"] is None else f"{row['rank_99']:.1f}")
        assert row["bytes_up"] > 0 and seen["bytes_up"].endswith("B")
        names = [f"{sweep['name']} / {row['label']} / seed {s}" for s in range(SEEDS)]
        assert seen["links"] == [f"#/experiments/{ids[name]}" for name in names]


@contextmanager
def worker_paused(service: Service) -> Iterator[None]:
    """The embedded worker stopped (SIGSTOP) for the block: runs of a warm worker take well
    under a second, so without it a sweep can finish before its page first polls."""
    assert service.api_proc is not None
    (worker,) = _children(service.api_proc.popen.pid)
    os.kill(worker, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(worker, signal.SIGCONT)


def launch_from_form(page: Page, service: Service, artifacts: Path) -> str:
    """Compare strategies on the new-experiment form; the server's errors land under their
    fields first; returns the sweep's id."""
    fill_tiny_form(page, service.url)
    for field, value in SMALLER.items():
        page.fill(f"#field-{field}", value)
    for box in page.locator("input[name=sweep-strategy]").all():
        box.set_checked(box.get_attribute("value") in STRATEGIES)
    page.fill("#sweep-name", "ui-sweep")
    before = service.http.get("/sweeps").json()["count"]

    page.fill("#sweep-seeds", "0")
    page.click("#compare-strategies")
    expect(page.locator("#error-sweep-seeds")).to_contain_text("a count of seeds must be 1..200")
    page.fill("#sweep-seeds", str(SEEDS))
    expect(page.locator("#compare-strategies")).to_have_text("Compare strategies (4 runs)")
    page.fill("#field-federation-rounds", "0")  # a base field: the form's own field shows it
    page.click("#compare-strategies")
    expect(page.locator("[id='error-federation.rounds']")).to_contain_text("greater than 0")
    expect(page.locator("#error-sweep-seeds")).to_be_empty()
    assert service.http.get("/sweeps").json()["count"] == before  # nothing was created
    page.locator("#sweep-launch").screenshot(path=artifacts / "dashboard-sweep-launch.png")

    page.fill("#field-federation-rounds", str(ROUNDS))
    page.click("#compare-strategies")
    page.wait_for_url("**/#/sweeps/*")
    return page.url.rsplit("/", 1)[-1]


def test_compare_strategies_from_the_form_to_a_finished_leaderboard(
    page: Page, service: Service, artifacts: Path, tmp_path: Path
) -> None:
    with worker_paused(service):
        sweep_id = launch_from_form(page, service, artifacts)
        spec = service.http.get(f"/sweeps/{sweep_id}").json()["spec"]
        assert (spec["strategies"], spec["seeds"], spec["base"]["model"]) == (
            STRATEGIES,
            SEEDS,
            "tiny-llama",
        )
        # The page follows the sweep before any run has finished.
        page.wait_for_selector("#app[data-live=polling]", timeout=60_000)
        expect(page.locator("#sweep-progress")).to_have_text("0 / 4")
        page.evaluate("window.sameDocument = true")
    # Live: the runs finish and the leaderboard fills in without a reload.
    page.wait_for_selector("#app[data-live=finished]", timeout=400_000)
    assert page.evaluate("window.sameDocument === true")
    sweep = service.http.get(f"/sweeps/{sweep_id}").json()
    assert (sweep["status"], sweep["n_experiments"]) == ("completed", SEEDS * len(STRATEGIES))
    expect(page.locator("#sweep-progress")).to_have_text("4 / 4")
    expect(page.locator("#sweep-head .badge").first).to_have_text("completed")

    check_bands(page, sweep["leaderboard"])
    check_leaderboard(page, sweep)
    expect(page.locator("#sweep-runs tbody tr")).to_have_count(4)
    page.screenshot(path=artifacts / "dashboard-sweep.png", full_page=True)

    # Sorting: the first click on a column orders it high to low, the second low to high.
    page.click("button[data-sort=wall_seconds]")
    by_wall = sorted(sweep["leaderboard"], key=lambda r: -r["wall_seconds"])
    assert [r["label"] for r in board(page)] == [r["label"] for r in by_wall]
    page.click("button[data-sort=wall_seconds]")
    assert [r["label"] for r in board(page)] == [r["label"] for r in by_wall[::-1]]

    # The offline report: downloaded, opened from disk with no server.
    with page.expect_download() as info:
        page.click("#sweep-report")
    report = tmp_path / "sweep-report.html"
    info.value.save_as(report)
    page.goto(report.as_uri())
    expect(page.locator("#leaderboard tbody tr")).to_have_count(len(STRATEGIES))
    drawn = [t for t in traces(page, "chart-accuracy") if t["name"] in STRATEGIES]
    api_means = {r["label"]: [p["mean"] for p in r["accuracy"]] for r in sweep["leaderboard"]}
    assert {t["name"]: pytest.approx(t["y"]) for t in drawn} == api_means

    # The list, then an experiment of the sweep: its link back, and the launcher there.
    page.goto(f"{service.url}/#/sweeps")
    row = page.locator(f"#sweeps tr[data-id='{sweep_id}']")
    expect(row).to_contain_text("ui-sweep")
    expect(row).to_contain_text("4 / 4")
    first = sweep["experiments"][0]
    page.goto(f"{service.url}/#/experiments/{first['id']}")
    expect(page.locator("#in-sweep")).to_have_attribute("href", f"#/sweeps/{sweep_id}")
    expect(page.locator("#sweep-launch input[name=sweep-strategy]")).to_have_count(
        len(service.http.get("/catalog").json()["strategies"])
    )
    page.fill("#sweep-seeds", "0")
    page.click("#compare-strategies")
    expect(page.locator("#error-sweep-seeds")).to_contain_text("a count of seeds must be 1..200")

    # Delete: the sweep and its experiments go; the page goes back to the list.
    page.goto(f"{service.url}/#/sweeps/{sweep_id}")
    page.once("dialog", lambda d: d.accept())
    page.click("#sweep-delete")
    page.wait_for_url("**/#/sweeps")
    assert service.http.get(f"/sweeps/{sweep_id}").status_code == 404
    assert service.http.get(f"/experiments/{first['id']}").status_code == 404


def test_cancel_stops_a_running_sweep_and_the_page_stops_polling(
    page: Page, service: Service
) -> None:
    base = tiny_config(federation={"num_clients": 2, "clients_per_round": 2, "rounds": 20})
    body = {"name": "to-cancel", "base": base, "strategies": STRATEGIES, "seeds": 1}
    response = service.http.post("/sweeps", json=body)
    assert response.status_code == 201, response.text
    sweep_id = response.json()["id"]
    page.goto(f"{service.url}/#/sweeps/{sweep_id}")
    page.wait_for_selector("#app[data-live=polling]")
    expect(page.locator("#sweep-delete")).to_be_disabled()  # not while runs are active
    expect(page.locator("#sweep-report")).to_have_attribute("aria-disabled", "true")

    page.once("dialog", lambda d: d.accept())
    page.click("#sweep-cancel")
    page.wait_for_selector("#app[data-live=finished]", timeout=120_000)
    sweep = service.http.get(f"/sweeps/{sweep_id}").json()
    assert sweep["status"] == "cancelled"
    assert sweep["counts"] == {"cancelled": len(STRATEGIES)}
    expect(page.locator("#sweep-head .badge").first).to_have_text("cancelled")
    expect(page.locator("#sweep-progress")).to_have_text(f"{len(STRATEGIES)} / {len(STRATEGIES)}")
    expect(page.locator("#sweep-cancel")).to_have_count(0)
    expect(page.locator("#sweep-delete")).to_be_enabled()
    expect(page.locator("#sweep-report")).to_have_attribute("aria-disabled", "false")
