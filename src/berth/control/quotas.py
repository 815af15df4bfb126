"""Per-namespace quotas: how many Models, Servers and Server replicas a namespace may declare.

    GET /api/v1/namespaces/{ns}/quota   {namespace, hard: {models, servers, replicas}, used: {...}}
    PUT /api/v1/namespaces/{ns}/quota   {models, servers, replicas}: each a whole number >= 0, or null (no limit)

Both need admin of every namespace (``*``): a namespace's own admin must not raise its own quota (the routes
are in no rule of control/auth.py, which makes them admin-of-all, failing closed).  A quota is stored in the
store as a ``ResourceQuota`` document named ``berth`` in its namespace (``spec.hard``), as Kubernetes keeps
a ResourceQuota; it is no kind of the resource API, so no tenant can read, change or delete it there.

An apply is checked against the quota before anything is written: the namespace as it would be after the apply
(stored documents replaced by the applied ones of the same name) is counted; a field over its limit that the
apply would raise refuses the whole apply, naming the namespace, the field, the limit and the count.  An apply
that does not raise a count already over a lowered limit is let through (as Kubernetes does); deletes always.
``replicas`` counts the MLServer processes the namespace's Servers may run: per Server the larger of
``spec.replicas`` (default 1) and ``spec.maxReplicas``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from berth.control.auth import Auth
from berth.errors import InvalidInput, NotFound
from berth.resources.names import check_name
from berth.store.base import Store
from berth.store.offloop import off_loop

KIND = "ResourceQuota"
NAME = "berth"
FIELDS = ("models", "servers", "replicas")
MAX_QUOTA = 1_000_000  # a larger number is a typo, not a quota


def usage(docs: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Counts of one namespace's documents (any kinds; only Models and Servers count)."""
    used = dict.fromkeys(FIELDS, 0)
    for doc in docs:
        if doc.get("kind") == "Model":
            used["models"] += 1
        elif doc.get("kind") == "Server":
            used["servers"] += 1
            spec = doc.get("spec") or {}
            replicas = spec.get("replicas")
            most = replicas if isinstance(replicas, int) else 1
            if isinstance(spec.get("maxReplicas"), int):
                most = max(most, spec["maxReplicas"])
            used["replicas"] += most
    return used


def quota_problems(namespace: str, hard: dict[str, int | None], stored: list[dict[str, Any]],
                   applied: list[dict[str, Any]]) -> list[str]:
    """Pure: what is over ``hard`` after ``applied`` (documents of ``namespace``) replaces ``stored``."""
    def key(d: dict[str, Any]) -> tuple[str, str]:
        return d["kind"], d["metadata"]["name"]

    after = {key(d): d for d in stored}
    after.update({key(d): d for d in applied})
    before, then = usage(stored), usage(after.values())
    problems = []
    for field in FIELDS:
        limit = hard.get(field)
        if limit is not None and then[field] > limit and then[field] > before[field]:
            what = ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in applied
                             if d["kind"] == ("Model" if field == "models" else "Server"))
            problems.append(f"namespace {namespace}: quota {field}: the limit is {limit}, this apply would make "
                            f"{then[field]} (now {before[field]}; applying {what}); delete some or ask an admin "
                            f"to raise it (berth quota set -n {namespace} --{field} N)")
    return problems


def headline(problems: list[str]) -> str:
    """The one line of a refused apply: which quotas (``namespace team-a: quota models``) it would exceed."""
    which = ", ".join(p.split(": the limit")[0] for p in problems)
    return f"the apply would exceed {which}; nothing was applied"


def hard_of(store: Store, namespace: str) -> dict[str, int | None]:
    try:
        doc = store.get(KIND, namespace, NAME)
    except (NotFound, InvalidInput):  # InvalidInput: a store that keeps no quotas (Kubernetes: see put)
        return dict.fromkeys(FIELDS)
    hard = (doc.get("spec") or {}).get("hard") or {}
    return {f: hard.get(f) for f in FIELDS}


def check_apply(store: Store, bodies: list[dict[str, Any]]) -> list[str]:
    """Blocking (store reads): every quota problem of an apply of ``bodies``."""
    problems: list[str] = []
    for ns in sorted({b["metadata"]["namespace"] for b in bodies if b["kind"] in ("Model", "Server")}):
        hard = hard_of(store, ns)
        if all(v is None for v in hard.values()):
            continue
        stored = store.list("Model", ns) + store.list("Server", ns)
        problems += quota_problems(ns, hard, stored, [b for b in bodies if b["metadata"]["namespace"] == ns])
    return problems


def parse_hard(body: Any) -> dict[str, int | None]:
    """The limits of a PUT body; InvalidInput naming the bad field."""
    if not isinstance(body, dict):
        raise InvalidInput('quota body must be a JSON object: {"models": N, "servers": N, "replicas": N}')
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidInput(f"quota: unknown field(s) {', '.join(unknown)}; expected {', '.join(FIELDS)}")
    hard: dict[str, int | None] = {}
    for field in FIELDS:
        value = body.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 <= value <= MAX_QUOTA):
            raise InvalidInput(f"quota {field}: expected a whole number from 0 to {MAX_QUOTA} or null (no limit), "
                               f"got {json.dumps(value)[:40]}")
        hard[field] = value
    return hard


class QuotaAPI:
    def __init__(self, store: Store, auth: Auth) -> None:
        self.store = store
        self.auth = auth

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v1/namespaces/{ns}/quota", self.get)
        router.add_put("/api/v1/namespaces/{ns}/quota", self.put)

    def _answer(self, ns: str) -> dict[str, Any]:
        used = usage(self.store.list("Model", ns) + self.store.list("Server", ns))
        return {"namespace": ns, "hard": hard_of(self.store, ns), "used": used}

    async def get(self, request: web.Request) -> web.Response:
        ns = check_name(request.match_info["ns"], what="namespace", label=True)
        self.auth.require(request, "read", ns, action="get", kind=KIND, name=NAME)
        return web.json_response(await off_loop(self._answer, ns))

    async def put(self, request: web.Request) -> web.Response:
        ns = check_name(request.match_info["ns"], what="namespace", label=True)
        principal = self.auth.require(request, "admin", "*", action="set", kind=KIND, name=NAME)
        try:
            body = json.loads(await request.read() or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"request body is not valid JSON: {exc}") from exc
        hard = parse_hard(body)
        doc = {"apiVersion": "v1", "kind": KIND, "metadata": {"name": NAME, "namespace": ns},
               "spec": {"hard": hard}}
        try:
            await off_loop(self.store.apply, doc)
        except InvalidInput as exc:
            raise InvalidInput(f"this control plane's store keeps no quotas ({exc.message}); on Kubernetes use "
                               "a ResourceQuota with count/models.mlops.seldon.io and "
                               "count/servers.mlops.seldon.io") from exc
        text = ", ".join(f"{f}={'none' if hard[f] is None else hard[f]}" for f in FIELDS)
        self.auth.record(request, principal.name, "set", KIND, ns, NAME, outcome="ok", reason=text)
        return web.json_response(await off_loop(self._answer, ns))
