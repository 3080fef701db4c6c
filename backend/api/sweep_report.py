"""A sweep as one self-contained HTML file (offline): the leaderboard table and the mean
accuracy and eval-loss curves per cell with their min..max band over seeds.

Its input is a sweep document, the shape of the CLI's ``sweep.json`` and of the API's sweep
detail: ``{"name", "spec", "runs": [...], "leaderboard": [row, ...]}`` with rows as
``backend.core.leaderboard.Row`` dicts. The figures are built here as plotly ``{data,
layout}`` and drawn by the plotly.js bundled with the Python package, inlined.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from typing import Any

from backend.api.dashboard import plotly_js
from backend.core.catalog import STRATEGIES

# The dashboard's palette (frontend/js/charts.js): one colour per strategy.
PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#ea580c", "#9333ea", "#0891b2", "#ca8a04"]
DASHES = [
    "solid",
    "dash",
    "dot",
    "dashdot",
    "longdash",
    "longdashdot",
]  # grid cells of one strategy


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"


def cell_styles(labels: list[str]) -> dict[str, dict[str, str]]:
    """Colour by strategy (a label starts with it), dash by the cell within its strategy."""
    seen: dict[str, int] = {}
    styles = {}
    for label in labels:
        strategy = label.split(", ")[0]
        index = list(STRATEGIES).index(strategy) if strategy in STRATEGIES else len(seen)
        dash = DASHES[seen.get(strategy, 0) % len(DASHES)]
        seen[strategy] = seen.get(strategy, 0) + 1
        styles[label] = {"color": PALETTE[index % len(PALETTE)], "dash": dash}
    return styles


def _band_traces(row: dict[str, Any], metric: str, style: dict[str, str]) -> list[dict[str, Any]]:
    """The mean line and a filled min..max band (x = rounds trained, 0 = before training)."""
    points = row[metric]
    x = [p["round"] + 1 for p in points]
    band = {
        "x": x + x[::-1],
        "y": [p["max"] for p in points] + [p["min"] for p in points][::-1],
        "type": "scatter",
        "mode": "lines",
        "fill": "toself",
        "fillcolor": _rgba(style["color"], 0.15),
        "line": {"width": 0},
        "hoverinfo": "skip",
        "legendgroup": row["label"],
        "showlegend": False,
        "name": f"{row['label']} min..max",
    }
    mean = {
        "x": x,
        "y": [p["mean"] for p in points],
        "type": "scatter",
        "mode": "lines+markers",
        "name": row["label"],
        "legendgroup": row["label"],
        "line": {"color": style["color"], "dash": style["dash"], "width": 2},
        "customdata": [[p["min"], p["max"], p["n"]] for p in points],
        "hovertemplate": "%{y:.4f} (min %{customdata[0]:.4f}, max %{customdata[1]:.4f}, "
        "%{customdata[2]} seeds)<extra>%{fullData.name}</extra>",
    }
    return [band, mean]


def figure(rows: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Mean curve with its band for every cell, as a plotly figure."""
    styles = cell_styles([r["label"] for r in rows])
    data = [t for r in rows for t in _band_traces(r, metric, styles[r["label"]])]
    title = "eval accuracy" if metric == "accuracy" else "eval loss"
    layout = {
        "margin": {"l": 64, "r": 16, "t": 30, "b": 48},
        "title": {"text": f"{title}: mean over seeds, band min..max", "font": {"size": 13}},
        "xaxis": {"title": {"text": "rounds trained"}, "dtick": 1},
        "yaxis": {
            "title": {"text": title},
            **({"range": [0, 1.02]} if metric == "accuracy" else {}),
        },
        "legend": {"orientation": "h", "y": -0.25},
        "font": {"family": "system-ui, sans-serif", "size": 12},
    }
    return {"data": data, "layout": layout}


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _mark(rows: list[dict[str, Any]], i: int) -> str:
    pairs = [rows[j]["within_noise_of_next"] for j in (i - 1, i) if 0 <= j < len(rows) - 1]
    if True in pairs:
        return ' <span class="tie" title="within the seed spread of a neighbour">≈</span>'
    return ' <span class="tie" title="a neighbour has one seed">?</span>' if None in pairs else ""


