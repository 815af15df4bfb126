"""Batch frames of the agent protocol (wire/batch.py): encoded, decoded, bounded, and salvaged item by item."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from berth.wire import agent as wire
from berth.wire import batch


def _load(i: int, secret: str | None = None) -> wire.Load:
    return wire.Load(namespace="default", name=f"m{i:04d}", generation=1 + i % 3, source=wire.ModelSource(
        storage_uri=f"file:///models/m{i}", requirements=["sklearn"], memory=1 << 20,
        secret={"s3": secret} if secret else None))


def test_loads_round_trip_in_bounded_frames_in_order() -> None:
    loads = [_load(i) for i in range(600)]
    frames = list(batch.frames("loads", (wire.dump(m) for m in loads)))
    assert [n for _, n in frames] == [256, 256, 88]  # MAX_BATCH_ITEMS per frame
    got: list[wire.Load] = []
    for text, count in frames:
        assert len(text) <= wire.MAX_BATCH_CHARS
        msg = wire.parse_control(text)
        assert isinstance(msg, wire.LoadBatch) and len(msg.loads) == count
        got += batch.items_of(msg)
    assert got == loads


def test_a_frame_of_one_item_is_that_items_own_frame() -> None:
    [(text, count)] = list(batch.frames("loads", [wire.dump(_load(7))]))
    assert count == 1 and json.loads(text)["type"] == "load"
    assert wire.parse_control(text) == _load(7)
    event = wire.ModelEvent(name="m", generation=2, state="LOADED", memory=5)
    [(text, count)] = list(batch.frames("models", [wire.dump(event)]))
    assert json.loads(text)["type"] == "model" and wire.parse_agent(text) == event
    assert list(batch.frames("loads", [])) == []


def test_frames_keep_under_the_character_budget_and_a_big_item_goes_alone() -> None:
    big = _load(1, secret="x" * 5000)
    items = [wire.dump(_load(0)), wire.dump(big), *(wire.dump(_load(i)) for i in range(2, 40))]
    frames = list(batch.frames("loads", items, max_chars=2000))
    assert sum(n for _, n in frames) == 40
    assert any(text == wire.dump(big) for text, _ in frames)  # larger than the budget: its own frame
    for text, count in frames:
        assert count == 1 or len(text) <= 2000
        assert len(batch.items_of(wire.parse_control(text))) == count


def test_model_events_batch_round_trip() -> None:
    events = [wire.ModelEvent(name=f"m{i}", generation=1, state="LOADED" if i % 2 else "LOADING", memory=i)
              for i in range(300)]
    got = []
    for text, _ in batch.frames("models", (wire.dump(e) for e in events)):
        got += batch.items_of(wire.parse_agent(text))
    assert got == events


def test_a_batch_over_the_item_bound_is_refused_whole() -> None:
    too_many = '{"type":"loads","loads":[' + ",".join(wire.dump(_load(i)) for i in range(257)) + "]}"
    with pytest.raises(ValidationError):
        wire.parse_control(too_many)
    assert batch.salvage(too_many, wire.Load) == ([], ["a batch holds 1 to 256 items, this one 257"])
    with pytest.raises(ValidationError):
        wire.parse_control('{"type":"loads","loads":[]}')
    with pytest.raises(ValidationError):
        wire.parse_agent('{"type":"models","events":[]}')


def test_salvage_keeps_the_valid_items_and_names_each_bad_one() -> None:
    good = [json.loads(wire.dump(_load(i))) for i in range(3)]
    bad = {"type": "load", "generation": 1, "source": {"storage_uri": "file:///x"}}  # no name
    text = json.dumps({"type": "loads", "loads": [good[0], bad, good[1], "junk", good[2]]})
    with pytest.raises(ValidationError):
        wire.parse_control(text)
    loads, problems = batch.salvage(text, wire.Load)
    assert [m.name for m in loads] == ["m0000", "m0001", "m0002"]
    assert problems[0] == "item 1: name: Field required" and problems[1].startswith("item 3: ")
    assert batch.salvage("{not json", wire.Load)[1][0].startswith("not JSON")
    assert batch.salvage('{"type":"load","name":"x"}', wire.Load) == ([], ["not a batch frame"])


def test_protocol_versions_agree() -> None:
    assert wire.Hello(server="s", replica=0).protocol == wire.PROTOCOL_VERSION >= wire.BATCH_PROTOCOL
    assert wire.Welcome().protocol == 1  # a control plane that does not say gets no batches
    assert wire.parse_control('{"type":"welcome","heartbeat_interval":5}').protocol == 1
