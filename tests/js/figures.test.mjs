// figures.js: the plotly figures of a run, on small hand-written run states.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  COMPARE_CHARTS, ENERGY_SHARES, PALETTE, RUN_CHARTS, bytesSeries, compareFigure, energyKept, evalSeries,
  layerSeries, pointCount, privacySpent, rankAdvice, rankForEnergy, rankSeries, recordRanks, roundSeconds, shareText,
} from "figures";
import { applyEvent, runFromRecords } from "run-state";

const CONFIG = { lora: { rank: 2 }, training: { local_steps: 2 }, federation: { rounds: 2 } };
const experiment = (name, extra = {}) => ({ id: name, name, strategy: "fedmomentum", config: CONFIG, ...extra });

const rec = (kind, round, values, { client = null, step = null, layer = null } = {}) => ({
  kind, round, client, step, layer, values,
});
const diag = (round, layer, values) => rec("diagnostics", round, values, { layer });
const run = (records, exp = experiment("run")) => runFromRecords(exp, records);

/** A run chart's figure, as the run view builds it. */
function figure(id, r, opts = {}) {
  const chart = RUN_CHARTS.find((c) => c.id === id);
  assert.ok(chart, `no run chart ${id}`);
  return chart.build(r, { log: chart.log ?? false, layer: "mean", ...opts });
}
const byUid = (fig, uid) => fig.data.find((t) => t.uid === uid);
const close = (actual, expected, tol = 1e-12) =>
  assert.ok(actual.length === expected.length && actual.every((v, i) => Math.abs(v - expected[i]) <= tol),
    `${JSON.stringify(actual)} != ${JSON.stringify(expected)}`);

// Two rounds, two layers; singular values with whole energies (16, 4, 1, 1: total 22).
const SPECTRA = [
  diag(0, "q", { singular_values: [4, 2, 1, 1], kept_rank: 2, residual_energy: 0.1, naive_error: 0.3, exactness_error: 1e-8 }),
  diag(0, "v", { singular_values: [2, 0, 0, 0], kept_rank: 2, residual_energy: 0.3, naive_error: 0.5, exactness_error: 3e-8 }),
  diag(1, "q", { singular_values: [4, 2, 1, 1], kept_rank: 2, residual_energy: 0.2, naive_error: 0.1, subspace_momentum: 0.9 }),
  diag(1, "v", { singular_values: [1, 0, 0, 0], kept_rank: 2, residual_energy: 0.4, naive_error: 0.3, subspace_momentum: 0.7 }),
];

describe("series", () => {
  test("eval points sit at rounds done: 0 is before training, nulls are skipped", () => {
    const r = run([rec("eval", -1, { accuracy: 0.25, eval_loss: 2 }), rec("eval", 0, { accuracy: null, eval_loss: 1.5 }),
      rec("eval", 1, { accuracy: 0.75, eval_loss: 1 })]);
    assert.deepEqual(evalSeries(r, "accuracy"), { x: [0, 2], y: [0.25, 0.75] });
    assert.deepEqual(evalSeries(r, "eval_loss"), { x: [0, 1, 2], y: [2, 1.5, 1] });
  });

  test("a layer diagnostic keeps every layer and their mean by round", () => {
    const s = layerSeries(run(SPECTRA), "residual_energy");
    assert.deepEqual([...s.layers.keys()], ["q", "v"]);
    assert.deepEqual(s.layers.get("v"), { x: [1, 2], y: [0.3, 0.4] });
    close(s.mean.y, [0.2, 0.3]);
    assert.deepEqual(s.mean.x, [1, 2]);
    assert.deepEqual(layerSeries(run(SPECTRA), "subspace_momentum").mean.x, [2]); // round 1 has none
  });

  test("bytes down count each client's own rank group", () => {
    const config = { ...CONFIG, federation: { client_ranks: [2, 4, 4] } };
    const r = run([rec("round", 0, { clients: [0, 2], bytes_up: { 0: 100, 2: 300 }, bytes_down: { 2: 10, 4: 40 }, round_seconds: 2.5 }),
      rec("round", 1, { clients: [1], bytes_up: { 1: 200 }, bytes_down: { 2: 10, 4: 40 }, round_seconds: 1.5 })],
    experiment("ranks", { config }));
    assert.deepEqual(bytesSeries(r), { x: [1, 2], up: [400, 200], down: [50, 40] });
    assert.deepEqual(roundSeconds(r), { x: [1, 2], y: [2.5, 1.5] });
  });
});

