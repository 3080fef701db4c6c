// Compare: the selected runs' eval curves and diagnostics overlaid, one colour per run, the
// legend grouped by strategy.
import { allPages, api } from "api";
import { draw } from "charts";
import { badge, fill, h, pct } from "dom";
import { COMPARE_CHARTS, PALETTE, compareFigure, pointCount, runLabel } from "figures";
import { runFromRecords } from "run-state";

const KINDS = ["eval", "round", "diagnostics"];

async function loadRun(id) {
  const exp = await api(`/experiments/${encodeURIComponent(id)}`);
  const parts = await Promise.all(KINDS.map((kind) => allPages(`/experiments/${encodeURIComponent(id)}/metrics`, { kind })));
  return runFromRecords(exp, parts.flat());
}

export function render(app, { params }) {
  const ids = (params.get("ids") ?? "").split(",").filter(Boolean);
  if (ids.length < 2) {
    fill(app, h("div.card.empty-state", {}, h("h2", {}, "Nothing to compare"),
      h("p", {}, "Select two or more experiments on the experiments page, then Compare selected."),
      h("a.button", { href: "#/" }, "Experiments")));
    return;
  }
  let alive = true;
  (async () => {
    let runs;
    try {
      runs = await Promise.all(ids.map(loadRun));
    } catch (e) {
      fill(app, h("div.banner", { role: "alert" }, `Could not load the runs: ${e.message}`));
      return;
    }
    if (!alive) return;
    const legend = h("table.experiments#compare-runs", h("thead", {}, h("tr", {}, ["", "run", "status", "strategy", "model", "dataset", "best accuracy"].map((t) => h("th", {}, t)))),
      h("tbody", {}, runs.map((run, i) => h("tr", {},
        h("td", {}, h("span.swatch", { style: `background:${PALETTE[i % PALETTE.length]}` })),
        h("td", {}, h("a", { href: `#/experiments/${run.experiment.id}` }, run.experiment.name)),
        h("td", {}, badge(run.experiment.status)),
        h("td", {}, run.experiment.strategy), h("td", {}, run.experiment.model), h("td", {}, run.experiment.dataset),
        h("td.num", {}, pct(run.experiment.best_accuracy))))));
    const grid = h("div.charts");
    fill(app, h("div.page-head", h("h1", {}, `Compare ${runs.length} runs`), h("a.button", { href: "#/" }, "Experiments")),
      h("div.table-wrap", legend), grid);
    for (const chart of COMPARE_CHARTS) {
      const state = { log: chart.log ?? false };
      const graph = h(`div.graph#compare-${chart.id}`);
      const empty = h("p.empty", {}, "None of these runs records this.");
      const redraw = () => {
        const fig = compareFigure(runs, chart, state);
        card.classList.toggle("is-empty", pointCount(fig) === 0);
        if (pointCount(fig)) draw(graph, fig);
      };
      const controls = h("div.controls");
      if (chart.log !== undefined) {
        const box = h("input", { type: "checkbox", checked: state.log, on: { change: () => { state.log = box.checked; redraw(); } } });
        controls.append(h("label.toggle", {}, box, "log"));
      }
      const card = h("section.card.chart", { dataset: { chart: chart.id } }, h("header", {}, h("h3", {}, chart.title), controls), empty, graph);
      grid.append(card);
      redraw();
    }
    document.title = `Compare: ${runs.map(runLabel).join(", ")} · FedMomentum`;
  })();
  return () => { alive = false; document.title = "FedMomentum"; };
}
