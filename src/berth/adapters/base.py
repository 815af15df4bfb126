"""What an agent needs from an inference server: the adapter interface.

MLServer (:class:`berth.adapters.mlserver.MLServerClient`) is the first implementation; a server with
a Triton-style repository API (load/unload by name, a readiness endpoint, a model index) fits the same
protocol, so the agent's loader and readiness watch never depend on which server is beside them.
"""

from __future__ import annotations

from typing import Protocol

from berth.adapters.mlserver import Probe


class InferenceServer(Protocol):
    @property
    def base_url(self) -> str:
        """Where the server's REST API is, for messages (``http://127.0.0.1:9500``)."""

    @property
    def ready_url(self) -> str:
        """The readiness URL the agent probes (named in not-ready reports)."""

    async def probe(self) -> Probe:
        """One readiness check; ``error`` says exactly what failed (refused, timeout, HTTP status)."""

    async def index(self) -> dict[str, str]:
        """Models the server knows, by name, with their state (``READY`` when loaded)."""

    async def load(self, name: str) -> None:
        """Load ``name`` from the server's model repository; LoadError carries the server's own text."""

    async def unload(self, name: str) -> bool:
        """Unload ``name``; False when the server did not know it."""

    async def metadata(self, name: str) -> dict[str, object]:
        """The model's V2 metadata; raises when the model does not answer."""

    async def aclose(self) -> None: ...
