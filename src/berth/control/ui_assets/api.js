// The page's only way to the control API: the token from sessionStorage, sent as a Bearer header.
const KEY = "berth.token";

export function token() { return sessionStorage.getItem(KEY); }
export function setToken(t) { sessionStorage.setItem(KEY, t); }
export function signOut() { sessionStorage.removeItem(KEY); }

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = (body && body.code) || "";
  }
}

export async function call(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  const r = await fetch(path, { ...options, headers, credentials: "omit", cache: "no-store" });
  const body = await r.json().catch(() => null);
  if (!r.ok) throw new ApiError(r.status, body);
  return body;
}

// `berth ui` opens /ui/#code=CODE: exchange the one-time code for the token, then drop it from the URL.
export async function redeemCodeInHash() {
  const m = /(?:^#|&)code=([A-Za-z0-9_-]{20,100})/.exec(location.hash);
  if (!m) return false;
  history.replaceState(null, "", location.pathname);
  const body = await call("/api/v1/ui/session", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ code: m[1] }),
  });
  setToken(body.token);
  return true;
}

// The resource watch as an NDJSON stream over fetch (a WebSocket cannot carry an Authorization header).
// onEvent(ev) gets each event; onState(text) the connection state.  Reconnects with backoff, resuming at the
// last revision; a compacted revision (410) or a restart starts over with onReset().
export function watch(kinds, { onEvent, onReset, onState, onAuthError }) {
  let since = null;
  let stopped = false;
  let controller = null;
  let backoff = 500;

  async function once() {
    controller = new AbortController();
    const q = new URLSearchParams({ kinds: kinds.join(",") });
    if (since !== null) q.set("since", String(since));
    const headers = { Authorization: `Bearer ${token()}` };
    const r = await fetch(`/api/v1/watch?${q}`, { headers, signal: controller.signal, cache: "no-store",
      credentials: "omit" });
    if (r.status === 401) { onAuthError(); stopped = true; return; }
    if (r.status === 410) { since = null; onReset(); return; }
    if (!r.ok) throw new Error(`watch answered HTTP ${r.status}`);
    if (since === null) onReset();
    onState("live");
    backoff = 500;
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line) continue;
        const ev = JSON.parse(line);
        if (ev.type === "ERROR") {
          const code = ev.object && ev.object.code;
          if (code === "Unauthenticated") { onAuthError(); stopped = true; return; }
          if (code === "Expired") { since = null; return; }
          throw new Error(ev.object && ev.object.message);
        }
        if (typeof ev.revision === "number") since = ev.revision;
        onEvent(ev);
      }
      if (buf.length > 8 * 1024 * 1024) throw new Error("watch line too long");
    }
  }

  (async () => {
    while (!stopped) {
      try { await once(); } catch (e) { if (stopped) break; onState(`reconnecting (${e.message || e})`); }
      if (stopped) break;
      onState("reconnecting…");
      await new Promise((res) => setTimeout(res, backoff));
      backoff = Math.min(backoff * 2, 15000);
    }
  })();
  return () => { stopped = true; if (controller) controller.abort(); };
}
