// Building DOM from data without innerHTML: every text goes through textContent.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function table(caption, headers, rows, cls = "") {
  return h("div", { class: "scroll" },
    h("table", { class: cls },
      h("caption", { class: "sr-only" }, caption),
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, rows)));
}

export function bytes(n) {
  if (!n) return "0";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Math.abs(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${n < 0 ? "-" : ""}${v.toFixed(v >= 10 || i === 0 ? 0 : 1)} ${units[i]}`;
}

const STATE_CLASS = { ModelAvailable: "ok", ModelProgressing: "busy", ScheduleFailed: "bad", LoadFailed: "bad",
  ModelTerminating: "busy", True: "ok", False: "bad", Loaded: "ok", Loading: "busy", Pending: "busy",
  Unavailable: "bad", Ready: "ok", NotReady: "bad" };

export function badge(text) {
  return h("span", { class: `badge ${STATE_CLASS[text] || "none"}` }, text || "—");
}

export function link(href, text) { return h("a", { href }, text); }
