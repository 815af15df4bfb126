"""Who is calling and what they may do: principals, roles per namespace, token hashing.

Pure: no I/O.  A token is a random secret shown once; only its SHA-256 is ever stored or sent between
Berth's processes.  A principal holds grants ``namespace (or "*") -> role``:

========== ==========================================================================
role       may
========== ==========================================================================
viewer     read: get, list, watch, describe
editor     read + write: apply, delete
admin      read + write + admin: tokens, secrets, audit
inference  infer only (the data plane)
========== ==========================================================================

Any role in a namespace may call that namespace's models.  Two service kinds exist besides users:
``agent`` (one server replica, and nothing else) and ``gateway`` (reads the routing table).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Role = Literal["viewer", "editor", "admin", "inference"]
Verb = Literal["read", "write", "admin", "infer"]
PrincipalKind = Literal["user", "agent", "gateway"]

ROLES: tuple[Role, ...] = ("viewer", "editor", "admin", "inference")
ROLE_VERBS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"read", "infer"}),
    "editor": frozenset({"read", "write", "infer"}),
    "admin": frozenset({"read", "write", "admin", "infer"}),
    "inference": frozenset({"infer"}),
}
ALL = "*"
TOKEN_PREFIX = "berth_"
_TOKEN = re.compile(r"^berth_[A-Za-z0-9_-]{20,100}$")
NEEDED_ROLE: dict[str, str] = {"read": "viewer", "write": "editor", "admin": "admin", "infer": "inference"}
SECRET_KINDS = frozenset({"Secret"})  # reading or changing these is the "secrets" right: admin
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def new_token() -> str:
    """A fresh bearer token (256 random bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """What is stored and compared: SHA-256 of the token, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def right_for(kind: str, verb: Verb) -> Verb:
    """The right an action on ``kind`` needs: Secrets are read and written with ``admin``."""
    return "admin" if kind in SECRET_KINDS and verb in ("read", "write") else verb


def parse_duration(text: str | float) -> float:
    """Seconds in ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a bare number of seconds (ValueError if not)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        m = _DURATION.match(str(text))
        if m is None:
            raise ValueError(f"{text!r}: expected a duration such as 30d, 12h, 90m or 45s")
        seconds = float(m.group(1)) * _UNIT[m.group(2) or "s"]
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be positive")
    return seconds


def looks_like_token(text: str) -> bool:
    return bool(_TOKEN.match(text))


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header value, or None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


@dataclass(frozen=True)
class AgentIdentity:
    namespace: str
    server: str
    replica: int

    def __str__(self) -> str:
        return f"{self.namespace}/{self.server}/{self.replica}"

    @staticmethod
    def parse(text: str) -> AgentIdentity:
        """``NS/SERVER/REPLICA`` (raises ValueError naming the expected form)."""
        parts = text.split("/")
        if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2].isdigit():
            raise ValueError(f"{text!r}: expected NAMESPACE/SERVER/REPLICA, e.g. financial-ml/mlserver/0")
        return AgentIdentity(parts[0], parts[1], int(parts[2]))


@dataclass(frozen=True)
class Principal:
    name: str
    kind: PrincipalKind = "user"
    grants: Mapping[str, str] = field(default_factory=dict)  # namespace or "*" -> role
    agent: AgentIdentity | None = None

    def role_in(self, namespace: str) -> str | None:
        if self.kind != "user":
            return None
        return self.grants.get(namespace) or self.grants.get(ALL)

    def can(self, verb: Verb, namespace: str) -> bool:
        """May this principal ``verb`` in ``namespace``?  ``namespace`` "*" asks for every namespace."""
        everywhere = self.grants.get(ALL) if self.kind == "user" else None
        role = everywhere if namespace == ALL else self.role_in(namespace)
        return role is not None and verb in ROLE_VERBS.get(role, frozenset())

    def namespaces(self, verb: Verb) -> frozenset[str] | None:
        """The namespaces where ``verb`` is allowed; None means every namespace."""
        if self.can(verb, ALL):
            return None
        return frozenset(ns for ns, role in self.grants.items()
                         if ns != ALL and verb in ROLE_VERBS.get(role, frozenset()))

    @property
    def is_admin_everywhere(self) -> bool:
        return self.can("admin", ALL)


def check_grants(grants: Mapping[str, str]) -> dict[str, str]:
    """Validated grants (raises ValueError naming the bad role)."""
    out: dict[str, str] = {}
    for ns, role in grants.items():
        if role not in ROLES:
            raise ValueError(f"role {role!r} for namespace {ns}: expected one of {', '.join(ROLES)}")
        out[str(ns)] = role
    return out
