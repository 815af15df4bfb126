// The views: each is a function (state, ctx) -> Node, rebuilt when the state changes.
import { trafficCharts } from "./charts.js";
import { badge, bytes, h, link, table } from "./dom.js";

const cond = (doc, type) => ((doc.status || {}).conditions || []).find((c) => c.type === type);
const enc = encodeURIComponent;
export const modelHref = (d) => `#/model/${enc(d.metadata.namespace)}/${enc(d.metadata.name)}`;

function stateOf(d) {
  const st = d.status || {};
  if (st.state) return st.state;
  const ready = cond(d, "Ready");
  return ready ? (ready.status === "True" ? "Ready" : "NotReady") : "";
}

function version(d) {
  const spec = d.spec || {};
  const st = d.status || {};
  const parts = [];
  if (spec.artifactVersion !== undefined) parts.push(`v${spec.artifactVersion}`);
  if (st.artifactGeneration) parts.push(`artifact #${st.artifactGeneration}`);
  return parts.join(" · ") || `gen ${d.metadata.generation || 1}`;
}

function evicted(d) {
  const rs = (d.status || {}).replicaStatus || {};
  const n = Object.values(rs).filter((r) => r.state === "Evicted").length;
  if ((d.status || {}).evicted) return "yes";
  return n ? `${n} replica(s)` : "no";
}

// A row per document object: a changed model arrives as a new object, so an unchanged one reuses its row
// (a WeakMap: rows of replaced or deleted documents are garbage-collected with them).
const rowCache = new WeakMap();

function modelRow(d) {
  let tr = rowCache.get(d);
  if (tr) return tr;
  const st = d.status || {};
  tr = h("tr", { "data-model": `${d.metadata.namespace}/${d.metadata.name}` },
    h("td", {}, d.metadata.namespace),
    h("th", { scope: "row" }, link(modelHref(d), d.metadata.name)),
    h("td", {}, badge(stateOf(d))),
    h("td", { class: "num" }, `${st.availableReplicas ?? 0}/${st.replicas ?? (d.spec || {}).replicas ?? 1}`),
    h("td", { class: "reason" }, st.state === "ModelAvailable" ? "" : (st.message || "waiting for the scheduler")),
    h("td", {}, version(d)),
    h("td", {}, evicted(d)));
  rowCache.set(d, tr);
  return tr;
}

export function modelsView(state, ctx) {
  const q = ctx.filter.toLowerCase();
  const docs = state.list("Model", ctx.ns).filter((d) => !q || d.metadata.name.toLowerCase().includes(q));
  const counts = {};
  for (const d of docs) counts[stateOf(d)] = (counts[stateOf(d)] || 0) + 1;
  const input = h("input", { id: "filter", type: "search", value: ctx.filter, autocomplete: "off",
    oninput: (e) => ctx.setFilter(e.target.value) });
  const rows = docs.map(modelRow);
  return h("section", { "aria-labelledby": "h-models" },
    h("h1", { id: "h-models" }, "Models"),
    h("div", { class: "bar" },
      h("label", { for: "filter" }, "Filter models"), input,
      h("span", { class: "muted", id: "model-count" },
        `${docs.length} model(s)` + Object.entries(counts).map(([k, v]) => ` · ${v} ${k || "new"}`).join(""))),
    docs.length ? table("Models", ["Namespace", "Name", "State", "Ready", "Reason", "Version", "Evicted"], rows,
      "models") : h("p", { class: "empty" }, "No models here yet. Apply one with `berth apply -f model.yaml`."));
}

