// Small DOM and formatting helpers shared by every page and the static report.

/** h("div.card#id", {attrs, on: {click}}, ...children): an element. */
export function h(tag, attrs = {}, ...children) {
  if (attrs === null || typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs)) {
    children.unshift(attrs); // no attributes: the second argument is a child
    attrs = {};
  }
  const [name, ...rest] = tag.split(/(?=[.#])/);
  const el = document.createElement(name || "div");
  for (const part of rest) {
    if (part[0] === ".") el.classList.add(part.slice(1));
    else el.id = part.slice(1);
  }
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const ACTIVE = ["queued", "running"];
export const isActive = (status) => ACTIVE.includes(status);

export function badge(status) {
  return h(`span.badge.status-${status}`, { title: `status: ${status}` }, status);
}

export function pct(x) {
  return x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`;
}

export function num(x, digits = 4) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return Math.abs(x) >= 1e4 || (x !== 0 && Math.abs(x) < 1e-3)
    ? x.toExponential(2)
    : Number(x.toFixed(digits)).toString();
}

export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const m = Math.floor(seconds / 60);
  return m < 60 ? `${m} min ${Math.round(seconds % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

/** "round k of n" with a progress bar. */
export function progressOf(exp) {
  const done = Math.min(exp.current_round ?? 0, exp.total_rounds);
  return h(
    "span.progress",
    { title: `${done} of ${exp.total_rounds} rounds aggregated` },
    h("progress", { max: exp.total_rounds, value: done }),
    h("span", {}, `${done} / ${exp.total_rounds}`),
  );
}
