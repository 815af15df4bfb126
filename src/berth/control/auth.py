"""Who may call what on the control API: the bearer-token middleware, per-route rules and the audit helper.

Every route is declared in :data:`RULES` (method + route template).  The middleware authenticates every
request except the open ones (health probes) and the agent endpoint (the hub authenticates agents itself),
then applies the route's static rule; rules that depend on the request's body or filters (apply, lists,
watches) are checked by the handler through :meth:`Auth.require` and :meth:`Auth.readable`.  A route missing
from the table needs admin on every namespace, so a forgotten rule fails closed.

401 and 403 answers say nothing about what exists: they are decided before anything is read from the store
and name only the namespace and right the caller asked for.  Every refusal is written to the audit log.

In Kubernetes mode a token the registry does not know, presented on the routing table's endpoints, is
reviewed by the API server (``review_gateway``: TokenReview, :mod:`berth.control.kube_enrol`): the projected
token of a namespace's gateway pod makes a ``gateway`` principal of that namespace only, whose table holds
only that namespace's routes (:func:`gateway_scope`) and whose watch ends when its token expires.  Reviews
in flight are bounded (:data:`MAX_REVIEWS`) and timed (:data:`REVIEW_TIMEOUT`); a Berth-format token is never
sent to the API server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from berth.control.tokens import TokenRegistry
from berth.control.watchguard import Guards, WatchGuard
from berth.errors import BerthError, Forbidden, Unauthenticated, Unavailable
from berth.resources.identity import ALL, NEEDED_ROLE, Principal, Verb, bearer, looks_like_token, right_for
from berth.resources.kinds import KIND_ALIASES
from berth.wire.agent import AGENT_PATH
from berth.wire.routes import ROUTES_PATH, ROUTES_WATCH_PATH
from berth.wire.usage import USAGE_PATH

log = logging.getLogger("berth.control.auth")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("berth.principal", Principal)
# a principal the API server reviewed (Kubernetes mode): the wall-clock time its token expires
REVIEWED_UNTIL: web.RequestKey[float] = web.RequestKey("berth.reviewed_until", float)
GatewayReview = Callable[[str], Awaitable[tuple[Principal, float]]]
MAX_REVIEWS = 32  # gateway token reviews in flight at once; more are answered 503
REVIEW_TIMEOUT = 10.0  # seconds one review may take
NO_TOKEN = ("this endpoint needs a token (Authorization: Bearer <token>); use the token `berth up` wrote, "
            "set BERTH_TOKEN, or ask an admin for one (`berth token create`)")
BAD_TOKEN = "the token is not valid (unknown, expired or revoked); ask an admin for a new one"


@dataclass(frozen=True)
class Rule:
    """What a route needs.  ``check``: open | hub | token | admin-all | gateway | admin-any | namespace."""

    action: str  # the audit verb: get, list, watch, apply, delete, ...
    check: str
    verb: Verb = "read"  # for ``namespace``: the right needed in match_info["ns"] (Secrets: admin)
    kind: str = ""  # fixed kind of a ``namespace`` rule; else match_info["kind"]


NS = "/api/v1/namespaces/{ns}"
RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/healthz"): Rule("health", "open"),
    ("GET", "/readyz"): Rule("health", "open"),
    ("GET", AGENT_PATH): Rule("connect", "hub"),
    ("GET", "/api/v1/version"): Rule("version", "token"),
    ("GET", "/metrics"): Rule("metrics", "admin-all"),
    ("POST", "/api/v1/apply"): Rule("apply", "token"),  # the handler: write in every document's namespace
    ("GET", "/api/v1/watch"): Rule("watch", "token"),  # the handler: read in ?namespace, else filtered
    ("GET", "/api/v1/agents"): Rule("list", "token"),  # the handler: read in ?namespace, else filtered
    ("GET", "/api/v1/{kind}"): Rule("list", "token"),  # the handler: read in ?namespace, else filtered
    ("GET", ROUTES_PATH): Rule("get", "gateway", kind="RoutingTable"),
    ("GET", ROUTES_WATCH_PATH): Rule("watch", "gateway", kind="RoutingTable"),
    ("POST", NS + "/models/{name}/wake"): Rule("wake", "gateway", kind="Model"),  # the handler: its namespace only
    ("POST", USAGE_PATH): Rule("report", "gateway", kind="UsageReport"),  # the handler: its namespaces (usage_api.py)
    ("GET", NS + "/models/{name}/storage"): Rule("check", "namespace", "read", "Model"),
    ("GET", NS + "/{kind}/{name}"): Rule("get", "namespace", "read"),
    ("DELETE", NS + "/{kind}/{name}"): Rule("delete", "namespace", "write"),
    ("GET", "/api/v1/tokens"): Rule("list", "admin-any", kind="Token"),
    ("POST", "/api/v1/tokens"): Rule("create", "admin-any", kind="Token"),
    ("DELETE", "/api/v1/tokens/{name}"): Rule("revoke", "admin-any", kind="Token"),
    ("GET", "/api/v1/audit"): Rule("list", "admin-any", kind="AuditRecord"),
    ("GET", "/api/v1/whoami"): Rule("whoami", "token"),
    ("GET", NS + "/quota"): Rule("get", "namespace", "read", "ResourceQuota"),  # a tenant reads its own quota
    ("PUT", NS + "/quota"): Rule("set", "admin-all", kind="ResourceQuota"),
    # the dashboard (control/ui.py): its files hold no data; the code exchange audits itself
    ("GET", "/ui"): Rule("ui", "open"),
    ("GET", "/ui/"): Rule("ui", "open"),
    ("GET", "/ui/{file}"): Rule("ui", "open"),
    ("POST", "/api/v1/ui/codes"): Rule("create", "token", kind="SignInCode"),
    ("POST", "/api/v1/ui/session"): Rule("exchange", "open", kind="SignInCode"),
    ("GET", "/api/v1/ui/traffic"): Rule("get", "token"),  # the handler: read in ?namespace
}
UNLISTED = Rule("call", "admin-all")
_GATEWAY_ENDPOINTS = {"RoutingTable": "the routing table", "UsageReport": "the usage report endpoint",
                      "Model": "waking an evicted model"}


def principal_of(request: web.Request) -> Principal:
    """The authenticated caller (the middleware put it there); never answers without one."""
    principal: Principal | None = request.get(PRINCIPAL)
    if principal is None:
        raise Unauthenticated(NO_TOKEN)
    return principal


def auth_of(request: web.Request) -> Auth:
    auth = request.app.get(AUTH_KEY)
    if auth is None:
        raise Unauthenticated(NO_TOKEN)
    return auth


def forbidden(principal: Principal, verb: str, namespace: str, action: str) -> Forbidden:
    where = "every namespace (*)" if namespace == ALL else f"namespace {namespace}"
    needs = NEEDED_ROLE.get(verb, verb)
    return Forbidden(f"forbidden: token {principal.name} has no {verb} right in {where} ({action} needs role "
                     f"{needs} there)", details={"namespace": namespace, "right": verb, "role": needs})


class Auth:
    """Authentication and authorisation of control-API requests, over the token registry."""

    def __init__(self, tokens: TokenRegistry) -> None:
        self.tokens = tokens
        self.guards = Guards(tokens)
        self.review_gateway: GatewayReview | None = None  # Kubernetes mode: TokenReview of gateway pods' tokens
        self._reviews = 0  # reviews in flight

    def install(self, app: web.Application) -> None:
        app[AUTH_KEY] = self  # handlers in other modules (routes, checks) find it here
        app.middlewares.append(self.middleware)

    def close(self) -> None:
        self.guards.close()

    # --- the middleware -----------------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        rule = _rule_of(request)
        if rule.check in ("open", "hub"):
            return await handler(request)
        token = bearer(request.headers.get("Authorization"))
        principal = self.tokens.verify(token)
        if (principal is None and token is not None and rule.check == "gateway" and self.review_gateway is not None
                and not looks_like_token(token)):
            principal = await self._reviewed(request, token, rule)
        if principal is None:
            self.record(request, "anonymous" if token is None else "invalid-token", rule.action,
                        *_target(request, rule), outcome="unauthenticated",
                        reason="no token" if token is None else "invalid token")
            raise Unauthenticated(NO_TOKEN if token is None else BAD_TOKEN)
        request[PRINCIPAL] = principal
        self._static_check(request, principal, rule)
        return await handler(request)

    async def _reviewed(self, request: web.Request, token: str, rule: Rule) -> Principal:
        """The gateway principal the API server's TokenReview gives ``token``; refusals audited."""
        assert self.review_gateway is not None
        if self._reviews >= MAX_REVIEWS:
            self.record(request, "invalid-token", rule.action, *_target(request, rule), outcome="unavailable",
                        reason="too many token reviews in flight")
            raise Unavailable(f"{MAX_REVIEWS} gateway token reviews are already in flight; retry in a few seconds")
        self._reviews += 1
        try:
            principal, until = await asyncio.wait_for(self.review_gateway(token), REVIEW_TIMEOUT)
        except Unauthenticated as exc:
            self.record(request, "invalid-token", rule.action, *_target(request, rule), outcome="unauthenticated",
                        reason=exc.message[:300])
            raise Unauthenticated(exc.message) from None
        except TimeoutError:
            self.record(request, "invalid-token", rule.action, *_target(request, rule), outcome="unavailable",
                        reason="the token review timed out")
            raise Unavailable(f"the API server did not review the token within {REVIEW_TIMEOUT:g} s; retry") from None
        finally:
            self._reviews -= 1
        request[REVIEWED_UNTIL] = until
        return principal

    def _static_check(self, request: web.Request, principal: Principal, rule: Rule) -> None:
        kind, ns, name = _target(request, rule)
        if rule.check == "token":
            return
        if rule.check == "namespace":
            self.require(request, rule.verb, ns, action=rule.action, kind=kind, name=name)
        elif rule.check == "admin-all":
            self.require(request, "admin", ALL, action=rule.action, kind=kind, name=name)
        elif rule.check == "gateway":
            self.require_gateway(request, action=rule.action, kind=kind or "RoutingTable", namespace=ns, name=name)
        elif rule.check == "admin-any" and principal.namespaces("admin") == frozenset():
            self.refuse(request, principal, "admin", ALL, rule.action, kind, name)

    # --- checks for handlers ------------------------------------------------------------------------------

    def require(self, request: web.Request, verb: Verb, namespace: str, *, action: str, kind: str = "",
                name: str = "") -> Principal:
        """The caller, if it holds the right ``action`` on ``kind`` needs in ``namespace`` (else 403)."""
        principal = principal_of(request)
        right = right_for(kind, verb)
        if not principal.can(right, namespace):
            self.refuse(request, principal, right, namespace, action, kind, name)
        return principal

    def require_gateway(self, request: web.Request, *, action: str = "watch", kind: str = "RoutingTable",
                        namespace: str = "", name: str = "") -> Principal:
        """The gateways' endpoints (routing table, usage reports, wake-ups) are for gateways (and admins of every
        namespace); a refusal is audited under the endpoint's ``kind`` (RoutingTable, UsageReport, Model)."""
        principal = principal_of(request)
        if principal.kind != "gateway" and not principal.is_admin_everywhere:
            self.record(request, principal.name, action, kind, namespace, name, outcome="forbidden",
                        reason="needs a gateway token or admin on every namespace")
            what = _GATEWAY_ENDPOINTS.get(kind, "this endpoint")
            raise Forbidden(f"forbidden: token {principal.name} is not a gateway token; {what} is for gateways and "
                            "admins of every namespace (*)", details={"right": "gateway"})
        return principal

    def table_scope(self, request: web.Request, *, action: str) -> frozenset[str] | None:
        """The namespaces of the routing table the caller may read (None: all), narrowed by ``?namespace=``;
        a namespace's gateway asking for another namespace is refused (403, audited)."""
        principal = self.require_gateway(request, action=action)
        scope = gateway_scope(principal)
        wanted = request.query.get("namespace", "")
        if not wanted:
            return scope
        if scope is not None and wanted not in scope:
            self.record(request, principal.name, action, "RoutingTable", wanted, outcome="forbidden",
                        reason="a namespace's gateway reads only its own namespace's routes")
            raise Forbidden(f"forbidden: {principal.name} is the gateway of namespace {', '.join(sorted(scope))} "
                            f"and reads only its routes, not namespace {wanted}'s",
                            details={"namespace": wanted, "right": "gateway"})
        return frozenset({wanted})

    def refuse(self, request: web.Request, principal: Principal, verb: str, namespace: str, action: str,
               kind: str = "", name: str = "") -> None:
        self.record(request, principal.name, action, kind, "" if namespace == ALL else namespace, name,
                    outcome="forbidden", reason=f"no {verb} right")
        raise forbidden(principal, verb, namespace, action)

    def readable(self, request: web.Request, kind: str = "", verb: Verb = "read") -> frozenset[str] | None:
        """Namespaces where the caller may ``verb`` ``kind`` (None: all): what ``-A`` lists and watches show."""
        return principal_of(request).namespaces(right_for(kind, verb))

    def guard(self, request: web.Request, wake: Any = None) -> WatchGuard:
        """A guard for an open watch: trips within a second of the caller's token being revoked or expiring
        (a token the API server reviewed: when it expires)."""
        until = request.get(REVIEWED_UNTIL)
        if until is not None:
            return ExpiringGuard(self.guards, principal_of(request).name, wake, until)
        return self.guards.open(principal_of(request).name, wake)

    # --- audit --------------------------------------------------------------------------------------------

    def record(self, request: web.Request, principal: str, verb: str, kind: str = "", namespace: str = "",
               name: str = "", *, outcome: str, reason: str = "") -> None:
        """One audit record (never a secret value: callers pass names and outcomes only)."""
        self.record_many(request, [{"principal": principal, "verb": verb, "kind": kind, "namespace": namespace,
                                    "name": name, "outcome": outcome, "reason": reason}])

    def record_many(self, request: web.Request, records: list[dict[str, str]]) -> None:
        """Several records in one commit; each dict: principal, verb, kind, namespace, name, outcome, reason."""
        try:
            self.tokens.audit_many([{**r, "source": request.remote or ""} for r in records])
        except Exception:  # the audit log failing must be loud; a refusal or read still gets its answer
            log.exception("could not write the audit record of %s %s", request.method, request.path)
            if any(r["outcome"] in ("ok", "failed") for r in records):
                raise


