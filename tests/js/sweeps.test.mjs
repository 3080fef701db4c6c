// The sweep page's pure parts: the band figures (figures.js), the leaderboard's sorting,
// marks and cells (leaderboard.js), and where the launcher puts the server's errors.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { PALETTE, SWEEP_CHARTS, bandFigure, bandSeries, cellStrategy, cellStyles, pointCount, translucent } from "figures";
import {
  COLUMNS, finalText, formatBytes, noiseMarks, noiseTitle, parseRunName, ranked, runsByCell, sortRows, sweepActive,
  sweepProgress,
} from "leaderboard";
import { routeErrors } from "../../frontend/js/pages/launch-sweep.js";

const STRATEGIES = ["fedmomentum", "fedit", "fedex", "ffa-lora"]; // the catalog's order

const point = (round, values) => ({
  round, mean: values.reduce((a, b) => a + b, 0) / values.length, min: Math.min(...values), max: Math.max(...values),
  n: values.length,
});

/** A leaderboard row (the API's shape) from per-seed accuracy and loss curves by round. */
function row(label, accuracy, loss, extra = {}) {
  const rounds = accuracy[0].map((_, i) => i - 1); // -1: before training
  return {
    label, seeds: accuracy.map((_, s) => s), rounds_done: rounds.length - 1,
    final_mean: null, final_std: null, best_mean: null, rounds_to_best: null, auc: null,
    bytes_up: 0, bytes_down: 0, wall_seconds: 0, rank_99: null, kept_energy: null,
    accuracy: rounds.map((r, i) => point(r, accuracy.map((seed) => seed[i]))),
    eval_loss: rounds.map((r, i) => point(r, loss.map((seed) => seed[i]))),
    within_noise_of_next: null,
    ...extra,
  };
}

// Two seeds, two rounds: fedit ahead of fedmomentum (the leaderboard's order).
const FEDIT = row("fedit", [[0.2, 0.5, 0.7], [0.4, 0.6, 0.9]], [[2.0, 1.5, 1.0], [2.2, 1.3, 0.8]]);
const FEDMOMENTUM = row("fedmomentum", [[0.2, 0.4, 0.6], [0.4, 0.5, 0.7]], [[2.0, 1.6, 1.2], [2.2, 1.4, 1.0]]);

const close = (actual, expected, tol = 1e-12) =>
  assert.ok(actual.length === expected.length && actual.every((v, i) => Math.abs(v - expected[i]) <= tol),
    `${JSON.stringify(actual)} != ${JSON.stringify(expected)}`);
const byUid = (fig, uid) => {
  const found = fig.data.find((t) => t.uid === uid);
  assert.ok(found, `no trace ${uid} in ${fig.data.map((t) => t.uid)}`);
  return found;
};

