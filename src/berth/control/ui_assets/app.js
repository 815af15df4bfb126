// Berth dashboard: sign-in, the watch, the router.  Plain ES modules, no build step.
import * as api from "./api.js";
import { h } from "./dom.js";
import { State } from "./state.js";
import * as views from "./views.js";

const KINDS = ["Model", "Server", "Experiment", "Pipeline"];
const NAV = [["#/models", "Models"], ["#/placement", "Placement"], ["#/experiments", "Experiments"],
  ["#/pipelines", "Pipelines"], ["#/namespaces", "Namespaces"], ["#/doctor", "Doctor"], ["#/audit", "Audit", "admin"]];
const MIN_RENDER_INTERVAL = 250; // ms: a burst of events renders at most four times a second

const state = new State();
const ctx = { ns: "", filter: "", whoami: null, audit: null, traffic: {} };
const TRAFFIC_EVERY = 5000; // ms: the gateway is scraped every 5 s; only the figures on screen are asked for
let trafficTimer = null;
let stopWatch = null;
let renderQueued = false;
let lastRender = 0;
let firstData = false;

const $ = (id) => document.getElementById(id);

function isAdmin() {
  return !!ctx.whoami && Object.values(ctx.whoami.grants || {}).includes("admin");
}

function route() {
  const parts = (location.hash || "#/models").slice(2).split("/").map(decodeURIComponent);
  return { view: parts[0] || "models", args: parts.slice(1) };
}

function renderNav() {
  const { view } = route();
  $("nav").replaceChildren(...NAV.filter((n) => n[2] !== "admin" || isAdmin()).map(([href, text]) =>
    h("a", { href, "aria-current": href === `#/${view}` ? "page" : null }, text)));
}

function renderNamespaces() {
  const sel = $("ns");
  const known = new Set(state.namespaces());
  for (const ns of Object.keys((ctx.whoami || {}).grants || {})) if (ns !== "*") known.add(ns);
  if (ctx.ns) known.add(ctx.ns);
  const want = ["", ...[...known].sort()];
  const have = [...sel.options].map((o) => o.value);
  if (want.join("\n") !== have.join("\n")) {
    sel.replaceChildren(...want.map((ns) => h("option", { value: ns }, ns || "all")));
  }
  sel.value = ctx.ns;
}

function render() {
  renderQueued = false;
  lastRender = performance.now();
  renderNav();
  renderNamespaces();
  const { view, args } = route();
  const main = $("main");
  const focused = document.activeElement && document.activeElement.id;
  const caret = focused === "filter" ? document.activeElement.selectionStart : null;
  let node;
  if (view === "model" && args.length === 2) node = views.modelView(state, ctx, args[0], args[1]);
  else if (view === "placement") node = views.placementView(state, ctx);
  else if (view === "experiments") node = views.experimentsView(state, ctx);
  else if (view === "pipelines") node = views.pipelinesView(state, ctx);
  else if (view === "namespaces") node = views.namespacesView(state, ctx);
  else if (view === "audit") node = views.auditView(ctx.audit, ctx);
  else if (view === "doctor") node = views.doctorView(state, ctx);
  else node = views.modelsView(state, ctx);
  main.replaceChildren(node);
  document.body.dataset.objects = String(state.size()); // what the page holds (the tests read it)
  document.body.dataset.recent = String(state.recent.length);
  if (focused === "filter") { const f = $("filter"); f.focus(); f.setSelectionRange(caret, caret); }
  if (firstData && !render.marked) {
    render.marked = true;
    performance.mark("berth:first-data");
    document.body.dataset.ready = "true";
  }
}

function schedule() {
  if (renderQueued) return;
  renderQueued = true;
  const first = firstData && !render.marked; // the first data: shown as soon as the first chunk is in
  const wait = first ? 30 : Math.max(0, MIN_RENDER_INTERVAL - (performance.now() - lastRender));
  setTimeout(() => requestAnimationFrame(render), wait);
}

ctx.setFilter = (text) => { ctx.filter = text.slice(0, 200); schedule(); };
ctx.setNs = (ns) => { ctx.ns = ns; schedule(); };
ctx.refreshAudit = async () => {
  ctx.audit = null;
  schedule();
  try { ctx.audit = (await api.call("/api/v1/audit?limit=200")).items; } catch (e) { ctx.audit = []; showError(e); }
  schedule();
};

