// Figures of one run, and of several runs to compare, as plotly {data, layout}: pure functions
// of the run state (run-state.js), with no Plotly, DOM or window, so Node can test them.
// charts.js draws them.
//
// The round axis counts aggregated rounds: 0 is the evaluation before training, k the state
// after round k (the API numbers rounds from 0, so its round r is drawn at r + 1).
import { records } from "run-state";

export const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#ea580c", "#9333ea", "#0891b2",
  "#ca8a04", "#db2777", "#4b5563", "#65a30d"];
const MUTED = "rgba(100, 116, 139, 0.35)";

function layout(xtitle, ytitle, { log = false, percent = false, ...extra } = {}) {
  return {
    margin: { l: 64, r: 16, t: 10, b: 48 },
    hovermode: "closest",
    uirevision: "keep", // keep the user's zoom when new points arrive
    showlegend: true,
    legend: { orientation: "h", x: 0, y: -0.22, font: { size: 11 } },
    font: { family: "system-ui, sans-serif", size: 12 },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    xaxis: { title: { text: xtitle }, zeroline: false, gridcolor: "#e5e7eb" },
    yaxis: {
      title: { text: ytitle },
      type: log ? "log" : "linear",
      tickformat: percent ? ".0%" : undefined,
      range: percent && !log ? [0, 1.02] : undefined,
      exponentformat: "power",
      gridcolor: "#e5e7eb",
    },
    ...extra,
  };
}

/** Whole-round ticks on a round axis (about ten at most). */
function roundTicks(fig) {
  const max = fig.data.reduce((m, t) => (t.x ?? []).reduce((a, b) => Math.max(a, b), m), 1);
  Object.assign(fig.layout.xaxis, { tick0: 0, dtick: Math.max(1, Math.ceil(max / 10)) });
  return fig;
}

const line = (uid, name, x, y, style = {}) => ({
  uid, name, x, y, type: "scatter", mode: "lines+markers", ...style,
});

// ---- series: one number per round ----------------------------------------------------------

/** Evaluation metric by rounds done (0 = before training). */
export function evalSeries(run, field) {
  const rows = records(run, "eval").filter((m) => m.values[field] !== null && m.values[field] !== undefined);
  return { x: rows.map((m) => m.round + 1), y: rows.map((m) => m.values[field]) };
}

const given = (v) => v !== null && v !== undefined;

/** The mean over layers of ``value(record)`` by round, skipping records where it is null. */
function meanByRound(rows, value) {
  const sums = new Map();
  for (const m of rows) {
    const v = value(m);
    if (!given(v)) continue;
    const s = sums.get(m.round) ?? [0, 0];
    sums.set(m.round, [s[0] + v, s[1] + 1]);
  }
  const rounds = [...sums.keys()].sort((a, b) => a - b);
  return { x: rounds.map((r) => r + 1), y: rounds.map((r) => sums.get(r)[0] / sums.get(r)[1]) };
}

/** A per-layer diagnostic: every layer's series and their mean, by round. */
export function layerSeries(run, field) {
  const rows = records(run, "diagnostics");
  const layers = new Map();
  for (const m of rows) {
    const v = m.values[field];
    if (!given(v)) continue;
    if (!layers.has(m.layer)) layers.set(m.layer, { x: [], y: [] });
    layers.get(m.layer).x.push(m.round + 1);
    layers.get(m.layer).y.push(v);
  }
  return { layers, mean: meanByRound(rows, (m) => m.values[field]) };
}

/** The LoRA rank of a client (per-client ranks when the config has them). */
function clientRank(config, client) {
  return config?.federation?.client_ranks?.[client] ?? config?.lora?.rank;
}

/** Bytes uploaded by the round's clients and downloaded by them (the global adapter). */
export function bytesSeries(run) {
  const out = { x: [], up: [], down: [] };
  for (const m of records(run, "round")) {
    const v = m.values;
    const up = Object.values(v.bytes_up ?? {}).reduce((a, b) => a + b, 0);
    const per = v.bytes_down ?? {};
    const down = (v.clients ?? []).reduce((a, c) => a + (per[clientRank(run.experiment.config, c)] ?? 0), 0);
    out.x.push(m.round + 1);
    out.up.push(up);
    out.down.push(down);
  }
  return out;
}

