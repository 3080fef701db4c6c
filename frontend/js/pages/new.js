// New experiment: a form built from the config's JSON schema and the catalog (one source of
// truth: backend/config.py). Defaults are the demo, so Launch alone starts a real run. The
// server validates; its errors appear next to the fields they name. A dataset file uploaded
// here is previewed and becomes one of the dataset field's choices.
import { allPages, api, ApiError, upload } from "api";
import { countRows, datasetEntries, describe, previewTable, withUpload } from "datasets";
import { fill, h, pct } from "dom";
import { sweepLauncher } from "./launch-sweep.js";

const GROUPS = [ // [config key, title, open by default]
  ["federation", "Federation", true],
  ["training", "Local training", true],
  ["lora", "LoRA", true],
  ["data", "Data and partition", true],
  ["aggregation", "Aggregation", false],
  ["eval", "Evaluation", false],
  ["privacy", "Differential privacy", false],
];
const BASICS = ["name", "strategy", "model", "dataset", "seed", "device"];
const OTHER = "__other__";

const label = (key) => key.replace(/_/g, " ");
const inputId = (path) => `field-${path.replace(/\./g, "-")}`;

/** The schema of one property: {type, enum, nullable, description, ...} ($ref and anyOf resolved). */
function resolve(schema, prop) {
  let p = prop.$ref ? schema.$defs[prop.$ref.split("/").pop()] : prop;
  let nullable = false;
  if (p.anyOf) {
    nullable = p.anyOf.some((b) => b.type === "null");
    p = { ...p, ...p.anyOf.find((b) => b.type !== "null") };
  }
  return { ...p, nullable, description: prop.description ?? p.description };
}

/** A field: its element and how to read its value back. */
function field(path, prop, value, choices) {
  const id = inputId(path);
  const error = h("div.field-error", { id: `error-${path}`, role: "alert", dataset: { for: path } });
  const help = h("div.help", {}, prop.description ?? "");
  let input;
  let read;
  if (choices) { // catalog names, with a free-text "other" when the field accepts paths or hub ids
    const known = choices.entries.some((c) => c.name === value);
    const text = h("input", { type: "text", placeholder: choices.other, value: known ? "" : value ?? "", hidden: known, "aria-label": `${label(path)} (other)` });
    input = h("select", { id, name: path },
      choices.entries.map((c) => h("option", { value: c.name, selected: c.name === value, title: c.description }, c.label ?? c.name)),
      choices.other ? h("option", { value: OTHER, selected: !known }, "other…") : null);
    const describe = () => {
      const entry = choices.entries.find((c) => c.name === input.value);
      text.hidden = input.value !== OTHER;
      help.textContent = entry ? entry.description : prop.description ?? "";
    };
    input.addEventListener("change", describe);
    describe();
    read = () => (input.value === OTHER ? text.value.trim() : input.value);
    return { path, read, error, el: h("div.field", { dataset: { path } }, h("label", { for: id }, label(path.split(".").pop())), h("div.inputs", input, text), help, error) };
  }
  if (prop.enum) {
    input = h("select", { id, name: path }, prop.enum.map((v) => h("option", { value: v, selected: v === value }, v)));
    read = () => input.value;
  } else if (prop.type === "boolean") {
    input = h("input", { id, name: path, type: "checkbox", checked: Boolean(value) });
    read = () => input.checked;
  } else if (prop.type === "integer" || prop.type === "number") {
    input = h("input", { id, name: path, type: "number", step: prop.type === "integer" ? "1" : "any",
      value: value ?? "", placeholder: prop.nullable ? "default" : "" });
    read = () => (input.value.trim() === "" ? null : Number(input.value));
  } else if (prop.type === "array") {
    const ints = prop.items?.type === "integer";
    input = h("input", { id, name: path, type: "text", value: (value ?? []).join(", "),
      placeholder: prop.nullable ? "default (comma-separated list)" : "comma-separated" });
    read = () => {
      const parts = input.value.split(",").map((s) => s.trim()).filter(Boolean);
      if (!parts.length) return prop.nullable ? null : [];
      return ints ? parts.map((s) => (/^-?\d+$/.test(s) ? Number(s) : s)) : parts;
    };
  } else {
    input = h("input", { id, name: path, type: "text", value: value ?? "" });
    read = () => (prop.nullable && input.value.trim() === "" ? null : input.value);
  }
  return { path, read, error, el: h("div.field", { dataset: { path } }, h("label", { for: id }, label(path.split(".").pop())), input, help, error) };
}

