"""Time limits of the gateway's REST (HTTP/1.1, aiohttp) listener: a client that sends its request slowly
(slowloris) or opens connections and says nothing is dropped instead of held.  Documented in
``docs/limits.md``; ``run_gateway(..., rest_limits=RestLimits(...))`` changes them in code."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RestLimits:
    #: Seconds from accepting a connection, or from the end of the previous answer on it, to a complete
    #: request head (request line and headers); then the connection is closed.  The same clock closes a
    #: kept-alive connection that stays idle that long (longer than the keep-alive of common clients: httpx 5 s,
    #: aiohttp 15 s, so they stop reusing a connection before the gateway closes it).
    header_timeout: float = 20.0
    #: Seconds to receive a request's whole body once its head arrived; then 408 ``Timeout`` and the connection
    #: is closed.
    body_timeout: float = 60.0
