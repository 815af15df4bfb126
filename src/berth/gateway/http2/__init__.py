"""HTTP/2 for the gateway's gRPC side: a sans-IO protocol core (core.py), its limits, HPACK header blocks,
and the thin asyncio adapters (connection, server, client)."""
