"""What one HTTP/2 peer may make the gateway hold or do: :class:`Limits` (every bound of :mod:`h2core`, one
object, documented in ``docs/limits.md``) and :class:`Budget`, the token bucket behind the flood limits.

A peer that goes past a bound it was told about (or one no honest client comes near) gets GOAWAY with
``ENHANCE_YOUR_CALM`` and its connection is closed; a single request over a per-request bound gets an
answer saying so and the connection goes on.  Calls on other connections are never affected.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

ENHANCE_YOUR_CALM = 0xB
KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds of one HTTP/2 connection (the gateway's gRPC port).  Defaults are what ``berth gateway``
    uses; the constructor's keywords change them (``GrpcGateway(..., limits=Limits(...))`` in code)."""

    #: SETTINGS_MAX_CONCURRENT_STREAMS advertised and enforced; streams the client reset whose handler is
    #: still running count too.  An extra stream is refused (RST_STREAM REFUSED_STREAM).
    max_concurrent_streams: int = 128
    #: SETTINGS_MAX_HEADER_LIST_SIZE advertised and enforced while decoding (RFC 7541 sizes: name + value + 32
    #: per field).  A request over it is answered RESOURCE_EXHAUSTED; nothing of it is kept or forwarded.
    max_header_list_size: int = 16 * KiB
    #: Bytes of one header block (HEADERS plus its CONTINUATIONs) before decoding; over it: ENHANCE_YOUR_CALM.
    max_header_block_bytes: int = 32 * KiB
    #: CONTINUATION frames after one HEADERS; over it: ENHANCE_YOUR_CALM.
    max_continuation_frames: int = 16
    #: SETTINGS_HEADER_TABLE_SIZE: the HPACK dynamic table the peer may make us keep (bytes); a size update
    #: above it is a COMPRESSION_ERROR.
    header_table_size: int = 4 * KiB
    #: Initial receive window of a stream (SETTINGS_INITIAL_WINDOW_SIZE).  A unary request's window is refilled
    #: as it arrives (its body is bounded by the request limit); a streaming call's only as its messages are
    #: forwarded.
    stream_window: int = 16 * MiB
    #: Bytes received on a connection and not yet consumed (handed to a handler, forwarded, or dropped):
    #: the connection's receive window is refilled only as they are.  Raised to the request limit when that is
    #: larger, so one request of the largest accepted size always fits.
    connection_window: int = 64 * MiB
    #: Flood budgets, each a token bucket (``burst`` at once, refilled at ``per_second``); past one:
    #: ENHANCE_YOUR_CALM.  Resets count RST_STREAM from the client and streams refused for concurrency
    #: (the "rapid reset" attack, CVE-2023-44487).
    resets_per_second: float = 100.0
    resets_burst: int = 200
    pings_per_second: float = 10.0
    pings_burst: int = 50
    settings_per_second: float = 10.0
    settings_burst: int = 50
    #: DATA frames without payload that do not end their stream, and other frames that carry nothing
    #: (PRIORITY, unknown types, WINDOW_UPDATE on a closed stream).
    empty_frames_per_second: float = 200.0
    empty_frames_burst: int = 400
    #: Entries of one SETTINGS frame (six are defined; a frame of thousands is an attack).
    max_settings_entries: int = 32
    #: Bytes the connection may have queued for a peer that does not read when another control frame (PING
    #: or SETTINGS acknowledgement, RST_STREAM) is due; over it: ENHANCE_YOUR_CALM, and the connection is dropped.
    max_queued_control_bytes: int = 1 * MiB
    #: Seconds from accepting a connection to the client's complete preface; then the connection is closed.
    preface_timeout: float = 10.0
    #: Seconds a connection may stay without any open stream; then GOAWAY (NO_ERROR) and close.
    idle_timeout: float = 300.0
    #: Seconds an answer may wait on a zero flow-control window, or on a socket the peer does not read,
    #: without progress; then the stream is reset (CANCEL), or the connection closed when its window is zero
    #: or its socket is stuck.
    send_timeout: float = 30.0


class Budget:
    """A token bucket: :meth:`take` is False once more than ``burst`` events came faster than ``rate``/s."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int, now: float | None = None) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic() if now is None else now

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens < 1.0 - 1e-9:  # (a whole token refilled must count as one, whatever the clock's rounding)
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True
