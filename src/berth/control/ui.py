"""The web dashboard: static assets under ``/ui`` and the one-time sign-in codes of ``berth ui``.

    GET  /ui, /ui/, /ui/{file}   the page and its assets (open: they hold no data; every figure the page
                                 shows comes from the API, with the caller's token)
    POST /api/v1/ui/codes        (any valid user token) -> {code, expiresIn}: a one-time sign-in code
    POST /api/v1/ui/session      (open) {"code": CODE} -> {token, name}: the code exchanged, once
    GET  /api/v1/ui/traffic      (read in ?namespace) a model's or experiment's traffic (control/ui_traffic.py)

``berth ui`` asks for a code with the CLI's token and opens ``/ui/#code=CODE``: the fragment never reaches
a server or a log, the page exchanges it at once, keeps the token in ``sessionStorage`` and removes the code
from the address bar and history.  A code is 256 random bits, valid :data:`CODE_TTL` seconds, used at most
once, and only while the token it stands for is still valid; at most :data:`MAX_CODES` wait at once.

Every answer of the page carries a strict Content-Security-Policy (scripts and styles from this origin only,
no inline script, no framing); the page sends the token as ``Authorization: Bearer`` and never in a URL.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import secrets
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web

from berth.control.auth import Auth, principal_of
from berth.control.tokens import TokenRegistry
from berth.control.ui_traffic import Traffic, TrafficAPI
from berth.errors import InvalidInput, PayloadTooLarge, Unauthenticated, Unavailable

CODE_TTL = 60.0
MAX_CODES = 64
MAX_SESSION_BODY = 1024
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
                    "Cross-Origin-Opener-Policy": "same-origin", "Cache-Control": "no-cache"}
BAD_CODE = ("the sign-in code is not valid (unknown, already used or older than 60 s); run `berth ui` again, "
            "or paste a token into the page")


@dataclass(frozen=True)
class _Code:
    token: str
    principal: str
    expires: float


def load_assets() -> dict[str, tuple[bytes, str]]:
    """Every file shipped in ``berth/control/ui_assets`` by name: (bytes, content type).  Only these are served."""
    out: dict[str, tuple[bytes, str]] = {}
    for entry in resources.files("berth.control").joinpath("ui_assets").iterdir():
        if entry.is_file() and not entry.name.startswith((".", "_")):
            ctype = {".js": "text/javascript", ".css": "text/css", ".html": "text/html",
                     ".svg": "image/svg+xml"}.get("." + entry.name.rsplit(".", 1)[-1])
            out[entry.name] = (entry.read_bytes(), ctype or mimetypes.guess_type(entry.name)[0] or "text/plain")
    return out


class SignInCodes:
    """One-time codes, each standing for the token that asked for it (only hashes of codes are kept)."""

    def __init__(self, tokens: TokenRegistry, *, ttl: float = CODE_TTL, limit: int = MAX_CODES) -> None:
        self.tokens = tokens
        self.ttl = ttl
        self.limit = limit
        self._codes: dict[str, _Code] = {}

    def _sweep(self, now: float) -> None:
        for key in [k for k, c in self._codes.items() if c.expires <= now]:
            del self._codes[key]

    def issue(self, token: str, principal: str, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        self._sweep(now)
        if len(self._codes) >= self.limit:
            raise Unavailable(f"{self.limit} sign-in codes are already waiting to be used; try again in a minute")
        code = secrets.token_urlsafe(32)
        self._codes[_digest(code)] = _Code(token, principal, now + self.ttl)
        return code

    def redeem(self, code: str, now: float | None = None) -> tuple[str, str] | None:
        """(token, principal name) of a valid, unused code whose token is still valid; the code is spent."""
        now = time.monotonic() if now is None else now
        self._sweep(now)
        entry = self._codes.pop(_digest(code), None)
        if entry is None or self.tokens.verify(entry.token) is None:
            return None
        return entry.token, entry.principal

    def __len__(self) -> int:
        return len(self._codes)


def _digest(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


class DashboardUI:
    def __init__(self, tokens: TokenRegistry, auth: Auth, *, gateway_url: str | None = None) -> None:
        self.auth = auth
        self.codes = SignInCodes(tokens)
        self.assets = load_assets()
        self.traffic = Traffic(tokens, gateway_url)

    def mount(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/ui", self.redirect)
        r.add_get("/ui/", self.index)
        r.add_get("/ui/{file}", self.asset)
        r.add_post("/api/v1/ui/codes", self.issue)
        r.add_post("/api/v1/ui/session", self.session)
        r.add_get("/api/v1/ui/traffic", TrafficAPI(self.traffic, self.auth).handle)
        app.on_cleanup.append(self._close)

    async def _close(self, app: web.Application) -> None:
        self.traffic.close()

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/ui/", headers=SECURITY_HEADERS)

    async def index(self, request: web.Request) -> web.Response:
        return self._file("index.html")

    async def asset(self, request: web.Request) -> web.Response:
        return self._file(request.match_info["file"])

    def _file(self, name: str) -> web.Response:
        found = self.assets.get(name)
        if found is None:
            return web.Response(status=404, text=f"no such file in the dashboard: {name[:80]}",
                                headers=SECURITY_HEADERS)
        body, ctype = found
        return web.Response(body=body, content_type=ctype, charset="utf-8", headers=SECURITY_HEADERS)

    async def issue(self, request: web.Request) -> web.Response:
        principal = principal_of(request)
        if principal.kind != "user":
            raise InvalidInput(f"token {principal.name} is a {principal.kind} token; sign-in codes are for user "
                               "tokens (an admin's or a tenant's)")
        token = request.headers["Authorization"].split(None, 1)[1].strip()
        code = self.codes.issue(token, principal.name)
        self.auth.record(request, principal.name, "create", "SignInCode", outcome="ok", reason="one-time code")
        return web.json_response({"code": code, "expiresIn": int(self.codes.ttl), "path": "/ui/"}, status=201)

    async def session(self, request: web.Request) -> web.Response:
        if (request.content_length or 0) > MAX_SESSION_BODY:
            raise PayloadTooLarge(f"a sign-in body is at most {MAX_SESSION_BODY} bytes: {{\"code\": CODE}}")
        raw = await request.read()  # bounded by the app's --max-body (and read by the listener's time limits)
        if len(raw) > MAX_SESSION_BODY:
            raise PayloadTooLarge(f"a sign-in body is at most {MAX_SESSION_BODY} bytes: {{\"code\": CODE}}")
        try:
            body: Any = json.loads(raw or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"request body is not valid JSON: {exc}") from exc
        code = body.get("code") if isinstance(body, dict) else None
        if not isinstance(code, str) or not code:
            raise InvalidInput('sign-in body must be {"code": CODE}, the code `berth ui` made')
        found = self.codes.redeem(code)
        if found is None:
            self.auth.record(request, "anonymous", "exchange", "SignInCode", outcome="unauthenticated",
                             reason="unknown, used or expired code")
            raise Unauthenticated(BAD_CODE)
        token, name = found
        self.auth.record(request, name, "exchange", "SignInCode", outcome="ok", reason="signed in to the dashboard")
        return web.json_response({"token": token, "name": name}, headers={"Cache-Control": "no-store"})
