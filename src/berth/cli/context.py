"""Options shared by every command (control-plane address, gateway address)."""

from __future__ import annotations

from dataclasses import dataclass

from berth.client.http import BerthClient


@dataclass
class Settings:
    server: str | None = None
    gateway: str | None = None
    gateway_grpc: str | None = None

    def client(self) -> BerthClient:
        return BerthClient(self.server)


settings = Settings()
