// The view of one sweep: header with progress, the band charts, the sortable leaderboard and
// the experiments. A function of the sweep document (GET /api/v1/sweeps/{id}) only, so the
// live page and a static report can show the same thing.
import { draw } from "charts";
import { badge, fill, h, pct, progressOf, when } from "dom";
import { SWEEP_CHARTS, bandFigure, cellStyles, pointCount } from "figures";
import { COLUMNS, noiseMarks, noiseTitle, ranked, runsByCell, sortRows, sweepProgress } from "leaderboard";

/** What the sweep compares: strategies, seeds, grid. */
function specText(spec) {
  const strategies = spec.strategies === "all" ? "all strategies" : (spec.strategies ?? []).join(", ");
  const seeds = Array.isArray(spec.seeds) ? `seeds ${spec.seeds.join(", ")}` : `${spec.seeds} seeds`;
  const grid = Object.entries(spec.grid ?? {}).map(([path, values]) => `${path} ∈ {${values.map((v) => JSON.stringify(v)).join(", ")}}`);
  return [strategies, seeds, ...grid].join(" · ");
}

/** Name, status, what it compares and how many runs have finished. */
export function sweepHeader(sweep) {
  const p = sweepProgress(sweep);
  const counts = Object.entries(sweep.counts ?? {}).filter(([, n]) => n);
  return h("div.run-head",
    h("div.title-row", h("h1", {}, sweep.name), badge(sweep.status)),
    h("p.meta", {}, specText(sweep.spec ?? {}), " · created ", when(sweep.created_at)),
    h("div.stats",
      h("div", {}, h("span.label", {}, "runs finished"),
        h("span.progress#sweep-progress", { title: `${p.finished} of ${p.total} runs finished, ${p.completed} completed` },
          h("progress", { max: p.total || 1, value: p.finished }), h("span", {}, `${p.finished} / ${p.total}`))),
      h("div", {}, h("span.label", {}, "by status"),
        h("span#sweep-counts", {}, counts.map(([s, n]) => h("span.count", {}, badge(s), ` ${n}`))))));
}

/** Chart cards for the band charts in ``root``; returns update(sweep). */
export function sweepCharts(root, { strategies = [] } = {}) {
  const cards = SWEEP_CHARTS.map((chart) => {
    const state = { log: chart.log ?? false };
    const graph = h(`div.graph#sweep-chart-${chart.id}`);
    const empty = h("p.empty", {}, "Waiting for the first evaluations…");
    const controls = h("div.controls");
    const card = h("section.card.chart", { dataset: { chart: chart.id } },
      h("header", {}, h("h3", {}, chart.title), controls), h("p.help", {}, chart.help), empty, graph);
    return { chart, state, graph, controls, card };
  });
  let last = null;
  const update = (sweep = last) => {
    last = sweep;
    for (const c of cards) {
      const fig = bandFigure(sweep.leaderboard ?? [], c.chart.metric, { strategies, log: c.state.log });
      c.card.classList.toggle("is-empty", pointCount(fig) === 0);
      if (pointCount(fig)) draw(c.graph, fig);
    }
  };
  for (const c of cards) {
    if (c.chart.log === undefined) continue;
    const box = h("input", { type: "checkbox", checked: c.state.log,
      on: { change: () => { c.state.log = box.checked; update(); } } });
    c.controls.append(h("label.toggle", { title: "logarithmic y axis" }, box, "log"));
  }
  fill(root, cards.map((c) => c.card));
  return update;
}

const LEGEND = "≈: this cell's final mean and a neighbour's (in rank order) differ by no more than the larger of "
  + "their seed standard deviations, so the order between them is within seed noise. ?: a neighbour has a single "
  + "seed, no spread to compare. Hover a header for what its column measures.";

/**
 * The sortable leaderboard in ``root``; returns update(sweep). ``link(experiment)``: the
 * href of an experiment's page (null: no links).
 */
export function leaderboardTable(root, { strategies = [], link = null } = {}) {
  const sort = { key: "rank", descending: false };
  let last = null;
  const update = (sweep = last) => {
    last = sweep;
    const rows = ranked(sweep.leaderboard ?? []);
    if (!rows.length) {
      fill(root, h("p.empty", {}, "No run has been evaluated yet."));
      return;
    }
    const colours = new Map(cellStyles(rows.map((r) => r.label), strategies).map((s) => [s.label, s]));
    const marks = noiseMarks(rows);
    const cells = runsByCell(sweep);
    const header = h("tr", {}, h("th", {}, ""), COLUMNS.map((c) => {
      const arrow = sort.key === c.key ? (sort.descending ? " ▼" : " ▲") : "";
      return h("th", { title: c.help ?? "" }, h("button.sort", { dataset: { sort: c.key }, on: { click: () => {
        sort.descending = sort.key === c.key ? !sort.descending : c.key !== "rank" && c.key !== "label" && c.key !== "rounds_to_best";
        sort.key = c.key;
        update();
      } } }, c.label + arrow));
    }), h("th", {}, "Experiments"));
    const body = sortRows(rows, sort.key, sort.descending).map((r) => {
      const style = colours.get(r.label);
      const mark = marks.get(r.label);
      return h("tr", { dataset: { label: r.label, noise: mark.mark } },
        h("td", {}, h("span.swatch", { style: `background:${style.color}`, title: style.dash })),
        COLUMNS.map((c) => h("td", { dataset: { col: c.key }, class: c.key === "label" ? null : "num" }, c.text(r),
          c.key === "final_mean" && mark.mark ? h("span.noise-mark", { title: noiseTitle(mark) }, ` ${mark.mark}`) : null)),
        h("td.runs", {}, (cells.get(r.label) ?? []).map(({ seed, experiment }) => link
          ? h("a", { href: link(experiment), title: `${experiment.name}: ${experiment.status}`, class: `seed status-text-${experiment.status}` }, `seed ${seed}`)
          : h("span.seed", {}, `seed ${seed}`))));
    });
    fill(root, h("div.table-wrap", h("table.experiments.leaderboard#leaderboard", h("thead", {}, header), h("tbody", {}, body))),
      h("p.help", {}, LEGEND));
  };
  return update;
}

/** The sweep's experiments: name (a link), status, progress, best accuracy. */
export function sweepRuns(sweep, link = null) {
  const runs = [...(sweep.runs ?? [])].sort((a, b) => a.name.localeCompare(b.name));
  if (!runs.length) return h("p.empty", {}, "This sweep has no experiments left.");
  return h("table.experiments#sweep-runs",
    h("thead", {}, h("tr", {}, ["Experiment", "Status", "Progress", "Best accuracy"].map((t) => h("th", {}, t)))),
    h("tbody", {}, runs.map((e) => h("tr", { dataset: { id: e.id } },
      h("td", {}, link ? h("a", { href: link(e) }, e.name) : e.name),
      h("td", {}, badge(e.status)), h("td", {}, progressOf(e)), h("td.num", {}, pct(e.best_accuracy))))));
}
