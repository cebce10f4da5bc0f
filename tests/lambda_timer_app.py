"""A handler with the bug this project exists for: a timer armed in a handler that returns."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any


def timer_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The bug this project exists for: a timer armed in a handler that then returns."""
    path = Path(event["path"])
    threading.Timer(0.3, lambda: path.write_text(str(time.time()))).start()
    # Thawed, an overdue timer thread needs the GIL and a core before the next freeze: an
    # invocation that lingers gives it both, however busy the machine.
    time.sleep(event.get("linger_s", 0.0))
    return {"armed_at": time.time()}
