"""Plain HTTP(S) artifact downloads (one file), bounded: size, time, redirects, and where they may go.

* Size: at most ``max_bytes`` (default 16 GiB, :data:`MAX_BYTES`); a ``Content-Length`` above it is refused
  before anything is read, a body that grows past it is cut and its partial file removed.
* Time: connecting 5 s, each read 30 s, the whole download :data:`MAX_SECONDS` (default 30 min).
* Redirects: at most 5, each to the same host (``http`` to ``https`` on it is fine, ``https`` to ``http`` is
  not); a redirect elsewhere is refused, naming the host it pointed to.
* Hosts: never a link-local or cloud-metadata address, checked on every hop after resolving the name.
* Encoding: asked for as-is (``Accept-Encoding: identity``); a compressed answer is refused (no inflation).
* Errors: the status line only; the server's error body is never copied into the model's status.
"""

from __future__ import annotations

import time
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from berth.adapters.storage import endpoint_problem
from berth.errors import StorageError

MAX_BYTES = 16 << 30
MAX_SECONDS = 1800.0
MAX_REDIRECTS = 5
CHUNK = 1 << 20


def fetch_http(uri: str, dest: Path, *, max_bytes: int = MAX_BYTES, max_seconds: float = MAX_SECONDS,
               read_timeout: float = 30.0) -> Path:
    """Download ``uri`` into the folder ``dest`` (as the last segment of its path); StorageError on failure."""
    name = PurePosixPath(unquote(urlsplit(uri).path)).name or "model"
    target = dest / name
    dest.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + max_seconds
    url = uri
    details = {"uri": uri}
    try:
        with httpx.Client(follow_redirects=False, timeout=httpx.Timeout(read_timeout, connect=5.0)) as client:
            for _hop in range(MAX_REDIRECTS + 1):
                refused = endpoint_problem(url)
                if refused:
                    raise StorageError(f"cannot fetch {uri}: {refused}", details=details)
                with client.stream("GET", url, headers={"Accept-Encoding": "identity"}) as r:
                    if r.is_redirect:
                        url = _next_hop(uri, url, r.headers.get("location", ""))
                        continue
                    if r.status_code != 200:
                        raise StorageError(f"cannot fetch {uri}: the server answered HTTP {r.status_code} "
                                           f"{r.reason_phrase}".rstrip(), details={**details, "status": r.status_code})
                    _save(r, uri, target, max_bytes, deadline, max_seconds)
                    return dest
            raise StorageError(f"cannot fetch {uri}: more than {MAX_REDIRECTS} redirects", details=details)
    except httpx.TimeoutException as exc:
        target.unlink(missing_ok=True)
        raise StorageError(f"cannot fetch {uri}: {urlsplit(url).netloc} did not answer within {read_timeout:g}s "
                           f"({type(exc).__name__})", details=details) from exc
    except httpx.HTTPError as exc:
        target.unlink(missing_ok=True)
        raise StorageError(f"cannot fetch {uri}: {urlsplit(url).netloc} could not be reached: "
                           f"{exc or type(exc).__name__}", details=details) from exc


def _next_hop(uri: str, current: str, location: str) -> str:
    nxt = urljoin(current, location)
    a, b = urlsplit(current), urlsplit(nxt)
    if not location or b.scheme not in ("http", "https"):
        raise StorageError(f"cannot fetch {uri}: a redirect without a usable http(s) Location", details={"uri": uri})
    if (b.hostname or "").lower() != (a.hostname or "").lower():
        raise StorageError(f"cannot fetch {uri}: {a.hostname} redirected to another host ({b.hostname}); "
                           "downloads follow redirects only on the same host: put the artifact's final URL in "
                           "storageUri", details={"uri": uri, "redirect": b.hostname})
    if a.scheme == "https" and b.scheme == "http":
        raise StorageError(f"cannot fetch {uri}: {a.hostname} redirected from https to http; refused",
                           details={"uri": uri})
    return nxt


def _save(r: httpx.Response, uri: str, target: Path, max_bytes: int, deadline: float, max_seconds: float) -> None:
    length = r.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise StorageError(f"cannot fetch {uri}: it is {int(length)} bytes, above the limit of {max_bytes} bytes "
                           "for one HTTP download", details={"uri": uri, "limit": max_bytes})
    encoding = r.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):  # asked for identity: a compressed answer could inflate without bound
        raise StorageError(f"cannot fetch {uri}: the server sent it {encoding}-encoded although asked for the "
                           "file as it is (Accept-Encoding: identity)", details={"uri": uri})
    got = 0
    try:
        with open(target, "wb") as out:
            for chunk in r.iter_raw(CHUNK):
                got += len(chunk)
                if got > max_bytes:
                    raise StorageError(f"cannot fetch {uri}: more than {max_bytes} bytes, the limit for one "
                                       "HTTP download; the download was stopped",
                                       details={"uri": uri, "limit": max_bytes})
                if time.monotonic() > deadline:
                    raise StorageError(f"cannot fetch {uri}: not complete after {max_seconds:g}s (the limit for "
                                       f"one HTTP download; {got} bytes read)", details={"uri": uri})
                out.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
