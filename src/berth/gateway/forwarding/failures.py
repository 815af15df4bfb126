"""How a call to an inference server can fail below the level of its answer: one tree for both transports
(the HTTP/1.1 client of :mod:`upstream` and the HTTP/2 client of :mod:`h2client`), so the forwarding core
(:mod:`forward`) decides once what is retried.

    ConnectFailed (OSError)       the connection could not be opened: nothing was sent        -> retried
    Disconnected (ConnectionError) the server went away or broke before a whole answer arrived -> not retried
     ├── Vanished                 ... before a byte of the answer (``unprocessed``: it certainly did not act
     │                            on the request: never sent, refused, or past its GOAWAY)     -> retried*
     ├── Cut                      ... in the middle of the answer                              -> retried*
     └── StreamReset              the server reset the stream (HTTP/2 RST_STREAM)             -> not retried

    * unless the model is annotated ``berth.io/idempotent: "false"`` and the request may have been acted on.

A timeout is the standard ``TimeoutError``.
"""

from __future__ import annotations


class ConnectFailed(OSError):
    """The connection to the upstream could not be opened: the request was not sent."""


class Disconnected(ConnectionError):
    """The upstream closed the connection (or sent garbage) before a whole answer arrived."""

    unprocessed = False


class Vanished(Disconnected):
    """The connection died before a single byte of an answer: the replica went away (killed, restarted, or it
    had closed an idle connection as the request went out).  ``unprocessed``: the server certainly did not act
    on the request (never sent, refused, or past its GOAWAY)."""

    def __init__(self, message: str, *, unprocessed: bool = False) -> None:
        super().__init__(message)
        self.unprocessed = unprocessed


class Cut(Disconnected):
    """The connection ended in the middle of the answer (the server died while answering)."""


class StreamReset(Disconnected):
    """The server reset the stream (RST_STREAM) before answering it."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the server reset the stream (HTTP/2 error code {code})")
        self.code = code
