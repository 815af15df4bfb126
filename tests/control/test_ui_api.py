"""The dashboard's endpoints attacked as a hostile client would: no token, a token of another namespace, a
replayed or forged sign-in code, oversized and malformed bodies, paths outside the shipped assets; and the
headers that keep the page's script its own (CSP)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from berth.client.http import BerthClient
from berth.control.tokens import TokenRegistry
from berth.control.ui import CSP, MAX_CODES, SignInCodes
from tests.support.servers import ControlPlane

ADMIN = {"Authorization": f"Bearer {os.environ['BERTH_TOKEN']}"}


def _code(cp: ControlPlane, headers: dict[str, str] = ADMIN) -> httpx.Response:
    return httpx.post(f"{cp.url}/api/v1/ui/codes", headers=headers, timeout=10)


def _redeem(cp: ControlPlane, body: bytes | str) -> httpx.Response:
    return httpx.post(f"{cp.url}/api/v1/ui/session", content=body, timeout=10,
                      headers={"Content-Type": "application/json"})


def test_page_and_assets_are_served_with_a_strict_csp(control: ControlPlane) -> None:
    r = httpx.get(f"{control.url}/ui", timeout=10)
    assert r.status_code == 302 and r.headers["Location"] == "/ui/"
    page = httpx.get(f"{control.url}/ui/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Content-Security-Policy"] == CSP and "'unsafe-inline'" not in CSP
    assert "frame-ancestors 'none'" in CSP and page.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script>" not in page.text and 'type="module" src="/ui/app.js"' in page.text  # no inline script
    js = httpx.get(f"{control.url}/ui/app.js", timeout=10)
    assert js.status_code == 200 and js.headers["Content-Type"].startswith("text/javascript")
    assert "innerHTML" not in js.text


@pytest.mark.parametrize("path", ["/ui/../api/v1/whoami", "/ui/%2e%2e%2fserver.py", "/ui/ui.py", "/ui/.hidden",
                                  "/ui/%2Fetc%2Fpasswd", "/ui/" + "a" * 5000])
def test_only_shipped_assets_are_served(control: ControlPlane, path: str) -> None:
    r = httpx.get(f"{control.url}{path}", timeout=10)
    assert r.status_code in (401, 404, 414, 431), (path, r.status_code)
    assert "root:" not in r.text and "import" not in r.text


def test_codes_need_a_valid_user_token(control: ControlPlane) -> None:
    assert _code(control, {}).status_code == 401
    assert _code(control, {"Authorization": "Bearer nope"}).status_code == 401
    with BerthClient(control.url) as admin:
        gateway = admin.create_token("gw-ui", kind="gateway")["token"]
    r = _code(control, {"Authorization": f"Bearer {gateway}"})
    assert r.status_code == 400 and "user tokens" in r.json()["message"]


def test_a_code_signs_in_once_and_is_audited(control: ControlPlane) -> None:
    with BerthClient(control.url) as admin:
        viewer = admin.create_token("ui-viewer", grants={"team-b": "viewer"})["token"]
    r = _code(control, {"Authorization": f"Bearer {viewer}"})
    assert r.status_code == 201, r.text
    code = r.json()["code"]
    assert len(code) >= 40 and viewer not in r.text
    first = _redeem(control, f'{{"code": "{code}"}}')
    assert first.status_code == 200 and first.json() == {"token": viewer, "name": "ui-viewer"}
    assert first.headers["Cache-Control"] == "no-store"
    replay = _redeem(control, f'{{"code": "{code}"}}')
    assert replay.status_code == 401 and replay.json()["code"] == "Unauthenticated"
    assert "berth ui" in replay.json()["message"] and code not in replay.text
    with BerthClient(control.url) as admin:
        records = [(a["principal"], a["verb"], a["outcome"]) for a in admin.audit() if a["kind"] == "SignInCode"]
    assert ("ui-viewer", "create", "ok") in records and ("ui-viewer", "exchange", "ok") in records
    assert ("anonymous", "exchange", "unauthenticated") in records
    # the token it stands for is the viewer's: nothing of another namespace through it
    w = httpx.get(f"{control.url}/api/v1/watch", params={"namespace": "default"}, timeout=10,
                  headers={"Authorization": f"Bearer {viewer}"})
    assert w.status_code == 403


def test_a_revoked_token_code_is_worthless(control: ControlPlane) -> None:
    with BerthClient(control.url) as admin:
        t = admin.create_token("ui-short", grants={"team-c": "viewer"})["token"]
        code = _code(control, {"Authorization": f"Bearer {t}"}).json()["code"]
        admin.revoke_token("ui-short")
    assert _redeem(control, f'{{"code": "{code}"}}').status_code == 401


@pytest.mark.parametrize("body,status", [
    (b"", 400), (b"not json", 400), (b"[]", 400), (b'{"code": 7}', 400), (b'{"code": ""}', 400),
    (b'{"code": "forged-code-forged-code-forged-code-1234"}', 401),
    (b'{"code": "' + b"x" * 5000 + b'"}', 413), (b"\xff\xfe", 400)])
def test_session_refuses_bad_bodies(control: ControlPlane, body: bytes, status: int) -> None:
    r = _redeem(control, body)
    assert r.status_code == status, r.text
    assert r.json()["code"] in ("InvalidInput", "Unauthenticated", "PayloadTooLarge")


def test_codes_are_bounded_and_expire() -> None:
    reg = TokenRegistry(None)
    try:
        secret = reg.create("u", grants={"a": "viewer"})
        codes = SignInCodes(reg, ttl=60, limit=MAX_CODES)
        issued = [codes.issue(secret, "u", now=0.0) for _ in range(MAX_CODES)]
        with pytest.raises(Exception, match="already waiting"):
            codes.issue(secret, "u", now=1.0)
        assert codes.redeem(issued[0], now=59.0) == (secret, "u")
        assert codes.redeem(issued[1], now=61.0) is None  # expired
        assert len(codes) == 0  # every expired code was swept
        assert codes.issue(secret, "u", now=62.0)
    finally:
        reg.close()


def test_traffic_needs_read_in_the_namespace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTH_GATEWAY", "127.0.0.1:1")  # nothing listens there: the answer says so
    with ControlPlane(tmp_path / "data") as cp, BerthClient(cp.url) as admin:
        viewer = admin.create_token("traffic-b", grants={"team-b": "viewer"})["token"]
        url = f"{cp.url}/api/v1/ui/traffic"
        as_viewer = {"Authorization": f"Bearer {viewer}"}
        assert httpx.get(url, params={"namespace": "team-b", "model": "m"}, timeout=10).status_code == 401
        r = httpx.get(url, params={"namespace": "default", "model": "iris"}, headers=as_viewer, timeout=10)
        assert r.status_code == 403 and "iris" not in r.text
        for params in ({"namespace": "../x", "model": "m"}, {"namespace": "team-b"},
                       {"namespace": "team-b", "model": "M" * 300}):
            assert httpx.get(url, params=params, headers=as_viewer, timeout=10).status_code == 400, params
        ok = httpx.get(url, params={"namespace": "team-b", "experiment": "e"}, headers=as_viewer, timeout=10)
        assert ok.status_code == 200 and ok.json()["samples"] == [] and ok.json()["split"] is None
        deadline = time.monotonic() + 10
        while not (error := httpx.get(url, params={"namespace": "team-b", "model": "m"}, headers=as_viewer,
                                      timeout=10).json()["error"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert error and "127.0.0.1:1/metrics" in error and "BERTH_GATEWAY" in error
        refused = [a for a in admin.audit() if a["principal"] == "traffic-b" and a["outcome"] == "forbidden"]
        assert refused and refused[0]["namespace"] == "default"


def test_every_screenshot_is_in_the_docs() -> None:
    """docs/ui.md shows each view the browser tests (tests/e2e/test_ui.py) photograph."""
    docs = Path(__file__).resolve().parents[2] / "docs"
    text = (docs / "ui.md").read_text()
    for name in ("models", "model", "model-unplaceable", "placement", "experiments", "pipelines", "namespaces",
                 "doctor", "audit", "models-narrow"):
        assert f"(ui/{name}.png)" in text, name
