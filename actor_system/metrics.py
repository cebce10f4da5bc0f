"""Per-turn metrics: a hook for any sink, and CloudWatch Embedded Metric Format for Lambda."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO


@dataclass(frozen=True, slots=True)
class TurnMetrics:
    """What one committed turn did."""

    actor_type: str
    actor: str
    messages: int
    duration_s: float
    retries: int
    dead_letters: int
    lateness_s: tuple[float, ...]  # deferred messages of this turn: run time minus due time


MetricsHook = Callable[[TurnMetrics], None]


class EmfMetrics:
    """Writes one Embedded Metric Format document per turn; on Lambda, CloudWatch turns the
    log line into metrics with no API call. Dimension: the actor type."""

    def __init__(self, namespace: str = "ActorSystem", stream: TextIO | None = None) -> None:
        self.namespace = namespace
        self.stream = stream

    def __call__(self, m: TurnMetrics) -> None:
        values: dict[str, Any] = {
            "Messages": (m.messages, "Count"),
            "TurnDuration": (round(m.duration_s * 1000, 3), "Milliseconds"),
            "Retries": (m.retries, "Count"),
            "DeadLetters": (m.dead_letters, "Count"),
        }
        if m.lateness_s:
            values["DeferredLateness"] = (
                [round(x * 1000, 3) for x in m.lateness_s],
                "Milliseconds",
            )
        doc: dict[str, Any] = {
            "_aws": {
                "Timestamp": int(time.time() * 1000),
                "CloudWatchMetrics": [
                    {
                        "Namespace": self.namespace,
                        "Dimensions": [["ActorType"]],
                        "Metrics": [{"Name": k, "Unit": unit} for k, (_, unit) in values.items()],
                    }
                ],
            },
            "ActorType": m.actor_type,
            "actor": m.actor,
        }
        doc.update({k: v for k, (v, _) in values.items()})
        print(json.dumps(doc), file=self.stream or sys.stdout, flush=True)
