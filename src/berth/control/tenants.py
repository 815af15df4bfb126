"""Status of the kinds that configure rather than serve: SeldonRuntime (a tenant namespace) and
ServerConfig (a template for Servers).  They hold no processes of their own in Berth; their status
says what Berth does with them, so every resource answers with conditions and observedGeneration."""

from __future__ import annotations

from typing import Any

from berth.control.status import UNSUPPORTED, condition
from berth.resources.podspec import MEMORY_ENV, OVERCOMMIT_ENV, RUNS, config_inference_server, unsupported_message
from berth.resources.statuses import RuntimeStatus, ServerConfigStatus


def runtime_status(doc: dict[str, Any], servers: list[str], now: float) -> RuntimeStatus:
    ns = doc["metadata"]["namespace"]
    policy = (doc["metadata"].get("annotations") or {}).get("berth.io/placement-policy", "binpack")
    message = (f"namespace {ns} is a tenant: this control plane schedules and routes it (placement policy "
               f"{policy}); servers here: {', '.join(servers) or 'none yet'}")
    return {"observedGeneration": doc["metadata"].get("generation", 0), "message": message,
            "conditions": [condition("Ready", True, "TenantReady", message, doc.get("status"), now)]}


def server_config_status(doc: dict[str, Any], users: list[str], now: float) -> ServerConfigStatus:
    using = f"servers using it: {', '.join(users) or 'none'}"
    kind = config_inference_server(doc)
    if kind != RUNS:
        message = f"{unsupported_message(doc['metadata']['name'], kind)}; {using}"
        return {"observedGeneration": doc["metadata"].get("generation", 0), "message": message,
                "conditions": [condition("Ready", False, UNSUPPORTED, message, doc.get("status"), now)]}
    message = ("stored; local replicas run MLServer with the runtimes installed here and offer the memory its "
               f"agent's {MEMORY_ENV} gives, else the memory request of its mlserver container, with the "
               f"agent's {OVERCOMMIT_ENV} (the rest of podSpec applies on Kubernetes only); {using}")
    return {"observedGeneration": doc["metadata"].get("generation", 0), "message": message,
            "conditions": [condition("Ready", True, "ServerConfigStored", message, doc.get("status"), now)]}