def _row_html(rows: list[dict[str, Any]], i: int) -> str:
    r = rows[i]
    std = "" if r["final_std"] is None else f" ± {r['final_std']:.3f}"
    final = "–" if r["final_mean"] is None else f"{r['final_mean']:.3f}{std}"
    cells = [
        f"{i + 1}{_mark(rows, i)}",
        html.escape(r["label"]),
        str(len(r["seeds"])),
        str(r["rounds_done"]),
        final,
        _num(r["best_mean"]),
        "–" if r["rounds_to_best"] is None else str(r["rounds_to_best"]),
        _num(r["auc"]),
        f"{r['bytes_up'] / 1e6:.3g}",
        f"{r['bytes_down'] / 1e6:.3g}",
        f"{r['wall_seconds']:.1f}",
        _num(r["rank_99"], 1),
    ]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


HEADERS = (
    "#",
    "cell",
    "seeds",
    "rounds",
    "final accuracy",
    "best",
    "rounds to best",
    "AUC",
    "MB up",
    "MB down",
    "wall s",
    "rank @99%",
)
LEGEND = (
    "≈: this row's final mean and a neighbour's differ by no more than the larger of their seed "
    "standard deviations (no evidence of an order); ?: a neighbour has one seed (no spread). "
    "Final accuracy: mean ± sample std over seeds at each run's last round; best: mean of each "
    "run's best; rounds to best: rounds until the mean curve first reaches the best final mean "
    "of all cells; AUC: the mean accuracy over the rounds (trapezoids); rank @99%: the rank that "
    "would have kept 99% of the last round's update energy, mean over layers and seeds."
)


def _script_json(data: Any) -> str:
    """JSON safe inside a <script> element (no '</' can close it)."""
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/")


def render(doc: dict[str, Any]) -> str:
    """The sweep's report page: needs nothing but a browser."""
    rows = doc["leaderboard"]
    figures = {m: figure(rows, m) for m in ("accuracy", "eval_loss")}
    title = html.escape(f"FedMomentum sweep: {doc['name']}")
    table = "".join(_row_html(rows, i) for i in range(len(rows)))
    head = "".join(f"<th>{h}</th>" for h in HEADERS)
    spec = html.escape(json.dumps(doc.get("spec"), indent=2))
    written = datetime.now(UTC).isoformat(timespec="seconds")
    plotly = plotly_js().read_text().replace("</script", "<\\/script")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #111827; }}
table {{ border-collapse: collapse; font-size: 0.9rem; }}
th, td {{ border-bottom: 1px solid #e5e7eb; padding: 0.3rem 0.6rem; text-align: right; }}
td:nth-child(2), th:nth-child(2) {{ text-align: left; }}
.tie {{ color: #b45309; font-weight: 600; }}
.charts {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); }}
.chart {{ height: 420px; }}
.legend {{ color: #4b5563; font-size: 0.85rem; max-width: 60rem; }}
</style>
<script>{plotly}</script>
<script id="sweep-figures" type="application/json">{_script_json(figures)}</script>
</head><body>
<h1>{title}</h1>
<p class="legend">{sum(len(r["seeds"]) for r in rows)} runs evaluated; written {written}.</p>
<table id="leaderboard"><thead><tr>{head}</tr></thead><tbody>{table}</tbody></table>
<p class="legend">{html.escape(LEGEND)}</p>
<div class="charts"><div class="chart" id="chart-accuracy"></div>
<div class="chart" id="chart-eval_loss"></div></div>
<details><summary>sweep spec</summary><pre>{spec}</pre></details>
<script>
const figures = JSON.parse(document.getElementById("sweep-figures").textContent);
for (const [metric, fig] of Object.entries(figures)) {{
  Plotly.newPlot("chart-" + metric, fig.data, fig.layout, {{responsive: true, displaylogo: false}});
}}
</script>
</body></html>
"""
