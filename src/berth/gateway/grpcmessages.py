"""gRPC's conventions over HTTP/2, as the gateway needs them: status codes and how a gateway error becomes
one, ``grpc-timeout``, and the 5-byte framing of a message (with gzip/deflate for compressed ones)."""

from __future__ import annotations

import gzip
import zlib
from urllib.parse import quote, unquote

from berth.errors import (
    BerthError,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Timeout,
    Unauthenticated,
    Unavailable,
)
from berth.gateway.headerblock import Field

SERVICE = "inference.GRPCInferenceService"
STATUS_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
                "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
OK, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, RESOURCE_EXHAUSTED = 0, 3, 4, 5, 8
PERMISSION_DENIED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 7, 12, 13, 14, 16
STATUS_TEXT = tuple(str(i).encode() for i in range(len(STATUS_NAMES)))
_TIMEOUT_UNITS = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9}
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25)


def status_of(err: BerthError) -> int:
    """The gRPC status code for a gateway error (the REST answer's HTTP status, in gRPC terms)."""
    if isinstance(err, NotFound):
        return NOT_FOUND
    if isinstance(err, Unauthenticated):
        return UNAUTHENTICATED
    if isinstance(err, Forbidden):
        return PERMISSION_DENIED
    if isinstance(err, PayloadTooLarge):
        return RESOURCE_EXHAUSTED
    if isinstance(err, InvalidInput):
        return INVALID_ARGUMENT
    if isinstance(err, Unavailable):
        return UNAVAILABLE
    if isinstance(err, Timeout):
        return DEADLINE_EXCEEDED
    return INTERNAL


def grpc_timeout(value: bytes) -> float | None:
    """Seconds from a ``grpc-timeout`` header (``"100m"``, ``"29999982u"``), or None when malformed."""
    if len(value) < 2 or not value[:-1].isdigit():
        return None
    unit = _TIMEOUT_UNITS.get(value[-1])
    return None if unit is None else int(value[:-1]) * unit


def message(body: bytes, encoding: bytes | None) -> bytes:
    """The one message of a unary call's body (the 5-byte gRPC prefix removed, decompressed if it was)."""
    if len(body) < 5:
        raise InvalidInput("the gRPC request holds no message (fewer than 5 bytes)")
    length = int.from_bytes(body[1:5], "big")
    if length != len(body) - 5:
        raise InvalidInput(f"the gRPC request's message prefix says {length} bytes but {len(body) - 5} came "
                           "(a unary call carries exactly one message)")
    data = body[5:]
    if not body[0]:
        return data
    if encoding in (b"gzip", b"deflate"):
        try:
            return gzip.decompress(data) if encoding == b"gzip" else zlib.decompress(data)
        except (OSError, zlib.error, EOFError) as exc:
            raise InvalidInput(f"the gRPC request's message does not decompress with "
                               f"{(encoding or b'').decode()}: {exc}") from exc
    raise InvalidInput(f"the gRPC request is compressed with {(encoding or b'no grpc-encoding').decode()!r}; "
                       "the gateway takes gzip and deflate")


def framed(data: bytes) -> bytes:
    """``data`` as one uncompressed gRPC message (prefix and bytes)."""
    return b"\x00" + len(data).to_bytes(4, "big") + data


def grpc_status(fields: list[Field] | None) -> int:
    """The ``grpc-status`` in ``fields`` (UNKNOWN when absent or not a number)."""
    for name, value in fields or ():
        if name == b"grpc-status":
            return int(value) if value.isdigit() else 2
    return 2


def status_name(code: int) -> str:
    """``UNAVAILABLE`` for 14; the number itself for a code gRPC does not define."""
    return STATUS_NAMES[code] if 0 <= code < len(STATUS_NAMES) else str(code)


def error_fields(err: BerthError) -> tuple[int, list[Field]]:
    """The gRPC status of a gateway error and the trailer fields saying it: ``grpc-status``, ``grpc-message``
    (percent-encoded, as gRPC asks) and ``berth-error-code``."""
    code = status_of(err)
    return code, [(b"grpc-status", STATUS_TEXT[code]),
                  (b"grpc-message", quote(err.message, safe=_MESSAGE_SAFE).encode()),
                  (b"berth-error-code", err.code.encode())]


def grpc_message(fields: list[Field] | None) -> str:
    """The ``grpc-message`` in ``fields``, percent-decoded ("" when absent)."""
    return next((unquote(v.decode("latin-1")) for k, v in fields or () if k == b"grpc-message"), "")
