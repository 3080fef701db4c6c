// The REST API (/api/v1) and the live event stream, for the dashboard pages.
export const API = "/api/v1";

/** An error answer of the API; ``detail`` is FastAPI's (a string or a list of field errors). */
export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

export async function api(path, { method = "GET", body } = {}) {
  let response;
  try {
    response = await fetch(API + path, {
      method,
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, `the server did not answer (${e.message})`);
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data?.detail ?? response.statusText);
  return data;
}

/** Every row of a paged list endpoint ({data, count}). */
export async function allPages(path, params = {}) {
  const rows = [];
  for (;;) {
    const query = new URLSearchParams({ ...params, offset: rows.length, limit: 500 });
    const page = await api(`${path}?${query}`);
    rows.push(...page.data);
    if (!page.data.length || rows.length >= page.count) return rows;
  }
}

const EVENT_TYPES = ["status", "round_started", "round_finished", "client_progress", "client_finished", "metrics"];

/**
 * Follow an experiment's events from after ``after``: onEvent(type, data, id) for each,
 * onState("open" | "reconnecting" | "ended", data). The browser reconnects by itself
 * (sending Last-Event-ID); if it gives up, this opens a new stream after the last id seen.
 * Returns a function that stops following.
 */
export function follow(id, { after = 0, onEvent, onState }) {
  let last = after;
  let source = null;
  let timer = null;
  let stopped = false;
  const open = () => {
    source = new EventSource(`${API}/experiments/${encodeURIComponent(id)}/events?after=${last}`);
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (e) => {
        last = Math.max(last, Number(e.lastEventId) || 0);
        onEvent(type, JSON.parse(e.data), Number(e.lastEventId) || 0);
      });
    }
    source.addEventListener("end", (e) => {
      source.close();
      stopped = true;
      onState("ended", JSON.parse(e.data));
    });
    source.onopen = () => onState("open");
    source.onerror = () => {
      if (stopped) return;
      onState("reconnecting");
      if (source.readyState === EventSource.CLOSED) {
        timer = setTimeout(open, 3000); // the browser gave up (e.g. a 5xx while restarting)
      }
    };
  };
  open();
  return () => {
    stopped = true;
    clearTimeout(timer);
    source?.close();
  };
}
