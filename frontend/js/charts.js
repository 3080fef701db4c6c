// Drawing the figures of figures.js with plotly: draw() puts a figure on a div; later calls
// append the new points (Plotly.extendTraces / addTraces) instead of redrawing everything.
// The only module that touches Plotly; the figures themselves are pure data.

const PLOT_CONFIG = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["select2d", "lasso2d"] };

const ARRAYS = ["x", "y", "base", "text"];
const same = (a, b) => a === b || (Number.isNaN(a) && Number.isNaN(b));

/** Which points of trace ``next`` are new, if ``cur`` is a prefix of it; null otherwise. */
function appended(cur, next) {
  const keys = ARRAYS.filter((k) => Array.isArray(next[k]));
  const n = cur.x?.length ?? 0;
  if (keys.some((k) => !Array.isArray(cur[k]) || cur[k].length !== n || next[k].length < n)) return null;
  if (keys.some((k) => cur[k].some((v, i) => !same(v, next[k][i])))) return null;
  return Object.fromEntries(keys.map((k) => [k, next[k].slice(n)]));
}

const layoutKey = (l) => JSON.stringify([l.shapes, l.annotations, l.yaxis?.type, l.xaxis?.dtick]);

/** Count how a div was drawn (data-new, data-append, data-react, data-same): tests read it. */
function counted(div, how) {
  div.dataset[how] = String(Number(div.dataset[how] ?? 0) + 1);
  return how;
}

/**
 * Draw ``fig`` on ``div``. The first call plots; later calls append new points to the
 * traces (extendTraces), add new traces (addTraces) and only fall back to Plotly.react
 * when earlier points changed. Returns what it did: "new", "append", "same" or "react".
 */
export function draw(div, fig) {
  const Plotly = globalThis.Plotly;
  if (!div.data) {
    Plotly.newPlot(div, fig.data, fig.layout, PLOT_CONFIG);
    div.dataset.layoutKey = layoutKey(fig.layout);
    return counted(div, "new");
  }
  const index = new Map(div.data.map((t, i) => [t.uid, i]));
  const extend = [];
  const add = [];
  for (const t of fig.data) {
    if (!index.has(t.uid)) { add.push(t); continue; }
    const more = appended(div.data[index.get(t.uid)], t);
    if (more === null) {
      Plotly.react(div, fig.data, fig.layout, PLOT_CONFIG);
      div.dataset.layoutKey = layoutKey(fig.layout);
      return counted(div, "react");
    }
    if (more.x.length) extend.push([index.get(t.uid), more]);
  }
  if (fig.data.length - add.length !== div.data.length) { // a trace went away
    Plotly.react(div, fig.data, fig.layout, PLOT_CONFIG);
    div.dataset.layoutKey = layoutKey(fig.layout);
    return counted(div, "react");
  }
  for (const [i, more] of extend) {
    const keys = Object.keys(more);
    Plotly.extendTraces(div, Object.fromEntries(keys.map((k) => [k, [more[k]]])), [i]);
  }
  if (add.length) Plotly.addTraces(div, add);
  const key = layoutKey(fig.layout);
  if (key !== div.dataset.layoutKey) {
    const axis = fig.layout.yaxis.type === div.layout.yaxis.type ? {} : { "yaxis.type": fig.layout.yaxis.type, "yaxis.autorange": true };
    const ticks = fig.layout.xaxis.dtick ? { "xaxis.dtick": fig.layout.xaxis.dtick } : {};
    Plotly.relayout(div, { shapes: fig.layout.shapes ?? [], annotations: fig.layout.annotations ?? [], ...ticks, ...axis });
    div.dataset.layoutKey = key;
  }
  return counted(div, extend.length || add.length ? "append" : "same");
}
