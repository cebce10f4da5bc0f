"""The ``actor-system`` console script: run a worker, send, read state and dead letters."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from actor_system.actor import ActorRef, ActorType
from actor_system.errors import ActorSystemError, ConfigError, InvalidSend
from actor_system.system import ENV_PREFIX, ActorSystem

if TYPE_CHECKING:
    from collections.abc import Sequence


def load_actors(spec: str) -> list[ActorType[Any]]:
    """``module`` (its ``actors`` list) or ``module:name`` (an ActorType or a list of them)."""
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:  # like celery and uvicorn: the app lives in the project
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"cannot import actor module {module_name!r}: {e}") from None
    value = getattr(module, attr or "actors", None)
    if isinstance(value, ActorType):
        return [value]
    if isinstance(value, list | tuple) and all(isinstance(a, ActorType) for a in value):
        return list(value)
    raise ConfigError(f"{spec!r} is not an ActorType or a list of ActorTypes (module:name)")


def _system(args: argparse.Namespace) -> ActorSystem:
    env = dict(os.environ)
    if args.url:
        env[f"{ENV_PREFIX}REDIS_URL"] = args.url
    for name in ("batch", "lease_ms", "max_attempts"):
        value = getattr(args, name, None)
        if value is not None:
            env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
    return ActorSystem.from_env(actors=load_actors(args.app), environ=env)


def cmd_worker(args: argparse.Namespace) -> int:
    system = _system(args)
    report = system.worker().run()
    print(
        json.dumps(
            {
                "turns": report.turns,
                "messages": report.messages,
                "dead_letters": report.dead_letters,
            }
        )
    )
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    system = _system(args)
    actor = system.registry.get(args.type)
    model, _ = actor.resolve(args.message_type)
    try:
        msg = model.model_validate_json(args.json)
    except ValidationError as e:
        raise InvalidSend(
            f"invalid {args.message_type} payload: {e.errors(include_url=False)}"
        ) from None
    mid = system.send(ActorRef(args.type, args.id), msg, delay=args.delay)
    print(mid)
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    system = _system(args)
    print(system.state(ActorRef(args.type, args.id)).model_dump_json())
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    system = _system(args)
    for d in system.dead_letters(args.limit):
        print(
            json.dumps(
                {
                    "id": d.id,
                    "actor": d.actor,
                    "reason": d.reason,
                    "attempts": d.attempts,
                    "at_ms": d.at_ms,
                }
            )
        )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    system = _system(args)
    backend = system.backend
    print(
        json.dumps(
            {
                "pending_deferred": backend.pending(),
                "next_due_ms": backend.next_due_ms(),
                "dead_letters": backend.dead_letter_count(),
            }
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="actor-system", description=__doc__)
    parser.add_argument("--url", help=f"Redis URL (default: ${ENV_PREFIX}REDIS_URL)")
    parser.add_argument("--app", required=True, help="module with an `actors` list, or module:name")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="drain until SIGTERM/SIGINT")
    worker.add_argument("--batch", type=int)
    worker.add_argument("--lease-ms", type=int)
    worker.add_argument("--max-attempts", type=int)
    worker.set_defaults(func=cmd_worker)
    send = sub.add_parser("send", help="send one message (JSON payload)")
    for name in ("type", "id", "message_type", "json"):
        send.add_argument(name)
    send.add_argument("--delay", type=float, help="seconds to defer delivery")
    send.set_defaults(func=cmd_send)
    state = sub.add_parser("state", help="print an actor's committed state as JSON")
    state.add_argument("type")
    state.add_argument("id")
    state.set_defaults(func=cmd_state)
    dlq = sub.add_parser("dlq", help="list dead letters, newest first")
    dlq.add_argument("--limit", type=int, default=100)
    dlq.set_defaults(func=cmd_dlq)
    stats = sub.add_parser("stats", help="pending deferred messages and dead letters")
    stats.set_defaults(func=cmd_stats)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        return int(args.func(args))
    except ActorSystemError as e:
        print(f"actor-system: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
