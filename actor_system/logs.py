"""Structured logging: one JSON object per line, with aws-lambda-powertools' field names, and
the ``trace_id`` and ``span_id`` of the current OpenTelemetry span when there is one."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from actor_system import tracing

# Per-invocation fields (set by the Lambda entry point), added to every record.
_request: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "actor_system_request", default=None
)

# Fields a record may carry through ``extra=``; named as powertools names them where it has one.
CONTEXT_FIELDS = (
    "actor",
    "message_id",
    "attempt",
    "message_type",
    "function_request_id",
    "cold_start",
    "xray_trace_id",
    "function_name",
)


def set_request_context(**fields: Any) -> contextvars.Token[dict[str, Any] | None]:
    """Attach fields (request id, cold start, ...) to every record until reset."""
    return _request.set(fields)


def reset_request_context(token: contextvars.Token[dict[str, Any] | None]) -> None:
    _request.reset(token)


class JsonFormatter(logging.Formatter):
    """Formats records as JSON lines: level, location, message, timestamp, service, context."""

    def __init__(self, service: str = "actor-system") -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "level": record.levelname,
            "location": f"{record.funcName}:{record.lineno}",
            "message": record.getMessage(),
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "service": self.service,
            "logger": record.name,
        }
        out.update(_request.get() or {})
        for name in CONTEXT_FIELDS:
            if name in record.__dict__:
                out[name] = record.__dict__[name]
        ids = tracing.log_ids()  # the current OpenTelemetry span's, if any (a handler's)
        if ids is not None:
            out["trace_id"], out["span_id"] = ids
        if record.exc_info:
            out["exception_name"] = record.exc_info[0].__name__ if record.exc_info[0] else ""
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(fmt: str = "json", level: int = logging.INFO, service: str = "actor-system") -> None:
    """Send actor-system's logs to stderr as JSON lines (``fmt="json"``) or plain text."""
    if fmt not in ("json", "text"):
        raise ValueError(f"log format {fmt!r} must be 'json' or 'text'")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("actor_system")
    for old in [h for h in logger.handlers if not isinstance(h, logging.NullHandler)]:
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level)