/** The preview of an uploaded dataset: what it holds, its first examples, its count per group. */
function previewOf(summary) {
  const table = previewTable(summary);
  return [
    h("p.muted#dataset-summary", {}, `${summary.name}: ${describe(summary)}`),
    h("div.table-wrap", h("table.preview#dataset-examples",
      h("thead", h("tr", table.columns.map((c) => h("th", {}, c)))),
      h("tbody", table.rows.map((row) => h("tr", row.map((cell) => h("td", {}, cell))))))),
    h("table.counts#dataset-counts",
      h("thead", h("tr", h("th", {}, summary.count_by), h("th", {}, "examples"), h("th", {}, "share"))),
      h("tbody", countRows(summary).map((r) => h("tr", { dataset: { key: r.key } },
        h("td", {}, r.key), h("td.num", {}, String(r.count)), h("td.num", {}, pct(r.share)))))),
  ];
}

/** Upload control: a dataset file sent on choice, then onUploaded(summary). */
function uploader(onUploaded) {
  const file = h("input#dataset-file", { type: "file", accept: ".jsonl,.json,.csv,.parquet", "aria-label": "dataset file" });
  const name = h("input#dataset-name", { type: "text", placeholder: "name (default: the file's)", "aria-label": "dataset name" });
  const replace = h("input#dataset-replace", { type: "checkbox" });
  const status = h("span.muted#dataset-status", { role: "status" });
  const error = h("div.field-error#dataset-error", { role: "alert" });
  const preview = h("div#dataset-preview", { hidden: true });
  file.addEventListener("change", async () => {
    if (!file.files.length) return;
    const form = new FormData();
    form.append("file", file.files[0]);
    if (name.value.trim()) form.append("name", name.value.trim());
    form.append("replace", String(replace.checked));
    error.textContent = "";
    status.textContent = "Uploading…";
    try {
      const summary = await upload("/datasets", form);
      status.textContent = "Uploaded; selected as the dataset.";
      onUploaded(summary);
    } catch (e) {
      status.textContent = "";
      const detail = e instanceof ApiError ? e.detail : e.message;
      error.textContent = Array.isArray(detail) ? detail.map((d) => String(d.msg).replace(/^Value error, /, "")).join("; ") : String(detail);
    }
    file.value = "";
  });
  const show = (summary) => {
    if (summary) fill(preview, previewOf(summary));
    preview.hidden = !summary;
  };
  const el = h("div.upload#dataset-upload",
    h("div.upload-row", h("label", { for: "dataset-file" }, "Upload a dataset"), name, file,
      h("label.check", {}, replace, " replace an upload of that name"), status),
    h("div.help", {}, "A .jsonl, .json, .csv or .parquet file: prompt/response, text/label, Alpaca or chat messages."),
    error, preview);
  return { el, show };
}

/** Put ``value`` at the dotted ``path`` of ``target``. */
function setPath(target, path, value) {
  const keys = path.split(".");
  let node = target;
  for (const k of keys.slice(0, -1)) node = node[k] ??= {};
  node[keys.at(-1)] = value;
}

