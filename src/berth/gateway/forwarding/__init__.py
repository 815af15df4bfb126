"""Forwarding written once for REST and gRPC: replica choice, retries, mirrors, timeouts, upstream errors."""
