"""The drain function of tests.lambda_app, with two events of its own for the runtime's
failure paths: ``{"sleep_s": n}`` answers only after ``n`` seconds (past any deadline the
test sets), ``{"raise": text}`` fails with an unhandled exception, and ``{"context": true}``
answers with what the handler's context holds."""

from __future__ import annotations

import time
from typing import Any

from tests.lambda_app import handler as drain


def handler(event: Any, context: Any) -> Any:
    if isinstance(event, dict) and "sleep_s" in event:
        time.sleep(float(event["sleep_s"]))
        return {"slept_s": event["sleep_s"]}
    if isinstance(event, dict) and "raise" in event:
        raise RuntimeError(str(event["raise"]))
    if isinstance(event, dict) and event.get("context"):
        return {
            "aws_request_id": context.aws_request_id,
            "function_name": context.function_name,
            "invoked_function_arn": context.invoked_function_arn,
            "log_group_name": context.log_group_name,
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "remaining_ms": context.get_remaining_time_in_millis(),
            "now_ms": time.time() * 1000,
        }
    return drain(event, context)