export function modelView(state, ctx, ns, name) {
  const d = state.get("Model", ns, name);
  if (!d) {
    return h("section", {}, h("h1", {}, name),
      h("p", { class: "empty" }, `No model ${name} in namespace ${ns} (or not one you may read).`));
  }
  const st = d.status || {};
  const pl = st.placement || {};
  const conds = (st.conditions || []).map((c) => h("tr", {}, h("th", { scope: "row" }, c.type), h("td", {}, badge(c.status)),
    h("td", {}, c.reason || ""), h("td", { class: "reason" }, c.message || ""), h("td", {}, c.lastTransitionTime || "")));
  const reasons = (pl.reasons || []).map((r) => h("tr", {}, h("td", {}, r.server || "—"),
    h("td", { class: "num" }, r.replica ?? "—"), h("td", {}, r.code || ""), h("td", { class: "reason" }, r.message)));
  const replicas = Object.entries(st.replicaStatus || {}).map(([ref, r]) => h("tr", {},
    h("th", { scope: "row" }, ref), h("td", {}, badge(r.state)), h("td", { class: "num" }, bytes(r.memory)),
    h("td", { class: "num" }, r.loadSeconds ? `${r.loadSeconds.toFixed(2)} s` : "—"),
    h("td", { class: "reason" }, r.message || "")));
  const history = (st.history || []).slice().reverse().map((e) => h("li", {},
    h("time", {}, e.time), " ", badge(e.state), " ", h("span", { class: "reason" }, e.message)));
  const spec = d.spec || {};
  return h("section", { "aria-labelledby": "h-model" },
    h("p", {}, link("#/models", "← all models")),
    h("h1", { id: "h-model" }, `${name} `, badge(st.state)),
    h("p", { class: "reason", id: "model-message" }, st.message || "waiting for the scheduler"),
    h("dl", { class: "facts" },
      h("dt", {}, "Namespace"), h("dd", {}, ns),
      h("dt", {}, "Storage"), h("dd", {}, spec.storageUri || ""),
      h("dt", {}, "Requirements"), h("dd", {}, (spec.requirements || []).join(", ") || "—"),
      h("dt", {}, "Replicas"), h("dd", {}, `${st.availableReplicas ?? 0} available of ${st.replicas ?? spec.replicas ?? 1}`),
      h("dt", {}, "Version"), h("dd", {}, version(d)),
      h("dt", {}, "Server"), h("dd", {}, pl.server || spec.server || "—")),
    h("h2", {}, "Conditions"),
    table("Conditions", ["Type", "Status", "Reason", "Message", "Since"], conds),
    h("h2", {}, "Placement"),
    h("p", {}, `${pl.state || "not planned yet"}${pl.server ? ` on server ${pl.server}` : ""}`),
    reasons.length ? table("Placement reasons", ["Server", "Replica", "Code", "Why not"], reasons)
      : h("p", { class: "muted" }, "No candidate was rejected."),
    h("h2", {}, "Replicas"),
    replicas.length ? table("Replicas", ["Replica", "State", "Memory", "Load time", "Message (MLServer's text)"], replicas)
      : h("p", { class: "muted" }, "No replica holds it."),
    h("h2", {}, "Load history"),
    history.length ? h("ol", { class: "history" }, history) : h("p", { class: "muted" }, "No history yet."),
    h("h2", {}, "Traffic"),
    trafficCharts(ctx.traffic[`model/${ns}/${name}`]));
}

function fill(pct) {
  const el = h("span", { class: pct > 100 ? "over" : "" });
  el.style.width = `${Math.min(pct, 100)}%`; // CSSOM, allowed by the CSP (no inline style attribute)
  return el;
}

function replicaUse(state, ns, server) {
  // memory used per replica index by the models placed there (measured or declared)
  const use = new Map();
  for (const m of state.list("Model", ns)) {
    const st = m.status || {};
    for (const [ref, r] of Object.entries(st.replicaStatus || {})) {
      const [srv, idx] = ref.split("/").slice(-2);
      if (srv !== server) continue;
      const u = use.get(idx) || { memory: 0, models: [] };
      u.memory += r.memory || 0;
      u.models.push({ doc: m, state: r.state });
      use.set(idx, u);
    }
  }
  return use;
}

export function placementView(state, ctx) {
  const cards = state.list("Server", ctx.ns).map((s) => {
    const ns = s.metadata.namespace;
    const use = replicaUse(state, ns, s.metadata.name);
    const rows = (Array.isArray((s.status || {}).replicaStatus) ? s.status.replicaStatus : []).map((r) => {
      const u = use.get(String(r.index)) || { memory: 0, models: [] };
      const cap = r.memory || 0;
      const pct = cap ? Math.round((100 * u.memory) / cap) : 0;
      return h("div", { class: "replica", role: "group", "aria-label": `replica ${r.index}` },
        h("h3", {}, `replica ${r.index} `, badge(r.ready ? "Ready" : "NotReady")),
        h("div", { class: "meter", role: "meter", "aria-valuemin": "0", "aria-valuemax": "100",
          "aria-valuenow": String(Math.min(pct, 100)), "aria-label": `memory used on replica ${r.index}` },
        fill(pct)),
        h("p", { class: "muted" }, `${bytes(u.memory)} used · ${bytes(Math.max(cap - u.memory, 0))} free of ${bytes(cap)}`
          + (u.memory > cap && cap ? ` · overcommitted by ${bytes(u.memory - cap)}` : "")),
        r.ready ? null : h("p", { class: "reason" }, r.message || ""),
        h("ul", { class: "chips" }, u.models.map((m) => h("li", {}, link(modelHref(m.doc), m.doc.metadata.name), " ",
          badge(m.state)))));
    });
    return h("article", { class: "server" },
      h("h2", {}, `${ns}/${s.metadata.name} `, badge(stateOf(s))),
      h("p", { class: "reason" }, (cond(s, "Ready") || {}).message || ""),
      h("div", { class: "replicas" }, rows));
  });
  const unplaced = state.list("Model", ctx.ns).filter((m) => ["ScheduleFailed", "LoadFailed"].includes((m.status || {}).state));
  return h("section", { "aria-labelledby": "h-placement" },
    h("h1", { id: "h-placement" }, "Placement"),
    cards.length ? cards : h("p", { class: "empty" }, "No servers here."),
    h("h2", {}, "Not serving, and why"),
    unplaced.length ? h("ul", { class: "why" }, unplaced.map((m) => h("li", {}, link(modelHref(m), m.metadata.name), " ",
      badge(m.status.state), " ", h("span", { class: "reason" }, m.status.message || ""))))
      : h("p", { class: "muted" }, "Every model is placed."));
}

