// Sweeps: name, status, what each compares, runs finished, created; newest first, paged.
// Refreshes every few seconds.
import { api } from "api";
import { badge, fill, h, when } from "dom";
import { sweepProgress } from "leaderboard";

const PAGE = 50;

function compares(spec) {
  const strategies = spec.strategies === "all" ? "all strategies" : (spec.strategies ?? []).join(", ");
  const seeds = Array.isArray(spec.seeds) ? spec.seeds.length : spec.seeds;
  const grid = Object.keys(spec.grid ?? {});
  return `${strategies} × ${seeds} seed${seeds === 1 ? "" : "s"}${grid.length ? ` × ${grid.join(", ")}` : ""}`;
}

function progress(sweep) {
  const p = sweepProgress(sweep);
  return h("span.progress", { title: `${p.finished} of ${p.total} runs finished, ${p.completed} completed` },
    h("progress", { max: p.total || 1, value: p.finished }), h("span", {}, `${p.finished} / ${p.total}`));
}

export function render(app, { params }) {
  let offset = Number(params.get("offset") ?? 0);
  let timer = null;
  let alive = true;
  const table = h("div.table-wrap");
  const pager = h("div.pager");
  fill(app,
    h("div.page-head", h("h1", {}, "Sweeps"), h("a.button.primary", { href: "#/new" }, "New experiment or sweep")),
    h("p.help", {}, "A sweep runs one config over several strategies and seeds; start one with Compare strategies on the new-experiment form or on any experiment."),
    table, pager);

  function draw(page) {
    if (!page.count) {
      fill(table, h("div.card.empty-state", {}, h("h2", {}, "No sweeps yet"),
        h("p", {}, "Compare strategies from the new-experiment form: the same config, every strategy, several seeds."),
        h("a.button.primary", { href: "#/new" }, "New experiment")));
      fill(pager);
      return;
    }
    fill(table, h("table.experiments#sweeps",
      h("thead", {}, h("tr", {}, ["Name", "Status", "Compares", "Runs finished", "Created"].map((t) => h("th", {}, t)))),
      h("tbody", {}, page.data.map((s) => h("tr", { dataset: { id: s.id } },
        h("td", {}, h("a", { href: `#/sweeps/${s.id}` }, s.name)),
        h("td", {}, badge(s.status)),
        h("td", {}, compares(s.spec ?? {})),
        h("td", {}, progress(s)),
        h("td", {}, when(s.created_at)))))));
    const last = Math.min(offset + PAGE, page.count);
    fill(pager, page.count > PAGE ? [
      h("button", { disabled: offset === 0, on: { click: () => { offset -= PAGE; load(); } } }, "‹ Previous"),
      h("span", {}, `${offset + 1}–${last} of ${page.count}`),
      h("button", { disabled: last >= page.count, on: { click: () => { offset += PAGE; load(); } } }, "Next ›"),
    ] : h("span.muted", {}, `${page.count} sweep${page.count === 1 ? "" : "s"}`));
  }

  async function load() {
    clearTimeout(timer);
    try {
      const page = await api(`/sweeps?${new URLSearchParams({ offset, limit: PAGE })}`);
      if (!alive) return;
      app.querySelector(".load-error")?.remove();
      draw(page);
    } catch (e) {
      if (!app.querySelector(".load-error")) app.prepend(h("div.banner.load-error", { role: "alert" }, `Could not load the sweeps: ${e.message}. Retrying…`));
    }
    if (alive) timer = setTimeout(load, 3000);
  }

  load();
  return () => { alive = false; clearTimeout(timer); };
}
