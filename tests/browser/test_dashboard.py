"""The dashboard in a real browser against a real service: launch from the form and watch it
live, field errors, downloads, the static report, compare, empty and reconnecting states."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from itertools import accumulate
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from safetensors import safe_open

from tests.browser.conftest import trace, traces
from tests.service.conftest import ROOT, Service, _env

ROUNDS, CLIENTS, STEPS = 3, 3, 3
FORM = {  # a tiny-llama run typed into the form (everything else stays at the demo defaults)
    "name": "browser-run",
    "federation-rounds": str(ROUNDS),
    "federation-num_clients": str(CLIENTS),
    "federation-clients_per_round": str(CLIENTS),
    "training-local_steps": str(STEPS),
    "training-max_length": "64",
    "data-n_train": "36",
    "data-n_eval": "8",
    "eval-max_new_tokens": "4",
}
CHARTS = ("accuracy", "eval-loss", "client-loss", "spectrum", "rank-advisor", "residual",
          "naive-error", "momentum", "bytes", "timeline")  # fmt: skip


def fill_tiny_form(page: Page, url: str) -> None:
    page.goto(f"{url}/#/new")
    page.wait_for_selector("#field-federation-rounds")
    page.select_option("#field-model", "tiny-llama")
    page.select_option("#field-dataset", "arith")
    page.locator("details[data-group=eval] > summary").click()
    for field, value in FORM.items():
        page.fill(f"#field-{field}", value)


def rounds_x(n: int, first: int = 1) -> list[int]:
    return list(range(first, n + 1))


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _rank_for(energy: list[float], share: float) -> int:
    """The smallest k whose first k squared singular values (running sums) reach the share."""
    return next(k for k, e in enumerate(energy, 1) if e >= share * energy[-1])


def check_rank_advisor(page: Page, diagnostics: list[dict[str, Any]], rank: int) -> None:
    """The ranks for 90/95/99% of the energy and the sentence under them, against what the
    API's singular values give here (summed in the same order: the same floats)."""
    spectra: dict[int, list[list[float]]] = {}
    for m in diagnostics:
        spectra.setdefault(m["round"], []).append(m["values"]["singular_values"])
    rounds = sorted(spectra)
    energy = {r: [list(accumulate(s * s for s in sv)) for sv in spectra[r]] for r in rounds}
    lines = {t["uid"]: t for t in traces(page, "chart-rank-advisor")}
    assert list(lines) == ["rank-0.9", "rank-0.95", "rank-0.99", "kept-rank"]
    for share in (0.9, 0.95, 0.99):
        needed = [_mean([_rank_for(e, share) for e in energy[r]]) for r in rounds]
        assert lines[f"rank-{share}"]["x"] == [r + 1 for r in rounds]
        assert lines[f"rank-{share}"]["y"] == pytest.approx(needed), share
    assert lines["kept-rank"]["y"] == [rank] * len(rounds)
    note = page.inner_text("#note-rank-advisor")
    said = re.fullmatch(
        rf"rank {rank} kept ((?:over )?[\d.]+)% of round {rounds[-1] + 1}'s update; "
        rf"rank {rank // 2} would have kept ((?:over )?[\d.]+)%\.",
        note,
    )
    assert said, note
    last = energy[rounds[-1]]
    for printed, k in zip(said.groups(), (rank, rank // 2), strict=True):
        kept = 100 * _mean([e[k - 1] / e[-1] for e in last])  # mean over layers
        if printed == "over 99.9":  # what rounds to 100% without being all of it
            assert 99.95 <= kept < 100, note
        else:
            assert float(printed) == pytest.approx(kept, abs=0.051), note


def check_run_charts(page: Page, service: Service, experiment_id: str) -> None:
    """Each chart holds one point per round (read from plotly's own graph divs), matching
    the API's metrics."""
    evals = service.metrics(experiment_id, "eval")
    accuracy = trace(page, "chart-accuracy", "accuracy")
    assert accuracy["x"] == rounds_x(ROUNDS, 0)  # 0: the evaluation before training
    assert accuracy["y"] == pytest.approx([m["values"]["accuracy"] for m in evals])
    loss = trace(page, "chart-eval-loss", "eval_loss")
    assert loss["x"] == rounds_x(ROUNDS, 0)
    assert loss["y"] == pytest.approx([m["values"]["eval_loss"] for m in evals])

    client_loss = traces(page, "chart-client-loss")
    assert sorted(t["name"] for t in client_loss) == [f"client {c}" for c in range(CLIENTS)]
    for t in client_loss:  # every round, every local step
        assert len(t["x"]) == ROUNDS * STEPS
        assert {int(x - 1e-9) for x in t["x"]} == set(range(ROUNDS))

    spectrum = traces(page, "chart-spectrum")
    assert [t["name"] for t in spectrum] == [f"round {r}" for r in rounds_x(ROUNDS)]
    k = CLIENTS * 8  # the stacked rank: clients x r (default LoRA rank 8)
    assert all(len(t["x"]) == k for t in spectrum)
    cut = page.evaluate("document.getElementById('chart-spectrum').layout.shapes[0].x0")
    assert cut == 8.5  # the rank-r cut
    check_rank_advisor(page, service.metrics(experiment_id, "diagnostics"), rank=8)

    for chart, first in (("residual", 1), ("naive-error", 1), ("momentum", 2)):
        mean = trace(page, f"chart-{chart}", "mean")
        assert mean["x"] == rounds_x(ROUNDS, first), chart  # momentum needs a previous round
        layers = [t for t in traces(page, f"chart-{chart}") if t["uid"].startswith("layer-")]
        assert len(layers) == 4 and all(t["x"] == mean["x"] for t in layers)  # q, v x 2 layers
    exact = trace(page, "chart-naive-error", "exactness_error")
    assert max(exact["y"]) < 1e-4  # FedMomentum is exact; the naive average is not
    assert min(trace(page, "chart-naive-error", "mean")["y"]) > max(exact["y"])

    rounds = service.metrics(experiment_id, "round")
    for uid in ("up", "down"):
        bars = trace(page, "chart-bytes", uid)
        assert bars["x"] == rounds_x(ROUNDS)
    up = [sum(m["values"]["bytes_up"].values()) for m in rounds]
    assert trace(page, "chart-bytes", "up")["y"] == up

    bars = trace(page, "chart-timeline", "ok")
    assert len(bars["x"]) == ROUNDS * CLIENTS  # one bar per client task, all first attempts
    assert all(x > 0 for x in bars["x"])


def test_launch_from_form_watch_live_and_download(
    page: Page, service: Service, artifacts: Path, tmp_path: Path
) -> None:
    fill_tiny_form(page, service.url)
    page.click("#launch")
    page.wait_for_url("**/#/experiments/*")
    experiment_id = page.url.rsplit("/", 1)[-1]
    exp = service.get(experiment_id)
    assert (exp["name"], exp["model"]) == ("browser-run", "tiny-llama")
    assert exp["strategy"] == "fedmomentum"  # the form's default
    assert exp["config"]["federation"]["rounds"] == ROUNDS

    # Live: the page follows the run to its end without a reload.
    page.wait_for_selector("#app[data-stream=ended]", timeout=240_000)
    expect(page.locator("#run-head .badge")).to_have_text("completed", timeout=10_000)
    expect(page.locator("#run-head .progress")).to_contain_text(f"{ROUNDS} / {ROUNDS}")
    page.wait_for_function(  # the last batch of events is drawn within REDRAW_MS
        f"document.getElementById('chart-accuracy').data[0].x.length === {ROUNDS + 1}"
    )
    check_run_charts(page, service, experiment_id)
    # Points arrived while it ran and were appended, not redrawn from scratch.
    draws = page.evaluate("({...document.getElementById('chart-accuracy').dataset})")
    assert int(draws.get("append", 0)) >= 1 and "react" not in draws, draws
    expect(page.locator("table.rounds tbody tr")).to_have_count(ROUNDS)
    expect(page.locator("#manifest")).to_contain_text('"model_fingerprint"')
    expect(page.locator("#config")).to_contain_text('"tiny-llama"')

    # Every export format is offered; the adapter zip downloads and opens.
    formats = [e["name"] for e in service.http.get("/catalog").json()["exports"]]
    for fmt in formats:
        expect(page.locator(f"#download-{fmt}")).to_be_visible()
    with page.expect_download() as info:
        page.click("#download-adapter")
    path = tmp_path / "adapter.zip"
    info.value.save_as(path)
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= names
        assert json.loads(z.read("adapter/adapter_config.json"))["r"] == 8
        z.extract("adapter/adapter_model.safetensors", tmp_path)
    with safe_open(str(tmp_path / "adapter" / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert keys and all("lora_" in k for k in keys)
    with page.expect_download() as info:  # a round's global adapter from the rounds table
        page.click("text=round 2 adapter")
    info.value.save_as(tmp_path / "round.zip")
    assert zipfile.ZipFile(tmp_path / "round.zip").namelist()

    # The static report: downloaded, then opened from disk with no server.
    with page.expect_download() as info:
        page.click("#report")
    report = tmp_path / "report.html"
    info.value.save_as(report)
    page.context.set_offline(True)  # everything it needs is inside the file
    page.goto(report.as_uri())
    page.wait_for_selector("body[data-ready=true]")
    check_run_charts(page, service, experiment_id)
    page.context.set_offline(False)

    # The detail page as an artifact, and usable on a narrow laptop (no sideways scroll).
    page.goto(f"{service.url}/#/experiments/{experiment_id}")
    page.wait_for_selector("#app[data-stream=ended]")
    page.wait_for_function("document.getElementById('chart-timeline')?.data !== undefined")
    page.screenshot(path=artifacts / "dashboard-detail.png", full_page=True)
    assert (artifacts / "dashboard-detail.png").stat().st_size > 50_000
    page.set_viewport_size({"width": 900, "height": 800})
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], width

    # The CLI writes the same report from the database.
    out = tmp_path / "cli-report.html"
    done = subprocess.run(
        [sys.executable, "-m", "backend.cli", "report", experiment_id, "-o", str(out)],
        env=service.env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    page.goto(out.as_uri())
    page.wait_for_selector("body[data-ready=true]")
    check_run_charts(page, service, experiment_id)


def test_invalid_form_shows_the_servers_error_next_to_the_field(
    page: Page, service: Service
) -> None:
    before = service.http.get("/experiments").json()["count"]
    fill_tiny_form(page, service.url)
    page.fill("#field-training-lr", "5")
    page.click("#launch")
    error = page.locator("[id='error-training.lr']")
    expect(error).to_contain_text("less than 1")
    assert page.url.endswith("#/new")
    page.fill("#field-training-lr", "0.001")  # a cross-field error lands on its group
    page.fill("#field-federation-clients_per_round", "9")
    page.click("#launch")
    expect(page.locator("[id='error-federation']")).to_contain_text("clients_per_round (9)")
    expect(error).to_be_empty()
    assert service.http.get("/experiments").json()["count"] == before  # nothing was created


def _finished(service: Service, strategy: str) -> dict[str, Any]:
    exp = service.create(name=f"cmp-{strategy}", strategy=strategy)
    exp = service.wait_finished(exp["id"], timeout=240)
    assert exp["status"] == "completed", exp
    return exp


def test_compare_two_finished_runs(page: Page, service: Service) -> None:
    runs = [_finished(service, "fedmomentum"), _finished(service, "fedit")]
    page.goto(f"{service.url}/#/")
    for exp in runs:
        page.locator(f"tr[data-id='{exp['id']}'] input[type=checkbox]").check()
    expect(page.locator("#compare")).to_have_text("Compare selected (2)")
    page.click("#compare")
    page.wait_for_selector("#compare-accuracy .main-svg")
    lines = traces(page, "compare-accuracy")
    assert [t["uid"] for t in lines] == [e["id"] for e in runs]
    assert [t["name"].split(" · ")[0] for t in lines] == ["fedmomentum", "fedit"]  # by strategy
    for t, exp in zip(lines, runs, strict=True):
        evals = service.metrics(exp["id"], "eval")
        assert t["x"] == list(range(len(evals)))  # one point per round (+ before training)
        assert t["y"] == pytest.approx([m["values"]["accuracy"] for m in evals])
    colours = page.evaluate(
        "document.getElementById('compare-accuracy').data.map((t) => t.line.color)"
    )
    assert len(set(colours)) == 2
    naive = traces(page, "compare-naive-error")  # both record it; only fedmomentum is exact
    assert [len(t["x"]) for t in naive] == [2, 2]
    expect(page.locator("#compare-runs tbody tr")).to_have_count(2)


def test_reconnecting_state_when_live_events_drop(page: Page, service: Service) -> None:
    exp = service.create(name="reconnect")
    page.route("**/events*", lambda route: route.abort())
    page.goto(f"{service.url}/#/experiments/{exp['id']}")
    expect(page.locator("#reconnecting")).to_be_visible(timeout=10_000)
    page.unroute("**/events*")
    service.wait_finished(exp["id"], timeout=240)
    page.wait_for_selector("#app[data-stream=ended]", timeout=30_000)
    expect(page.locator("#reconnecting")).to_be_hidden()
    expect(page.locator("#run-head .badge")).to_have_text("completed")
    page.wait_for_function(  # drawn within REDRAW_MS of the last event (after the badge)
        "document.getElementById('chart-accuracy')?.data?.find((t) => t.uid === 'accuracy')"
        "?.x.length === 3",
        timeout=5_000,
    )
    assert len(trace(page, "chart-accuracy", "accuracy")["x"]) == 3  # nothing missed: 2 rounds + 1


def test_empty_states_and_a_missing_experiment(page: Page, tmp_path: Path) -> None:
    service = Service(tmp_path, _env(tmp_path))  # a service with no experiments at all
    try:
        service.api()
        page.goto(f"{service.url}/#/")
        expect(page.locator(".empty-state")).to_contain_text("No experiments yet")
        page.click("text=Launch the demo")
        page.wait_for_selector("#launch")
        defaults = {"model": "smollm2-135m", "dataset": "wordnet-topics", "strategy": "fedmomentum"}
        for field, value in defaults.items():  # one click on Launch runs the demo
            assert page.input_value(f"#field-{field}") == value
        page.goto(f"{service.url}/#/experiments/nope")
        expect(page.locator(".empty-state")).to_contain_text("No such experiment")
        page.goto(f"{service.url}/#/compare")
        expect(page.locator(".empty-state")).to_contain_text("Nothing to compare")
    finally:
        service.close()


def test_cli_report_of_a_run_directory(page: Page, tmp_path: Path) -> None:
    env = _env(tmp_path)
    run = tmp_path / "run"
    cli = [sys.executable, "-m", "backend.cli"]
    subprocess.run([*cli, "run", "examples/tiny.yaml", "--out", str(run), "--quiet"],
                   env=env, cwd=ROOT, check=True, capture_output=True, timeout=300)  # fmt: skip
    out = tmp_path / "tiny.html"
    subprocess.run([*cli, "report", str(run), "-o", str(out)], env=env, cwd=ROOT, check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    page.goto(out.as_uri())
    page.wait_for_selector("body[data-ready=true]")
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [m["accuracy"] for m in lines if m["kind"] == "eval"]
    assert trace(page, "chart-accuracy", "accuracy")["y"] == pytest.approx(evals)
    assert len(traces(page, "chart-spectrum")) == 2  # tiny.yaml: 2 rounds
    bars = trace(page, "chart-timeline", "ok")  # no timestamps: durations end to end
    assert len(bars["x"]) == sum(m["kind"] == "client" for m in lines)
    embedded = page.evaluate("JSON.parse(document.getElementById('report-data').textContent)")
    clients = [r for r in embedded["events"][0]["data"]["records"] if r["kind"] == "client"]
    assert clients and all("path" not in r["values"] for r in clients)  # no local paths


def test_a_failed_run_shows_its_reason_and_the_failed_attempts(page: Page, tmp_path: Path) -> None:
    service = Service(tmp_path, _env(tmp_path))
    try:
        service.api()  # no worker yet: the experiment waits in the filesystem broker
        exp = service.create(federation={"num_clients": 4, "clients_per_round": 2, "rounds": 2,
                                         "min_clients_per_round": 2})  # fmt: skip
        run = service.tmp / "data" / "runs" / exp["id"]
        run.mkdir(parents=True)
        (run / "rounds").write_text("not a directory")  # every client upload fails
        service.worker()
        page.goto(f"{service.url}/#/experiments/{exp['id']}")
        assert service.wait_finished(exp["id"])["status"] == "failed"  # (shows the logs if not)
        page.wait_for_selector("#app[data-stream=ended]", timeout=30_000)
        expect(page.locator("#run-head .badge")).to_have_text("failed", timeout=10_000)
        expect(page.locator("#failure")).to_contain_text(
            "0 of 2 clients succeeded after 3 attempts"
        )
        page.wait_for_function(  # drawn within REDRAW_MS of the last event
            "document.getElementById('chart-timeline')?.data?.[0]?.x.length === 6"
        )
        failed = trace(page, "chart-timeline", "failed")
        assert len(failed["x"]) == 6  # 2 clients x 3 attempts, all marked failed
        texts = page.evaluate("document.getElementById('chart-timeline').data[0].text")
        assert any("attempt 3" in t and "rounds" in t for t in texts), texts
        expect(page.locator("#download-adapter")).to_have_attribute("aria-disabled", "true")
        expect(page.locator("#report")).to_have_attribute("aria-disabled", "false")
    finally:
        service.close()


def test_with_a_token_the_dashboard_asks_once_and_everything_works(
    page: Page, tmp_path: Path
) -> None:
    service = Service(tmp_path, _env(tmp_path, api_token="s3cret-token"))
    service.http.headers["Authorization"] = "Bearer s3cret-token"
    try:
        service.api(worker=True)
        page.goto(f"{service.url}/#/")
        dialog = page.locator("#token-dialog")
        expect(dialog).to_be_visible()
        page.fill("#token-input", "wrong")
        page.click("#token-submit")
        expect(dialog).to_contain_text("refused")  # asked again
        page.fill("#token-input", "s3cret-token")
        page.click("#token-submit")
        expect(page.locator(".empty-state")).to_contain_text("No experiments yet")
        page.reload()  # kept for the session: not asked again
        expect(page.locator(".empty-state")).to_contain_text("No experiments yet")
        expect(dialog).to_have_count(0)

        fill_tiny_form(page, service.url)  # a write, live events and a download, all with it
        page.fill("#field-federation-rounds", "2")
        page.click("#launch")
        page.wait_for_url("**/#/experiments/*")
        page.wait_for_selector("#app[data-stream=ended]", timeout=240_000)
        expect(page.locator("#run-head .badge")).to_have_text("completed")
        with page.expect_download() as info:
            page.click("#download-adapter")
        info.value.save_as(tmp_path / "adapter.zip")
        assert (
            "adapter/adapter_model.safetensors"
            in zipfile.ZipFile(tmp_path / "adapter.zip").namelist()
        )
        expect(dialog).to_have_count(0)
    finally:
        service.close()


def test_excluded_updates_are_marked_in_the_rounds_table_and_the_timeline(
    page: Page, tmp_path: Path
) -> None:
    service = Service(tmp_path, _env(tmp_path))
    try:
        service.api_and_worker(faults={"poison": "1:nan"})  # client 1 uploads a NaN every round
        exp = service.create(federation={"num_clients": 3, "clients_per_round": 3, "rounds": 2})
        page.goto(f"{service.url}/#/experiments/{exp['id']}")
        assert service.wait_finished(exp["id"])["status"] == "completed"
        page.wait_for_selector("#app[data-stream=ended]", timeout=30_000)

        rows = page.locator("table.rounds tbody tr")
        expect(rows).to_have_count(2)
        for i in range(2):
            marked = rows.nth(i).locator(".excluded")
            expect(marked).to_have_text(" (1 excluded: 1)")
            assert "client 1: " in marked.get_attribute("title")
            assert "NaN or inf values" in marked.get_attribute("title")
        page.wait_for_function(  # drawn within REDRAW_MS of the last event
            "document.getElementById('chart-timeline')?.data?.some((t) => t.uid === 'excluded'"
            " && t.x.length === 2)"
        )
        assert len(trace(page, "chart-timeline", "ok")["x"]) == 4  # clients 0 and 2, 2 rounds
        texts = page.evaluate(
            "document.getElementById('chart-timeline').data.find((t) => t.uid === 'excluded').text"
        )
        assert len(texts) == 2 and all("excluded: " in t and "NaN or inf" in t for t in texts)
    finally:
        service.close()
