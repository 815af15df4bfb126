"""An agent's view of the control plane: the agent's record, its bounds on the wire, the hub and the status
that keep it, and `berth doctor`'s row "agents → control plane (as the agents see it)"."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from berth.adapters.mlserver_proc import free_port
from berth.agent.control_view import ControlReporter, classify, resolver_error
from berth.cli.doctor_agents_view import CHECK, agents_view_rows
from berth.control.clock import rfc3339
from berth.control.hub import AgentHub, ReplicaRecord
from berth.control.status import server_status
from berth.wire import agent as wire
from berth.wire.control_view import MAX_ATTEMPTS, MAX_TEXT, Attempt, ControlView


def _refused_exception(port: int) -> BaseException:
    async def go() -> BaseException:
        async with aiohttp.ClientSession() as session:
            try:
                await session.ws_connect(f"ws://127.0.0.1:{port}/x")
            except aiohttp.ClientError as exc:
                return exc
        raise AssertionError("a closed port accepted the connection")

    return asyncio.run(go())


def test_a_real_refused_connect_and_resolver_errors_are_named() -> None:
    assert classify(_refused_exception(free_port())) == ("refused", "connection refused")
    assert resolver_error(socket.gaierror(socket.EAI_NONAME, "Name or service not known")) == \
        "NXDOMAIN (name not known)"
    assert "EAI_AGAIN" in resolver_error(socket.gaierror(socket.EAI_AGAIN, "Temporary failure"))
    assert classify(TimeoutError())[0] == "timeout"


def test_the_reporter_resolves_counts_failures_and_stays_bounded() -> None:
    port = free_port()
    clock = iter(range(1000, 2000)).__next__
    reporter = ControlReporter(f"ws://localhost:{port}/api/v1/agents/connect", "localhost", port,
                               clock=lambda: float(clock()))
    resolution = asyncio.run(reporter.resolve())
    assert resolution.error is None and "127.0.0.1" in resolution.addresses and resolution.seconds < 5
    refused = _refused_exception(port)
    for _ in range(25):
        reporter.failed(refused)
    view = reporter.report()
    assert len(view.attempts) == MAX_ATTEMPTS and view.failures == 25 and view.connected_since is None
    assert view.attempts[-1].outcome == "refused" and str(port) in view.attempts[-1].address
    assert reporter.changed() is not None and reporter.changed() is None  # sent once, then only on change
    reporter.rejected("Forbidden: " + "x" * 1000)  # a long message is cut, never a reason to drop the report
    last = reporter.report().attempts[-1]
    assert last.outcome == "rejected" and len(last.error) <= MAX_TEXT and reporter.report().failures == 26
    assert reporter.changed() is not None
    wire.Hello(server="s", replica=0, control=reporter.report())  # what the agent sends always validates


def test_the_wire_refuses_an_unbounded_report() -> None:
    attempt = Attempt(at=1.0, outcome="refused", address="10.0.0.5:9004")
    with pytest.raises(ValidationError):
        ControlView(attempts=[attempt] * (MAX_ATTEMPTS + 1))
    with pytest.raises(ValidationError):
        wire.parse_agent('{"type": "heartbeat", "control": {"url": "' + "u" * 5000 + '"}}')
    with pytest.raises(ValidationError):
        wire.parse_agent('{"type": "heartbeat", "control": {"attempts": [{"at": 1, "outcome": "pwned"}]}}')


def _view(**kw: Any) -> ControlView:
    return ControlView(url="ws://berth-control.berth.svc:9004/api/v1/agents/connect", **kw)


def test_the_hub_keeps_the_report_and_rewrites_status_only_when_more_than_the_round_trip_moved() -> None:
    changes: list[str] = []
    hub = AgentHub(changes.append)
    hello = wire.Hello(server="mlserver", replica=0, control=_view(connected_since=10.0, connected_to="10.0.0.5:9004"))
    rec = ReplicaRecord(key=("default", "mlserver", 0), hello=hello, readiness=hello.readiness, control=hello.control)
    hub._apply(rec, wire.Heartbeat())
    hub._apply(rec, wire.Heartbeat(control=_view(connected_since=10.0, connected_to="10.0.0.5:9004", rtt=0.002)))
    assert changes == [] and rec.control is not None and rec.control.rtt == 0.002
    assert rec.summary()["controlPlane"]["rtt"] == 0.002  # type: ignore[index]
    failed = Attempt(at=20.0, outcome="timeout", address="10.0.0.5:9004", error="connect timed out")
    hub._apply(rec, wire.Heartbeat(control=_view(attempts=[failed])))
    assert changes == ["default"]


def test_the_server_status_carries_each_replicas_report() -> None:
    hello = wire.Hello(server="mlserver", replica=0)
    rec = ReplicaRecord(key=("default", "mlserver", 0), hello=hello, readiness=hello.readiness,
                        control=_view(attempts=[Attempt(at=100.0, outcome="dns", address="berth-control.berth.svc:9004",
                                                        error="NXDOMAIN (name not known)")],
                                      connected_since=200.0, connected_to="10.0.0.5:9004", rtt=0.001))
    doc = {"metadata": {"name": "mlserver", "namespace": "default", "generation": 1},
           "spec": {"serverConfig": "mlserver", "replicas": 1}}
    [row] = server_status(doc, 1, [rec], 300.0)["replicaStatus"]
    view: Any = row.get("controlPlane")
    assert view["connectedSince"] == rfc3339(200.0) and view["connectedTo"] == "10.0.0.5:9004"
    assert view["attempts"] == [{"at": rfc3339(100.0), "outcome": "dns", "address": "berth-control.berth.svc:9004",
                                 "error": "NXDOMAIN (name not known)"}]
    assert view["rttSeconds"] == 0.001


def _server(*replicas: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "mlserver", "namespace": "financial-ml"}, "status": {"replicaStatus": list(replicas)}}


def test_doctor_row_names_the_replica_the_address_and_what_failed() -> None:
    now = time.time()
    dns = {"at": rfc3339(now - 100), "outcome": "dns", "address": "berth-control.berth.svc:9004",
           "error": "NXDOMAIN (name not known)"}
    ok = {"at": rfc3339(now - 30), "outcome": "ok", "address": "10.0.0.5:9004"}
    view = {"url": "ws://berth-control.berth.svc:9004/api/v1/agents/connect", "failures": 3,
            "resolution": {"host": "berth-control.berth.svc", "addresses": ["10.0.0.5"], "seconds": 0.002,
                           "at": rfc3339(now - 30)},
            "attempts": [dns, dns, dns, ok], "connectedSince": rfc3339(now - 30), "connectedTo": "10.0.0.5:9004"}
    old = {**view, "attempts": [{**dns, "at": rfc3339(now - 3600)}, ok], "failures": 1}
    rows = agents_view_rows([_server(
        {"index": 0, "connected": True, "controlPlane": old},
        {"index": 1, "connected": True, "controlPlane": view},
        {"index": 2, "connected": False, "controlPlane": view},
        {"index": 3, "connected": True})], now)
    assert [r.check for r in rows] == [CHECK] * 4
    assert [r.ok for r in rows] == [True, True, None, None]
    assert rows[0].detail.startswith("connected since ") and "through 10.0.0.5:9004" in rows[0].detail
    assert "NXDOMAIN" not in rows[0].detail  # an hour ago: outside the window
    assert rows[1].detail.startswith("replica 1 of financial-ml/mlserver could not resolve berth-control.berth.svc "
                                     "(NXDOMAIN (name not known)) 3 times in the last 5 min; connected since ")
    assert "through 10.0.0.5:9004" in rows[1].detail
    assert "not connected now" in rows[2].detail and "NXDOMAIN" in rows[2].detail
    assert "older agent" in rows[3].detail


def test_describe_server_shows_each_replicas_view() -> None:
    from berth.cli import render
    from berth.cli.describe_cmd import describe_server

    now = time.time()
    view = {"url": "ws://berth-control.berth.svc:9004/api/v1/agents/connect", "failures": 2,
            "attempts": [{"at": rfc3339(now - 60), "outcome": "refused", "address": "10.0.0.5:9004",
                          "error": "connection refused"}] * 2 + [{"at": rfc3339(now - 5), "outcome": "ok",
                                                                   "address": "10.0.0.5:9004"}],
            "connectedSince": rfc3339(now - 5), "connectedTo": "10.0.0.5:9004", "rttSeconds": 0.0004}
    doc = {"metadata": {"name": "mlserver", "namespace": "financial-ml"}, "spec": {},
           "status": {"replicas": 1, "replicaStatus": [{"index": 0, "connected": True, "ready": True,
                                                        "message": "ready", "controlPlane": view}]}}
    width = render.console.width
    render.console.width = 400
    try:
        with render.console.capture() as captured:
            describe_server(doc)
    finally:
        render.console.width = width
    text = captured.get()
    assert "Control plane (as the agents see it)" in text and "through 10.0.0.5:9004 (ping 0.4 ms)" in text
    assert "was refused by 10.0.0.5:9004 (connection refused) 2 times" in text


def test_rfc3339_formats_to_the_second_like_strftime() -> None:
    """rfc3339 keeps the last second it formatted: every answer is still the one strftime gives."""
    from datetime import UTC, datetime
    for ts in (0.0, 1.2, 1.9, 2.0, -1.5, 1764566399.999, 1764566400.0, 1764566400.5, 1.2):
        assert rfc3339(ts) == datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), ts