describe("band figures", () => {
  test("a band series sits at rounds done, 0 before training", () => {
    const s = bandSeries(FEDIT, "accuracy");
    assert.deepEqual(s.x, [0, 1, 2]);
    close(s.mean, [0.3, 0.55, 0.8]);
    assert.deepEqual([s.min, s.max, s.n], [[0.2, 0.5, 0.7], [0.4, 0.6, 0.9], [2, 2, 2]]);
  });

  test("each cell: a closed min..max band (along the maxima, back along the minima) under its mean", () => {
    const fig = bandFigure([FEDIT, FEDMOMENTUM], "accuracy", { strategies: STRATEGIES });
    // Catalog order, not rank order: fedmomentum first, band before its mean line.
    assert.deepEqual(fig.data.map((t) => t.uid), ["band:fedmomentum", "mean:fedmomentum", "band:fedit", "mean:fedit"]);
    const band = byUid(fig, "band:fedit");
    assert.deepEqual(band.x, [0, 1, 2, 2, 1, 0]);
    assert.deepEqual(band.y, [0.4, 0.6, 0.9, 0.7, 0.5, 0.2]);
    assert.equal(band.fill, "toself");
    assert.equal(band.showlegend, false);
    const mean = byUid(fig, "mean:fedit");
    assert.deepEqual(mean.x, [0, 1, 2]);
    close(mean.y, [0.3, 0.55, 0.8]);
    assert.deepEqual(mean.customdata, [[0.2, 0.4, 2], [0.5, 0.6, 2], [0.7, 0.9, 2]]);
    assert.equal(pointCount(fig), 2 * (6 + 3));
    assert.deepEqual([fig.layout.yaxis.tickformat, fig.layout.yaxis.range], [".0%", [0, 1.02]]);
  });

  test("the loss chart: means and bands of eval_loss, linear unless asked for log", () => {
    const fig = bandFigure([FEDIT, FEDMOMENTUM], "eval_loss", { strategies: STRATEGIES });
    close(byUid(fig, "mean:fedmomentum").y, [2.1, 1.5, 1.1]);
    assert.deepEqual(byUid(fig, "band:fedmomentum").y, [2.2, 1.6, 1.2, 1.0, 1.4, 2.0]);
    assert.equal(fig.layout.yaxis.type, "linear");
    assert.equal(fig.layout.yaxis.range, undefined);
    assert.equal(bandFigure([FEDIT], "eval_loss", { log: true }).layout.yaxis.type, "log");
    assert.deepEqual(SWEEP_CHARTS.map((c) => c.metric), ["accuracy", "eval_loss"]);
  });

  test("one colour per strategy from the palette, the band the same colour translucent", () => {
    const fig = bandFigure([FEDIT, FEDMOMENTUM], "accuracy", { strategies: STRATEGIES });
    assert.equal(byUid(fig, "mean:fedmomentum").line.color, PALETTE[0]);
    assert.equal(byUid(fig, "mean:fedit").line.color, PALETTE[1]);
    assert.equal(byUid(fig, "band:fedit").fillcolor, "rgba(220, 38, 38, 0.15)");
    assert.equal(translucent("#2563eb", 0.5), "rgba(37, 99, 235, 0.5)");
  });

  test("grid cells share their strategy's colour and differ by dash; unknown strategies follow", () => {
    const styles = cellStyles(["fedit, lora.rank=8", "zeta", "fedit, lora.rank=4", "fedex"], STRATEGIES);
    assert.deepEqual(styles.map((s) => [s.label, s.color, s.dash]), [
      ["fedit, lora.rank=4", PALETTE[1], "solid"],
      ["fedit, lora.rank=8", PALETTE[1], "dash"],
      ["fedex", PALETTE[2], "solid"],
      ["zeta", PALETTE[4], "solid"],
    ]);
    assert.equal(cellStrategy("fedit, aggregation.factor_split=b"), "fedit");
  });

  test("while no run has been evaluated the figure is empty", () => {
    assert.equal(pointCount(bandFigure([], "accuracy")), 0);
  });
});

// The leaderboard as the API orders it (best final mean first) with its flags.
const BOARD = ranked([
  { ...FEDIT, final_mean: 0.8, final_std: 0.1414, best_mean: 0.8, rounds_to_best: 2, auc: 0.55, bytes_up: 2.5e6,
    bytes_down: 1200, wall_seconds: 75, rank_99: 3.5, within_noise_of_next: true },
  { ...FEDMOMENTUM, final_mean: 0.65, final_std: 0.0707, best_mean: 0.65, rounds_to_best: null, auc: 0.475,
    bytes_up: 2.5e6, bytes_down: 900, wall_seconds: 60, rank_99: null, within_noise_of_next: null },
  { ...row("fedex", [[0.1, 0.2, 0.3]], [[2, 2, 2]]), final_mean: 0.3, final_std: null, best_mean: 0.3, auc: 0.2,
    bytes_up: 1e3, bytes_down: 10, wall_seconds: 5 },
]);

