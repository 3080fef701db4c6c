// The silos of one run shaped for the detail page: one row per silo client with its newest
// state (GET /experiments/{id}/silos), its last word as a relative time.

/** Whether the run's config pins clients to silos (the page shows its Silos section). */
export function hasSilos(config) {
  return Object.keys(config?.federation?.silos ?? {}).length > 0;
}

/** "12 s ago", "3 min ago", "2 h ago", "4 d ago" from an ISO time to ``now`` (ms); "–" for none. */
export function ago(iso, now) {
  if (!iso) return "–";
  const t = Date.parse(/[zZ]|[+-]\d\d:\d\d$/.test(iso) ? iso : `${iso}Z`);
  if (Number.isNaN(t)) return iso;
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** Table rows (silo by name, then client): silo, kind, client, round (1-based as on the
 * rest of the page), state ("not sampled" before the client's first task), attempt, last
 * seen, error. */
export function siloRows(answer, now) {
  return [...(answer?.data ?? [])].sort((a, b) => a.name.localeCompare(b.name)).flatMap((silo) =>
    [...silo.clients].sort((a, b) => a.client - b.client).map((c) => ({
      silo: silo.name,
      kind: silo.token ? "token" : "celery",
      client: c.client,
      round: c.round === null || c.round === undefined ? "–" : String(c.round + 1),
      state: c.status ?? "not sampled",
      attempt: c.attempt ?? null,
      lastSeen: ago(c.seen_at, now),
      error: c.error ?? "",
    })));
}

/** How many clients are in each state, in a fixed order (the section's summary line). */
export function stateCounts(rows) {
  const order = ["claimed", "sent", "pending", "failed", "done", "not sampled"];
  const counts = new Map(order.map((s) => [s, 0]));
  for (const r of rows) counts.set(r.state, (counts.get(r.state) ?? 0) + 1);
  return [...counts].filter(([, n]) => n > 0);
}