describe("run charts", () => {
  test("accuracy is a percent axis from 0 to 1.02; loss can go logarithmic", () => {
    const r = run([rec("eval", -1, { accuracy: 0.5, eval_loss: 2 }), rec("eval", 0, { accuracy: 0.6, eval_loss: 1 })]);
    const acc = figure("accuracy", r);
    assert.deepEqual([acc.data[0].x, acc.data[0].y], [[0, 1], [0.5, 0.6]]);
    assert.deepEqual([acc.layout.yaxis.tickformat, acc.layout.yaxis.range], [".0%", [0, 1.02]]);
    assert.equal(figure("eval-loss", r, { log: true }).layout.yaxis.type, "log");
    assert.equal(figure("eval-loss", r).layout.yaxis.type, "linear");
  });

  test("client losses are placed within their round by local step", () => {
    const steps = [0, 1].flatMap((round) => [0, 1].flatMap((client) => [0, 1].map((step) =>
      rec("client_step", round, { loss: 10 * round + client + step / 10 }, { client, step }))));
    const fig = figure("client-loss", run(steps));
    assert.deepEqual(fig.data.map((t) => t.name), ["client 0", "client 1"]);
    assert.deepEqual(fig.data[1].x, [0.5, 1, 1.5, 2]); // local_steps 2: half a round each
    assert.deepEqual(fig.data[1].y, [1, 1.1, 11, 11.1]);
  });

  test("the spectrum: one line per round, the mean over layers, the rank cut after r", () => {
    const fig = figure("spectrum", run(SPECTRA), { log: true });
    assert.deepEqual(fig.data.map((t) => t.name), ["round 1", "round 2"]);
    assert.deepEqual(fig.data[0].x, [1, 2, 3, 4]);
    assert.deepEqual(fig.data[0].y, [3, 1, 0.5, 0.5]);
    assert.deepEqual(fig.data[1].y, [2.5, 1, 0.5, 0.5]);
    assert.equal(fig.layout.shapes[0].x0, 2.5);
    assert.equal(fig.layout.annotations[0].text, "rank cut r = 2");
    assert.deepEqual(figure("spectrum", run(SPECTRA), { layer: "v" }).data[1].y, [1, 0, 0, 0]);
  });

  test("layer charts: thin layers, their mean, and the strategy's exactness beside it", () => {
    const fig = figure("naive-error", run(SPECTRA));
    assert.deepEqual(fig.data.map((t) => t.uid), ["layer-q", "layer-v", "mean", "exactness_error"]);
    close(byUid(fig, "mean").y, [0.4, 0.2]);
    close(byUid(fig, "exactness_error").y, [2e-8]);
    assert.deepEqual(fig.data.map((t) => t.showlegend), [true, false, undefined, undefined]);
  });

  test("the timeline lays untimed tasks end to end and marks failures, retries and exclusions", () => {
    const r = run([rec("round", 0, { clients: [0, 1], excluded: { 1: "norm 40 above 3 x median" } })]);
    const finished = [
      { round: 0, client: 0, attempt: 0, ok: false, seconds: 1, error: "out of memory", created_at: null },
      { round: 0, client: 0, attempt: 1, ok: true, seconds: 2, created_at: null },
      { round: 0, client: 1, attempt: 0, ok: true, seconds: 4, created_at: null },
      { round: 1, client: 0, attempt: 0, ok: true, seconds: 3, created_at: null },
    ];
    finished.forEach((a, i) => applyEvent(r, "client_finished", a, i + 1));
    const fig = figure("timeline", r);
    assert.deepEqual(fig.data.map((t) => t.uid), ["ok", "retry", "failed", "excluded"]);
    assert.deepEqual([byUid(fig, "failed").base, byUid(fig, "retry").base, byUid(fig, "ok").base], [[0], [5], [7]]);
    assert.deepEqual(byUid(fig, "excluded").base, [1]);
    assert.deepEqual(byUid(fig, "excluded").text, ["round 1: excluded: norm 40 above 3 x median"]);
    assert.deepEqual(byUid(fig, "failed").text, ["round 1: out of memory"]);
    assert.equal(fig.layout.xaxis.title.text, "seconds (tasks end to end)");
  });

  test("round ticks stay whole and about ten", () => {
    const r = run(Array.from({ length: 25 }, (_, i) => rec("eval", i, { accuracy: 0.5 })));
    assert.equal(figure("accuracy", r).layout.xaxis.dtick, 3); // rounds 1 to 25
    assert.equal(figure("accuracy", run([rec("eval", -1, { accuracy: 0.5 })])).layout.xaxis.dtick, 1);
  });

  test("a strategy without an SVD has empty spectrum and rank charts", () => {
    const r = run([diag(0, "q", { singular_values: null, kept_rank: 2, naive_error: 0.3 })]);
    assert.equal(pointCount(figure("spectrum", r)), 0);
    assert.equal(pointCount(figure("rank-advisor", r)), 0);
    assert.equal(pointCount(figure("naive-error", r)), 2); // the layer and the mean
    assert.equal(rankAdvice(r), null);
  });
});