function showError(e) {
  $("live").textContent = `error: ${e.message || e}`;
}

function signIn(message) {
  if (stopWatch) { stopWatch(); stopWatch = null; }
  if (trafficTimer) { clearInterval(trafficTimer); trafficTimer = null; }
  api.signOut();
  state.reset();
  ctx.whoami = null;
  $("principal").textContent = "";
  $("signout").hidden = true;
  $("live").textContent = "signed out";
  $("nav").replaceChildren();
  const input = h("input", { id: "token", type: "password", autocomplete: "off", required: true,
    "aria-describedby": "token-help" });
  const form = h("form", { class: "signin", "aria-labelledby": "h-signin" },
    h("h1", { id: "h-signin" }, "Sign in to Berth"),
    message ? h("p", { class: "reason", role: "alert" }, message) : null,
    h("label", { for: "token" }, "Token"), input,
    h("p", { id: "token-help", class: "muted" },
      "Run `berth ui` to open this page signed in, or paste a token (`berth token create`). It is kept in this "
      + "tab only (sessionStorage) and sent as an Authorization header."),
    h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    api.setToken(input.value.trim());
    start();
  });
  $("main").replaceChildren(form);
  input.focus();
}

async function start() {
  const who = api.call("/api/v1/whoami"); // asked beside the watch, not before it: the first rows come sooner
  stopWatch = api.watch(KINDS, {
    onEvent: (ev) => { state.apply(ev); schedule(); },
    onReset: () => { state.reset(); firstData = true; schedule(); },
    onState: (text) => { $("live").textContent = text; ctx.live = text === "live"; schedule(); },
    onAuthError: () => signIn(ctx.whoami ? "Your token is no longer valid (revoked or expired)."
      : "That token is not valid (unknown, expired or revoked)."),
  });
  try {
    ctx.whoami = await who;
  } catch (e) {
    signIn(e.status === 401 ? "That token is not valid (unknown, expired or revoked)." : `Cannot reach Berth: ${e.message}`);
    return;
  }
  $("principal").textContent = `signed in as ${ctx.whoami.name}`;
  $("signout").hidden = false;
  render();
  followTraffic();
}

// Traffic of what the current view shows (one model, or the experiments listed): small answers, not lists.
function trafficKeys() {
  const { view, args } = route();
  if (view === "model" && args.length === 2) return [["model", args[0], args[1]]];
  if (view === "experiments") {
    return state.list("Experiment", ctx.ns).slice(0, 50).map((x) => ["experiment", x.metadata.namespace, x.metadata.name]);
  }
  return [];
}

async function pollTraffic() {
  const keys = trafficKeys();
  const next = {};
  await Promise.all(keys.map(async ([what, ns, name]) => {
    const q = new URLSearchParams({ namespace: ns, [what]: name });
    try { next[`${what}/${ns}/${name}`] = await api.call(`/api/v1/ui/traffic?${q}`); } catch (e) { /* shown as absent */ }
  }));
  ctx.traffic = next; // only what is on screen is kept
  schedule();
}

function followTraffic() {
  if (trafficTimer) { clearInterval(trafficTimer); trafficTimer = null; }
  ctx.traffic = {};
  const { view } = route();
  if (!ctx.whoami || !["model", "experiments"].includes(view)) return;
  pollTraffic();
  trafficTimer = setInterval(pollTraffic, TRAFFIC_EVERY);
}

window.addEventListener("hashchange", () => {
  followTraffic();
  if (route().view === "audit" && isAdmin()) ctx.refreshAudit();
  schedule();
  $("main").focus({ preventScroll: true });
});
$("ns").addEventListener("change", (e) => ctx.setNs(e.target.value));
$("signout").addEventListener("click", () => signIn(""));

(async () => {
  try {
    await api.redeemCodeInHash();
  } catch (e) {
    signIn(e.status === 401 ? "That sign-in link was already used or is older than a minute; run `berth ui` again."
      : `Sign-in failed: ${e.message}`);
    return;
  }
  if (!api.token()) { signIn(""); return; }
  if (route().view === "audit") ctx.refreshAudit();
  start();
})();
