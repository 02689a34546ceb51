"""The transport: the shared-memory weight store and CURVE-secured sockets. No torch."""
