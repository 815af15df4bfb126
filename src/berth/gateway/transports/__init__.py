"""The gateway's transports: gRPC over the HTTP/2 core, V2 message codecs, REST listener limits and request checks."""
