"""Runnable examples: ``python -m examples.<name> [--redis-url URL]``."""
