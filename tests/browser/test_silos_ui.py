"""The Silos section of the experiment page in a real browser against a real service: one
row per silo client with its newest state, as the API answers it, kept live while the run is
active (a silo's claim sends no event: the page polls). The tasks are added to the database
the way a worker's round dispatch adds them (no worker runs); the silos claim, report and
fail them over the real silo API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect
from sqlalchemy.orm import Session

from backend.core.settings import Settings
from backend.db import results, silos
from backend.db.engine import get_engine
from backend.db.models import Experiment
from tests.service.conftest import Service, _env

FED = {"num_clients": 5, "clients_per_round": 4, "rounds": 2,
       "silos": {"hospital-a": [0, 2], "hospital-b": [3], "lab-c": [1]},
       "token_silos": ["hospital-a", "hospital-b"]}  # fmt: skip


def page_rows(page: Page) -> list[dict[str, str]]:
    result: list[dict[str, str]] = page.evaluate(
        """() => [...document.querySelectorAll('#silos tbody tr')].map((tr) => ({
            silo: tr.dataset.silo, client: tr.querySelector('.client').textContent,
            round: tr.querySelector('.round').textContent,
            state: tr.querySelector('.state').textContent,
            kind: tr.querySelector('.silo-kind').textContent,
            seen: tr.querySelector('.seen').textContent,
            error: tr.querySelector('.error').textContent }))"""
    )
    return result


def api_rows(service: Service, eid: str) -> list[dict[str, str]]:
    """The rows the page should show, from the API's answer."""
    answer = service.http.get(f"/experiments/{eid}/silos")
    assert answer.status_code == 200, answer.text
    return [
        {
            "silo": s["name"],
            "client": str(c["client"]),
            "round": "–" if c["round"] is None else str(c["round"] + 1),
            "state": c["status"] or "not sampled",
            "kind": "token" if s["token"] else "celery",
            "error": c["error"] or "",
        }  # fmt: skip
        for s in answer.json()["data"]
        for c in s["clients"]
    ]


def without_seen(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "seen"} for r in rows]


def test_the_silos_section_lists_each_silo_client_live(
    page: Page, tmp_path: Path, artifacts: Path
) -> None:
    service = Service(tmp_path, _env(tmp_path, reconcile_interval_s="0"))  # nothing re-sent
    try:
        service.api()
        tokens = {}
        for name in FED["token_silos"]:
            issued = service.http.post("/silos", json={"name": name})
            assert issued.status_code == 201, issued.text
            tokens[name] = {"Authorization": f"Bearer {issued.json()['token']}"}
        exp = service.create(federation=FED)
        plain = service.create()
        eid = exp["id"]
        with Session(get_engine(Settings(data_dir=tmp_path / "data").database_url)) as db:
            row = db.get(Experiment, eid)
            assert row is not None
            results.start_round(db, experiment_id=eid, round_num=0, attempt=0,
                                clients=[0, 1, 2, 3])  # fmt: skip
            pinned = {0: "hospital-a", 2: "hospital-a", 3: "hospital-b"}
            silos.add_tasks(db, experiment_id=eid, round_num=0, attempt=0,
                            generation=row.generation, clients=pinned)  # fmt: skip

        def claim(silo: str) -> dict[str, Any]:
            answer = service.http.get("/silo/tasks", params={"wait": 0}, headers=tokens[silo])
            assert answer.status_code == 200, answer.text
            return dict(answer.json())

        first = claim("hospital-a")  # client 0: fails at the silo
        failed = service.http.post(
            f"/silo/tasks/{first['id']}/failure", json={"reason": "bad data"},
            headers=tokens["hospital-a"],
        )  # fmt: skip
        assert failed.status_code == 200, failed.text

        page.goto(f"{service.url}/#/experiments/{eid}")
        expect(page.locator("#silos tbody tr")).to_have_count(4)
        expected = api_rows(service, eid)
        assert without_seen(page_rows(page)) == expected
        assert [(r["silo"], r["client"], r["state"]) for r in expected] == [
            ("hospital-a", "0", "failed"), ("hospital-a", "2", "pending"),
            ("hospital-b", "3", "pending"), ("lab-c", "1", "sent"),
        ]  # fmt: skip
        shown = {(r["silo"], r["client"]): r for r in page_rows(page)}
        assert shown[("hospital-a", "0")]["error"] == "silo 'hospital-a': bad data"
        assert shown[("hospital-a", "0")]["seen"].endswith(" s ago")  # its failure just now
        assert shown[("hospital-a", "2")]["seen"] == "–"  # never claimed
        expect(page.locator("#silo-counts")).to_have_text("1 sent · 2 pending · 1 failed")

        claim("hospital-a")  # client 2: no event; the page polls while the run is active
        claim("hospital-b")
        row = page.locator('#silos tr[data-silo="hospital-a"][data-client="2"] .state')
        expect(row).to_have_text("claimed", timeout=15_000)
        expect(page.locator('#silos tr[data-silo="hospital-b"] .state')).to_have_text("claimed")
        assert without_seen(page_rows(page)) == api_rows(service, eid)
        page.locator("#silos").screenshot(path=artifacts / "dashboard-silos.png")

        page.goto(f"{service.url}/#/experiments/{plain['id']}")  # no silos: no section
        expect(page.locator("#run-head h1")).to_have_text(plain["name"])
        expect(page.locator("#silos")).to_be_hidden()
    finally:
        service.close()
