"""Token and audit endpoints of the control API (admins only; a namespace admin sees only their namespaces).

    POST   /api/v1/tokens         {name, grants | namespace + role, expiresIn, kind, agent} -> {token, ...}
    GET    /api/v1/tokens         the tokens the caller administers (never a token or its hash)
    DELETE /api/v1/tokens/{name}  revoke (open watches holding it end within a second)
    GET    /api/v1/audit?namespace=&since=&limit=   audit records, oldest first
    GET    /api/v1/whoami         the caller's own principal (any valid token)

A token's namespaces are its grants' (a user token), its replica's (an agent token) or every namespace (a
gateway token): the caller must be admin in each of them to create, list or revoke it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from berth.control.auth import Auth, principal_of
from berth.control.tokens import TokenInfo, TokenRegistry
from berth.errors import InvalidInput, NotFound
from berth.resources.identity import ALL, AgentIdentity, Principal, PrincipalKind, parse_duration
from berth.resources.names import check_name

KINDS: tuple[PrincipalKind, ...] = ("user", "agent", "gateway")


class TokensAPI:
    def __init__(self, tokens: TokenRegistry, auth: Auth) -> None:
        self.tokens = tokens
        self.auth = auth

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/api/v1/tokens", self.list)
        router.add_post("/api/v1/tokens", self.create)
        router.add_delete("/api/v1/tokens/{name}", self.revoke)
        router.add_get("/api/v1/audit", self.audit)
        router.add_get("/api/v1/whoami", self.whoami)

    def _visible(self, principal: Principal, info: TokenInfo) -> bool:
        admin = principal.namespaces("admin")
        return admin is None or (ALL not in info.namespaces() and info.namespaces() <= admin)

    def _record(self, request: web.Request, principal: Principal, verb: str, info: TokenInfo, reason: str) -> None:
        for ns in sorted(info.namespaces()):
            self.auth.record(request, principal.name, verb, "Token", "" if ns == ALL else ns, info.name,
                             outcome="ok", reason=reason)

    async def create(self, request: web.Request) -> web.Response:
        principal = principal_of(request)
        body = await _json_object(request)
        name = str(body.get("name") or "")
        kind, grants, agent, expires_in = _parse(body)
        scope = ({agent.namespace} if agent is not None else {ALL}) if kind != "user" else set(grants)
        for ns in sorted(scope):
            self.auth.require(request, "admin", ns, action="create", kind="Token", name=name)
        secret = self.tokens.create(name, grants=grants, kind=kind, agent=agent, expires_in=expires_in,
                                    created_by=principal.name)
        info = self.tokens.get(name)
        self._record(request, principal, "create", info, f"{kind} token, grants {_grants_text(info)}")
        return web.json_response({"token": secret, **info.as_dict()}, status=201)

    async def list(self, request: web.Request) -> web.Response:
        principal = principal_of(request)
        items = [t.as_dict() for t in self.tokens.all() if self._visible(principal, t)]
        return web.json_response({"items": items})

    async def revoke(self, request: web.Request) -> web.Response:
        principal = principal_of(request)
        name = request.match_info["name"]
        try:
            info = self.tokens.get(name)
        except NotFound:
            info = None
        if info is None or not self._visible(principal, info):
            # the same answer whether it exists elsewhere or not at all; its tenants' admins see the attempt
            for ns in sorted(info.namespaces()) if info is not None else [""]:
                self.auth.record(request, principal.name, "revoke", "Token", "" if ns == ALL else ns, name,
                                 outcome="forbidden" if info is not None else "failed", reason="not found")
            raise NotFound(f"no token named {name} among the tokens you administer", details={"token": name})
        revoked = self.tokens.revoke(name)
        self._record(request, principal, "revoke", revoked, "revoked")
        return web.json_response(revoked.as_dict())

    async def whoami(self, request: web.Request) -> web.Response:
        p = principal_of(request)
        return web.json_response({"name": p.name, "kind": p.kind, "grants": dict(p.grants),
                                  "agent": str(p.agent) if p.agent else None})

    async def audit(self, request: web.Request) -> web.Response:
        principal = principal_of(request)
        ns = request.query.get("namespace") or None
        admin = principal.namespaces("admin")
        if ns is not None:
            self.auth.require(request, "admin", ns, action="list", kind="AuditRecord")
        namespaces = frozenset({ns}) if ns is not None else admin
        since = _since(request.query.get("since"))
        limit_q = request.query.get("limit", "1000")
        if not limit_q.isdigit():
            raise InvalidInput(f"limit: expected a whole number, got {limit_q!r}")
        items = self.tokens.audit_records(namespaces=namespaces, since=since, limit=int(limit_q))
        return web.json_response({"items": items})


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read() or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidInput("token body must be a JSON object: {name, grants | namespace + role, expiresIn, kind}")
    return body


def _parse(body: dict[str, Any]) -> tuple[PrincipalKind, dict[str, str], AgentIdentity | None, float | None]:
    """(kind, grants, agent, expires_in) of a create-token body; InvalidInput naming the bad field."""
    agent_text = body.get("agent")
    kind: Any = str(body.get("kind") or ("agent" if agent_text else "user"))
    if kind not in KINDS:
        raise InvalidInput(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    grants = body.get("grants") or {}
    if not isinstance(grants, dict) or not all(isinstance(v, str) for v in grants.values()):
        raise InvalidInput('grants: expected a map of namespace to role, e.g. {"team-a": "editor"}')
    if body.get("namespace") or body.get("role"):
        if not (body.get("namespace") and body.get("role")):
            raise InvalidInput("namespace and role go together: the role this token holds in that namespace")
        grants = {**grants, str(body["namespace"]): str(body["role"])}
    agent = None
    if kind == "agent":
        if not agent_text:
            raise InvalidInput("agent: an agent token names its replica, NAMESPACE/SERVER/REPLICA")
        try:
            agent = AgentIdentity.parse(str(agent_text))
        except ValueError as exc:
            raise InvalidInput(f"agent: {exc}") from exc
    elif agent_text:
        raise InvalidInput(f"agent: only agent tokens name a replica (this is a {kind} token)")
    if kind != "user" and grants:
        raise InvalidInput(f"a {kind} token carries no roles; drop grants/namespace/role")
    expires_in = None
    if body.get("expiresIn") not in (None, ""):
        try:
            expires_in = parse_duration(body["expiresIn"])
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"expiresIn: {exc}") from exc
    for ns in grants:
        if ns != ALL:
            check_name(str(ns), what="namespace", label=True)
    return kind, {str(k): v for k, v in grants.items()}, agent, expires_in


def _grants_text(info: TokenInfo) -> str:
    if info.agent:
        return f"replica {info.agent}"
    return ", ".join(f"{ns}={role}" for ns, role in sorted(info.grants.items())) or "none"


def _since(text: str | None) -> float:
    """``since``: seconds since the epoch, or a duration back from now (``1h``)."""
    if not text:
        return 0.0
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return time.time() - parse_duration(text)
    except ValueError as exc:
        raise InvalidInput(f"since: expected a duration (1h, 30m) or seconds since the epoch; {exc}") from exc