/** Wall time of each round (training, aggregation and evaluation). */
export function roundSeconds(run) {
  const rows = records(run, "round");
  return { x: rows.map((m) => m.round + 1), y: rows.map((m) => m.values.round_seconds) };
}

// ---- one run -------------------------------------------------------------------------------

function evalFigure(run, field, opts) {
  const s = evalSeries(run, field);
  const percent = field === "accuracy";
  return roundTicks({
    data: [line(field, field === "accuracy" ? "accuracy" : "eval loss", s.x, s.y, { line: { color: PALETTE[0] } })],
    layout: layout("rounds aggregated (0 = before training)", percent ? "accuracy" : "loss", { ...opts, percent }),
  });
}

function clientLossFigure(run, opts) {
  const steps = records(run, "client_step");
  const cfg = run.experiment.config?.training ?? {};
  // Steps per round: the configured count, or the most seen when local_epochs sets it per client.
  const perRound = cfg.local_epochs ? Math.max(1, ...steps.map((m) => m.step + 1)) : cfg.local_steps ?? 1;
  const byClient = new Map();
  for (const m of steps) {
    if (!byClient.has(m.client)) byClient.set(m.client, { x: [], y: [] });
    byClient.get(m.client).x.push(m.round + (m.step + 1) / perRound);
    byClient.get(m.client).y.push(m.values.loss);
  }
  const data = [...byClient.keys()].sort((a, b) => a - b).map((c, i) =>
    line(`client-${c}`, `client ${c}`, byClient.get(c).x, byClient.get(c).y, {
      mode: "lines", line: { width: 1.5, color: PALETTE[i % PALETTE.length] },
      hovertemplate: `client ${c}<br>round %{x:.2f}<br>loss %{y:.4f}<extra></extra>`,
    }));
  return roundTicks({ data, layout: layout("round (local steps within it)", "training loss", opts) });
}

/** Singular values of the exact update, one line per round, for a layer or the mean of all. */
function spectrumFigure(run, opts) {
  const rows = records(run, "diagnostics").filter(
    (m) => m.values.singular_values && (opts.layer === "mean" || m.layer === opts.layer));
  const byRound = new Map();
  let kept = 0;
  for (const m of rows) {
    if (!byRound.has(m.round)) byRound.set(m.round, []);
    byRound.get(m.round).push(m.values.singular_values);
    kept = Math.max(kept, m.values.kept_rank ?? 0);
  }
  const rounds = [...byRound.keys()].sort((a, b) => a - b);
  const data = rounds.map((r, i) => {
    const spectra = byRound.get(r);
    const n = Math.max(...spectra.map((s) => s.length));
    const y = Array.from({ length: n }, (_, j) => {
      const vals = spectra.map((s) => s[j]).filter((v) => v !== undefined);
      return vals.reduce((a, b) => a + b, 0) / vals.length;
    });
    const fade = rounds.length === 1 ? 1 : 0.25 + 0.75 * (i / (rounds.length - 1));
    return line(`round-${r}`, `round ${r + 1}`, y.map((_, j) => j + 1), y, {
      line: { width: i === rounds.length - 1 ? 2.5 : 1.2, color: `rgba(37, 99, 235, ${fade})` },
      marker: { size: 4 },
      hovertemplate: `round ${r + 1}<br>σ%{x}: %{y:.3e}<extra></extra>`,
    });
  });
  const shapes = kept
    ? [{ type: "line", x0: kept + 0.5, x1: kept + 0.5, yref: "paper", y0: 0, y1: 1,
      line: { color: "#dc2626", dash: "dash", width: 1.5 } }]
    : [];
  const annotations = kept
    ? [{ x: kept + 0.5, yref: "paper", y: 1, text: `rank cut r = ${kept}`, showarrow: false,
      xanchor: "left", yanchor: "top", font: { color: "#dc2626", size: 11 } }]
    : [];
  return { data, layout: layout("singular value index", "σ", { ...opts, shapes, annotations }) };
}

