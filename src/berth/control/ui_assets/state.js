// What the page knows: the watched resources by kind/namespace/name, nothing else grows with time.
// Memory is bounded by what the control plane holds (deleted objects are dropped) plus a ring of recent
// events (RECENT_LIMIT).
export const RECENT_LIMIT = 200;

export class State {
  constructor() { this.reset(); }

  reset() {
    this.objects = new Map(); // kind -> Map("ns/name" -> doc)
    this.recent = [];
    this.revision = 0;
  }

  apply(ev) {
    const o = ev.object || {};
    const meta = o.metadata || {};
    const kind = o.kind;
    if (!kind) return;
    if (!this.objects.has(kind)) this.objects.set(kind, new Map());
    const key = `${meta.namespace}/${meta.name}`;
    if (ev.type === "DELETED") this.objects.get(kind).delete(key);
    else this.objects.get(kind).set(key, o);
    this.revision = Math.max(this.revision, ev.revision || 0);
    if (ev.type !== "ADDED") {
      this.recent.push({ type: ev.type, kind, ns: meta.namespace, name: meta.name,
        state: (o.status || {}).state || "", at: new Date() });
      if (this.recent.length > RECENT_LIMIT) this.recent.splice(0, this.recent.length - RECENT_LIMIT);
    }
  }

  list(kind, ns) {
    const all = [...(this.objects.get(kind) || new Map()).values()];
    const shown = ns ? all.filter((d) => d.metadata.namespace === ns) : all;
    const key = (d) => `${d.metadata.namespace}/${d.metadata.name}`;
    return shown.sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
  }

  get(kind, ns, name) { return (this.objects.get(kind) || new Map()).get(`${ns}/${name}`); }

  namespaces() {
    const out = new Set();
    for (const m of this.objects.values()) for (const d of m.values()) out.add(d.metadata.namespace);
    return [...out].sort();
  }

  size() { let n = 0; for (const m of this.objects.values()) n += m.size; return n; }
}