describe("leaderboard", () => {
  test("sorting by a column: ascending or descending, missing values last either way", () => {
    assert.deepEqual(sortRows(BOARD, "rank").map((r) => r.label), ["fedit", "fedmomentum", "fedex"]);
    assert.deepEqual(sortRows(BOARD, "wall_seconds").map((r) => r.label), ["fedex", "fedmomentum", "fedit"]);
    assert.deepEqual(sortRows(BOARD, "bytes_down", true).map((r) => r.label), ["fedit", "fedmomentum", "fedex"]);
    assert.deepEqual(sortRows(BOARD, "rank_99").map((r) => r.label), ["fedit", "fedmomentum", "fedex"]);
    assert.deepEqual(sortRows(BOARD, "rounds_to_best", true).map((r) => r.label), ["fedit", "fedmomentum", "fedex"]);
    assert.deepEqual(sortRows(BOARD, "label").map((r) => r.label), ["fedex", "fedit", "fedmomentum"]);
    // equal values keep rank order
    assert.deepEqual(sortRows(BOARD, "bytes_up", true).map((r) => r.label), ["fedit", "fedmomentum", "fedex"]);
    assert.throws(() => sortRows(BOARD, "nope"), /no leaderboard column nope/);
  });

  test("the cells' text: mean ± std, bytes with a prefix, never reached, the rank advisor", () => {
    const text = (key, r) => COLUMNS.find((c) => c.key === key).text(r);
    assert.equal(finalText(BOARD[0]), "0.800 ± 0.141");
    assert.equal(finalText(BOARD[2]), "0.300"); // one seed: no spread
    assert.equal(text("bytes_up", BOARD[0]), "2.5 MB");
    assert.equal(text("bytes_down", BOARD[0]), "1.2 kB");
    assert.equal(formatBytes(999), "999 B");
    assert.equal(text("rounds_to_best", BOARD[1]), "never");
    assert.equal(text("rank_99", BOARD[0]), "3.5");
    assert.equal(text("rank_99", BOARD[1]), "–");
    assert.equal(text("wall_seconds", BOARD[0]), "1 min 15 s");
    assert.deepEqual(COLUMNS.map((c) => c.key), ["rank", "label", "seeds", "rounds_done", "final_mean", "best_mean",
      "rounds_to_best", "auc", "bytes_up", "bytes_down", "wall_seconds", "rank_99"]);
  });

  test("within-noise marks: ≈ on both neighbours of a flagged pair, ? beside a single seed", () => {
    const marks = noiseMarks(BOARD);
    assert.deepEqual(marks.get("fedit"), { mark: "≈", near: ["fedmomentum"], unknown: [] });
    assert.deepEqual(marks.get("fedmomentum"), { mark: "≈", near: ["fedit"], unknown: ["fedex"] });
    assert.deepEqual(marks.get("fedex"), { mark: "?", near: [], unknown: ["fedmomentum"] });
    assert.match(noiseTitle(marks.get("fedmomentum")), /within the seed spread of fedit.*fedex: a single seed/);
    const apart = noiseMarks([{ ...BOARD[0], within_noise_of_next: false }, BOARD[1]]);
    assert.equal(apart.get("fedit").mark, "");
  });

  test("experiments by cell and seed from their names", () => {
    assert.deepEqual(parseRunName("cmp / 2", "cmp / 2 / fedit, lora.rank=4 / seed 12"), { label: "fedit, lora.rank=4", seed: 12 });
    assert.equal(parseRunName("cmp", "other / fedit / seed 1"), null);
    assert.equal(parseRunName("cmp", "cmp / fedit / seed x"), null);
    const sweep = { name: "cmp", runs: [
      { id: "b", name: "cmp / fedit / seed 1" }, { id: "a", name: "cmp / fedit / seed 0" },
      { id: "c", name: "cmp / fedex / seed 0" }, { id: "d", name: "stray" }] };
    const cells = runsByCell(sweep);
    assert.deepEqual([...cells.keys()], ["fedit", "fedex"]);
    assert.deepEqual(cells.get("fedit").map((c) => [c.seed, c.experiment.id]), [[0, "a"], [1, "b"]]);
  });

  test("progress counts finished runs of every kind; a sweep is live while any is queued or running", () => {
    const sweep = { status: "running", experiments: 4, counts: { completed: 1, failed: 1, running: 1, queued: 1 } };
    assert.deepEqual(sweepProgress(sweep), { finished: 2, completed: 1, total: 4 });
    assert.equal(sweepActive(sweep), true);
    assert.equal(sweepActive({ ...sweep, status: "failed" }), false);
  });
});

describe("the launcher's errors", () => {
  test("each 422 item goes under the field it names; base fields go to the form without 'base'", () => {
    const routed = routeErrors([
      { loc: ["body", "strategies", 2], msg: "Value error, unknown strategy 'fedavg'" },
      { loc: ["body", "seeds"], msg: "Value error, a count of seeds must be 1..200" },
      { loc: ["body", "name"], msg: "String should have at most 200 characters" },
      { loc: ["body", "base", "federation", "rounds"], msg: "Value error, must be positive" },
      { loc: ["body"], msg: "Value error, this sweep expands to 240 experiments; at most 200" },
      { loc: ["body", "grid", "lora.rank"], msg: "unknown config field" },
    ]);
    assert.deepEqual(routed.strategies, ["strategies[2]: unknown strategy 'fedavg'"]);
    assert.deepEqual(routed.seeds, ["a count of seeds must be 1..200"]);
    assert.deepEqual(routed.name, ["String should have at most 200 characters"]);
    assert.deepEqual(routed.base.map((e) => [e.loc, e.msg]), [[["body", "federation", "rounds"], "must be positive"]]);
    assert.deepEqual(routed.other, ["this sweep expands to 240 experiments; at most 200", "grid.lora.rank: unknown config field"]);
    assert.deepEqual(routeErrors("server down").other, ["server down"]);
  });
});