export function render(app, { params }) {
  let catalog = null;
  let fields = [];
  let uploads = []; // summaries of the uploaded datasets
  const datasetChoice = { entries: [], other: ".jsonl/.json/.csv/.parquet path or hf:<id>[@split]" };
  const uploadControl = uploader((summary) => {
    uploads = [...uploads.filter((d) => d.name !== summary.name), summary];
    datasetChoice.entries = withUpload(datasetChoice.entries, summary);
    const select = form.querySelector("#field-dataset");
    const entry = datasetChoice.entries.find((e) => e.name === summary.path);
    let option = [...select.options].find((o) => o.value === entry.name);
    if (!option) {
      option = h("option", { value: entry.name }, entry.label);
      const other = select.querySelector(`option[value="${OTHER}"]`);
      if (other) other.before(option);
      else select.append(option);
    }
    option.title = entry.description;
    select.value = entry.name;
    select.dispatchEvent(new Event("change"));
  });
  const form = h("form#experiment-form", { novalidate: true });
  const formError = h("div.form-error#form-error", { role: "alert", hidden: true });
  const launch = h("button.primary#launch", { type: "submit" }, "Launch");
  const startFrom = h("select#start-from", { "aria-label": "start from" }, h("option", { value: "" }, "the defaults (the demo)"));

  function build(config) {
    const schema = catalog.config_schema;
    const choices = {
      strategy: { entries: catalog.strategies },
      model: { entries: catalog.models, other: "local model directory or hub id" },
      dataset: datasetChoice,
      "data.partition": { entries: catalog.partitions.map((p) => ({ name: p, description: "" })) },
    };
    datasetChoice.entries = datasetEntries(catalog.datasets, uploads);
    fields = [];
    const make = (path, prop, value) => {
      const f = field(path, resolve(schema, prop), value, choices[path]);
      fields.push(f);
      return f.el;
    };
    const basics = h("fieldset.group", h("legend", {}, "Experiment"),
      h("div.fields", BASICS.map((k) => make(k, schema.properties[k], config[k]))), uploadControl.el);
    const datasetSelect = basics.querySelector("#field-dataset");
    const showUpload = () => uploadControl.show(uploads.find((d) => d.path === datasetSelect.value));
    datasetSelect.addEventListener("change", showUpload);
    showUpload();
    const groups = GROUPS.map(([key, title, open]) => {
      const sub = resolve(schema, schema.properties[key]);
      const error = h("div.field-error", { id: `error-${key}`, role: "alert", dataset: { for: key } });
      fields.push({ path: key, error, group: true });
      return h("details.group", { open, dataset: { group: key } }, h("summary", {}, title), error,
        h("div.fields", Object.entries(sub.properties).map(([k, p]) => make(`${key}.${k}`, p, config[key]?.[k]))));
    });
    fill(form, basics, groups, formError, h("div.form-actions", launch, h("span.muted", {}, "The server checks every field; errors appear next to them.")));
  }

  function value() {
    const out = {};
    for (const f of fields) if (!f.group) setPath(out, f.path, f.read());
    return out;
  }

  function showErrors(detail) {
    for (const f of fields) f.error.textContent = "";
    formError.hidden = true;
    const unplaced = [];
    let first = null;
    for (const e of Array.isArray(detail) ? detail : [{ loc: [], msg: String(detail) }]) {
      const path = (e.loc ?? []).filter((p) => p !== "body").join(".");
      const msg = String(e.msg ?? "").replace(/^Value error, /, "");
      const target = fields.find((f) => f.path === path) ?? fields.find((f) => f.group && path.startsWith(`${f.path}.`));
      if (!target) { unplaced.push(path ? `${path}: ${msg}` : msg); continue; }
      target.error.textContent = target.error.textContent ? `${target.error.textContent}; ${msg}` : msg;
      target.error.closest("details")?.setAttribute("open", "");
      first ??= target.error;
    }
    if (unplaced.length) {
      fill(formError, unplaced.map((m) => h("div", {}, m)));
      formError.hidden = false;
      first ??= formError;
    }
    first?.closest(".field, details, .form-error")?.scrollIntoView({ block: "center" });
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    launch.disabled = true;
    launch.textContent = "Launching…";
    try {
      const exp = await api("/experiments", { method: "POST", body: value() });
      location.hash = `#/experiments/${exp.id}`;
    } catch (e) {
      showErrors(e instanceof ApiError && e.status === 422 ? e.detail : `Could not launch: ${e.message}`);
      launch.disabled = false;
      launch.textContent = "Launch";
    }
  });

  async function prefill(id) {
    if (!id) return build(catalog.defaults);
    try {
      const exp = await api(`/experiments/${encodeURIComponent(id)}`);
      build({ ...exp.config, name: `${exp.config.name} (copy)` });
    } catch (e) {
      build(catalog.defaults);
      showErrors(`Could not load experiment ${id}: ${e.message}`);
    }
  }

  startFrom.addEventListener("change", () => prefill(startFrom.value));

  (async () => {
    try {
      catalog = await api("/catalog");
    } catch (e) {
      fill(app, h("div.banner", { role: "alert" }, `Could not load the catalog: ${e.message}`));
      return;
    }
    try {
      uploads = await allPages("/datasets");
    } catch { /* the form works without the uploaded datasets */ }
    const from = params.get("from") ?? "";
    fill(app,
      h("div.page-head", h("h1", {}, "New experiment"),
        h("label.inline", {}, "Start from ", startFrom)),
      form,
      sweepLauncher({ strategies: catalog.strategies, base: value, onBaseErrors: showErrors }));
    await prefill(from);
    try {
      const recent = await api("/experiments?limit=100");
      for (const e of recent.data) startFrom.append(h("option", { value: e.id, selected: e.id === from }, `${e.name} (${e.strategy}, ${e.status})`));
    } catch { /* the form works without the list */ }
  })();
}
