"""The routing table as one namespace's gateway sees it (``RoutesPublisher.encoded_for``): that namespace's
routes and token hashes only, a valid ``RoutingTable``, and a revision that moves only when its own part
changed; and who gets which scope (``gateway_scope``)."""

from __future__ import annotations

import asyncio

from berth.control.auth import gateway_scope
from berth.control.routes import INFERENCE_AUTH_ANNOTATION, RoutesPublisher
from berth.control.tokens import TokenRegistry
from berth.resources.identity import ALL, Principal, hash_token
from berth.wire.routes import RoutingTable
from tests.unit.test_routes_sliced import experiment, model

GUARDED = {"metadata": {"annotations": {INFERENCE_AUTH_ANNOTATION: "required"}}}


def test_a_scoped_table_holds_one_namespace_and_moves_only_with_it() -> None:
    async def body() -> None:
        tokens = TokenRegistry(None)
        a_secret = tokens.create("a-caller", grants={"a-team": "inference"})
        b_secret = tokens.create("b-caller", grants={"b-team": "inference"})
        root = tokens.create("root", grants={ALL: "admin"})
        p = RoutesPublisher(tokens)
        p.publish_namespace("a-team", [model("iris", "a-team")], {}, [experiment("ab", "a-team")], GUARDED)
        p.publish_namespace("b-team", [model("secret-b", "b-team")], {}, [], GUARDED)
        scope = frozenset({"a-team"})
        text = p.encoded_for(scope)
        table = RoutingTable.model_validate_json(text)
        assert [(m.namespace, m.name) for m in table.models] == [("a-team", "iris")]
        assert [e.name for e in table.experiments] == ["ab"]
        assert table.auth is not None and [a.namespace for a in table.auth.namespaces] == ["a-team"]
        assert table.auth.namespaces[0].tokens == [hash_token(a_secret)]
        assert hash_token(root) in table.auth.everywhere  # valid in a-team too
        assert "b-team" not in text and hash_token(b_secret) not in text
        assert p.encoded_for(None) == p.encoded()  # the whole table, unchanged

        p.publish_namespace("b-team", [model("secret-b", "b-team"), model("other", "b-team")], {}, [], GUARDED)
        assert p.encoded_for(scope) == text  # another namespace changed: nothing new for a-team's gateway
        p.publish_namespace("a-team", [model("iris", "a-team"), model("wine", "a-team")], {}, [], GUARDED)
        moved = RoutingTable.model_validate_json(p.encoded_for(scope))
        assert moved.revision > table.revision and [m.name for m in moved.models] == ["iris", "wine"]
        assert RoutingTable.model_validate_json(p.encoded_for(frozenset({"nowhere"}))).models == []
        p.close()
    asyncio.run(body())


def test_who_reads_which_part() -> None:
    assert gateway_scope(Principal("system:serviceaccount:a-team:berth-gateway", kind="gateway",
                                   grants={"a-team": "inference"})) == frozenset({"a-team"})
    assert gateway_scope(Principal("gateway", kind="gateway")) is None  # a Berth gateway token: all of it
    assert gateway_scope(Principal("root", grants={ALL: "admin"})) is None
