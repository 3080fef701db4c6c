// One experiment, live while it runs: header, actions and downloads, the run view (charts,
// rounds, config, manifest) fed by the experiment's event stream; its silo clients' state,
// refetched on the stream's client events and polled while it runs (a claim sends none).
import { api, API, follow } from "api";
import { fill, h, isActive } from "dom";
import { applyEvent, newRun } from "run-state";
import { sweepLauncher } from "./launch-sweep.js";
import { roundsTable, runCharts, runDetails, runHeader } from "runview";
import { hasSilos, siloRows, stateCounts } from "silos";

const REDRAW_MS = 250; // at most four redraws a second, however fast events come
const SILOS_MS = 2000; // silo clients refetched at most every 2 s on events, polled as often
const SILO_EVENTS = new Set(["round_started", "client_progress", "client_finished", "status"]);

export function render(app, { id }) {
  let stop = null;
  let timer = null;
  let alive = true;
  let catalog = null;
  let manifest = null;
  let exported = null; // export.json: the rank-N adapter's rank and relative error
  const head = h("div#run-head");
  const actions = h("div.actions");
  const banner = h("div.banner.reconnecting#reconnecting", { role: "status", hidden: true },
    "Live events dropped: reconnecting…");
  const live = h("div.live#live-clients");
  const downloads = h("section.card.downloads#downloads");
  const charts = h("div.charts");
  const rounds = h("section.card#rounds");
  const details = h("div#details");
  const silos = h("section.card#silos", { hidden: true });
  let silosTimer = null;
  const base = `${API}/experiments/${encodeURIComponent(id)}`;
  let run = null;
  let update = () => {};

  function drawHead() {
    const exp = run.experiment;
    fill(head, runHeader(exp));
    const active = isActive(exp.status);
    fill(actions,
      active ? h("button.danger#cancel", { on: { click: cancel } }, "Cancel") : null,
      h("a.button#clone", { href: `#/new?from=${exp.id}` }, "Clone…"),
      exp.sweep_id ? h("a.button#in-sweep", { href: `#/sweeps/${exp.sweep_id}`, title: "the sweep this run is part of" }, "Its sweep") : null,
      h("a.button#report", { href: `${base}/report`, download: "", "aria-disabled": String(active), class: active ? "button disabled" : "button",
        title: active ? "available when the run has finished" : "one HTML file with every chart (opens offline)" }, "Report (HTML)"));
    const done = exp.status === "completed";
    fill(downloads, h("h3", {}, "Downloads"),
      h("div.download-buttons", (catalog?.exports ?? []).map((f) => {
        // The rank-N adapter is written for some strategies only; say so rather than 404.
        const absent = f.name === "adapter-rank" && exported && !exported.adapter_rank;
        const ready = done && !absent;
        const button = h("a.button", { href: `${base}/download?format=${f.name}`, download: "", id: `download-${f.name}`,
          class: ready ? "button" : "button disabled", "aria-disabled": String(!ready),
          title: absent ? "not written: this strategy's adapter is the whole change"
            : done ? f.description : "written when the experiment completes" }, f.name);
        const note = f.name === "adapter-rank" ? rankNote(exported?.adapter_rank) : null;
        return note ? h("span.download-with-note", {}, button, note) : button;
      })),
      h("p.help", {}, done ? "Zip archives of the final model. Each round's global adapter is in the rounds table."
        : "Exports are written when the experiment completes; each aggregated round's adapter is below."));
  }

  function drawLive() {
    const progress = [...run.progress.values()].sort((a, b) => a.client - b.client);
    const steps = run.experiment.config?.training?.local_steps;
    fill(live, progress.length ? [h("h3", {}, `Round ${progress[0].round + 1}: clients training`),
      h("ul", {}, progress.map((p) => h("li", {}, `client ${p.client}: step ${p.step + 1}${steps ? ` of ${steps}` : ""}, loss ${p.loss.toFixed(4)}`)))] : []);
  }

  function redraw() {
    timer = null;
    if (!alive) return;
    update();
    drawLive();
    fill(rounds, h("h3", {}, "Rounds"), roundsTable(run, (r) =>
      h("a", { href: `${base}/rounds/${r}/adapter`, download: "" }, `round ${r + 1} adapter`)));
  }
  const schedule = () => { timer ??= setTimeout(redraw, REDRAW_MS); };

  async function loadSilos() {
    silosTimer = null;
    try {
      const answer = await api(`/experiments/${encodeURIComponent(id)}/silos`);
      if (!alive) return;
      const rows = siloRows(answer, Date.now());
      fill(silos, h("h3", {}, "Silos"),
        h("p.help#silo-counts", {}, stateCounts(rows).map(([s, n]) => `${n} ${s}`).join(" · ")),
        h("div.table-wrap", h("table.silos", {},
          h("thead", h("tr", ["Silo", "Client", "Round", "State", "Last seen", "Error"].map((t) => h("th", {}, t)))),
          h("tbody", rows.map((r) => h("tr", { dataset: { silo: r.silo, client: String(r.client) } },
            h("td.silo", {}, r.silo, " ", h("span.help.silo-kind", { title: r.kind === "token"
              ? "token silo: trains on fedmomentum silo-client" : "Celery silo worker" }, r.kind)),
            h("td.num.client", {}, r.client),
            h("td.num.round", { title: r.attempt ? `retry ${r.attempt}` : null }, r.round),
            h("td.state", {}, h(`span.badge.silo-${r.state.replace(/ /g, "-")}`, {}, r.state)),
            h("td.seen", {}, r.lastSeen),
            h("td.error", {}, r.error)))))));
      silos.hidden = false;
    } catch { /* the stream's reconnecting banner says the server is away */ }
    if (alive && isActive(run.experiment.status)) silosTimer ??= setTimeout(loadSilos, SILOS_MS);
  }
  const scheduleSilos = () => {
    if (hasSilos(run.experiment.config)) silosTimer ??= setTimeout(loadSilos, SILOS_MS);
  };

  async function refresh() { // the experiment row: progress, best accuracy, error, times
    try {
      const exp = await api(`/experiments/${encodeURIComponent(id)}`);
      if (!alive) return;
      run.experiment = exp;
      if (exp.status === "completed" && !exported) {
        exported = await api(`/experiments/${encodeURIComponent(id)}/export`).catch(() => null);
        if (!alive) return;
      }
      drawHead();
      if (!manifest && exp.status !== "queued") {
        manifest = await api(`/experiments/${encodeURIComponent(id)}/manifest`).catch(() => null);
        fill(details, runDetails(exp, manifest));
      }
    } catch { /* the stream's reconnecting banner says the server is away */ }
  }

  async function cancel() {
    if (!confirm(`Cancel ${run.experiment.name}? Clients stop at their next step.`)) return;
    try {
      run.experiment = await api(`/experiments/${encodeURIComponent(id)}/cancel`, { method: "POST" });
      drawHead();
    } catch (e) {
      alert(`Could not cancel: ${e.message}`);
    }
  }

  (async () => {
    let exp;
    try {
      [exp, catalog] = await Promise.all([api(`/experiments/${encodeURIComponent(id)}`), api("/catalog")]);
    } catch (e) {
      fill(app, h("div.card.empty-state", {}, h("h2", {}, e.status === 404 ? "No such experiment" : "Could not load the experiment"),
        h("p", {}, e.message), h("a", { href: "#/" }, "Back to the experiments")));
      return;
    }
    if (!alive) return;
    run = newRun(exp);
    const launcher = sweepLauncher({ strategies: catalog.strategies, base: () => run.experiment.config });
    fill(app, head, h("div.toolbar", actions), banner, live, silos, downloads, charts, rounds, details, launcher);
    drawHead();
    fill(details, runDetails(exp, null));
    update = runCharts(charts, run, { live: isActive(exp.status) });
    refresh();
    if (hasSilos(exp.config)) loadSilos();
    stop = follow(id, {
      onEvent(type, data, eventId) {
        applyEvent(run, type, data, eventId);
        if (type === "status" || type === "round_finished") refresh();
        if (SILO_EVENTS.has(type)) scheduleSilos();
        schedule();
      },
      onState(state) {
        banner.hidden = state !== "reconnecting";
        app.dataset.stream = state;
        if (state === "ended") { refresh(); schedule(); scheduleSilos(); }
      },
    });
  })();

  return () => { alive = false; stop?.(); clearTimeout(timer); clearTimeout(silosTimer); };
}

/** "rank r, error e" beside the rank-N adapter's download: how far the single plain adapter
 * is from the whole fine-tuned change (relative Frobenius error over the adapted layers). */
function rankNote(ranked) {
  if (!ranked) return null;
  const error = Number(ranked.relative_error);
  return h("span.help.download-note", { id: "adapter-rank-error", title: "relative error of the single plain adapter against the whole change (backbone delta and adapter)" },
    `rank ${ranked.rank}, relative error ${error < 1e-3 ? error.toExponential(1) : error.toFixed(3)}`);
}
