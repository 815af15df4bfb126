"""Who may call what, as the routing table says: inference tokens per namespace, operators for metrics.

The control plane sends only SHA-256 hashes of tokens (:class:`berth.wire.routes.TableAuth`).  A namespace
listed there answers only requests whose ``Authorization: Bearer <token>`` (REST) or ``authorization``
metadata (gRPC) hashes into its set; other namespaces are open.  The check runs before the model is looked
up, so a refused caller learns nothing about what the namespace holds.

A request costs one dictionary lookup for an open namespace; for a guarded one, the hash of the header
value from a bounded LRU cache (one SHA-256 the first time a value is seen) and one set lookup.  Revoking a
token is a new table without its hash: the next request is refused.
"""

from __future__ import annotations

from collections import OrderedDict

from berth.errors import Forbidden, Unauthenticated, Unavailable
from berth.resources.identity import bearer, hash_token
from berth.wire.routes import TableAuth

CACHE_SIZE = 1024  # distinct Authorization values whose hash is kept
CACHED_LENGTH = 256  # longer values (no token Berth makes is near this) are hashed each time, never kept
NEEDS_TOKEN = "this namespace requires an inference token: send Authorization: Bearer <token>"
NO_ROLE = "the token has no role in this namespace"
OPERATORS_ONLY = ("this endpoint is for operators: send Authorization: Bearer <token> with the token of an admin "
                  "of every namespace (berth up's admin token)")
NOT_OPERATOR = "the token is not an operator's: this endpoint needs an admin of every namespace"


class TokenHashes:
    """``Authorization`` value (str from REST, bytes from gRPC) -> SHA-256 of its bearer token, "" when it
    carries none; the last :data:`CACHE_SIZE` values up to :data:`CACHED_LENGTH` long are remembered (least
    recently used dropped first), so the cache stays small whatever callers send."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._cache: OrderedDict[str | bytes, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    def of(self, header: str | bytes | None) -> str:
        if not header:
            return ""
        cache = self._cache
        digest = cache.get(header)
        if digest is not None:
            cache.move_to_end(header)
            return digest
        token = bearer(header.decode("latin-1") if isinstance(header, bytes) else header)
        digest = hash_token(token) if token else ""
        if len(header) <= CACHED_LENGTH:
            cache[header] = digest
            if len(cache) > self.size:
                cache.popitem(last=False)
        return digest


class Guard:
    """One table's rules, compiled: ``namespaces`` maps each guarded namespace to the hashes allowed there;
    ``operators`` is None when the table carries no auth at all (metrics and probe open)."""

    def __init__(self, auth: TableAuth | None) -> None:
        self.namespaces: dict[str, frozenset[str]] = {}
        self.operators: frozenset[str] | None = None
        if auth is not None:
            everywhere = frozenset(auth.everywhere)
            self.namespaces = {a.namespace: everywhere | frozenset(a.tokens) for a in auth.namespaces}
            self.operators = frozenset(auth.operators)


def unauthenticated(message: str = NEEDS_TOKEN) -> Unauthenticated:
    return Unauthenticated(message, details=None)


def denied(message: str = NO_ROLE) -> Forbidden:
    return Forbidden(message, details=None)


def no_table_yet(problem: str) -> Unavailable:
    return Unavailable(f"the gateway has no routing table yet ({problem}), so it does not know its operators; "
                       "retry once it is ready (GET /v2/health/ready)")