export function experimentsView(state, ctx) {
  const items = state.list("Experiment", ctx.ns).map((x) => {
    const spec = x.spec || {};
    const cands = spec.candidates || [];
    const total = cands.reduce((a, c) => a + (c.weight || 0), 0) || 1;
    const t = ctx.traffic[`experiment/${x.metadata.namespace}/${x.metadata.name}`];
    const counts = (t && t.split) || {};
    const seen = Object.values(counts).reduce((a, n) => a + n, 0);
    const observed = seen ? Object.fromEntries(Object.entries(counts).map(([k, n]) => [k, Math.round((100 * n) / seen)]))
      : null;
    return h("article", { class: "card" },
      h("h2", {}, `${x.metadata.namespace}/${x.metadata.name} `, badge(stateOf(x))),
      h("p", { class: "reason" }, (cond(x, "Ready") || {}).message || ""),
      table(`Split of ${x.metadata.name}`, ["Candidate", "Configured", "Observed"], cands.map((c) => h("tr", {},
        h("th", { scope: "row" }, c.name + (c.name === spec.default ? " (default)" : "")),
        h("td", { class: "num" }, `${Math.round((100 * (c.weight || 0)) / total)}%`),
        h("td", { class: "num" }, observed ? `${observed[c.name] || 0}% (${Math.round(counts[c.name] || 0)})`
          : "no requests yet")))),
      t && t.error ? h("p", { class: "reason" }, t.error) : null,
      spec.mirror ? h("p", {}, `mirror: ${spec.mirror.name} (${spec.mirror.percent ?? 100}%)`) : null);
  });
  return h("section", { "aria-labelledby": "h-exp" }, h("h1", { id: "h-exp" }, "Experiments"),
    items.length ? items : h("p", { class: "empty" }, "No experiments here."));
}

function stepRef(input) { return String(input).split(".")[0]; }

export function pipelinesView(state, ctx) {
  const items = state.list("Pipeline", ctx.ns).map((p) => {
    const ns = p.metadata.namespace;
    const steps = (p.spec || {}).steps || [];
    const stepStatus = new Map(((p.status || {}).steps || []).map((x) => [x.name, x]));
    const depth = new Map();
    const names = new Set(steps.map((s) => s.name));
    const level = (s, seen = new Set()) => {
      if (depth.has(s.name)) return depth.get(s.name);
      if (seen.has(s.name)) return 0;
      seen.add(s.name);
      const ins = (s.inputs || []).map(stepRef).filter((n) => names.has(n) && n !== s.name);
      const d = ins.length ? 1 + Math.max(...ins.map((n) => level(steps.find((x) => x.name === n), seen))) : 0;
      depth.set(s.name, d);
      return d;
    };
    steps.forEach((s) => level(s));
    const cols = [];
    for (const s of steps) { const d = depth.get(s.name); (cols[d] = cols[d] || []).push(s); }
    return h("article", { class: "card" },
      h("h2", {}, `${ns}/${p.metadata.name} `, badge(stateOf(p))),
      h("p", { class: "reason" }, (cond(p, "Ready") || {}).message || ""),
      h("ol", { class: "graph", "aria-label": `steps of ${p.metadata.name}, in order` }, cols.map((col, i) => h("li", {},
        h("span", { class: "sr-only" }, `stage ${i + 1}`),
        h("ul", {}, col.map((s) => {
          const model = state.get("Model", ns, s.name);
          const ins = (s.inputs || []).map(stepRef);
          const st = stepStatus.get(s.name); // the pipeline's own verdict on the step, where its status has one
          return h("li", { class: "step" }, model ? link(modelHref(model), s.name) : s.name, " ",
            badge(st ? (st.ready ? "Ready" : "NotReady") : model ? stateOf(model) : "no model"),
            ins.length ? h("small", {}, ` ← ${ins.join(", ")}`) : null,
            st && !st.ready ? h("p", { class: "reason" }, st.message) : null);
        }))))));
  });
  return h("section", { "aria-labelledby": "h-pipe" }, h("h1", { id: "h-pipe" }, "Pipelines"),
    items.length ? items : h("p", { class: "empty" }, "No pipelines here."));
}

