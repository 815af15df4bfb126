"""What the HTTP/2 core (:mod:`berth.gateway.http2.core`) reports: one event per thing the peer's bytes, or the
clock, made happen on a connection.  Plain data, no behaviour."""

from __future__ import annotations

from dataclasses import dataclass, field

from berth.gateway.http2.frames import Stream
from berth.gateway.http2.headerblock import Field


class Event:
    """Something the peer's bytes (or the clock) made happen on a connection."""

    __slots__ = ()


@dataclass(slots=True)
class RequestReceived(Event):
    """Server: a request to hand to the handler: whole (unary; ``stream.cut_short`` when it outgrew the body
    limit, its rest dropped), or at its HEADERS (``stream.streaming``: its data follows as events)."""

    stream: Stream


@dataclass(slots=True)
class ResponseReceived(Event):
    """Client: the first header block of an answer (``stream.headers``)."""

    stream: Stream
    headers: list[Field]


@dataclass(slots=True)
class DataReceived(Event):
    """A streaming call's data (unary calls' data is gathered in ``stream.chunks``)."""

    stream: Stream
    data: bytes


@dataclass(slots=True)
class StreamEnded(Event):
    """The peer ended its side of a stream (client: the answer is whole); ``trailers`` if it sent any."""

    stream: Stream
    trailers: list[Field] | None


@dataclass(slots=True)
class StreamReset(Event):
    """A stream ended abnormally: reset by the peer (``remote``), or by this end (a stalled answer, a request
    whose metadata was over the limit); its handler, if any, should stop."""

    stream: Stream
    code: int
    remote: bool = True


@dataclass(slots=True)
class WindowUpdated(Event):
    """The peer gave more send window: to stream ``sid``, or (0) to the connection."""

    sid: int
    delta: int


@dataclass(slots=True)
class PingReceived(Event):
    """A PING (already acknowledged)."""

    data: bytes


@dataclass(slots=True)
class SettingsChanged(Event):
    """The peer's SETTINGS (already acknowledged and applied)."""

    changed: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class ConnectionTerminated(Event):
    """The connection ends: this end sent GOAWAY ``code`` (``remote`` False: the peer broke a rule or a clock
    ran out), or the peer sent one (``remote``: it handles no stream above ``last_sid``).  ``close``: the
    transport should be closed now (``abort``: without flushing, nothing useful being left to say)."""

    code: int
    last_sid: int
    reason: str = ""
    remote: bool = False
    close: bool = True
    abort: bool = False
