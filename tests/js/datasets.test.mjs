// datasets.js: an upload's summary shaped for the form (preview table, counts, choices).
import assert from "node:assert/strict";
import { test } from "node:test";

import { clip, countRows, datasetEntries, describe, previewTable, withUpload } from "datasets";

const TOPICS = {
  name: "qa", path: "qa.jsonl", filename: "qa.jsonl", layout: "prompt/response", n_examples: 6,
  preview: [{ prompt: "2+2=", response: "4" }, { prompt: "sky?", response: "blue" }],
  count_by: "topic", counts: { color: 2, math: 4 },
};
const LABELS = {
  name: "reviews", path: "reviews.csv", filename: "reviews.csv", layout: "text/label", n_examples: 1,
  preview: [{ text: "x".repeat(400), label: "pos" }], count_by: "label", counts: { pos: 1 },
};

test("the preview table has the layout's columns, long texts clipped", () => {
  assert.deepEqual(previewTable(TOPICS), { columns: ["prompt", "response"], rows: [["2+2=", "4"], ["sky?", "blue"]] });
  const labels = previewTable(LABELS);
  assert.deepEqual(labels.columns, ["text", "label"]);
  assert.equal(labels.rows[0][0].length, 160);
  assert.ok(labels.rows[0][0].endsWith("…"));
  assert.equal(clip("short"), "short");
});

test("counts come largest first, ties by name, with their share of all examples", () => {
  assert.deepEqual(countRows(TOPICS), [
    { key: "math", count: 4, share: 4 / 6 }, { key: "color", count: 2, share: 2 / 6 },
  ]);
  const tied = countRows({ counts: { b: 1, a: 1, c: 2 } });
  assert.deepEqual(tied.map((r) => r.key), ["c", "a", "b"]);
});

test("a summary is described in one line, singular and plural", () => {
  assert.equal(describe(TOPICS), "uploaded qa.jsonl: 6 examples, prompt/response, 2 topics");
  assert.equal(describe(LABELS), "uploaded reviews.csv: 1 example, text/label, 1 label");
});

test("uploads follow the built-in datasets in the choices, named by their config path", () => {
  const builtins = [{ name: "arith", description: "generated arithmetic" }];
  const entries = datasetEntries(builtins, [TOPICS]);
  assert.deepEqual(entries.map((e) => [e.name, e.label]), [["arith", undefined], ["qa.jsonl", "qa (uploaded)"]]);
  const replaced = withUpload(entries, { ...TOPICS, n_examples: 9 });
  assert.equal(replaced.length, 2);
  assert.match(replaced[1].description, /9 examples/);
  assert.deepEqual(withUpload(entries, LABELS).map((e) => e.name), ["arith", "qa.jsonl", "reviews.csv"]);
});
