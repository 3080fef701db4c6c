"""Uploading a dataset from the new-experiment form in a real browser against a real service:
the preview and the count per topic appear, the upload is selected, and a tiny-llama run on it
completes. Uploads made earlier (over the API) are offered too."""

from __future__ import annotations

import json
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.service.conftest import Service

TOPICS = {"math": 18, "colors": 12}
FORM = {  # a small tiny-llama run (everything else stays at the demo defaults)
    "name": "upload-run",
    "federation-rounds": "2",
    "federation-num_clients": "3",
    "federation-clients_per_round": "3",
    "training-local_steps": "2",
    "training-max_length": "64",
    "eval-max_new_tokens": "4",
}


def _records() -> list[dict[str, str]]:
    math = [{"prompt": f"{i} + 2 =", "response": str(i + 2), "label": "math"} for i in range(18)]
    colors = [{"prompt": f"Color {i}?", "response": "blue", "label": "colors"} for i in range(12)]
    return [r for pair in zip(math, colors, strict=False) for r in pair] + math[12:]


def _write_jsonl(path: Path, records: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_upload_preview_select_and_run_to_completion(
    page: Page, service: Service, tmp_path: Path
) -> None:
    earlier = _write_jsonl(tmp_path / "earlier.jsonl", _records()[:4])
    with earlier.open("rb") as f:
        assert service.http.post("/datasets", files={"file": f}).status_code == 201
    records = _records()
    upload = _write_jsonl(tmp_path / "topics.jsonl", records)

    page.goto(f"{service.url}/#/new")
    page.wait_for_selector("#field-federation-rounds")
    expect(page.locator("#field-dataset option[value='earlier.jsonl']")).to_have_text(
        "earlier (uploaded)"
    )
    page.set_input_files("#dataset-file", str(upload))

    expect(page.locator("#dataset-status")).to_have_text("Uploaded; selected as the dataset.")
    expect(page.locator("#dataset-summary")).to_have_text(
        "topics: uploaded topics.jsonl: 30 examples, prompt/response, 2 topics"
    )
    rows = page.locator("#dataset-examples tbody tr")
    expect(rows).to_have_count(5)
    for i, record in enumerate(records[:5]):
        expect(rows.nth(i).locator("td")).to_have_text([record["prompt"], record["response"]])
    counts = page.locator("#dataset-counts tbody tr")
    expect(counts).to_have_count(2)
    largest_first = sorted(TOPICS.items(), key=lambda t: -t[1])
    for (topic, n), row in zip(largest_first, counts.all(), strict=True):
        share = f"{100 * n / len(records):.1f}%"
        expect(row.locator("td")).to_have_text([topic, str(n), share])
    assert page.input_value("#field-dataset") == "topics.jsonl"

    page.select_option("#field-model", "tiny-llama")
    page.locator("details[data-group=eval] > summary").click()
    for field, value in FORM.items():
        page.fill(f"#field-{field}", value)
    page.click("#launch")
    page.wait_for_url("**/#/experiments/*")
    experiment_id = page.url.rsplit("/", 1)[-1]
    exp = service.get(experiment_id)
    assert exp["dataset"].endswith("/datasets/topics.jsonl"), exp["dataset"]

    page.wait_for_selector("#app[data-stream=ended]", timeout=240_000)
    expect(page.locator("#run-head .badge")).to_have_text("completed", timeout=10_000)
    assert service.get(experiment_id)["status"] == "completed"


def test_a_refused_upload_shows_the_servers_reason(page: Page, service: Service, tmp_path: Path):
    odd = _write_jsonl(tmp_path / "odd.jsonl", [{"foo": "1", "bar": "2"}] * 3)

    page.goto(f"{service.url}/#/new")
    page.wait_for_selector("#field-federation-rounds")
    page.set_input_files("#dataset-file", str(odd))

    expect(page.locator("#dataset-error")).to_contain_text(
        "odd.jsonl: unknown layout; columns found: foo, bar; layouts accepted: chat"
    )
    expect(page.locator("#dataset-preview")).to_be_hidden()
    assert service.http.get("/datasets/odd").status_code == 404