/** A per-layer diagnostic by round: the mean in colour, every layer thin and grey. */
function layerFigure(run, field, ytitle, opts, extra = []) {
  const s = layerSeries(run, field);
  const data = [...s.layers.entries()].map(([layer, v], i) =>
    line(`layer-${layer}`, "layers", v.x, v.y, {
      mode: "lines", line: { width: 1, color: MUTED }, legendgroup: "layers", showlegend: i === 0,
      hovertemplate: `${layer}<br>round %{x}: %{y:.3e}<extra></extra>`,
    }));
  data.push(line("mean", "mean over layers", s.mean.x, s.mean.y, { line: { width: 2.5, color: PALETTE[0] } }));
  for (const [field2, name, color] of extra) {
    const e = layerSeries(run, field2).mean;
    data.push(line(field2, name, e.x, e.y, { line: { width: 2, color, dash: "dot" } }));
  }
  return roundTicks({ data, layout: layout("round", ytitle, opts) });
}

function bytesLayout(l) {
  Object.assign(l.yaxis, { tickformat: "~s", ticksuffix: "B" });
  return l;
}

function bytesFigure(run, opts) {
  const s = bytesSeries(run);
  const bar = (uid, name, y, color) => ({ uid, name, x: s.x, y, type: "bar", marker: { color },
    hovertemplate: `${name}<br>round %{x}: %{y:.3s}B<extra></extra>` });
  return roundTicks({
    data: [bar("up", "uploaded by clients", s.up, PALETTE[0]), bar("down", "downloaded by clients", s.down, PALETTE[3])],
    layout: bytesLayout(layout("round", "bytes", { ...opts, barmode: "group" })),
  });
}

/** Client tasks on a time axis: each attempt a bar (failures red, retries orange). */
function timelineFigure(run, opts) {
  const attempts = [...run.attempts.values()];
  const timed = attempts.length > 0 && attempts.every((a) => a.created_at);
  // In finishing order when timed, so live updates only ever append bars.
  attempts.sort((a, b) => (timed ? Date.parse(a.created_at) - Date.parse(b.created_at) : 0) ||
    a.round - b.round || a.attempt - b.attempt || a.client - b.client);
  const starts = [...run.roundStart.values()].map((t) => Date.parse(t)).filter((t) => !Number.isNaN(t));
  const t0 = timed ? Math.min(...starts, ...attempts.map((a) => Date.parse(a.created_at) - 1000 * a.seconds)) : 0;
  let clock = 0; // without timestamps (a run of `fedmomentum run`): tasks end to end
  // Trained, but the round's screening left the update out (the round record says why).
  const excluded = new Map(records(run, "round").map((m) => [m.round, m.values.excluded ?? {}]));
  const groups = { ok: [], retry: [], failed: [], excluded: [] };
  for (const a of attempts) {
    const start = timed ? (Date.parse(a.created_at) - t0) / 1000 - a.seconds : clock;
    clock = start + (a.seconds ?? 0);
    const why = a.ok ? excluded.get(a.round)?.[a.client] : undefined;
    const group = !a.ok ? "failed" : why !== undefined ? "excluded" : a.attempt > 0 ? "retry" : "ok";
    groups[group].push({ ...a, start, error: why !== undefined ? `excluded: ${why}` : a.error });
  }
  const style = { ok: ["trained", PALETTE[0]], retry: ["trained on a retry", "#ea580c"], failed: ["failed", "#dc2626"],
    excluded: ["update excluded", PALETTE[4]] };
  const data = Object.entries(groups).filter(([, rows]) => rows.length).map(([g, rows]) => ({
    uid: g, name: style[g][0], type: "bar", orientation: "h",
    y: rows.map((a) => `client ${a.client}`), x: rows.map((a) => a.seconds), base: rows.map((a) => a.start),
    marker: { color: style[g][1] },
    text: rows.map((a) => `round ${a.round + 1}${a.attempt ? `, attempt ${a.attempt + 1}` : ""}${a.error ? `: ${a.error}` : ""}`),
    textposition: "none",
    hovertemplate: "%{y}<br>%{text}<br>%{x:.2f} s<extra></extra>",
  }));
  const shapes = [];
  const annotations = [];
  if (timed) {
    for (const [r, t] of run.roundStart) {
      const x0 = (Date.parse(t) - t0) / 1000;
      const end = run.roundEnd.get(r);
      const x1 = end ? (Date.parse(end) - t0) / 1000 : Math.max(x0, clock);
      shapes.push({ type: "rect", xref: "x", yref: "paper", x0, x1, y0: 0, y1: 1, layer: "below",
        fillcolor: r % 2 ? "rgba(37,99,235,0.04)" : "rgba(37,99,235,0.09)", line: { width: 0 } });
      annotations.push({ x: x0, yref: "paper", y: 1, text: `round ${r + 1}`, showarrow: false,
        xanchor: "left", yanchor: "bottom", font: { size: 10, color: "#64748b" } });
    }
  }
  return {
    data,
    layout: layout(timed ? "seconds since the first round started" : "seconds (tasks end to end)", "", {
      ...opts, barmode: "overlay", shapes, annotations,
      yaxis: { type: "category", categoryorder: "category descending", automargin: true },
    }),
  };
}

