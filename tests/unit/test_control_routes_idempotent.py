"""The berth.io/idempotent annotation reaches the routing table the gateways follow."""

from __future__ import annotations

import asyncio
from typing import Any

from berth.control.routes import IDEMPOTENT_ANNOTATION, RoutesPublisher


def model(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"kind": "Model", "metadata": {"name": name, "namespace": "ns", "annotations": annotations or {}},
            "spec": {"storageUri": "file:///m"}, "status": {"state": "ModelProgressing"}}


def test_annotation_marks_the_route_not_idempotent() -> None:
    async def run() -> dict[str, bool]:
        publisher = RoutesPublisher()
        publisher.publish_namespace("ns", [model("plain"), model("once", {IDEMPOTENT_ANNOTATION: "false"}),
                                           model("shouting", {IDEMPOTENT_ANNOTATION: " NO "}),
                                           model("explicit", {IDEMPOTENT_ANNOTATION: "true"})], {}, [])
        return {m.name: m.idempotent for m in publisher.table().models}

    assert asyncio.run(run()) == {"plain": True, "once": False, "shouting": False, "explicit": True}
