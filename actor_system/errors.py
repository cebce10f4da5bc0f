"""The exceptions of actor-system: one base class and the few a caller can act on."""

from __future__ import annotations

import re
from urllib.parse import urlsplit


def redact_url(url: str) -> str:
    """The URL without its password (``user:password@`` or ``?password=``), for error
    messages and logs."""
    parts = urlsplit(url)
    if parts.password is not None:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        url = url.replace(parts.netloc, netloc, 1)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url)


class ActorSystemError(Exception):
    """Base class of every error raised by actor-system."""


class ConfigError(ActorSystemError, ValueError):
    """A URL, option or environment variable is invalid, or actors are registered wrongly."""


class UnknownActorType(ActorSystemError, LookupError):
    """A message names an actor type that is not registered with this system."""


class UnknownMessageType(ActorSystemError, LookupError):
    """A message names a type that its actor has no handler for."""


class InvalidSend(ActorSystemError, ValueError):
    """A send was called with bad arguments (negative delay, naive datetime, both delay and at)."""


class MessageTooLarge(ActorSystemError, ValueError):
    """An encoded message is larger than ``max_message_bytes``."""


class DecodeError(ActorSystemError, ValueError):
    """Bytes could not be decoded into an envelope; ``raw`` keeps what arrived."""

    def __init__(self, message: str, raw: bytes) -> None:
        super().__init__(message)
        self.raw = raw


class LeaseLost(ActorSystemError):
    """A commit was refused because another holder took the actor's lease."""


class ActorBusy(ActorSystemError):
    """An operation on an actor (``system.delete``) found its lease held by a running turn
    for longer than it may wait."""


class BackendError(ActorSystemError):
    """A backend (Redis) call failed; the cause is chained."""


class Retry(ActorSystemError):
    """Raised by a handler to retry its message later, after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


class BudgetExhausted(BaseException):
    """The time budget ran out inside a handler; derives from BaseException so
    a handler's ``except Exception:`` cannot swallow it."""


class TimeLimitExceeded(BaseException):
    """A handler ran past its ``RetryPolicy.time_limit_s``; a BaseException so that the
    handler's ``except Exception:`` cannot swallow it. The runtime turns it into a failure of
    that message (a ``TimeoutError``), retried like any other."""
