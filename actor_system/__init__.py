"""actor-system: a deferred-message actor runtime for Python on AWS Lambda."""

import logging

from actor_system.actor import ActorRef, ActorType, Context
from actor_system.budget import Budget
from actor_system.clock import ManualClock, SystemClock
from actor_system.errors import (
    ActorBusy,
    ActorSystemError,
    BackendError,
    BudgetExhausted,
    ConfigError,
    DecodeError,
    InvalidSend,
    LeaseLost,
    MessageTooLarge,
    Retry,
    TimeLimitExceeded,
    UnknownActorType,
    UnknownMessageType,
)
from actor_system.options import Options
from actor_system.policy import RetryPolicy
from actor_system.ports import DeadLetter
from actor_system.reminders import Reminder
from actor_system.replies import HandlerFailed, NoReply, Replied
from actor_system.runtime import DrainReport
from actor_system.system import ActorSystem

logging.getLogger("actor_system").addHandler(logging.NullHandler())

__all__ = [
    "ActorBusy",
    "ActorRef",
    "ActorSystem",
    "ActorSystemError",
    "ActorType",
    "BackendError",
    "Budget",
    "BudgetExhausted",
    "ConfigError",
    "Context",
    "DeadLetter",
    "DecodeError",
    "DrainReport",
    "HandlerFailed",
    "InvalidSend",
    "LeaseLost",
    "ManualClock",
    "MessageTooLarge",
    "NoReply",
    "Options",
    "Reminder",
    "Replied",
    "Retry",
    "RetryPolicy",
    "SystemClock",
    "TimeLimitExceeded",
    "UnknownActorType",
    "UnknownMessageType",
]
