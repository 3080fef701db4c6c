// A sweep's leaderboard as the dashboard shows it: columns, sorting, the "within noise"
// marks and each cell's experiments. Pure (no DOM, no fetch), so Node tests it; the rows
// come from GET /api/v1/sweeps/{id} (backend/core/leaderboard.py defines every column).
import { duration, num } from "dom";

const FINISHED = ["completed", "failed", "cancelled"];

/** "12.3 kB": bytes with an SI prefix and three significant digits. */
export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let k = 0;
  while (Math.abs(bytes) >= 1000 && k < units.length - 1) { bytes /= 1000; k += 1; }
  return `${Number(bytes.toPrecision(3))} ${units[k]}`;
}

const fixed = (digits) => (x) => (x === null || x === undefined ? "–" : x.toFixed(digits));

/** "0.812 ± 0.013" (no ± with one seed). */
export function finalText(row) {
  if (row.final_mean === null || row.final_mean === undefined) return "–";
  return row.final_std === null || row.final_std === undefined
    ? row.final_mean.toFixed(3) : `${row.final_mean.toFixed(3)} ± ${row.final_std.toFixed(3)}`;
}

/** The sortable columns: key, header, the value sorted on, its text, what it means. */
export const COLUMNS = [
  { key: "rank", label: "#", value: (r) => r.rank, text: (r) => String(r.rank), help: "order by final mean accuracy" },
  { key: "label", label: "Strategy / cell", value: (r) => r.label, text: (r) => r.label },
  { key: "seeds", label: "Seeds", value: (r) => r.seeds.length, text: (r) => String(r.seeds.length) },
  { key: "rounds_done", label: "Rounds", value: (r) => r.rounds_done, text: (r) => String(r.rounds_done),
    help: "rounds every seed of the cell has evaluated" },
  { key: "final_mean", label: "Final accuracy", value: (r) => r.final_mean, text: finalText,
    help: "mean ± sample standard deviation over seeds, at each run's last evaluated round" },
  { key: "best_mean", label: "Best accuracy", value: (r) => r.best_mean, text: (r) => fixed(3)(r.best_mean),
    help: "mean over seeds of each run's best accuracy after training" },
  { key: "rounds_to_best", label: "Rounds to best", value: (r) => r.rounds_to_best,
    text: (r) => (r.rounds_to_best === null || r.rounds_to_best === undefined ? "never" : String(r.rounds_to_best)),
    help: "rounds until the cell's mean curve first reaches the best final mean of all cells" },
  { key: "auc", label: "AUC", value: (r) => r.auc, text: (r) => fixed(3)(r.auc),
    help: "area under the mean accuracy curve over the rounds it spans: the average accuracy" },
  { key: "bytes_up", label: "Bytes up", value: (r) => r.bytes_up, text: (r) => formatBytes(r.bytes_up),
    help: "every client's uploads over the run, mean over seeds" },
  { key: "bytes_down", label: "Bytes down", value: (r) => r.bytes_down, text: (r) => formatBytes(r.bytes_down),
    help: "every sampled client's downloads over the run, mean over seeds" },
  { key: "wall_seconds", label: "Wall time", value: (r) => r.wall_seconds, text: (r) => duration(r.wall_seconds),
    help: "sum of the rounds' times, mean over seeds" },
  { key: "rank_99", label: "Rank @99%", value: (r) => r.rank_99, text: (r) => num(r.rank_99, 1),
    help: "rank advisor: the rank that would have kept 99% of the last round's update energy (mean over layers and seeds)" },
];

/** The leaderboard's rows with their rank (1: the best final mean, the API's order). */
export const ranked = (rows) => rows.map((r, i) => ({ ...r, rank: i + 1 }));

/**
 * Rows sorted by column ``key``, ascending or descending; missing values always last, ties
 * in rank order (so re-sorting is stable).
 */
export function sortRows(rows, key, descending = false) {
  const column = COLUMNS.find((c) => c.key === key);
  if (!column) throw new Error(`no leaderboard column ${key}`);
  const missing = (v) => v === null || v === undefined;
  return [...rows].sort((a, b) => {
    const [x, y] = [column.value(a), column.value(b)];
    if (missing(x) || missing(y)) return missing(x) - missing(y) || a.rank - b.rank;
    const order = typeof x === "string" ? x.localeCompare(y) : x - y;
    return (descending ? -order : order) || a.rank - b.rank;
  });
}

/**
 * The "within noise" mark of each cell, from the leaderboard's flags between neighbours in
 * rank order (``within_noise_of_next``): label -> {mark, near, unknown}. ``near``: the
 * neighbours whose final mean differs from this one's by no more than their seed spread
 * (mark "≈"); ``unknown``: neighbours that cannot be told apart because a cell has a single
 * seed (mark "?" when there is no "≈").
 */
export function noiseMarks(rows) {
  const marks = new Map(rows.map((r) => [r.label, { mark: "", near: [], unknown: [] }]));
  rows.slice(0, -1).forEach((a, i) => {
    const b = rows[i + 1];
    const flag = a.within_noise_of_next;
    if (flag === false) return;
    const list = flag === true ? "near" : "unknown";
    marks.get(a.label)[list].push(b.label);
    marks.get(b.label)[list].push(a.label);
  });
  for (const m of marks.values()) m.mark = m.near.length ? "≈" : m.unknown.length ? "?" : "";
  return marks;
}

/** The words under the mark's hover. */
export function noiseTitle({ near, unknown }) {
  const parts = [];
  if (near.length) parts.push(`within the seed spread of ${near.join(" and ")}: no evidence of an order`);
  if (unknown.length) parts.push(`${unknown.join(" and ")}: a single seed, no spread to compare`);
  return parts.join("; ");
}

/** (cell label, seed) of an experiment named "<sweep> / <cell> / seed <s>"; null if not. */
export function parseRunName(sweepName, name) {
  const cut = name.lastIndexOf(" / seed ");
  const prefix = `${sweepName} / `;
  if (cut < 0 || !name.startsWith(prefix) || cut < prefix.length) return null;
  const seed = name.slice(cut + " / seed ".length);
  if (!/^\d+$/.test(seed)) return null;
  return { label: name.slice(prefix.length, cut), seed: Number(seed) };
}

/** A sweep's experiments by cell label, each cell's by seed. */
export function runsByCell(sweep) {
  const cells = new Map();
  for (const exp of sweep.runs ?? []) {
    const cell = parseRunName(sweep.name, exp.name);
    if (!cell) continue;
    if (!cells.has(cell.label)) cells.set(cell.label, []);
    cells.get(cell.label).push({ seed: cell.seed, experiment: exp });
  }
  for (const list of cells.values()) list.sort((a, b) => a.seed - b.seed);
  return cells;
}

/** Runs finished (completed, failed or cancelled), completed, and in all. */
export function sweepProgress(sweep) {
  const counts = sweep.counts ?? {};
  const finished = FINISHED.reduce((n, s) => n + (counts[s] ?? 0), 0);
  return { finished, completed: counts.completed ?? 0, total: sweep.experiments ?? 0 };
}

/** Whether the sweep may still change (some experiment queued or running). */
export const sweepActive = (sweep) => sweep.status === "queued" || sweep.status === "running";