// ---- rank advisor: how much rank the update needed -----------------------------------------

/** The energy shares the advisor reports, as the diagnostics key them. */
export const ENERGY_SHARES = ["0.9", "0.95", "0.99"];

/** Running sums of S_j^2: entry k is the energy of the first k singular values. */
function energyPrefix(singularValues) {
  const prefix = [0];
  for (const s of singularValues) prefix.push(prefix[prefix.length - 1] + s * s);
  return prefix;
}

/** Share of the energy sum S_j^2 that the first ``rank`` singular values keep (1: no energy). */
export function energyKept(singularValues, rank) {
  const prefix = energyPrefix(singularValues);
  const total = prefix[prefix.length - 1];
  return total === 0 ? 1 : prefix[Math.min(Math.max(rank, 0), singularValues.length)] / total;
}

/**
 * The smallest rank keeping each share of the energy, from singular values in descending
 * order: {"0.9": k90, "0.95": k95, "0.99": k99}. An all-zero update needs rank 0.
 */
export function rankForEnergy(singularValues, shares = ENERGY_SHARES) {
  const prefix = energyPrefix(singularValues);
  const total = prefix[prefix.length - 1];
  // prefix ends at total exactly and every share is <= 1, so findIndex always finds one.
  return Object.fromEntries(shares.map((share) => [share, prefix.findIndex((e) => e >= Number(share) * total)]));
}

/** A diagnostics record's ranks for each share: recorded, or from its spectrum (older runs). */
export function recordRanks(values) {
  if (values.rank_for_energy) return values.rank_for_energy;
  return values.singular_values ? rankForEnergy(values.singular_values) : null;
}

/** Mean over layers, by round: the rank each share needs, and the kept rank r. */
export function rankSeries(run) {
  const rows = records(run, "diagnostics")
    .map((m) => ({ round: m.round, kept: m.values.kept_rank, ranks: recordRanks(m.values) })) // one pass per spectrum
    .filter((m) => m.ranks !== null);
  return {
    shares: Object.fromEntries(ENERGY_SHARES.map((share) => [share, meanByRound(rows, (m) => m.ranks[share])])),
    kept: meanByRound(rows, (m) => m.kept),
  };
}

/** A share as a percentage with one decimal, never rounded up to a 100% it did not reach. */
export function shareText(share) {
  const p = Math.round(share * 1000) / 10;
  return p === 100 && share < 1 ? "over 99.9%" : `${p}%`;
}

/** Share of the energy the kept rank carried: recorded, or from the spectrum (older runs). */
function keptShare(values) {
  if (given(values.kept_energy)) return values.kept_energy;
  return values.singular_values && given(values.kept_rank) ? energyKept(values.singular_values, values.kept_rank) : null;
}

const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;

/**
 * One sentence on the latest round with a spectrum: the share of its update the kept rank r
 * carried, and the share rank r/2 would have (from the singular values), means over layers.
 * Null when no round has one.
 */
