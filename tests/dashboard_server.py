"""Serve the dashboard's ASGI app over real HTTP (uvicorn, a free loopback port) for a test."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import uvicorn

from tests.conftest import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator


@contextmanager
def serving(asgi: Any) -> Iterator[str]:
    """The app served at the yielded base URL (``http://127.0.0.1:<port>``) until exit."""
    port = free_port()
    config = uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the dashboard did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
