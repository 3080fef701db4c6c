// Uploaded datasets (POST /api/v1/datasets summaries) shaped for the new-experiment form:
// the preview table, the count per label or topic, and the dataset field's choices. Pure
// data, no DOM: tests/js/datasets.test.mjs runs it under Node.

const CELL = 160; // characters of an example shown in a preview cell

/** ``text`` cut to ``max`` characters, with an ellipsis when it was longer. */
export function clip(text, max = CELL) {
  const s = String(text ?? "");
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

/** The first examples as a table: {columns, rows} (text/label, or prompt/response). */
export function previewTable(summary) {
  const columns = summary.layout === "text/label" ? ["text", "label"] : ["prompt", "response"];
  return { columns, rows: summary.preview.map((ex) => columns.map((c) => clip(ex[c]))) };
}

/** Examples per label or topic, the largest first (ties by name), with their share. */
export function countRows(summary) {
  const total = Object.values(summary.counts).reduce((a, b) => a + b, 0);
  return Object.entries(summary.counts)
    .map(([key, count]) => ({ key, count, share: total ? count / total : 0 }))
    .sort((a, b) => b.count - a.count || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

/** One line about an uploaded dataset: size, layout and how it is counted. */
export function describe(summary) {
  const n = summary.n_examples;
  const groups = Object.keys(summary.counts).length;
  const by = `${groups} ${summary.count_by}${groups === 1 ? "" : "s"}`;
  return `uploaded ${summary.filename}: ${n} example${n === 1 ? "" : "s"}, ${summary.layout}, ${by}`;
}

/** The dataset field's entries: the built-in ones, then every upload (by its config path). */
export function datasetEntries(builtins, uploads) {
  const uploaded = uploads.map((d) => ({ name: d.path, label: `${d.name} (uploaded)`, description: describe(d) }));
  const paths = new Set(uploaded.map((e) => e.name));
  return [...builtins.filter((e) => !paths.has(e.name)), ...uploaded];
}

/** ``entries`` with ``summary``'s entry added, or replacing the one of the same path. */
export function withUpload(entries, summary) {
  const [entry] = datasetEntries([], [summary]);
  const at = entries.findIndex((e) => e.name === entry.name);
  return at < 0 ? [...entries, entry] : entries.map((e, i) => (i === at ? entry : e));
}
