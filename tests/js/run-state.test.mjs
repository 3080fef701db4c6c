// run-state.js: the reducer that the live page and the static report build a run from.
import assert from "node:assert/strict";
import { test } from "node:test";

import { addRecords, applyEvent, newRun, records, runFromRecords } from "run-state";

const EXPERIMENT = { id: "e1", name: "tiny", status: "running", error: null };

const metric = (kind, round, values, { client = null, step = null, layer = null } = {}) => ({
  kind, round, client, step, layer, values,
});

test("a re-delivered record replaces itself instead of adding a point", () => {
  const run = newRun(EXPERIMENT);
  addRecords(run, [metric("eval", 0, { accuracy: 0.5 }), metric("eval", 1, { accuracy: 0.6 })]);
  addRecords(run, [metric("eval", 1, { accuracy: 0.7 })]); // same key: kind, round, client, step, layer
  assert.deepEqual(records(run, "eval").map((m) => m.values.accuracy), [0.5, 0.7]);
});

test("records of one kind come by round, client, step, then layer", () => {
  const run = runFromRecords(EXPERIMENT, [
    metric("client_step", 1, { loss: 4 }, { client: 0, step: 0 }),
    metric("client_step", 0, { loss: 3 }, { client: 1, step: 0 }),
    metric("client_step", 0, { loss: 2 }, { client: 0, step: 1 }),
    metric("client_step", 0, { loss: 1 }, { client: 0, step: 0 }),
    metric("diagnostics", 0, { naive_error: 0.2 }, { layer: "q_proj" }),
    metric("diagnostics", 0, { naive_error: 0.1 }, { layer: "k_proj" }),
  ]);
  assert.deepEqual(records(run, "client_step").map((m) => m.values.loss), [1, 2, 3, 4]);
  assert.deepEqual(records(run, "diagnostics").map((m) => m.layer), ["k_proj", "q_proj"]);
  assert.deepEqual(records(run, "round"), []);
});

test("events build attempts, round times and live progress", () => {
  const run = newRun(EXPERIMENT);
  applyEvent(run, "round_started", { round: 0, created_at: "2024-01-01T00:00:00Z" }, 1);
  applyEvent(run, "client_progress", { round: 0, client: 0, step: 1, loss: 2.5 }, 2);
  applyEvent(run, "client_progress", { round: 0, client: 1, step: 0, loss: 3.0 }, 3);
  assert.deepEqual([...run.progress.keys()], [0, 1]);
  applyEvent(run, "client_finished", { round: 0, client: 0, attempt: 0, ok: true, seconds: 1.5 }, 4);
  assert.deepEqual([...run.progress.keys()], [1]); // a finished client is no longer in progress
  assert.deepEqual(run.attempts.get("0|0|0"), { round: 0, client: 0, attempt: 0, ok: true, seconds: 1.5 });
  // A restarted round keeps the time it first started.
  applyEvent(run, "round_started", { round: 0, created_at: "2024-01-01T00:05:00Z" }, 5);
  assert.equal(run.roundStart.get(0), "2024-01-01T00:00:00Z");
  assert.equal(run.progress.size, 0);
  applyEvent(run, "metrics", { records: [metric("round", 0, { round_seconds: 3 })] }, 7);
  applyEvent(run, "round_finished", { round: 0, created_at: "2024-01-01T00:06:00Z" }, 6);
  assert.equal(run.roundEnd.get(0), "2024-01-01T00:06:00Z");
  assert.equal(records(run, "round")[0].values.round_seconds, 3);
  assert.equal(run.lastEventId, 7); // the highest id seen, whatever the order
});

test("a status event updates the experiment and keeps an earlier error", () => {
  const run = newRun(EXPERIMENT);
  applyEvent(run, "status", { status: "failed", error: "client 1 ran out of memory" });
  assert.equal(run.experiment.status, "failed");
  applyEvent(run, "status", { status: "cancelled" });
  assert.deepEqual([run.experiment.status, run.experiment.error], ["cancelled", "client 1 ran out of memory"]);
  assert.equal(EXPERIMENT.status, "running"); // the experiment given is never mutated
});