export function rankAdvice(run) {
  const rows = records(run, "diagnostics").filter((m) => given(m.values.kept_rank) && keptShare(m.values) !== null);
  if (!rows.length) return null;
  const last = rows.filter((m) => m.round === rows[rows.length - 1].round);
  const r = Math.max(...last.map((m) => m.values.kept_rank));
  const said = `rank ${r} kept ${shareText(mean(last.map((m) => keptShare(m.values))))} of round ${last[0].round + 1}'s update`;
  const spectra = last.map((m) => m.values.singular_values).filter(Boolean);
  const half = Math.floor(r / 2);
  if (half < 1 || !spectra.length) return `${said}.`;
  return `${said}; rank ${half} would have kept ${shareText(mean(spectra.map((s) => energyKept(s, half))))}.`;
}

/** Ranks needed for 90, 95 and 99% of each round's update energy, and the kept rank dashed. */
function rankFigure(run, opts) {
  const s = rankSeries(run);
  const colors = [PALETTE[2], PALETTE[0], PALETTE[4]];
  const data = ENERGY_SHARES.map((share, i) => {
    const name = `${Math.round(Number(share) * 100)}% of the energy`;
    return line(`rank-${share}`, name, s.shares[share].x, s.shares[share].y, { // short: one legend row
      line: { width: 2, color: colors[i] },
      hovertemplate: `${name}<br>round %{x}: rank %{y:.3g}<extra></extra>`,
    });
  });
  data.push(line("kept-rank", "kept rank r", s.kept.x, s.kept.y, {
    mode: "lines", line: { width: 1.5, color: "#dc2626", dash: "dash" },
    hovertemplate: "kept rank<br>round %{x}: r = %{y:.3g}<extra></extra>",
  }));
  return roundTicks({ data, layout: layout("round", "rank (mean over layers)", opts) });
}

const sig = (x) => (Math.abs(x) >= 1e4 || (x !== 0 && Math.abs(x) < 1e-3) ? x.toExponential(2) : String(Number(x.toPrecision(3))));

/** The privacy a private run has spent after its last aggregated round ("ε = … at δ = …",
 * from the round records' epsilon), or null for a run without differential privacy. */
export function privacySpent(run) {
  const last = records(run, "round").filter((m) => m.values.privacy).at(-1);
  if (!last) return null;
  const v = last.values;
  const eps = v.epsilon === null || v.epsilon === undefined ? "∞ (no noise)" : sig(v.epsilon);
  return `Privacy spent (${v.privacy} DP): ε = ${eps} at δ = ${sig(v.delta)} after round ${last.round + 1}; ` +
    `noise multiplier ${sig(v.noise_multiplier)}, clip ${sig(v.clip)}.`;
}

/** The charts of the run view: id, title, help, log toggle default (undefined: no toggle),
 * note: a sentence under the chart (a pure function of the run, null for none). */
