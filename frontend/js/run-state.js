// The state of one run, built from its events: live (SSE), replayed, or embedded in a report.
// Metric records are keyed like the database's idempotency key, so a replayed or
// re-delivered record replaces itself instead of adding a point.

export function newRun(experiment) {
  return {
    experiment,
    metrics: new Map(), // "kind|round|client|step|layer" -> record {kind, round, ..., values}
    attempts: new Map(), // "round|client|attempt" -> {round, client, attempt, ok, seconds, error, created_at}
    roundStart: new Map(), // round -> ISO time of its first start
    roundEnd: new Map(), // round -> ISO time it finished
    progress: new Map(), // client -> its last progress event in the running round
    lastEventId: 0,
  };
}

const key = (m) => [m.kind, m.round, m.client, m.step, m.layer].join("|");

export function addRecords(run, records) {
  for (const m of records) run.metrics.set(key(m), m);
}

/** Apply one event (type and data as the SSE stream sends them). */
export function applyEvent(run, type, data, id = 0) {
  run.lastEventId = Math.max(run.lastEventId, id || 0);
  switch (type) {
    case "metrics":
      addRecords(run, data.records);
      break;
    case "client_finished":
      run.attempts.set(`${data.round}|${data.client}|${data.attempt}`, data);
      run.progress.delete(data.client);
      break;
    case "client_progress":
      run.progress.set(data.client, data);
      break;
    case "round_started":
      if (!run.roundStart.has(data.round)) run.roundStart.set(data.round, data.created_at);
      run.progress.clear();
      break;
    case "round_finished":
      run.roundEnd.set(data.round, data.created_at);
      run.progress.clear();
      break;
    case "status":
      run.experiment = { ...run.experiment, status: data.status, error: data.error ?? run.experiment.error };
      break;
  }
}

/** The records of one kind, by round, client, step and layer. */
export function records(run, kind) {
  const out = [];
  for (const m of run.metrics.values()) if (m.kind === kind) out.push(m);
  return out.sort(
    (a, b) =>
      a.round - b.round || (a.client ?? 0) - (b.client ?? 0) || (a.step ?? 0) - (b.step ?? 0) ||
      String(a.layer).localeCompare(String(b.layer)),
  );
}

/** A run from REST data (compare page): the experiment and its metric records. */
export function runFromRecords(experiment, recordList) {
  const run = newRun(experiment);
  addRecords(run, recordList);
  return run;
}
