"""The agent hub's bookkeeping of load outcomes: failures back off, bounded; stale outcomes are ignored."""

from __future__ import annotations

import time

from berth.control.hub import AgentHub, ReplicaRecord
from berth.wire import agent as wire


def _record(hub: AgentHub) -> ReplicaRecord:
    hello = wire.Hello(server="mlserver", replica=0, readiness=wire.Readiness(ready=True))
    rec = ReplicaRecord(key=("default", "mlserver", 0), hello=hello, readiness=hello.readiness)
    hub.replicas[rec.key] = rec
    return rec


def test_failed_loads_back_off_and_keep_the_error() -> None:
    changed: list[str] = []
    hub = AgentHub(changed.append)
    rec = _record(hub)
    waits = []
    for attempt in range(1, 5):
        before = time.time()
        hub._apply(rec, wire.ModelEvent(name="iris", generation=1, state="LOAD_FAILED", message=f"boom {attempt}"))
        m = rec.models["iris"]
        assert m.attempts == attempt and m.message == f"boom {attempt}"
        waits.append(m.retry_at - before)
    assert [round(w) for w in waits] == [5, 10, 20, 40]
    assert changed == ["default"] * 4


def test_outcome_of_an_older_generation_is_ignored() -> None:
    hub = AgentHub(lambda ns: None)
    rec = _record(hub)
    hub._apply(rec, wire.ModelEvent(name="iris", generation=2, state="LOADED", memory=10))
    hub._apply(rec, wire.ModelEvent(name="iris", generation=1, state="LOAD_FAILED", message="old"))
    assert rec.models["iris"].state == "LOADED" and rec.models["iris"].generation == 2
    hub._apply(rec, wire.ModelEvent(name="iris", generation=2, state="UNLOADED"))
    assert "iris" not in rec.models


def test_admission_wants_an_agent_token_minted_for_exactly_the_claimed_replica() -> None:
    from berth.resources.identity import AgentIdentity, Principal

    hello = wire.Hello(namespace="tenant-a", server="mlserver", replica=1)
    me = AgentIdentity("tenant-a", "mlserver", 1)

    def code(principal: Principal | None, presented: bool = True) -> str | None:
        refusal = AgentHub.admission(hello, principal, presented)
        return refusal.code if refusal is not None else None

    assert code(None, presented=False) == "Unauthenticated"
    assert code(None) == "Unauthenticated"
    assert code(Principal("alice", "user", {"*": "admin"})) == "Forbidden"
    assert code(Principal("gw", "gateway")) == "Forbidden"
    assert code(Principal("a", "agent", agent=None)) == "Forbidden"
    for other in (AgentIdentity("tenant-b", "mlserver", 1), AgentIdentity("tenant-a", "other", 1),
                  AgentIdentity("tenant-a", "mlserver", 0)):
        assert code(Principal("a", "agent", agent=other)) == "Forbidden"
    assert code(Principal("a", "agent", agent=me)) is None