export const RUN_CHARTS = [
  { id: "accuracy", title: "Eval accuracy", build: (run, o) => evalFigure(run, "accuracy", o),
    help: "Held-out accuracy of the global model after each round.", note: privacySpent },
  { id: "eval-loss", title: "Eval loss", log: false, build: (run, o) => evalFigure(run, "eval_loss", o),
    help: "Held-out loss of the global model after each round." },
  { id: "client-loss", title: "Client training loss", log: false, build: clientLossFigure,
    help: "Each client's loss at every local step, placed within its round." },
  { id: "spectrum", title: "Singular value spectrum", log: true, layers: true, build: spectrumFigure,
    empty: "No spectrum: this strategy does not take an SVD of the exact update.",
    help: "Singular values of the exact update Σ p_i B_i A_i per round; the first r are kept as the next LoRA." },
  { id: "rank-advisor", title: "Rank advisor", log: false, build: rankFigure, note: rankAdvice,
    empty: "No rank advice: this strategy does not take an SVD of the exact update.",
    help: "The smallest rank keeping 90, 95 and 99% of each round's update energy Σ σ_j², against the kept rank r." },
  { id: "residual", title: "Residual energy", log: true,
    build: (run, o) => layerFigure(run, "residual_energy", "‖R‖² / ‖M‖²", o),
    empty: "No residual: this strategy keeps no rank-r cut.",
    help: "Share of the update's energy beyond the rank cut (merged into the backbone, never lost)." },
  { id: "naive-error", title: "Naive-average error", log: true,
    build: (run, o) => layerFigure(run, "naive_error", "relative error", o,
      [["exactness_error", "exactness error of this strategy (mean)", PALETTE[1]]]),
    empty: "No naive-average error recorded.",
    help: "‖mean(B)·mean(A) − M‖ / ‖M‖: what averaging A and B separately would lose this round." },
  { id: "momentum", title: "Subspace momentum", log: false,
    build: (run, o) => layerFigure(run, "subspace_momentum", "overlap (0 to 1)", o),
    empty: "No subspace momentum: defined from round 2 for strategies that keep a rank-r subspace.",
    help: "‖U_r(t)ᵀ U_r(t−1)‖² / r: how much of the kept direction survives into the next round." },
  { id: "bytes", title: "Bytes up and down", log: false, build: bytesFigure,
    help: "Adapter bytes the round's clients uploaded and downloaded." },
  { id: "timeline", title: "Client timeline", build: timelineFigure,
    empty: "No client task has finished yet.",
    help: "Every client training task: its duration, failures in red, retries in orange, updates left out of aggregation in purple (hover for why); rounds shaded." },
];

// ---- several runs --------------------------------------------------------------------------

/** A runs' label: strategy first (the legend groups by it). */
export const runLabel = (run) => `${run.experiment.strategy} · ${run.experiment.name}`;

export const COMPARE_CHARTS = [
  { id: "accuracy", title: "Eval accuracy", series: (run) => evalSeries(run, "accuracy"), ytitle: "accuracy", percent: true,
    x: "rounds aggregated (0 = before training)" },
  { id: "eval-loss", title: "Eval loss", series: (run) => evalSeries(run, "eval_loss"), ytitle: "loss", log: false,
    x: "rounds aggregated (0 = before training)" },
  { id: "residual", title: "Residual energy (mean over layers)", series: (run) => layerSeries(run, "residual_energy").mean,
    ytitle: "‖R‖² / ‖M‖²", log: true },
  { id: "naive-error", title: "Naive-average error (mean over layers)", series: (run) => layerSeries(run, "naive_error").mean,
    ytitle: "relative error", log: true },
  { id: "momentum", title: "Subspace momentum (mean over layers)", series: (run) => layerSeries(run, "subspace_momentum").mean,
    ytitle: "overlap (0 to 1)", log: false },
  { id: "bytes", title: "Bytes uploaded per round", series: (run) => { const b = bytesSeries(run); return { x: b.x, y: b.up }; },
    ytitle: "bytes", log: false, bytes: true },
  { id: "seconds", title: "Seconds per round", series: roundSeconds, ytitle: "seconds", log: false },
];

/** One compare chart: a line per run, one colour per run, legend grouped by strategy. */
export function compareFigure(runs, chart, opts = {}) {
  const data = runs.map((run, i) => {
    const s = chart.series(run);
    return line(run.experiment.id, runLabel(run), s.x, s.y, {
      line: { color: PALETTE[i % PALETTE.length], width: 2 },
      legendgroup: run.experiment.strategy,
      hovertemplate: `${runLabel(run)}<br>round %{x}: %{y:.4g}<extra></extra>`,
    });
  });
  const l = layout(chart.x ?? "round", chart.ytitle, { ...opts, percent: chart.percent });
  return roundTicks({ data, layout: chart.bytes ? bytesLayout(l) : l });
}

/** How many points a figure has (an empty one shows a message instead). */
export const pointCount = (fig) => fig.data.reduce((n, t) => n + (t.x?.length ?? 0), 0);

// ---- sweeps: per cell, the mean over seeds with its min..max band --------------------------
//
// Input: the leaderboard rows of GET /api/v1/sweeps/{id} (backend/core/leaderboard.py), each
// with its curves as points {round, mean, min, max, n} (round -1: before training).

const DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"];

/** The strategy of a sweep cell: its label starts with it ("fedit, lora.rank=4"). */
export const cellStrategy = (label) => label.split(", ")[0];

/** ``#rrggbb`` as ``rgba(r, g, b, alpha)``. */
export function translucent(hex, alpha) {
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  return `rgba(${r}, ${g}, ${b}, ${alpha})`;
}

/**
 * The cells in a stable order with their style: one colour per strategy, by its place in
 * ``strategies`` (the catalog's order, so a strategy has the same colour in every sweep;
 * strategies not in it follow in order of appearance), and one dash per cell of a strategy
 * (grid cells), by label. The order does not follow the leaderboard's ranking, which moves
 * while a sweep runs: the legend and the colours stay put.
 */
export function cellStyles(labels, strategies = []) {
  const order = [...strategies];
  for (const label of labels) if (!order.includes(cellStrategy(label))) order.push(cellStrategy(label));
  const sorted = [...labels].sort((a, b) =>
    order.indexOf(cellStrategy(a)) - order.indexOf(cellStrategy(b)) || a.localeCompare(b));
  const seen = new Map();
  return sorted.map((label) => {
    const strategy = cellStrategy(label);
    const k = seen.get(strategy) ?? 0;
    seen.set(strategy, k + 1);
    return { label, color: PALETTE[order.indexOf(strategy) % PALETTE.length], dash: DASHES[k % DASHES.length] };
  });
}

/** One row's curve of ``metric`` ("accuracy" or "eval_loss"): x in rounds done (0 = before training). */
export function bandSeries(row, metric) {
  const points = row[metric] ?? [];
  return {
    x: points.map((p) => p.round + 1),
    mean: points.map((p) => p.mean),
    min: points.map((p) => p.min),
    max: points.map((p) => p.max),
    n: points.map((p) => p.n),
  };
}

/**
 * The band chart of a sweep: per cell a filled min..max band (one closed shape: along the
 * maxima, back along the minima) and the mean line over it, in the cell's colour. Trace uids:
 * ``band:<label>`` and ``mean:<label>``.
 */
export function bandFigure(rows, metric, { strategies = [], log = false } = {}) {
  const byLabel = new Map(rows.map((r) => [r.label, r]));
  const data = [];
  for (const { label, color, dash } of cellStyles([...byLabel.keys()], strategies)) {
    const s = bandSeries(byLabel.get(label), metric);
    data.push({
      uid: `band:${label}`, name: `${label} (min..max)`, type: "scatter", mode: "lines",
      x: [...s.x, ...[...s.x].reverse()], y: [...s.max, ...[...s.min].reverse()],
      fill: "toself", fillcolor: translucent(color, 0.15), line: { width: 0, color },
      legendgroup: label, showlegend: false, hoverinfo: "skip",
    });
    data.push(line(`mean:${label}`, label, s.x, s.mean, {
      line: { color, dash, width: 2 }, legendgroup: label,
      customdata: s.x.map((_, i) => [s.min[i], s.max[i], s.n[i]]),
      hovertemplate: `${label}<br>round %{x}: %{y:.4f}<br>min %{customdata[0]:.4f}, max %{customdata[1]:.4f} (%{customdata[2]} seeds)<extra></extra>`,
    }));
  }
  const percent = metric === "accuracy";
  const ytitle = percent ? "accuracy (mean over seeds)" : "eval loss (mean over seeds)";
  return roundTicks({ data, layout: layout("rounds aggregated (0 = before training)", ytitle, { log, percent }) });
}

/** The sweep page's band charts: id, title, metric, help, log toggle default. */
export const SWEEP_CHARTS = [
  { id: "accuracy", title: "Eval accuracy", metric: "accuracy",
    help: "Per strategy (or grid cell): the mean over seeds, the band from the lowest to the highest seed." },
  { id: "eval-loss", title: "Eval loss", metric: "eval_loss", log: false,
    help: "Per strategy (or grid cell): the mean over seeds, the band from the lowest to the highest seed." },
];
