// The static report: the run view over the events embedded in the page (no server needed).
import { fill, h, when } from "dom";
import { applyEvent, newRun } from "run-state";
import { roundsTable, runCharts, runDetails, runHeader } from "runview";

export function renderReport() {
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const run = newRun(data.experiment);
  for (const e of data.events) applyEvent(run, e.type, e.data, e.id);
  const charts = h("div.charts");
  const app = document.getElementById("app");
  fill(app,
    runHeader(run.experiment),
    charts,
    h("section.card", {}, h("h3", {}, "Rounds"), roundsTable(run)),
    runDetails(run.experiment, data.manifest),
    h("p.footnote", {}, `Report written ${when(data.written_at)} from ${data.events.length} events.`));
  runCharts(charts, run);
  document.body.dataset.ready = "true";
}
