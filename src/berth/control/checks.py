"""Storage diagnosis for ``berth doctor``: can a model's artifact be read with the credentials it names?

``GET /api/v1/namespaces/{ns}/models/{name}/storage`` answers::

    {"ok": bool, "uri": str, "message": str, "checkedOn": "NS/SERVER/N" | null,
     "checks": [{"name": "secret" | "policy" | "credentials" | "object", "ok": true | false | null, "detail": str}]}

``ok: null`` means the check does not apply (no secret named, a local path needs no credentials) or could
not run.  The control plane itself never connects to a tenant-chosen endpoint nor looks at a tenant-chosen
path: it looks up the Secret in its store, judges the storageUri against the storage policy (a refused one is
never tried anywhere, and the answer names only the rule), then asks an enrolled agent of the model's
namespace (one holding the model, else one of its pinned server, else any) to run the credentials and object
checks from its own host, over the agent wire (``berth.adapters.storage_check``).  With no such agent
connected, those two are ``null``: "not checked".  Details name the secret, endpoint, bucket and key, never
a secret value.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from berth.adapters.storage_target import describe
from berth.control.auth import auth_of
from berth.control.hub import AgentHub, ReplicaRecord
from berth.control.secrets import resolve
from berth.resources.names import check_name
from berth.resources.policy import PERMISSIVE, StoragePolicy, refusal
from berth.store.base import Store
from berth.store.offloop import off_loop
from berth.wire.agent import CheckStorage, ModelSource

Check = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
KNOWN = ("credentials", "object")


def _check(name: str, ok: bool | None, detail: str) -> Check:
    return {"name": name, "ok": ok, "detail": detail}


def storage_handler(store: Store, hub: AgentHub, policy: StoragePolicy = PERMISSIVE) -> Handler:
    """The aiohttp handler of ``GET /api/v1/namespaces/{ns}/models/{name}/storage``."""

    async def storage_check(request: web.Request) -> web.Response:
        ns = check_name(request.match_info["ns"], what="namespace", label=True)
        name = check_name(request.match_info["name"], what="name")
        # read in ns, checked before the store is asked (a 403 says nothing of what exists); the middleware
        # checked it already, this keeps the handler safe wherever it is mounted
        principal = auth_of(request).require(request, "read", ns, action="check", kind="Model", name=name)
        doc = await off_loop(store.get, "Model", ns, name)  # NotFound answers 404 through the API's middleware
        return web.json_response(await check_model_storage(store, hub, policy, doc,
                                                           secret_keys=principal.can("admin", ns)))

    return storage_check


async def check_model_storage(store: Store, hub: AgentHub, policy: StoragePolicy, doc: dict[str, Any], *,
                              secret_keys: bool = True) -> dict[str, Any]:
    """Secret, policy, credentials and object checks of one stored Model document (``secret_keys``: name the
    secret's keys, for callers who may read Secrets)."""
    spec = doc.get("spec") or {}
    ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
    uri = str(spec.get("storageUri") or "").strip()
    secret_name = spec.get("secretName") or None
    data, why = await off_loop(resolve, store, ns, secret_name)
    if secret_name is None:
        secret = _check("secret", None, "no secretName on the model; none needed")
    elif data is None:
        secret = _check("secret", False, why or f"secret {secret_name!r} not found in namespace {ns}")
    else:
        keys = f" (keys: {', '.join(sorted(data)) or 'none'})" if secret_keys else ""
        secret = _check("secret", True, f"secret {secret_name} found in namespace {ns}{keys}")
    source = ModelSource(storage_uri=uri, secret_name=secret_name, secret=data, secret_error=why)
    checked_on = None
    if not uri:
        rest = [_check("policy", None, "not checked"), _check("credentials", None, "not checked"),
                _check("object", False, "the model has no spec.storageUri; set it to the artifact's location")]
    else:
        refused = refusal(policy, ns, describe(source))
        if refused:
            rest = [_check("policy", False, f"refused by the storage policy: {refused}"),
                    _check("credentials", None, "not checked: the policy refuses the location"),
                    _check("object", None, "not checked: the policy refuses the location")]
        else:
            rest, checked_on = await _on_agent(hub, ns, name, spec, source)
            rest = [_check("policy", True, f"allowed by {policy.source}"), *rest]
    checks = [secret, *rest]
    failed = [c for c in checks if c["ok"] is False]
    message = failed[0]["detail"] if failed else (f"{uri} is readable from replica {checked_on}" if checked_on
                                                  else f"{uri}: not checked (no agent of namespace {ns} connected)")
    return {"ok": not failed, "uri": uri, "checks": checks, "message": message, "checkedOn": checked_on}


def _candidates(hub: AgentHub, ns: str, name: str, spec: dict[str, Any]) -> list[ReplicaRecord]:
    """Connected, enrolled replicas of ``ns``: those holding the model first, then its pinned server's."""
    server = str(spec.get("server") or "")
    live = [r for r in hub.in_namespace(ns) if r.connected and r.enrolled and r.ws is not None]
    return sorted(live, key=lambda r: (name not in r.models, bool(server) and r.server != server, r.key))


async def _on_agent(hub: AgentHub, ns: str, name: str, spec: dict[str, Any],
                    source: ModelSource) -> tuple[list[Check], str | None]:
    for rec in _candidates(hub, ns, name, spec)[:2]:
        answer = await hub.ask_storage(rec, CheckStorage(id=uuid.uuid4().hex, namespace=ns, name=name,
                                                         source=source))
        if answer is None:
            continue
        where = f"{rec.namespace}/{rec.server}/{rec.index}"
        got = {c.get("name"): c for c in answer if isinstance(c, dict)}
        checks = [_check(n, _ok(got.get(n, {}).get("ok")), f"{str(got.get(n, {}).get('detail', ''))[:500]} "
                                                            f"(checked on replica {where})".lstrip())
                  for n in KNOWN]
        return checks, where
    not_run = (f"not checked: no agent of namespace {ns} is connected to check from (the control plane does not "
               "read storage itself); the agent reports fetch errors in the model's status")
    return [_check("credentials", None, not_run), _check("object", None, not_run)], None


def _ok(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None
