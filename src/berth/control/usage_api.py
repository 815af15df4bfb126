"""``POST /api/v1/gateway/usage``: gateways report the traffic they carried (:mod:`berth.wire.usage`).

Who may post: a gateway token, or an admin of every namespace (as for the routing table: the auth
middleware checks it, and in Kubernetes mode has the API server review a gateway pod's token); anyone else
is refused (403) and the refusal audited.  A namespace's gateway (a principal whose grants name its
namespaces) reports only for those.  A report is bounded before it is kept: its body (at most
``MAX_REPORT_BYTES``; the listener stops reading a longer one at the app's body limit), its shape
and counts (the message's field bounds: models, replicas per model, numbers), every namespace and model a
valid name, and only namespaces the caller speaks for and this control plane serves (a namespaced install
refuses a report naming another namespace, 403, audited).  Invalid reports change nothing and are answered
400 naming the field.

Accepted reports are telemetry, not writes: a gateway posts one every two seconds, which would bury the
audit log's writes and refusals under ~43,000 records a day per gateway while changing no resource.  They
are counted instead (``berth_usage_reports_total{outcome}`` on the control plane's ``/metrics``), and the
last one per gateway is what :class:`~berth.control.usage.UsageBook` keeps.
"""

from __future__ import annotations

import logging
from collections import Counter

from aiohttp import web
from pydantic import ValidationError

from berth.control.auth import Auth, gateway_scope
from berth.control.usage import UsageBook
from berth.errors import BerthError, Forbidden, InvalidInput, InvalidName, PayloadTooLarge
from berth.resources.identity import Principal
from berth.resources.names import check_name
from berth.wire.usage import MAX_REPORT_BYTES, USAGE_PATH, UsageReport

log = logging.getLogger("berth.control.usage")
KIND = "UsageReport"


def speaks_for(principal: Principal) -> frozenset[str] | None:
    """The namespaces ``principal`` reports for (None: every one): a Berth gateway token or an admin of every
    namespace, all; a namespace's gateway, its own."""
    return gateway_scope(principal)


class UsageAPI:
    def __init__(self, book: UsageBook, auth: Auth, *, namespaces: frozenset[str] | None = None,
                 max_bytes: int = MAX_REPORT_BYTES) -> None:
        self.book = book
        self.auth = auth
        self.namespaces = namespaces  # a namespaced install serves only these (None: every namespace)
        self.max_bytes = max_bytes
        self.outcomes: Counter[str] = Counter()  # accepted, refused, invalid

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(USAGE_PATH, self.post)

    async def post(self, request: web.Request) -> web.Response:
        principal = self.auth.require_gateway(request, action="report", kind=KIND)  # the middleware checked it
        try:
            report = self._parse(await self._body(request))
        except BerthError:
            self.outcomes["invalid"] += 1
            raise
        named = {m.namespace for m in report.models}
        for scope, whose in ((speaks_for(principal), f"gateway {principal.name}"),
                             (self.namespaces, "this control plane")):
            foreign = sorted(named - scope) if scope is not None else []
            if foreign:
                self._refuse(request, principal, foreign[0], f"names a namespace outside {whose}'s")
                raise Forbidden(f"forbidden: the usage report names namespace {foreign[0]}, outside {whose}'s "
                                f"({', '.join(sorted(scope or ()))}); report only the namespaces of the routing "
                                "table you follow", details={"namespace": foreign[0], "right": "gateway"})
        key = f"{principal.name}/{report.gateway}"  # one token cannot overwrite another token's gateways
        self.book.record(key, report)
        self.outcomes["accepted"] += 1
        return web.json_response({"accepted": len(report.models)})

    def _refuse(self, request: web.Request, principal: Principal, namespace: str, reason: str) -> None:
        self.outcomes["refused"] += 1
        self.auth.record(request, principal.name, "report", KIND, namespace, "", outcome="forbidden", reason=reason)

    async def _body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.max_bytes:
            raise self._too_large(request.content_length)
        raw = await request.read()  # the listener read it already, within the app's body limit and deadline
        if len(raw) > self.max_bytes:
            raise self._too_large(len(raw))
        return raw

    def _too_large(self, size: int) -> PayloadTooLarge:
        return PayloadTooLarge(f"usage report of {size} bytes or more is over the limit of {self.max_bytes} bytes; "
                               "report fewer models per window (a shorter --usage-interval)",
                               details={"limit_bytes": self.max_bytes})

    @staticmethod
    def _parse(raw: bytes) -> UsageReport:
        try:
            report = UsageReport.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise InvalidInput(f"usage report: {where}: {first['msg']} ({exc.error_count()} problem(s)); send "
                               "the report berth.wire.usage.UsageReport describes",
                               details={"field": where}) from None
        for i, m in enumerate(report.models):
            try:
                check_name(m.namespace, what="namespace", label=True)
                check_name(m.name, what="model name")
            except InvalidName as exc:
                raise InvalidInput(f"usage report: models.{i}: {exc.message}", details={"field": f"models.{i}"}) \
                    from None
        return report