AUTH_KEY: web.AppKey[Auth] = web.AppKey("berth.auth", Auth)


class ExpiringGuard(WatchGuard):
    """The guard of a watch whose token the API server reviewed: trips ("expired") when the token expires."""

    def __init__(self, guards: Guards, name: str, wake: Any, until: float) -> None:
        super().__init__(guards, name, wake)
        self._timer = asyncio.get_running_loop().call_later(max(0.0, until - time.time()), self.trip, "expired")

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        super().__exit__(*exc)


def gateway_scope(principal: Principal) -> frozenset[str] | None:
    """The namespaces whose routes a gateway principal may read: a namespace's gateway (its grants name
    them) only its own; a Berth gateway token (no grants) or an admin of every namespace: all (None)."""
    if principal.kind != "gateway" or not principal.grants or ALL in principal.grants:
        return None
    return frozenset(principal.grants)


def _rule_of(request: web.Request) -> Rule:
    resource = request.match_info.route.resource
    if resource is None:  # no such endpoint: authenticated like any other, then answered 404
        return Rule("call", "token")
    return RULES.get((request.method if request.method != "HEAD" else "GET", resource.canonical), UNLISTED)


def _target(request: web.Request, rule: Rule) -> tuple[str, str, str]:
    """(kind, namespace, name) of the request, as far as its path says (for rules and audit records)."""
    info = request.match_info
    kind = rule.kind or KIND_ALIASES.get(info.get("kind", "").lower(), "")
    return kind, info.get("ns", "") or request.query.get("namespace", ""), info.get("name", "")


def failure(err: BerthError) -> str:
    """The audit reason of a write that was allowed but failed (not found, conflict, invalid)."""
    return f"{err.code}: {err.message.splitlines()[0]}"[:300]
