// One sweep, live while it runs: progress, the band charts per strategy (or grid cell), the
// sortable leaderboard, its experiments; cancel, delete and the HTML report. Polls the sweep
// every few seconds until every experiment has finished.
import { api, API } from "api";
import { fill, h } from "dom";
import { sweepActive } from "leaderboard";
import { leaderboardTable, sweepCharts, sweepHeader, sweepRuns } from "sweepview";

const POLL_MS = 3000; // a sweep detail recomputes the leaderboard from every stored metric
const experimentLink = (e) => `#/experiments/${e.id}`;

export function render(app, { id }) {
  let alive = true;
  let timer = null;
  let sweep = null;
  const path = `/sweeps/${encodeURIComponent(id)}`;
  const head = h("div#sweep-head");
  const actions = h("div.actions");
  const banner = h("div.banner#sweep-error", { role: "alert", hidden: true });
  const charts = h("div.charts");
  const board = h("section.card#sweep-leaderboard");
  const runs = h("section.card#sweep-experiments");
  let drawCharts = () => {};
  let drawBoard = () => {};

  function drawActions() {
    const active = sweepActive(sweep);
    fill(actions,
      active ? h("button.danger#sweep-cancel", { on: { click: cancel } }, "Cancel") : null,
      h("button.danger#sweep-delete", { disabled: active, on: { click: remove },
        title: active ? "cancel it or let it finish first" : "delete the sweep, its experiments and their files" }, "Delete"),
      h("a#sweep-report", { href: `${API}${path}/report`, download: "", "aria-disabled": String(active),
        class: active ? "button disabled" : "button",
        title: active ? "available when every run has finished" : "one HTML file with the leaderboard and the curves (opens offline)" },
      "Report (HTML)"));
  }

  function show(next) {
    sweep = next;
    app.dataset.status = sweep.status;
    fill(head, sweepHeader(sweep));
    drawActions();
    drawCharts(sweep);
    drawBoard(sweep);
    fill(runs, h("h3", {}, "Experiments"), sweepRuns(sweep, experimentLink));
    document.title = `${sweep.name} · sweep · FedMomentum`;
  }

  async function poll() {
    timer = null;
    try {
      const next = await api(path);
      if (!alive) return;
      banner.hidden = true;
      show(next);
      app.dataset.live = sweepActive(next) ? "polling" : "finished";
      if (!sweepActive(next)) return; // nothing will change any more
    } catch (e) {
      if (!alive) return;
      banner.textContent = `Could not refresh the sweep: ${e.message}. Retrying…`;
      banner.hidden = false;
    }
    timer = setTimeout(poll, POLL_MS);
  }

  async function cancel() {
    if (!confirm(`Cancel every queued or running experiment of ${sweep.name}?`)) return;
    try {
      await api(`${path}/cancel`, { method: "POST" });
    } catch (e) {
      alert(`Could not cancel: ${e.message}`);
    }
    clearTimeout(timer);
    poll();
  }

  async function remove() {
    if (!confirm(`Delete ${sweep.name}, its ${sweep.experiments} experiments and their files?`)) return;
    try {
      await api(path, { method: "DELETE" });
      location.hash = "#/sweeps";
    } catch (e) {
      alert(`Could not delete: ${e.message}`);
    }
  }

  (async () => {
    let first;
    let catalog;
    try {
      [first, catalog] = await Promise.all([api(path), api("/catalog")]);
    } catch (e) {
      fill(app, h("div.card.empty-state", {}, h("h2", {}, e.status === 404 ? "No such sweep" : "Could not load the sweep"),
        h("p", {}, e.message), h("a", { href: "#/sweeps" }, "Back to the sweeps")));
      return;
    }
    if (!alive) return;
    const strategies = catalog.strategies.map((s) => s.name); // the colours follow the catalog's order
    fill(app, head, h("div.toolbar", actions), banner, charts,
      h("h2", {}, "Leaderboard"), board, runs);
    drawCharts = sweepCharts(charts, { strategies });
    drawBoard = leaderboardTable(board, { strategies, link: experimentLink });
    show(first);
    app.dataset.live = sweepActive(first) ? "polling" : "finished";
    if (sweepActive(first)) timer = setTimeout(poll, POLL_MS);
  })();

  return () => { alive = false; clearTimeout(timer); document.title = "FedMomentum"; };
}
