// Small line charts as SVG built with the DOM (no library, no inline style).
import { h } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";
const W = 240;
const H = 56;

function svg(tag, attrs) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

function fmt(v, unit) {
  if (v === null || v === undefined) return "—";
  return `${v >= 100 ? Math.round(v) : v.toFixed(v >= 10 ? 1 : 2)} ${unit}`;
}

export function chart(title, samples, field, unit) {
  const values = samples.map((s) => s[field]);
  const known = values.filter((v) => v !== null && v !== undefined);
  const max = Math.max(1e-9, ...known);
  const step = samples.length > 1 ? W / (samples.length - 1) : W;
  const pts = [];
  values.forEach((v, i) => {
    if (v !== null && v !== undefined) pts.push(`${(i * step).toFixed(1)},${(H - 4 - (v / max) * (H - 8)).toFixed(1)}`);
  });
  if (pts.length === 1) pts.unshift(`0,${pts[0].split(",")[1]}`); // one sample: a level line, not an invisible dot
  const last = known.length ? known[known.length - 1] : null;
  const graphic = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
    "aria-label": `${title}: last ${fmt(last, unit)}, highest ${fmt(known.length ? max : null, unit)} over `
      + `${samples.length} samples` });
  graphic.append(svg("line", { x1: 0, y1: H - 4, x2: W, y2: H - 4, class: "axis" }));
  if (pts.length) graphic.append(svg("polyline", { points: pts.join(" "), class: "line" }));
  return h("figure", { class: "chart" }, graphic,
    h("figcaption", {}, h("strong", {}, title), ` ${fmt(last, unit)}`,
      h("span", { class: "muted" }, ` (max ${fmt(known.length ? max : null, unit)})`)));
}

export function trafficCharts(t) {
  if (!t) return h("p", { class: "muted" }, "Reading the gateway's metrics…");
  const parts = [];
  if (t.error) parts.push(h("p", { class: "reason", role: "note" }, t.error));
  if (!t.samples.length) {
    parts.push(h("p", { class: "muted" }, `No samples yet (one every ${t.interval} s while this page is open; `
      + `${Math.round(t.requests)} request(s) since the gateway started).`));
    return h("div", {}, parts);
  }
  parts.push(h("div", { class: "charts" },
    chart("Requests/s", t.samples, "rps", "/s"), chart("Errors/s", t.samples, "errors", "/s"),
    chart("p50", t.samples, "p50", "ms"), chart("p99", t.samples, "p99", "ms")));
  return h("div", {}, parts);
}