describe("compare", () => {
  test("one line per run, labelled strategy first, in palette order", () => {
    const runs = [run([rec("eval", -1, { accuracy: 0.5 }), rec("eval", 0, { accuracy: 0.6 })], experiment("a")),
      run([rec("eval", -1, { accuracy: 0.4 })], experiment("b", { strategy: "fedit" }))];
    const chart = COMPARE_CHARTS.find((c) => c.id === "accuracy");
    const fig = compareFigure(runs, chart);
    assert.deepEqual(fig.data.map((t) => t.name), ["fedmomentum · a", "fedit · b"]);
    assert.deepEqual(fig.data.map((t) => t.y), [[0.5, 0.6], [0.4]]);
    assert.deepEqual(fig.data.map((t) => t.line.color), PALETTE.slice(0, 2));
    assert.deepEqual(fig.data.map((t) => t.legendgroup), ["fedmomentum", "fedit"]);
    assert.equal(pointCount(fig), 3);
  });

  test("the residual compare chart is each run's mean over layers", () => {
    const fig = compareFigure([run(SPECTRA)], COMPARE_CHARTS.find((c) => c.id === "residual"), { log: true });
    close(fig.data[0].y, [0.2, 0.3]);
    assert.equal(fig.layout.yaxis.type, "log");
  });
});

