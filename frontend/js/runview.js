// The view of one run: header, chart cards, rounds table, config and manifest. Shared by the
// live detail page and the static report, so both show the same thing.
import { badge, duration, fill, h, num, pct, progressOf, when } from "dom";
import { draw } from "charts";
import { RUN_CHARTS, pointCount } from "figures";
import { records } from "run-state";

/** Name, status, what it runs and how far it got. */
export function runHeader(exp) {
  return h("div.run-head",
    h("div.title-row", h("h1", {}, exp.name), badge(exp.status)),
    h("p.meta", {},
      h("span", { title: "strategy" }, exp.strategy), " · ",
      h("span", { title: "model" }, exp.model), " · ",
      h("span", { title: "dataset" }, exp.dataset), " · created ", when(exp.created_at)),
    h("div.stats",
      h("div", {}, h("span.label", {}, "rounds"), progressOf(exp)),
      h("div", {}, h("span.label", {}, "best accuracy"), h("strong#best-accuracy", {}, pct(exp.best_accuracy))),
      exp.started_at ? h("div", {}, h("span.label", {}, "started"), when(exp.started_at)) : null,
      exp.finished_at ? h("div", {}, h("span.label", {}, "finished"), when(exp.finished_at)) : null),
    exp.error ? h("div.failure#failure", { role: "alert" }, h("strong", {}, `${exp.status}: `), exp.error) : null);
}

function layerNames(run) {
  return [...new Set(records(run, "diagnostics").filter((m) => m.values.singular_values).map((m) => m.layer))];
}

function chartCard(chart, live, refresh) {
  const state = { log: chart.log ?? false, layer: "mean" };
  const graph = h(`div.graph#chart-${chart.id}`);
  const empty = h("p.empty", {}, "Loading…");
  const controls = h("div.controls");
  let select = null;
  if (chart.layers) {
    select = h("select", { "aria-label": "layer", on: { change: () => { state.layer = select.value; refresh(); } } },
      h("option", { value: "mean" }, "mean over layers"));
    controls.append(select);
  }
  if (chart.log !== undefined) {
    const box = h("input", { type: "checkbox", checked: state.log,
      on: { change: () => { state.log = box.checked; refresh(); } } });
    controls.append(h("label.toggle", { title: "logarithmic y axis" }, box, "log"));
  }
  const note = chart.note ? h(`p.note#note-${chart.id}`) : null;
  const card = h("section.card.chart", { dataset: { chart: chart.id } },
    h("header", {}, h("h3", {}, chart.title), controls), h("p.help", {}, chart.help), empty, graph, note);
  return { chart, state, graph, empty, select, note, card, live };
}

/** Chart cards of ``run`` in ``root``; returns update(), which appends what is new. */
export function runCharts(root, run, { live = false } = {}) {
  const cards = [];
  const update = () => {
    const layers = layerNames(run);
    const started = records(run, "round").length > 0;
    for (const c of cards) {
      if (c.select) {
        for (const name of layers.slice(c.select.options.length - 1)) c.select.append(h("option", { value: name }, name));
      }
      const fig = c.chart.build(run, c.state);
      const n = pointCount(fig);
      c.card.classList.toggle("is-empty", n === 0);
      if (n === 0) {
        c.empty.textContent = live && !started ? "Waiting for the first round…" : (c.chart.empty ?? "No data yet.");
      } else {
        draw(c.graph, fig);
      }
      if (c.note) c.note.textContent = n === 0 ? "" : c.chart.note(run) ?? "";
    }
  };
  for (const chart of RUN_CHARTS) cards.push(chartCard(chart, live, update));
  fill(root, cards.map((c) => c.card));
  update();
  return update;
}

/** One row per aggregated round; ``roundLink(r)``, when given, adds its adapter download. */
export function roundsTable(run, roundLink = null) {
  const evals = new Map(records(run, "eval").map((m) => [m.round, m.values]));
  const isPrivate = records(run, "round").some((m) => m.values.privacy);
  const rows = records(run, "round").map((m) => {
    const v = m.values;
    const e = evals.get(m.round) ?? v;
    const failed = Object.keys(v.failed ?? {}).length;
    const excluded = Object.entries(v.excluded ?? {}); // trained, but left out: [client, why]
    return h("tr", {},
      h("td", {}, m.round + 1),
      h("td", {}, pct(e.accuracy)),
      h("td", {}, num(e.eval_loss)),
      h("td", {}, v.mean_residual_energy === null || v.mean_residual_energy === undefined ? "–" : num(v.mean_residual_energy)),
      h("td", {}, `${(v.clients ?? []).length - failed - excluded.length}${failed ? ` (${failed} failed)` : ""}`,
        excluded.length ? h("span.excluded", { title: excluded.map(([c, why]) => `client ${c}: ${why}`).join("\n") },
          ` (${excluded.length} excluded: ${excluded.map(([c]) => c).join(", ")})`) : null),
      h("td", {}, duration(v.round_seconds)),
      isPrivate ? h("td", {}, v.epsilon === null || v.epsilon === undefined ? "∞" : num(v.epsilon, 3)) : null,
      roundLink ? h("td", {}, roundLink(m.round)) : null);
  });
  if (!rows.length) return h("p.empty", {}, "No round has been aggregated yet.");
  return h("table.rounds",
    h("thead", {}, h("tr", {}, ["round", "accuracy", "eval loss", "residual energy", "clients", "time",
      isPrivate ? "ε spent" : null, roundLink ? "adapter" : null].filter(Boolean).map((t) => h("th", {}, t)))),
    h("tbody", {}, rows));
}

/** The experiment config and the run manifest, as JSON. */
export function runDetails(exp, manifest) {
  return h("div.details-grid",
    h("details.card", { open: true }, h("summary", {}, "Config"), h("pre#config", {}, JSON.stringify(exp.config, null, 2))),
    h("details.card", { open: true }, h("summary", {}, "Manifest"),
      manifest ? h("pre#manifest", {}, JSON.stringify(manifest, null, 2))
        : h("p.empty", {}, "Written when the run starts: seed, model fingerprint, data split hash, package versions.")));
}
