// silos.js: an experiment's silo clients (GET /experiments/{id}/silos) shaped for the page.
import assert from "node:assert/strict";
import { test } from "node:test";

import { ago, hasSilos, siloRows, stateCounts } from "silos";

const NOW = Date.parse("2026-01-01T12:00:00Z");
const ANSWER = {
  count: 2,
  data: [
    { name: "hospital-b", token: false, clients: [
      { client: 1, round: 2, attempt: 0, status: "sent", seen_at: null, error: null }] },
    { name: "hospital-a", token: true, clients: [
      { client: 4, round: null, attempt: null, status: null, seen_at: null, error: null },
      { client: 0, round: 0, attempt: 1, status: "failed", seen_at: "2026-01-01T11:58:30", error: "silo 'hospital-a': oom" },
      { client: 2, round: 3, attempt: 0, status: "claimed", seen_at: "2026-01-01T11:59:55+00:00", error: null }] },
  ],
};

test("one row per silo client, silos by name then clients by index, rounds 1-based", () => {
  assert.deepEqual(siloRows(ANSWER, NOW), [
    { silo: "hospital-a", kind: "token", client: 0, round: "1", state: "failed", attempt: 1, lastSeen: "1 min ago", error: "silo 'hospital-a': oom" },
    { silo: "hospital-a", kind: "token", client: 2, round: "4", state: "claimed", attempt: 0, lastSeen: "5 s ago", error: "" },
    { silo: "hospital-a", kind: "token", client: 4, round: "–", state: "not sampled", attempt: null, lastSeen: "–", error: "" },
    { silo: "hospital-b", kind: "celery", client: 1, round: "3", state: "sent", attempt: 0, lastSeen: "–", error: "" },
  ]);
  assert.deepEqual(siloRows({ data: [], count: 0 }, NOW), []);
});

test("last seen reads as a relative time; a time without zone is UTC, as the API writes it", () => {
  const at = (seconds) => new Date(NOW - seconds * 1000).toISOString();
  assert.deepEqual([0, 59, 60, 3599, 3600, 86399, 86400 * 3].map((s) => ago(at(s), NOW)),
    ["0 s ago", "59 s ago", "1 min ago", "59 min ago", "1 h ago", "23 h ago", "3 d ago"]);
  assert.equal(ago("2026-01-01T11:00:00", NOW), "1 h ago");
  assert.equal(ago("2026-01-01T13:00:00Z", NOW), "0 s ago"); // a clock ahead of ours: not negative
  assert.equal(ago(null, NOW), "–");
  assert.equal(ago("not a time", NOW), "not a time");
});

test("the section shows only for runs that pin clients to silos", () => {
  assert.equal(hasSilos({ federation: { silos: { a: [0] } } }), true);
  assert.equal(hasSilos({ federation: { silos: {} } }), false);
  assert.equal(hasSilos({ federation: { silos: null } }), false);
  assert.equal(hasSilos(undefined), false);
});

test("state counts come in a fixed order, empty states left out", () => {
  assert.deepEqual(stateCounts(siloRows(ANSWER, NOW)), [["claimed", 1], ["sent", 1], ["failed", 1], ["not sampled", 1]]);
});
