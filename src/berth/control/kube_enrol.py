"""Agent enrolment in Kubernetes mode: TokenReview (audience-bound), then the pod, then the replica.

:meth:`TokenReviewer.principal` turns the bearer token an agent presents into the agent principal of
exactly one (namespace, server, replica), or raises :class:`~berth.errors.Unauthenticated` saying why
(:mod:`berth.kube.enrolment`).  Accepted reviews are cached for a short while, keyed by the token's
SHA-256 (never the token), so a reconnecting agent does not cost two API calls each time.

An enrolled connection stays valid until its token expires (the token's own ``exp`` claim, read after the
API server accepted it; else ``session_s`` after the review): the hub then closes it, and the agent
reconnects with the token the kubelet has rotated meanwhile (it re-reads the file on every connection).

A namespace's gateway is reviewed the same way (:meth:`TokenReviewer.gateway`): the projected token of a
pod of the ``berth-gateway`` Deployment, ServiceAccount ``berth-gateway``, makes it the gateway of exactly
that namespace (a ``gateway`` principal whose only grant is that namespace), valid until the token expires.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from berth.errors import BerthError, Unauthenticated
from berth.kube.enrolment import agent_identity, claimed_pod, gateway_namespace, review_request
from berth.kube.workloads import GATEWAY_ACCOUNT
from berth.kubeapi import Api, as_error
from berth.resources.identity import Principal

REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"


class TokenReviewer:
    def __init__(self, api: Api, *, audience: str = "berth", cache_s: float = 30.0, max_cached: int = 10_000,
                 session_s: float = 3600.0) -> None:
        self.api, self.audience, self.cache_s, self.max_cached = api, audience, cache_s, max_cached
        self.session_s = session_s
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._until: dict[str, tuple[float, Principal]] = {}  # name -> (wall-clock time its token expires, it)

    def still_valid(self, principal: Principal) -> bool:
        """Whether a connection enrolled as ``principal`` by this reviewer may go on (its token unexpired)."""
        until = self._until.get(principal.name)
        return until is not None and until[1] == principal and until[0] > time.time()

    async def principal(self, token: str) -> Principal:
        """The agent principal of exactly one replica, or Unauthenticated saying which check failed."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        namespace, pod_name, pod_uid, pod = await self._review(token, "review an agent's token",
                                                               "agent enrolment could not be checked")
        identity = agent_identity(namespace, pod_name, pod_uid, pod)
        principal = Principal(f"system:serviceaccount:{namespace}:{pod_name}", kind="agent", agent=identity)
        self._remember(digest, now, principal)
        wall = time.time()
        if len(self._until) >= self.max_cached:
            self._until = {k: v for k, v in self._until.items() if v[0] > wall}
        self._until[principal.name] = (self.expires(token), principal)
        return principal

    async def gateway(self, token: str) -> tuple[Principal, float]:
        """The gateway principal of exactly one namespace and the wall-clock time its token expires, or
        Unauthenticated saying which check failed."""
        digest = "gateway:" + hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is None or hit[0] <= now:
            namespace, pod_name, pod_uid, pod = await self._review(
                token, "review a gateway's token", "gateway authentication could not be checked",
                account=GATEWAY_ACCOUNT, who="gateway authentication")
            namespace = gateway_namespace(namespace, pod_name, pod_uid, pod)
            principal = Principal(f"system:serviceaccount:{namespace}:{GATEWAY_ACCOUNT}", kind="gateway",
                                  grants={namespace: "inference"})
            self._remember(digest, now, principal)
        else:
            principal = hit[1]
        return principal, self.expires(token)

    def expires(self, token: str) -> float:
        """When a token the API server accepted stops being honoured: its ``exp``, at most ``session_s`` on."""
        wall = time.time()
        return min(_expires(token) or wall + self.session_s, wall + self.session_s)

    async def _review(self, token: str, what: str, failed: str, *, account: str | None = None,
                      who: str = "agent enrolment") -> tuple[str, str, str, dict[str, Any] | None]:
        """TokenReview of ``token`` for the audience, then the pod it is bound to (None: no such pod)."""
        try:
            review = await self.api.call("POST", REVIEWS, review_request(token, self.audience))
            if account is None:
                namespace, pod_name, pod_uid = claimed_pod(review, self.audience)
            else:
                namespace, pod_name, pod_uid = claimed_pod(review, self.audience, account, who)
            try:
                pod = await self.api.call("GET", f"/api/v1/namespaces/{namespace}/pods/{pod_name}")
            except ApiException as exc:
                if exc.status != 404:
                    raise
                pod = None
            return namespace, pod_name, pod_uid, pod
        except BerthError:
            raise
        except Exception as exc:  # noqa: BLE001 - the API's failure, named once
            error = as_error(exc, what, self.api.host)
            raise Unauthenticated(f"{failed}: {error.message}") from exc

    def _remember(self, digest: str, now: float, principal: Principal) -> None:
        if len(self._cache) >= self.max_cached:
            self._cache.clear()
        self._cache[digest] = (now + self.cache_s, principal)


def _expires(token: str) -> float | None:
    """The ``exp`` claim of a JWT the API server has just accepted (read, not verified: it already was)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return float(claims["exp"]) if isinstance(claims, dict) and "exp" in claims else None
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        return None
