"""Status of the kinds that configure rather than serve: SeldonRuntime (a tenant namespace) and
ServerConfig (a template for Servers).  They hold no processes of their own in Berth; their status
says what Berth does with them, so every resource answers with conditions and observedGeneration."""

from __future__ import annotations

from typing import Any

from berth.control.status import condition


def runtime_status(doc: dict[str, Any], servers: list[str], now: float) -> dict[str, Any]:
    ns = doc["metadata"]["namespace"]
    policy = (doc["metadata"].get("annotations") or {}).get("berth.io/placement-policy", "binpack")
    message = (f"namespace {ns} is a tenant: this control plane schedules and routes it (placement policy "
               f"{policy}); servers here: {', '.join(servers) or 'none yet'}")
    return {"observedGeneration": doc["metadata"].get("generation", 0), "message": message,
            "conditions": [condition("Ready", True, "TenantReady", message, doc.get("status"), now)]}


def server_config_status(doc: dict[str, Any], users: list[str], now: float) -> dict[str, Any]:
    message = ("stored; local replicas run MLServer with the runtimes installed here and offer the memory "
               "request of its mlserver container (the rest of podSpec applies on Kubernetes only); servers "
               f"using it: {', '.join(users) or 'none'}")
    return {"observedGeneration": doc["metadata"].get("generation", 0), "message": message,
            "conditions": [condition("Ready", True, "ServerConfigStored", message, doc.get("status"), now)]}
