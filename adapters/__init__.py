"""Backends for actor-system's ports; each imports its client library itself."""