describe("rank advisor", () => {
  test("the smallest rank keeping each share of the energy", () => {
    // Energies 16, 4, 1, 1 of 22: 90% needs 19.8 (rank 2), 95% 20.9 (3), 99% 21.78 (4).
    assert.deepEqual(rankForEnergy([4, 2, 1, 1]), { 0.9: 2, 0.95: 3, 0.99: 4 });
    assert.deepEqual(rankForEnergy([3, 1], ["0.9"]), { 0.9: 1 }); // exactly 90% is enough
    assert.deepEqual(rankForEnergy([5, 0, 0]), { 0.9: 1, 0.95: 1, 0.99: 1 });
    assert.deepEqual(rankForEnergy([0, 0]), { 0.9: 0, 0.95: 0, 0.99: 0 }); // nothing to keep
    assert.deepEqual(Object.keys(rankForEnergy([1])), ENERGY_SHARES);
  });

  test("the share of the energy the first k singular values keep", () => {
    assert.equal(energyKept([4, 2, 1, 1], 2), 20 / 22);
    assert.equal(energyKept([4, 2, 1, 1], 0), 0);
    assert.equal(energyKept([4, 2, 1, 1], 9), 1);
    assert.equal(energyKept([0, 0], 1), 1);
  });

  test("recorded ranks win over the ones computed from the spectrum", () => {
    const recorded = { 0.9: 1, 0.95: 1, 0.99: 2 };
    assert.deepEqual(recordRanks({ singular_values: [4, 2, 1, 1], rank_for_energy: recorded }), recorded);
    assert.deepEqual(recordRanks({ singular_values: [4, 2, 1, 1] }), { 0.9: 2, 0.95: 3, 0.99: 4 });
    assert.equal(recordRanks({ singular_values: null }), null);
  });

  test("ranks by round are means over layers, the kept rank beside them", () => {
    // Round 0: q needs 2, 3, 4 and v 1, 1, 1; round 1 the same spectra in shape.
    const s = rankSeries(run(SPECTRA));
    assert.deepEqual(s.shares["0.9"], { x: [1, 2], y: [1.5, 1.5] });
    assert.deepEqual(s.shares["0.95"].y, [2, 2]);
    assert.deepEqual(s.shares["0.99"].y, [2.5, 2.5]);
    assert.deepEqual(s.kept, { x: [1, 2], y: [2, 2] });
  });

  test("the rank chart: three shares and the kept rank dashed", () => {
    const fig = figure("rank-advisor", run(SPECTRA));
    assert.deepEqual(fig.data.map((t) => t.uid), ["rank-0.9", "rank-0.95", "rank-0.99", "kept-rank"]);
    assert.deepEqual(fig.data.map((t) => t.name),
      ["90% of the energy", "95% of the energy", "99% of the energy", "kept rank r"]);
    assert.deepEqual(byUid(fig, "rank-0.99").y, [2.5, 2.5]);
    assert.equal(byUid(fig, "kept-rank").line.dash, "dash");
    assert.equal(RUN_CHARTS.find((c) => c.id === "rank-advisor").note, rankAdvice);
  });

  test("the sentence: what rank r kept of the latest round, what r/2 would have", () => {
    // Round 1 at rank 2: q keeps 20/22, v all; at rank 1, q keeps 16/22, v all.
    assert.equal(rankAdvice(run(SPECTRA)), "rank 2 kept 95.5% of round 2's update; rank 1 would have kept 86.4%.");
    // A recorded kept_energy is used as it is; r/2 still comes from the singular values.
    const recorded = SPECTRA.map((m) => ({ ...m, values: { ...m.values, kept_energy: 0.97 } }));
    assert.equal(rankAdvice(run(recorded)), "rank 2 kept 97% of round 2's update; rank 1 would have kept 86.4%.");
    const rank1 = [diag(0, "q", { singular_values: [3, 1], kept_rank: 1 })];
    assert.equal(rankAdvice(run(rank1)), "rank 1 kept 90% of round 1's update."); // no rank 0.5 to offer
  });

  test("shares print with one decimal and never round up to 100%", () => {
    assert.deepEqual([0.97, 0.9993, 0.99996, 1, 0].map(shareText), ["97%", "99.9%", "over 99.9%", "100%", "0%"]);
  });
});

describe("privacy", () => {
  const round = (r, values) => rec("round", r, { accuracy: 0.5, ...values });
  const dp = { privacy: "central", delta: 1e-5, noise_multiplier: 1.1, clip: 0.5 };

  test("the accuracy chart's note: the epsilon of the last aggregated round", () => {
    const r = run([round(0, { ...dp, epsilon: 1.23456 }), round(1, { ...dp, epsilon: 2.5 })]);
    assert.equal(privacySpent(r),
      "Privacy spent (central DP): ε = 2.5 at δ = 1.00e-5 after round 2; noise multiplier 1.1, clip 0.5.");
    assert.equal(RUN_CHARTS.find((c) => c.id === "accuracy").note, privacySpent);
  });

  test("no noise is an unbounded epsilon; a run without privacy has no note", () => {
    const r = run([round(0, { ...dp, privacy: "local", noise_multiplier: 0, epsilon: null })]);
    assert.match(privacySpent(r), /^Privacy spent \(local DP\): ε = ∞ \(no noise\)/);
    assert.equal(privacySpent(run([round(0, {})])), null);
  });
});
