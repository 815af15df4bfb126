"""An agent's view of the control plane: the report it sends in ``hello`` and, when it changed, in ``heartbeat``.

What the agent itself saw when it reached for the control plane: the control URL's host resolved (to which
addresses, how long it took, or the resolver's error), its last connect attempts (ok, refused, timeout, TLS,
DNS, rejected by the control plane, other), since when it is connected and through which address, and the
round trip of its last WebSocket ping.  The control plane keeps it per replica (``replicaStatus[i].controlPlane``)
and ``berth doctor`` reads it as the row "agents → control plane (as the agents see it)".

Bounded: at most ``MAX_ATTEMPTS`` attempts and ``MAX_ADDRESSES`` addresses, every string short.  An agent that
sends more is refused like any invalid frame (docs/doctor.md).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_ATTEMPTS = 10
MAX_ADDRESSES = 8
MAX_TEXT = 240

Outcome = Literal["ok", "refused", "timeout", "tls", "dns", "rejected", "error"]


class _View(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Resolution(_View):
    """The control URL's host looked up once, as the agent's resolver answered."""

    host: str = Field(max_length=MAX_TEXT)
    addresses: list[str] = Field(default_factory=list, max_length=MAX_ADDRESSES)
    seconds: float = Field(default=0.0, ge=0)
    error: str | None = Field(default=None, max_length=MAX_TEXT)  # "NXDOMAIN (name not known)", "timeout after 5s"
    at: float = 0.0  # unix time of the lookup


class Attempt(_View):
    """One connect attempt: when, to which address, and how it ended."""

    at: float
    outcome: Outcome
    address: str = Field(default="", max_length=MAX_TEXT)  # the address tried ("10.0.0.5:9004", or host:port)
    error: str = Field(default="", max_length=MAX_TEXT)


class ControlView(_View):
    url: str = Field(default="", max_length=MAX_TEXT)
    resolution: Resolution | None = None  # the latest lookup of the control URL's host
    attempts: list[Attempt] = Field(default_factory=list, max_length=MAX_ATTEMPTS)  # oldest first
    failures: int = Field(default=0, ge=0)  # failed attempts in a row before the current connection (or until now)
    connected_since: float | None = None  # unix time of the current connection's welcome
    connected_to: str = Field(default="", max_length=MAX_TEXT)  # the address the current connection reached
    rtt: float | None = Field(default=None, ge=0)  # seconds: the last WebSocket ping's round trip

    def essentials(self) -> tuple[object, ...]:
        """Everything but the round trip: what makes a report worth sending (and a status worth rewriting)."""
        return (self.url, self.resolution, tuple(self.attempts), self.failures, self.connected_since,
                self.connected_to)
