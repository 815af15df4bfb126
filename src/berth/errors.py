"""One error tree for all of Berth.

Every error carries a stable ``code`` (never changes once released), a human ``message`` that says
what was wrong and where, optional structured ``details`` and the HTTP status the control API and
gateway answer with.  This module imports nothing of Berth and nothing of any transport.
"""

from __future__ import annotations

from typing import Any


class BerthError(Exception):
    """Base of every error Berth raises on purpose."""

    code = "Internal"
    http_status = 500

    def __init__(self, message: str, *, details: Any = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}

    def __str__(self) -> str:
        return self.message


class InvalidInput(BerthError):
    """The request or manifest is malformed (bad YAML/JSON, wrong type, unknown kind, bad name)."""

    code = "InvalidInput"
    http_status = 400


class InvalidManifest(InvalidInput):
    """One or more manifest documents failed validation; ``details`` lists every problem."""

    code = "InvalidManifest"
    http_status = 422

    def __init__(self, problems: list[str], *, message: str | None = None) -> None:
        self.problems = list(problems)
        head = message or f"{len(problems)} problem(s) in manifests; nothing was applied"
        super().__init__(head + (":\n  " + "\n  ".join(problems) if problems else ""),
                         details={"problems": self.problems})


class InvalidName(InvalidInput):
    code = "InvalidName"


class UnknownKind(InvalidInput):
    code = "UnknownKind"


class PayloadTooLarge(InvalidInput):
    code = "PayloadTooLarge"
    http_status = 413


class QuotaExceeded(InvalidManifest):
    """An apply would take a namespace over its quota (models, servers, replicas); nothing was applied."""

    code = "QuotaExceeded"


class RequestTimeout(InvalidInput):
    """A client did not send its request head or body within the listener's time (slowloris)."""

    code = "RequestTimeout"
    http_status = 408


class NotFound(BerthError):
    code = "NotFound"
    http_status = 404


class AlreadyExists(BerthError):
    code = "AlreadyExists"
    http_status = 409


class Unauthenticated(BerthError):
    """No valid bearer token: missing, unknown, expired or revoked.  Says nothing about what exists."""

    code = "Unauthenticated"
    http_status = 401


class Forbidden(BerthError):
    """A valid token that lacks the right asked for (which right, in which namespace the caller named)."""

    code = "Forbidden"
    http_status = 403


class Conflict(BerthError):
    """A write raced another: the resourceVersion the caller had is stale."""

    code = "Conflict"
    http_status = 409


class Expired(BerthError):
    """A watch asked for a revision older than what the store still keeps: list and watch again."""

    code = "Expired"
    http_status = 410


class Unavailable(BerthError):
    """A dependency (control plane, agent, inference server, storage) could not be reached."""

    code = "Unavailable"
    http_status = 503


class ModelNotReady(Unavailable):
    code = "ModelNotReady"


class ExperimentNotReady(Unavailable):
    code = "ExperimentNotReady"


class Timeout(BerthError):
    code = "Timeout"
    http_status = 504


class StorageError(BerthError):
    """An artifact could not be fetched: missing secret, bad credentials, missing object."""

    code = "StorageError"
    http_status = 502


class LoadError(BerthError):
    """The inference server refused or failed to load a model."""

    code = "LoadError"
    http_status = 502


class ConfigError(BerthError):
    """A local setting is wrong: port in use, program missing, bad flag."""

    code = "ConfigError"
    http_status = 400


_BY_CODE: dict[str, type[BerthError]] = {}


def _register(cls: type[BerthError]) -> None:
    _BY_CODE[cls.code] = cls
    for sub in cls.__subclasses__():
        _register(sub)


_register(BerthError)


def from_dict(data: dict[str, Any], *, status: int | None = None) -> BerthError:
    """Rebuild an error answered by the API (used by the client)."""
    code = str(data.get("code") or "Internal")
    message = str(data.get("message") or "unknown error")
    cls = _BY_CODE.get(code, BerthError)
    if issubclass(cls, InvalidManifest):
        problems = (data.get("details") or {}).get("problems") or [message]
        err: BerthError = cls(list(problems), message=message.split(":\n")[0])
    else:
        err = cls.__new__(cls)
        BerthError.__init__(err, message, details=data.get("details"), code=code)
    if status is not None and cls is BerthError:
        err.http_status = status
    return err