export function namespacesView(state, ctx) {
  const rows = state.namespaces().map((ns) => {
    const models = state.list("Model", ns);
    const ready = models.filter((m) => (m.status || {}).state === "ModelAvailable").length;
    return h("tr", {}, h("th", { scope: "row" }, h("a", { href: "#/models", onclick: () => ctx.setNs(ns) }, ns)),
      h("td", { class: "num" }, `${ready}/${models.length}`),
      h("td", { class: "num" }, String(state.list("Server", ns).length)),
      h("td", { class: "num" }, String(state.list("Experiment", ns).length)),
      h("td", { class: "num" }, String(state.list("Pipeline", ns).length)));
  });
  return h("section", { "aria-labelledby": "h-ns" }, h("h1", { id: "h-ns" }, "Namespaces"),
    rows.length ? table("Namespaces", ["Namespace", "Models ready", "Servers", "Experiments", "Pipelines"], rows)
      : h("p", { class: "empty" }, "Nothing you may read exists yet."));
}

export function auditView(records, ctx) {
  const rows = (records || []).slice().reverse().map((r) => h("tr", {},
    h("td", {}, new Date(r.time * 1000).toLocaleString()), h("td", {}, r.principal), h("td", {}, r.source),
    h("td", {}, r.verb), h("td", {}, `${r.kind} ${r.namespace ? r.namespace + "/" : ""}${r.name}`),
    h("td", {}, badge(r.outcome === "ok" ? "True" : r.outcome)), h("td", { class: "reason" }, r.reason)));
  return h("section", { "aria-labelledby": "h-audit" }, h("h1", { id: "h-audit" }, "Audit log"),
    h("p", {}, h("button", { type: "button", onclick: ctx.refreshAudit }, "Refresh"),
      h("span", { class: "muted" }, " the newest 200 records")),
    records === null ? h("p", { class: "muted" }, "Loading…")
      : table("Audit records", ["Time", "Principal", "Source", "Verb", "What", "Outcome", "Reason"], rows));
}

// The doctor matrix as far as the watched statuses tell it (no probes from the browser: `berth doctor` also
// checks storage and the gateway's reach from the CLI's side).
export function doctorRows(state, ctx) {
  const rows = [];
  const add = (check, target, ok, detail) => rows.push({ check, target, ok, detail });
  add("control plane", location.host, ctx.live, ctx.live ? "watch open" : "watch not open");
  for (const s of state.list("Server", ctx.ns)) {
    const ref = `${s.metadata.namespace}/${s.metadata.name}`;
    const reps = Array.isArray((s.status || {}).replicaStatus) ? s.status.replicaStatus : [];
    if (!reps.length) add("server", ref, false, (cond(s, "Ready") || {}).message || "no status yet");
    for (const r of reps) {
      add("agent", `${ref}/${r.index}`, !!r.connected, r.connected ? `connected (${r.address || ""})` : r.message);
      if (r.connected) add("inference server", `${ref}/${r.index}`, !!r.ready, r.ready ? "ready" : r.message);
    }
  }
  for (const m of state.list("Model", ctx.ns)) {
    const st = m.status || {};
    const ref = `${m.metadata.namespace}/${m.metadata.name}`;
    const placed = st.state !== "ScheduleFailed";
    add("placement", ref, st.state ? placed : null, placed ? (st.placement || {}).state || "waiting" : st.message);
    if (placed && st.state) {
      add("loaded", ref, st.state === "ModelAvailable" ? true : st.state === "LoadFailed" ? false : null,
        st.message || "");
    }
  }
  for (const kind of ["Experiment", "Pipeline"]) {
    for (const d of state.list(kind, ctx.ns)) {
      const c = cond(d, "Ready");
      add(kind.toLowerCase(), `${d.metadata.namespace}/${d.metadata.name}`, c ? c.status === "True" : null,
        (c || {}).message || "no status yet");
    }
  }
  return rows;
}

export function doctorView(state, ctx) {
  const rows = doctorRows(state, ctx);
  const failed = rows.filter((r) => r.ok === false).length;
  const mark = (ok) => (ok === true ? "✓ pass" : ok === false ? "✗ fail" : "… pending");
  return h("section", { "aria-labelledby": "h-doctor" }, h("h1", { id: "h-doctor" }, "Doctor"),
    h("p", { id: "doctor-summary" }, failed ? `${failed} check(s) fail` : "every check passes",
      h("span", { class: "muted" }, " — from the live statuses; `berth doctor` also probes storage and the gateway")),
    table("Doctor matrix", ["Check", "Target", "Result", "Detail"], rows.map((r) => h("tr", {},
      h("td", {}, r.check), h("th", { scope: "row" }, r.target),
      h("td", {}, h("span", { class: `badge ${r.ok === true ? "ok" : r.ok === false ? "bad" : "busy"}` }, mark(r.ok))),
      h("td", { class: "reason" }, r.detail || "")))));
}
