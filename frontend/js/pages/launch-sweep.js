// "Compare strategies": one config run with every strategy (or those ticked) over N seeds,
// as a sweep (POST /api/v1/sweeps), then the sweep's page. Used by the new-experiment form
// (the config being edited) and by every experiment's page (its config). The server's 422
// errors appear under the field they name: the strategies, seeds and name here, and the
// base config's fields through ``onBaseErrors`` where the page has them.
import { api, ApiError } from "api";
import { fill, h } from "dom";

const DEFAULT_SEEDS = 3;
const OWN = ["strategies", "seeds", "name"]; // the spec's fields the launcher has inputs for

const message = (e) => String(e.msg ?? "").replace(/^Value error, /, "");

/** A 422's items split by what they name: the launcher's own fields, the base config, the rest. */
export function routeErrors(detail) {
  const out = { strategies: [], seeds: [], name: [], base: [], other: [] };
  for (const e of Array.isArray(detail) ? detail : [{ loc: [], msg: String(detail) }]) {
    const loc = (e.loc ?? []).filter((p, i) => !(i === 0 && p === "body"));
    const [head, ...rest] = loc;
    if (head === "base") out.base.push({ ...e, loc: ["body", ...rest], msg: message(e) });
    else if (OWN.includes(head)) out[head].push(rest.length ? `${head}[${rest.join(".")}]: ${message(e)}` : message(e));
    else out.other.push(loc.length ? `${loc.join(".")}: ${message(e)}` : message(e));
  }
  return out;
}

/**
 * The launcher card. ``strategies``: the catalog's entries; ``base()``: the config to compare
 * (read when clicked); ``onBaseErrors(items)``: shows errors of the base config's fields
 * (called with [] to clear them); without it they are listed in the card.
 */
export function sweepLauncher({ strategies, base, onBaseErrors = null }) {
  const boxes = strategies.map((s) => h("input", { type: "checkbox", name: "sweep-strategy", value: s.name, checked: true,
    id: `sweep-strategy-${s.name}`, on: { change: () => count() } }));
  const seeds = h("input#sweep-seeds", { type: "number", min: "1", step: "1", value: String(DEFAULT_SEEDS), on: { input: () => count() } });
  const name = h("input#sweep-name", { type: "text", placeholder: "default: the experiment's name + “strategies”" });
  const errors = {
    strategies: h("div.field-error#error-sweep-strategies", { role: "alert" }),
    seeds: h("div.field-error#error-sweep-seeds", { role: "alert" }),
    name: h("div.field-error#error-sweep-name", { role: "alert" }),
  };
  const general = h("div.form-error#sweep-launch-error", { role: "alert", hidden: true });
  const button = h("button.primary#compare-strategies", { type: "button", on: { click: launch } }, "Compare strategies");

  function chosen() {
    const names = boxes.filter((b) => b.checked).map((b) => b.value);
    return names.length === boxes.length ? "all" : names;
  }

  function count() {
    const n = boxes.filter((b) => b.checked).length * Math.max(0, Math.floor(Number(seeds.value) || 0));
    button.textContent = `Compare strategies (${n} run${n === 1 ? "" : "s"})`;
  }

  function show(detail) {
    const routed = routeErrors(detail);
    for (const [key, el] of Object.entries(errors)) el.textContent = routed[key].join("; ");
    const unplaced = [...routed.other];
    if (onBaseErrors) onBaseErrors(routed.base);
    else unplaced.push(...routed.base.map((e) => `${e.loc.slice(1).join(".")}: ${e.msg}`));
    fill(general, unplaced.map((m) => h("div", {}, m)));
    general.hidden = unplaced.length === 0;
  }

  async function launch() {
    const config = base();
    const body = {
      name: name.value.trim() || `${config.name ?? "experiment"} strategies`,
      base: config,
      strategies: chosen(),
      seeds: seeds.value.trim() === "" ? DEFAULT_SEEDS : Number(seeds.value),
    };
    button.disabled = true;
    try {
      const sweep = await api("/sweeps", { method: "POST", body });
      location.hash = `#/sweeps/${sweep.id}`;
    } catch (e) {
      show(e instanceof ApiError && e.status === 422 ? e.detail : `Could not start the sweep: ${e.message}`);
    } finally {
      button.disabled = false;
    }
  }

  count();
  return h("section.card.sweep-launch#sweep-launch",
    h("h3", {}, "Compare strategies"),
    h("p.help", {}, "The same config with each strategy ticked, over several seeds (runs of one seed share the data split and the initial adapter): a sweep with a leaderboard."),
    h("div.field", {}, h("span.label", {}, "strategies"),
      h("div.checks", boxes.map((b, i) => h("label.check", { title: strategies[i].description }, b, strategies[i].name))),
      errors.strategies),
    h("div.sweep-row",
      h("div.field", {}, h("label", { for: "sweep-seeds" }, "seeds"), seeds, errors.seeds),
      h("div.field.grow", {}, h("label", { for: "sweep-name" }, "sweep name"), name, errors.name)),
    general,
    h("div.form-actions", button));
}
