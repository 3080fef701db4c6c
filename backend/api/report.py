"""A run as one self-contained HTML file: every chart of the detail page, offline.

The report runs the dashboard's own modules (``frontend/js``), inlined as ``data:`` URLs
behind an import map, with plotly.js inlined too, over the run's events embedded as JSON:
it draws exactly what the live page drew, with one copy of the chart code. Its input is
either an experiment in the database (its stored events) or a run directory written by
``fedmomentum run`` (its metrics.jsonl, replayed as events).
"""

from __future__ import annotations

import base64
import html
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.orm import Session

from backend.api.dashboard import FRONTEND_DIR, plotly_js
from backend.api.schemas import ExperimentPublic
from backend.core.runs import METRICS_ENVELOPE, read_manifest
from backend.core.store import Store
from backend.db.events import all_events, event_payload
from backend.db.models import Experiment

# Bare module names -> files under frontend/js; the dashboard's index.html maps the same names.
MODULES = {
    "dom": "dom.js",
    "run-state": "run-state.js",
    "figures": "figures.js",
    "charts": "charts.js",
    "runview": "runview.js",
    "report": "report.js",
}
KEYS = ("kind", "round", "client", "step", "layer")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def data_from_db(session: Session, runs: Store, experiment: Experiment) -> dict[str, Any]:
    """The report's input for an experiment of the service: the experiment and its events."""
    events = all_events(session, experiment_id=experiment.id)
    try:
        manifest = read_manifest(runs, experiment.id)
    except FileNotFoundError:  # never started: a report of its config and events still helps
        manifest = None
    return {
        "experiment": ExperimentPublic.model_validate(experiment).model_dump(mode="json"),
        "manifest": manifest,
        "events": [{"id": e.id, "type": e.type, "data": event_payload(e)} for e in events],
    }


def _public(line: dict[str, Any], i: int) -> dict[str, Any]:
    """A metrics.jsonl record in the API's shape (key fields apart, the rest as values)."""
    skip = (*KEYS, *METRICS_ENVELOPE, "path")  # no local paths
    values = {k: v for k, v in line.items() if k not in skip}
    return {"id": i, **{k: line.get(k) for k in KEYS}, "values": values}


def data_from_run_dir(path: Path) -> dict[str, Any]:
    """The report's input for a run directory of ``fedmomentum run``: its metrics replayed."""
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{path} is not a run directory (no metrics.jsonl)")
    lines = [json.loads(s) for s in metrics.read_text().splitlines() if s.strip()]
    records = [_public(line, i) for i, line in enumerate(lines, 1)]
    config = yaml.safe_load((path / "config.yaml").read_text())
    manifest = _read_json(path / "manifest.json") or {}
    rounds = [r for r in records if r["kind"] == "round"]
    accuracy = [r["values"].get("accuracy") for r in records if r["kind"] == "eval"]
    total = config["federation"]["rounds"]
    experiment = {
        "id": path.name,
        "name": config.get("name", path.name),
        "status": "completed" if len(rounds) >= total else "incomplete",
        "strategy": config["strategy"],
        "model": config["model"],
        "dataset": config["dataset"],
        "current_round": len(rounds),
        "total_rounds": total,
        "best_accuracy": max((a for a in accuracy if a is not None), default=None),
        "error": None,
        "config": config,
        "created_at": manifest.get("created"),
    }
    # In-process clients have no timestamps: the timeline lays their durations end to end.
    attempts = [
        {"round": r["round"], "client": r["client"], "attempt": 0, "created_at": None}
        | {k: r["values"].get(k) for k in ("ok", "seconds", "error")}
        for r in records
        if r["kind"] == "client"
    ]
    events = [{"id": 1, "type": "metrics", "data": {"records": records, "created_at": None}}]
    events += [{"id": i, "type": "client_finished", "data": a} for i, a in enumerate(attempts, 2)]
    return {"experiment": experiment, "manifest": manifest, "events": events}


def _module_url(name: str) -> str:
    source = (FRONTEND_DIR / "js" / MODULES[name]).read_bytes()
    return "data:text/javascript;base64," + base64.b64encode(source).decode()


def _script_json(data: Any) -> str:
    """JSON safe inside a <script> element (no '</' can close it)."""
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/")


def render(data: dict[str, Any]) -> str:
    """The report page: needs nothing but a browser (no server, no network)."""
    data = {**data, "written_at": datetime.now(UTC).isoformat(timespec="seconds")}
    title = html.escape(f"FedMomentum report: {data['experiment']['name']}")
    imports = {"imports": {name: _module_url(name) for name in MODULES}}
    css = (FRONTEND_DIR / "style.css").read_text()
    plotly = plotly_js().read_text().replace("</script", "<\\/script")  # none today
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
<script>{plotly}</script>
<script type="importmap">{_script_json(imports)}</script>
<script id="report-data" type="application/json">{_script_json(data)}</script>
</head><body class="report">
<header class="top"><span class="brand">FedMomentum</span><span>static report</span></header>
<main id="app"><p class="loading">Rendering…</p></main>
<script type="module">import {{ renderReport }} from "report"; renderReport();</script>
</body></html>
"""
