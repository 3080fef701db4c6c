// Experiments: status, strategy, model, dataset, progress, best accuracy, created; sort,
// filter, select several to compare. Refreshes every few seconds.
import { api } from "api";
import { badge, fill, h, pct, progressOf, when } from "dom";

const PAGE = 50;
const COLUMNS = [
  ["name", "Name"], ["status", "Status"], ["strategy", "Strategy"], [null, "Model"], [null, "Dataset"],
  ["current_round", "Progress"], ["best_accuracy", "Best accuracy"], ["created_at", "Created"],
];

export function render(app, { params }) {
  const view = {
    sort: params.get("sort") ?? "-created_at",
    status: params.get("status") ?? "",
    strategy: params.get("strategy") ?? "",
    search: params.get("q") ?? "",
    offset: Number(params.get("offset") ?? 0),
  };
  const selected = new Set();
  let rows = [];
  let count = 0;
  let timer = null;
  let alive = true;

  const compareButton = h("button.primary#compare", {
    on: { click: () => { location.hash = `#/compare?ids=${[...selected].join(",")}`; } } }, "Compare selected");
  const statusSelect = h("select#filter-status", { "aria-label": "status",
    on: { change: () => { view.status = statusSelect.value; view.offset = 0; load(); } } },
  ["", "queued", "running", "completed", "failed", "cancelled"].map((s) =>
    h("option", { value: s, selected: s === view.status }, s || "any status")));
  const strategySelect = h("select#filter-strategy", { "aria-label": "strategy",
    on: { change: () => { view.strategy = strategySelect.value; view.offset = 0; load(); } } },
  h("option", { value: "" }, "any strategy"));
  const search = h("input#filter-name", { type: "search", placeholder: "filter by name", value: view.search,
    on: { input: () => { view.search = search.value; draw(); } } });
  const table = h("div.table-wrap");
  const pager = h("div.pager");

  api("/catalog").then((c) => {
    for (const s of c.strategies) strategySelect.append(h("option", { value: s.name, selected: s.name === view.strategy, title: s.description }, s.name));
  }).catch(() => {});

  fill(app,
    h("div.page-head", h("h1", {}, "Experiments"), h("a.button.primary", { href: "#/new" }, "New experiment")),
    h("div.toolbar", statusSelect, strategySelect, search, h("span.spacer"), compareButton),
    table, pager);

  function sortBy(field) {
    view.sort = view.sort === `-${field}` ? field : `-${field}`;
    load();
  }

  function header() {
    return h("tr", {}, h("th", {}, ""), COLUMNS.map(([field, label]) => {
      if (!field) return h("th", {}, label);
      const arrow = view.sort === field ? " ▲" : view.sort === `-${field}` ? " ▼" : "";
      return h("th", {}, h("button.sort", { dataset: { sort: field }, on: { click: () => sortBy(field) } }, label + arrow));
    }));
  }

  function draw() {
    compareButton.disabled = selected.size < 2;
    compareButton.textContent = `Compare selected (${selected.size})`;
    const needle = view.search.trim().toLowerCase();
    const shown = rows.filter((e) => !needle || e.name.toLowerCase().includes(needle));
    if (!count && !view.status && !view.strategy) {
      fill(table, h("div.card.empty-state", {}, h("h2", {}, "No experiments yet"),
        h("p", {}, "The defaults fine-tune SmolLM2-135M on WordNet topics across 5 clients with FedMomentum."),
        h("a.button.primary", { href: "#/new" }, "Launch the demo")));
      fill(pager);
      return;
    }
    if (!shown.length) {
      fill(table, h("div.card.empty-state", {}, h("p", {}, "No experiments match these filters.")));
    } else {
      fill(table, h("table.experiments", h("thead", {}, header()), h("tbody", {}, shown.map((e) => h("tr", { dataset: { id: e.id } },
        h("td", {}, h("input", { type: "checkbox", "aria-label": `select ${e.name}`, checked: selected.has(e.id),
          on: { change: (ev) => { ev.target.checked ? selected.add(e.id) : selected.delete(e.id); draw(); } } })),
        h("td", {}, h("a", { href: `#/experiments/${e.id}` }, e.name)),
        h("td", {}, badge(e.status)),
        h("td", {}, e.strategy), h("td", {}, e.model), h("td", {}, e.dataset),
        h("td", {}, progressOf(e)),
        h("td.num", {}, pct(e.best_accuracy)),
        h("td", {}, when(e.created_at)))))));
    }
    const last = Math.min(view.offset + PAGE, count);
    fill(pager, count > PAGE ? [
      h("button", { disabled: view.offset === 0, on: { click: () => { view.offset -= PAGE; load(); } } }, "‹ Previous"),
      h("span", {}, `${view.offset + 1}–${last} of ${count}`),
      h("button", { disabled: last >= count, on: { click: () => { view.offset += PAGE; load(); } } }, "Next ›"),
    ] : h("span.muted", {}, `${count} experiment${count === 1 ? "" : "s"}`));
  }

  async function load() {
    clearTimeout(timer);
    const query = new URLSearchParams({ sort: view.sort, offset: view.offset, limit: PAGE });
    if (view.status) query.set("status", view.status);
    if (view.strategy) query.set("strategy", view.strategy);
    try {
      const page = await api(`/experiments?${query}`);
      rows = page.data;
      count = page.count;
      app.querySelector(".load-error")?.remove();
      draw();
    } catch (e) {
      if (!app.querySelector(".load-error")) app.prepend(h("div.banner.load-error", { role: "alert" }, `Could not load the experiments: ${e.message}. Retrying…`));
    }
    if (alive) timer = setTimeout(load, 3000);
  }

  load();
  return () => { alive = false; clearTimeout(timer); };
}
