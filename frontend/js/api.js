// The REST API (/api/v1), the live event stream and downloads, for the dashboard pages.
// When the server wants a token (FEDMOMENTUM_API_TOKEN), the first 401 asks for it once and
// it is kept for the browser session (sessionStorage), sent as `Authorization: Bearer`.
import { h } from "dom";

export const API = "/api/v1";
const TOKEN_KEY = "fedmomentum-api-token";

/** An error answer of the API; ``detail`` is FastAPI's (a string or a list of field errors). */
export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

const authHeaders = () => {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
};

let asking = null; // one prompt however many requests were refused at once

/** Ask for the API token (a modal dialog); resolves once one was entered. */
function askToken(rejected) {
  asking ??= new Promise((resolve) => {
    const input = h("input#token-input", { type: "password", autocomplete: "current-password", required: true,
      "aria-label": "API token" });
    const dialog = h("dialog#token-dialog", {},
      h("form", { method: "dialog" },
        h("h2", {}, "API token"),
        h("p", {}, rejected ? "The server refused that token. Try again:"
          : "This server needs an API token (its FEDMOMENTUM_API_TOKEN). It is kept for this browser session."),
        input,
        h("div.form-actions", {}, h("button.primary#token-submit", { type: "submit" }, "Continue"))));
    dialog.addEventListener("cancel", (e) => e.preventDefault()); // nothing works without it
    dialog.addEventListener("close", () => {
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      dialog.remove();
      asking = null;
      resolve();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
  return asking;
}

/** fetch with the token; a 401 asks for it and tries again. */
async function authorized(url, init = {}) {
  for (;;) {
    const response = await fetch(url, { ...init, headers: { ...init.headers, ...authHeaders() } });
    if (response.status !== 401) return response;
    await askToken(Boolean(sessionStorage.getItem(TOKEN_KEY)));
  }
}

export async function api(path, { method = "GET", body } = {}) {
  let response;
  try {
    response = await authorized(API + path, {
      method,
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, `the server did not answer (${e.message})`);
  }
  return answer(response);
}

/** POST a multipart form (a FormData with files) to ``path``; the JSON answer. */
export async function upload(path, form) {
  let response;
  try {
    response = await authorized(API + path, { method: "POST", body: form });
  } catch (e) {
    throw new ApiError(0, `the server did not answer (${e.message})`);
  }
  return answer(response);
}

async function answer(response) {
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

/** Server-sent events from a fetch body: emit(type, data, id) per event; the ``end`` data. */
async function readEvents(body, emit) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return null;
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const event = { type: "message", data: [], id: 0 };
      for (const line of block.split("\n")) {
        const [field, ...rest] = line.split(":");
        const text = rest.join(":").replace(/^ /, "");
        if (field === "event") event.type = text;
        else if (field === "data") event.data.push(text);
        else if (field === "id") event.id = Number(text) || 0;
      }
      if (!event.data.length) continue; // a comment (keep-alive) or retry hint
      const data = JSON.parse(event.data.join("\n"));
      if (event.type === "end") return data;
      emit(event.type, data, event.id);
    }
  }
}

/**
 * Follow an experiment's events after event ``after``: onEvent(type, data, id) for each,
 * onState("open" | "reconnecting" | "ended", data). Read with fetch (EventSource cannot send
 * the token); when the stream drops it reconnects every 2 s, resuming after the last event
 * seen, so nothing is missed or repeated. Returns a function that stops following.
 */
export function follow(id, { after = 0, onEvent, onState }) {
  let last = after;
  let stopped = false;
  let controller = null;
  (async () => {
    while (!stopped) {
      controller = new AbortController();
      try {
        const url = `${API}/experiments/${encodeURIComponent(id)}/events?after=${last}`;
        const response = await authorized(url, { headers: { Accept: "text/event-stream" }, signal: controller.signal });
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        onState("open");
        const end = await readEvents(response.body, (type, data, eventId) => {
          last = Math.max(last, eventId);
          onEvent(type, data, eventId);
        });
        if (end) {
          stopped = true;
          onState("ended", end);
          return;
        }
      } catch {
        if (stopped) return;
      }
      onState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  })();
  return () => {
    stopped = true;
    controller?.abort();
  };
}

let authMode = null;

/** What the server protects: "none", "writes" (and downloads) or "all" (from /health). */
async function auth() {
  authMode ??= fetch(`${API}/health`).then((r) => r.json()).then((h) => h.auth ?? "none").catch(() => "none");
  return authMode;
}

/**
 * Downloads (links with a download attribute into the API) carry the token when the server
 * wants one: fetched with it and saved from memory. Without a token a plain link streams.
 */
export function installDownloads() {
  let mode = null;
  auth().then((m) => { mode = m; });
  document.addEventListener("click", async (ev) => {
    const link = ev.target.closest?.("a[download]");
    if (!link || !link.href.includes(API) || mode === "none") return; // a plain link streams
    ev.preventDefault();
    if (link.getAttribute("aria-disabled") === "true") return;
    const response = await authorized(link.href);
    if (!response.ok) {
      alert(`Download failed: ${(await response.json().catch(() => null))?.detail ?? response.statusText}`);
      return;
    }
    const name = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") ?? "")?.[1] ?? "download";
    const url = URL.createObjectURL(await response.blob());
    h("a", { href: url, download: name }).click();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  });
}
