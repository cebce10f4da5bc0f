"""The ``actor-system`` console script: send, inspect and steer actors without writing Python.

Every command takes ``--url`` (or ``ACTOR_SYSTEM_REDIS_URL``) and, where it needs the actor
types, ``--app module[:name]`` (or ``ACTOR_SYSTEM_APP``). ``--json`` prints JSON. A user or
connection error is one line on stderr and exit code 2 (``--verbose``: its traceback).
"""

from __future__ import annotations

import ast
import base64
import importlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click
import msgpack
from pydantic import ValidationError
from pydantic_core import to_jsonable_python
from redis.exceptions import RedisError

from actor_system import logs, stored_state
from actor_system.actor import ActorRef, ActorType
from actor_system.envelope import Envelope, decode
from actor_system.errors import (
    ActorSystemError,
    BackendError,
    ConfigError,
    DecodeError,
    InvalidSend,
    redact_url,
)
from actor_system.payloads import parse_payload
from actor_system.system import ENV_PREFIX, ActorSystem

log = logging.getLogger("actor_system")

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from pydantic import BaseModel

    from actor_system.ports import DeadLetter
    from actor_system.system import Deferred


class CommandError(Exception):
    """A command line this CLI refuses: one line on stderr, exit code 2."""


# What a command reports in one line and exit code 2; anything else is a bug (a traceback).
USER_ERRORS = (ActorSystemError, ValidationError, CommandError, RedisError)
_SHOWN_PROBLEMS = 3  # validation problems named in a line
_REASON_WIDTH = 80  # characters of a dead letter's reason in the dlq list table


def problems(errors: Sequence[Mapping[str, Any]], shown: int = _SHOWN_PROBLEMS) -> str:
    """pydantic's errors as ``field: message`` items on one line, the first ``shown`` of
    them."""
    items = [f"{_dotted(e.get('loc', ())) or '(value)'}: {e.get('msg', '')}" for e in errors]
    more = f"; and {len(items) - shown} more" if len(items) > shown else ""
    return "; ".join(items[:shown]) + more


def _dotted(loc: Iterable[Any]) -> str:
    return ".".join(str(part) for part in loc)


def describe(e: BaseException) -> str:
    """An error in one line: a validation error as its problems, text on one line."""
    if isinstance(e, ValidationError):
        text = f"invalid {e.title}: {problems(e.errors(include_url=False), 10)}"
    elif isinstance(e, ActorSystemError | CommandError):
        text = readable(str(e))
    elif isinstance(e, RedisError):
        text = f"Redis failed: {type(e).__name__}: {e}"
    else:
        text = f"{type(e).__name__}: {e}"
    return re.sub(r"\s*\n\s*", " ", text.strip())


# A dead letter's reason as the runtime words a payload that fails validation: pydantic's
# errors as a Python list of dicts. Only their locations and messages are read back.
_LISTED = re.compile(r"(payload fails validation for \S+: )(\[\{.*\}\])", re.DOTALL)
_LOC_MSG = re.compile(
    r"'loc': \((?P<loc>[^)]*)\), 'msg': (?P<msg>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"
)


def readable(text: str) -> str:
    """``text`` with a listed validation failure (a dead letter's reason) as ``field:
    message`` items, as ``problems`` words them; other text as it is."""
    match = _LISTED.search(text)
    found = list(_LOC_MSG.finditer(match.group(2))) if match else []
    if match is None or not found:
        return text
    errors = [{"loc": _loc(m["loc"]), "msg": _literal(m["msg"])} for m in found]
    return text[: match.start(2)] + problems(errors, 10) + text[match.end(2) :]


def _loc(text: str) -> tuple[Any, ...]:
    parts = _literal(f"({text})")
    return parts if isinstance(parts, tuple) else (text,)


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def load_actors(spec: str) -> list[ActorType[Any]]:
    """``module`` (its ``actors`` list) or ``module:name`` (an ActorType or a list of them)."""
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:  # like celery and uvicorn: the app lives in the project
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"cannot import actor module {module_name!r}: {e}") from e
    except Exception as e:  # the app's own code failed as it was imported
        raise ConfigError(f"cannot import actor module {module_name!r}: {describe(e)}") from e
    value = getattr(module, attr or "actors", None)
    if isinstance(value, ActorType):
        return [value]
    if isinstance(value, list | tuple) and all(isinstance(a, ActorType) for a in value):
        return list(value)
    raise ConfigError(f"{spec!r} is not an ActorType or a list of ActorTypes (module:name)")


class Settings:
    """The global options, and the system built from them on first use."""

    def __init__(self, url: str | None, app: str | None, as_json: bool, verbose: bool) -> None:
        self.url = url
        self.app = app
        self.json = as_json
        self.verbose = verbose
        self._system: ActorSystem | None = None

    def system(
        self,
        *,
        needs_app: bool = False,
        writes: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> ActorSystem:
        """The system of the global options; ``writes``: the command writes to Redis, which
        an in-process fakeredis would forget as the command exits."""
        if self._system is None:
            if needs_app and not self.app:
                raise ConfigError(
                    f"this command needs the actor types: pass --app module[:name] or set "
                    f"{ENV_PREFIX}APP"
                )
            env = dict(os.environ)
            if self.url:
                env[f"{ENV_PREFIX}REDIS_URL"] = self.url
            if writes:
                _refuse_in_process(env.get(f"{ENV_PREFIX}REDIS_URL", ""))
            for name, value in (options or {}).items():
                if value is not None:
                    env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
            actors = load_actors(self.app) if self.app else []
            self._system = ActorSystem.from_env(actors=actors, environ=env)
        return self._system

    def out(
        self, data: Any, rows: Sequence[Sequence[Any]] | None = None, headers: Sequence[str] = ()
    ) -> None:
        """Print JSON with --json, else a table (``rows``) or key: value lines."""
        if self.json:
            click.echo(json.dumps(data, default=str))
        elif rows is not None:
            click.echo(table(headers, rows))
        elif isinstance(data, dict):
            click.echo(aligned(data))
        else:
            click.echo(data)


def _refuse_in_process(url: str) -> None:
    if urlsplit(url).scheme != "fakeredis":
        return
    command = click.get_current_context().command_path.partition(" ")[2]
    raise CommandError(
        f"fakeredis:// lives in this process: what {command} writes would vanish when the "
        "command exits; use a redis:// URL"
    )


def aligned(data: Mapping[str, Any]) -> str:
    """``key  value`` lines, values aligned; a value's further lines indented under it."""
    width = max((len(k) for k in data), default=0)
    indent = "\n" + " " * (width + 2)
    return "\n".join(
        f"{key:<{width}}  {indent.join(str(value).splitlines())}" for key, value in data.items()
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if not rows:
        lines.append("(none)")
    return "\n".join(lines)


def iso(ms: int | None) -> str:
    return (
        "-"
        if ms is None
        else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    )


pass_settings = click.make_pass_decorator(Settings)


class Group(click.Group):
    """Turns a user or connection error into one line on stderr and exit code 2 (with
    ``--verbose``, its traceback); click's usage errors keep click's own form."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as e:
            settings = ctx.find_object(Settings)
            if settings is not None and settings.verbose:
                click.echo("".join(traceback.format_exception(e)).rstrip(), err=True)
            else:
                click.echo(f"actor-system: {describe(e)}", err=True)
            ctx.exit(2)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar=f"{ENV_PREFIX}REDIS_URL",
    help="Redis URL: redis://, rediss:// or fakeredis:// (in this process: commands that "
    "write refuse it) [env ACTOR_SYSTEM_REDIS_URL]",
)
@click.option(
    "--app",
    envvar=f"{ENV_PREFIX}APP",
    help="module with an `actors` list, or module:name [env ACTOR_SYSTEM_APP]",
)
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of tables")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    envvar=f"{ENV_PREFIX}LOG_FORMAT",
    show_default=True,
    help="log line format",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="log at INFO (default WARNING); an error prints its full traceback",
)
@click.pass_context
def main(
    ctx: click.Context,
    url: str | None,
    app: str | None,
    as_json: bool,
    log_format: str,
    verbose: bool,
) -> None:
    """Send to, inspect and run actors of an actor-system application."""
    logs.configure(log_format, 20 if verbose else 30)
    ctx.obj = Settings(url, app, as_json, verbose)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--module", help="the Python package of the actors [default: the folder's name]")
@click.option("--service", help="the Serverless service name [default: the module's, with -]")
def init(directory: Path, module: str | None, service: str | None) -> None:
    """Write a new project into DIRECTORY: an actor module, its Lambda entry, a test on the
    manual clock, serverless.yml, package.json and requirements.txt naming this library."""
    from actor_system import scaffold

    project = scaffold.init(directory, module=module, service=service)
    module_dir = project.handler.split("/")[0]
    click.echo(f"wrote {directory}: actors in {module_dir}/actors.py; next, in that folder:")
    click.echo("  python3 -m venv .venv && . .venv/bin/activate")
    click.echo("  pip install -r requirements-dev.txt")
    click.echo("  pytest")
    click.echo("  npm ci --no-audit --no-fund && npx osls package --stage dev")


@main.command()
@click.argument("type_name", metavar="TYPE")
@click.argument("actor_id", metavar="ID")
@click.argument("message_type")
@click.argument("payload", metavar="JSON")
@click.option("--delay", type=float, help="seconds to defer delivery")
@click.option(
    "--at",
    "at_",
    type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"]),
    help="deliver at this time (ISO 8601; UTC if no offset)",
)
@click.option("--idempotency-key", help="the same key to the same actor is processed once")
@click.option(
    "--lenient",
    is_flag=True,
    help="ignore payload fields the message type does not know (default: reject them)",
)
@pass_settings
def send(
    s: Settings,
    type_name: str,
    actor_id: str,
    message_type: str,
    payload: str,
    delay: float | None,
    at_: datetime | None,
    idempotency_key: str | None,
    lenient: bool,
) -> None:
    """Send MESSAGE_TYPE with a JSON payload to actor TYPE/ID; prints the message id.

    JSON is the payload itself, - to read it from stdin, or @PATH to read it from a file.
    A payload field the message type does not know is an error that names it (a typo would
    otherwise be dropped and the field's default sent); --lenient ignores such fields."""
    system = s.system(needs_app=True, writes=True)
    msg = _message(system, type_name, message_type, payload, lenient)
    if at_ is not None and at_.tzinfo is None:
        at_ = at_.replace(tzinfo=UTC)
    mid = system.send(
        ActorRef(type_name, actor_id), msg, delay=delay, at=at_, idempotency_key=idempotency_key
    )
    s.out({"id": mid} if s.json else mid)


@main.command()
@click.argument("type_name", metavar="TYPE")
@click.argument("actor_id", metavar="ID")
@click.argument("message_type")
@click.argument("payload", metavar="JSON")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="seconds to wait")
@click.option("--idempotency-key", help="the same key to the same actor is processed once")
@click.option("--lenient", is_flag=True, help="ignore payload fields the type does not know")
@pass_settings
def ask(
    s: Settings,
    type_name: str,
    actor_id: str,
    message_type: str,
    payload: str,
    timeout: float,
    idempotency_key: str | None,
    lenient: bool,
) -> None:
    """Send MESSAGE_TYPE to actor TYPE/ID and print the handler's reply as JSON (JSON: the
    payload, - for stdin or @PATH for a file, as for send).

    The turn runs here when it can, else a drain's commit is awaited. A message that is
    dead-lettered, or no reply within --timeout, is an error (exit code 2) naming why."""
    system = s.system(needs_app=True, writes=True)
    msg = _message(system, type_name, message_type, payload, lenient)
    value = system.ask(
        ActorRef(type_name, actor_id), msg, timeout=timeout, idempotency_key=idempotency_key
    )
    click.echo(json.dumps(to_jsonable_python(value), default=str))


def _message(
    system: ActorSystem, type_name: str, message_type: str, payload: str, lenient: bool
) -> BaseModel:
    """The message a command line gives: its type's model, validated from JSON (strict
    unless ``lenient``)."""
    model, _ = system.registry.get(type_name).resolve(message_type)
    try:
        data = json.loads(payload_text(payload))
    except ValueError as e:
        raise InvalidSend(f"invalid {message_type} payload: not JSON: {e}") from None
    return parse_payload(model, data, strict=not lenient)


def payload_text(arg: str) -> str:
    """A payload argument's JSON: ``-`` reads stdin, ``@PATH`` a file, else the argument."""
    if arg == "-":
        return sys.stdin.read()
    if not arg.startswith("@"):
        return arg
    path = arg[1:]
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise CommandError(f"cannot read payload file {path!r}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise CommandError(f"payload file {path!r} is not UTF-8: {e}") from e


@main.command()
@click.argument("type_name", metavar="TYPE")
@click.argument("actor_id", metavar="ID")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@pass_settings
def delete(s: Settings, type_name: str, actor_id: str, yes: bool) -> None:
    """End actor TYPE/ID: its state and every key of it go (messages still queued start it
    anew from the default state). Needs no --app."""
    ref = ActorRef(type_name, actor_id)
    system = s.system(writes=True)
    if not yes:
        click.confirm(f"delete actor {ref.key} and its state?", abort=True)
    had = system.delete(ref)
    note = "" if had else " (it had no stored state)"
    s.out({"deleted": ref.key, "had_state": had} if s.json else f"deleted {ref.key}{note}")


@main.command()
@click.argument("message_id")
@click.option("--timeout", type=float, default=0.0, show_default=True, help="seconds to wait")
@pass_settings
def reply(s: Settings, message_id: str, timeout: float) -> None:
    """Print the reply of an asked message as JSON (kept reply_ttl_s after its commit); an
    error (exit code 2) if it failed or has none."""
    click.echo(json.dumps(s.system().reply(message_id, timeout=timeout)))


@main.command()
@click.argument("type_name", metavar="TYPE")
@click.argument("actor_id", metavar="ID")
@click.option(
    "--raw",
    is_flag=True,
    help='the stored mapping as it is ("_v": its version), even if it does not validate; '
    "null if none; needs no --app",
)
@pass_settings
def state(s: Settings, type_name: str, actor_id: str, raw: bool) -> None:
    """Print the committed state of actor TYPE/ID as JSON (migrated to the current version).

    An actor with no stored state prints its default state and says so on stderr; with
    --json the output is {"actor", "exists", "state"}. A state this deploy cannot read is a
    one-line error; --raw shows what is stored."""
    ref = ActorRef(type_name, actor_id)
    system = s.system(needs_app=not raw)
    if raw:
        click.echo(json.dumps(jsonable(system.raw_state(ref)), sort_keys=True))
        return
    actor = system.registry.get(ref.type)
    data, _ = system.backend.load_state(ref.key)
    value, exists = _decoded(ref, actor, data), data is not None
    if s.json:
        found = {"actor": ref.key, "exists": exists, "state": value.model_dump(mode="json")}
        click.echo(json.dumps(found))
        return
    click.echo(value.model_dump_json())
    if not exists:
        click.echo(
            f"actor-system: actor {ref.key} has no stored state (printed: its default)", err=True
        )


def _decoded(ref: ActorRef, actor: ActorType[Any], data: bytes | None) -> BaseModel:
    """The stored state (the default if ``data`` is None); one that does not fit the model
    is one line naming the actor and the first problems."""
    try:
        state: BaseModel = stored_state.decode(actor, data).state
        return state
    except stored_state.StateInvalid as e:
        if not e.errors:
            raise CommandError(f"{e} (actor {ref.key}; state --raw prints it)") from e
        raise CommandError(
            f"stored state of actor type {actor.name!r} (version {e.version}) does not "
            f"validate against {actor.state_type.__name__}: the state stored for actor "
            f"{ref.key} does not fit the current model ({problems(e.errors)}); state --raw "
            "prints it"
        ) from e
    except DecodeError as e:
        raise CommandError(f"{e} (actor {ref.key})") from e


def jsonable(value: Any) -> Any:
    """A decoded msgpack value as JSON can hold it: bytes (values or keys) as
    ``"base64:..."``, extension types as ``{"ext": code, "base64": data}``."""
    if isinstance(value, dict):
        return {_json_key(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, msgpack.ExtType):
        return {"ext": value.code, "base64": base64.b64encode(value.data).decode("ascii")}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return "base64:" + base64.b64encode(value).decode("ascii")
    return value


def _json_key(key: Any) -> str:
    if isinstance(key, bytes):
        return "base64:" + base64.b64encode(key).decode("ascii")
    return key if isinstance(key, str) else str(key)


@main.group()
def deferred() -> None:
    """List or cancel deferred messages."""


@deferred.command("list")
@click.option(
    "--actor",
    metavar="KEY",
    help="only this actor (TYPE/ID), or the actors whose key starts with KEY (TYPE, TYPE/)",
)
@click.option("--limit", type=int, default=100, show_default=True)
@pass_settings
def deferred_list(s: Settings, actor: str | None, limit: int) -> None:
    """Pending deferred messages, earliest first, with their message types."""
    system = s.system()
    data = [
        {"id": d.id, "actor": d.actor, "type": d.type, "due": d.due.isoformat()}
        for d in _deferred(system, actor, limit)
    ]
    s.out(
        data,
        [(d["id"], d["actor"], d["type"], d["due"]) for d in data],
        ("ID", "ACTOR", "TYPE", "DUE (UTC)"),
    )


def _deferred(system: ActorSystem, actor: str | None, limit: int) -> list[Deferred]:
    """A full key (TYPE/ID) is one actor's; anything else is a key prefix, looked for among
    the earliest ``limit * 100`` of each delay shard, as the backend does for one actor."""
    if not actor:
        return system.deferred(limit)
    kind, _, actor_id = actor.partition("/")
    if actor_id:
        return system.deferred(limit, ActorRef(kind, actor_id))
    found = system.deferred(limit * 100)
    return [d for d in found if d.actor.startswith(actor)][:limit]


@deferred.command("cancel")
@click.argument("message_id")
@pass_settings
def deferred_cancel(s: Settings, message_id: str) -> None:
    """Cancel a deferred message that is not yet due."""
    if not s.system(writes=True).cancel(message_id):
        raise InvalidSend(f"no pending deferred message {message_id} (delivered or unknown)")
    s.out({"cancelled": message_id} if s.json else f"cancelled {message_id}")


@main.group()
def reminders() -> None:
    """List or forget actors' reminders."""


@reminders.command("list")
@click.argument("type_name", metavar="[TYPE", required=False)
@click.argument("actor_id", metavar="[ID]]", required=False)
@click.option("--limit", type=int, default=100, show_default=True, help="actors listed at most")
@pass_settings
def reminders_list(s: Settings, type_name: str | None, actor_id: str | None, limit: int) -> None:
    """The reminders of one actor, of the actors of a type, or of every actor (from the
    index each commit keeps), the earliest due first within each actor."""
    system = s.system()
    if type_name is not None and actor_id is not None:
        actors = [ActorRef(type_name, actor_id).key]
    else:
        if type_name is not None:
            ActorRef(type_name, "-")  # the type name's own check, one line if it fails
        actors = system.backend.reminder_actors(limit, type_name)
    data = []
    for key in actors:
        ref = ActorRef.from_key(key)
        for r in system.reminders(ref):
            if r.every is not None:
                schedule = f"every {r.every.total_seconds():g}s"
            elif r.cron is not None:
                schedule = f"cron {r.cron} {r.tz}"
            else:
                schedule = "once"
            data.append(
                {
                    "actor": key,
                    "name": r.name,
                    "type": r.message_type,
                    "due": r.due.isoformat(timespec="milliseconds"),
                    "schedule": schedule,
                    "remaining": r.remaining,
                    "until": None if r.until is None else r.until.isoformat(),
                    "catchup": r.catchup,
                }
            )
    s.out(
        data,
        [
            (d["actor"], d["name"], d["type"], d["due"], d["schedule"], d["remaining"] or "-")
            for d in data
        ],
        ("ACTOR", "NAME", "TYPE", "DUE (UTC)", "SCHEDULE", "LEFT"),
    )


@reminders.command("forget")
@click.argument("type_name", metavar="TYPE")
@click.argument("actor_id", metavar="ID")
@click.argument("name")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="seconds to wait")
@pass_settings
def reminders_forget(s: Settings, type_name: str, actor_id: str, name: str, timeout: float) -> None:
    """Remove a reminder (applied in the actor's turn: needs --app or ACTOR_SYSTEM_APP)."""
    system = s.system(writes=True)
    ref = ActorRef(type_name, actor_id)
    if not any(r.name == name for r in system.reminders(ref)):
        raise InvalidSend(f"actor {ref.key} has no reminder {name!r}")
    system.forget(ref, name, timeout=timeout)
    s.out({"forgotten": name, "actor": ref.key} if s.json else f"forgot {name} of {ref.key}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="the address to bind")
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--read-only", is_flag=True, help="no actions: every POST answers 403")
@click.option(
    "--token",
    envvar=f"{ENV_PREFIX}DASHBOARD_TOKEN",
    help=f"required to bind beyond loopback [env: {ENV_PREFIX}DASHBOARD_TOKEN]",
)
@pass_settings
def dashboard(s: Settings, host: str, port: int, read_only: bool, token: str | None) -> None:
    """Serve the operations dashboard in the browser (needs the dashboard extra)."""
    if not token and not _loopback(host):
        raise ConfigError(
            f"--host {host} reaches beyond this machine: give a token (--token or "
            f"{ENV_PREFIX}DASHBOARD_TOKEN), or bind 127.0.0.1"
        )
    try:
        import uvicorn

        from actor_system.dashboard import app
    except ImportError as e:
        raise ConfigError(
            f"the dashboard needs its extra: pip install 'actor-system[dashboard]' ({e})"
        ) from None
    system = s.system(writes=not read_only)
    where = f"http://{host}:{port}/"
    click.echo(f"actor-system dashboard on {where}{' (read-only)' if read_only else ''}", err=True)
    uvicorn.run(
        app(system, token=token, read_only=read_only), host=host, port=port, log_level="warning"
    )


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@main.command()
@click.option(
    "--reminders",
    is_flag=True,
    help="also arm again every reminder the S3 objects hold (after Redis lost everything; "
    "reads every object)",
)
@pass_settings
def recover(s: Settings, reminders: bool) -> None:
    """After Redis lost writes: send again what S3-state actors sent and Redis lost."""
    system = s.system(writes=True)
    done = {"actors_resent": system.recover()}
    if reminders:
        done["reminders_rearmed"] = system.rearm_reminders()
    s.out(done)


@main.group()
def dlq() -> None:
    """Inspect, redrive or purge dead letters."""


@dlq.command("list")
@click.option("--limit", type=int, default=100, show_default=True)
@pass_settings
def dlq_list(s: Settings, limit: int) -> None:
    """Dead letters, newest first."""
    dead = s.system().dead_letters(limit)
    data = [
        {
            "id": d.id,
            "actor": d.actor,
            "attempts": d.attempts,
            "at": iso(d.at_ms),
            "reason": d.reason,
        }
        for d in dead
    ]
    rows = [
        (d.id or "-", d.actor or "-", d.attempts, iso(d.at_ms), summary(d.reason)) for d in dead
    ]
    s.out(data, rows, ("ID", "ACTOR", "ATTEMPTS", "AT (UTC)", "REASON"))


def summary(reason: str) -> str:
    """A reason's first line, cut to the table's width."""
    lines = readable(reason).strip().splitlines() or [""]
    first = lines[0]
    if len(first) > _REASON_WIDTH:
        return first[: _REASON_WIDTH - 3] + "..."
    return first + " ..." if len(lines) > 1 else first


@dlq.command("show")
@click.argument("message_id")
@click.option("--raw", is_flag=True, help="also print the entry's bytes (hex)")
@pass_settings
def dlq_show(s: Settings, message_id: str, raw: bool) -> None:
    """One dead letter in full: why (reason, attempts, errors) and its message (type,
    target, payload as JSON, attempt, sent and due times). The entry's bytes are printed
    with --raw, or when they do not decode; --json always has them ("entry", hex)."""
    d = s.system().dead_letter(message_id)
    if d is None:
        raise InvalidSend(f"no dead letter with id {message_id}")
    try:
        env: Envelope | None = decode(d.entry)
        undecodable = ""
    except DecodeError as e:
        env, undecodable = None, str(e)
    if s.json:
        s.out(_dead_json(d, env, undecodable))
    else:
        s.out(_dead_text(d, env, undecodable, raw))


def _dead_json(d: DeadLetter, env: Envelope | None, undecodable: str) -> dict[str, Any]:
    return {
        "id": d.id,
        "actor": d.actor,
        "attempts": d.attempts,
        "at": iso(d.at_ms),
        "reason": d.reason,
        "first_error": d.first_error,
        "error": d.error,
        "envelope": None if env is None else _envelope(env),
        "decode_error": undecodable or None,
        "entry": d.entry.hex(),
    }


def _envelope(env: Envelope) -> dict[str, Any]:
    return {
        "id": env.id,
        "type": env.type,
        "target": env.target,
        "payload": jsonable(env.payload),
        "attempt": env.attempt,
        "sent_at": iso(env.sent_at_ms),
        "due_at": None if env.due_at_ms is None else iso(env.due_at_ms),
        "reply": env.reply,
    }


def _dead_text(d: DeadLetter, env: Envelope | None, undecodable: str, raw: bool) -> dict[str, Any]:
    lines: dict[str, Any] = {
        "id": d.id or "-",
        "actor": d.actor or "-",
        "at": iso(d.at_ms),
        "attempts": d.attempts,
        "reason": readable(d.reason),
    }
    if env is None:
        lines["message"] = f"undecodable: {undecodable}"
    else:
        lines |= {
            "message": env.type,
            "target": env.target,
            "payload": json.dumps(jsonable(env.payload)),
            "attempt": env.attempt,
            "sent": iso(env.sent_at_ms),
            "due": iso(env.due_at_ms),
        }
        if env.reply is not None:
            lines["reply to"] = env.reply or "its asker"
    if d.first_error not in ("", d.reason, d.error):
        lines["first error"] = readable(d.first_error)
    lines["error"] = readable(d.error) or "-"
    if raw or env is None:
        lines["entry"] = d.entry.hex()
    return lines


def _each_dead(
    s: Settings, message_id: str | None, every: bool, verb: str, action: Callable[[Any], bool]
) -> None:
    system = s.system()
    if every == bool(message_id):
        raise InvalidSend(f"{verb} takes either a MESSAGE_ID or --all")
    if message_id:
        d = system.dead_letter(message_id)
        if d is None:
            raise InvalidSend(f"no dead letter with id {message_id}")
        targets = [d]
    else:
        targets = system.dead_letters(system.backend.dead_letter_count())
    done = 0
    with _progress(targets, f"{verb} dead letters") as items:
        for d in items:
            done += action(d)
    s.out({verb: done} if s.json else f"{verb}: {done} dead letter(s)")


def _progress(items: Sequence[Any], label: str) -> Any:
    """A progress bar on an interactive terminal, silence otherwise."""
    show = sys.stderr.isatty() and len(items) > 1
    return click.progressbar(items, label=label, file=sys.stderr if show else open(os.devnull, "w"))


@dlq.command("redrive")
@click.argument("message_id", required=False)
@click.option("--all", "every", is_flag=True, help="redrive every dead letter")
@pass_settings
def dlq_redrive(s: Settings, message_id: str | None, every: bool) -> None:
    """Put dead letters back in their actors' mailboxes with a fresh attempt count."""
    _each_dead(s, message_id, every, "redriven", s.system(writes=True).redrive)


@dlq.command("purge")
@click.argument("message_id", required=False)
@click.option("--all", "every", is_flag=True, help="delete every dead letter")
@click.option("--yes", is_flag=True, help="do not ask for confirmation with --all")
@pass_settings
def dlq_purge(s: Settings, message_id: str | None, every: bool, yes: bool) -> None:
    """Delete dead letters for good."""
    system = s.system(writes=True)
    if every and not yes and not click.confirm("Delete every dead letter?", err=True):
        raise click.Abort
    _each_dead(s, message_id, every, "purged", system.purge)


@main.command()
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="worker processes",
)
@click.option("--batch", type=int, help="messages per turn")
@click.option("--lease-ms", type=int, help="lease of a turn")
@click.option("--max-attempts", type=int, help="deliveries before dead-lettering")
@click.option(
    "--check",
    "check_only",
    is_flag=True,
    help="reach Redis (and the AWS stores) once and exit: 0 if they answer, 2 if not",
)
@click.option(
    "--lane",
    type=click.Choice(["long"]),
    help="drain the long-work lane only: actors whose work does not fit a Lambda invocation",
)
@click.option(
    "--idle-exit",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="with --lane long: end once the lane has stayed empty this long [default: 60]",
)
@click.option("--child", is_flag=True, hidden=True)  # one of --concurrency's processes
@pass_settings
def worker(
    s: Settings,
    concurrency: int,
    batch: int | None,
    lease_ms: int | None,
    max_attempts: int | None,
    check_only: bool,
    lane: str | None,
    idle_exit: float | None,
    child: bool,
) -> None:
    """Drain until SIGTERM or SIGINT (each stops after its current round).

    At start it reaches Redis once: credentials Redis refuses, a database it lacks or TLS
    on one side only end it with one line and exit status 2; a Redis that does not answer
    yet is waited for, as any outage later is. With --lane long it drains only the
    long-work lane (what Lambda drains hand over) and ends once that stays empty."""
    if idle_exit is not None and lane is None:
        raise CommandError("--idle-exit applies to --lane long only")
    if lane == "long" and idle_exit is None:
        idle_exit = 60.0
    from actor_system.adapters.redis.backend import check_url

    options = {"batch": batch, "lease_ms": lease_ms, "max_attempts": max_attempts}
    url = s.url or os.environ.get(f"{ENV_PREFIX}REDIS_URL", "")
    # Other schemes (fakeredis://, a typo): building the system says what is wrong.
    reachable = urlsplit(url).scheme in ("redis", "rediss", "unix")
    if check_only:
        if reachable:
            check_url(url)
        s.system(options=options).backend.check()  # Redis again, then the AWS stores
        s.out({"ok": True, "redis": redact_url(url)})
        return
    try:
        if reachable:
            check_url(url)  # before the system is built: seconds, not the client's retries
    except BackendError as e:
        log.warning("%s; waiting for it", e)
    system = s.system(needs_app=True, options=options)
    where = redact_url(url)
    if not child:
        logging.getLogger("actor_system").setLevel(min(logging.INFO, log.getEffectiveLevel()))
        opts = system.options
        log.info(
            "worker starting: redis %s, actor types %s, lane %s, %d process(es), batch %d, "
            "lease %d ms",
            where,
            ", ".join(sorted(a.name for a in system.registry)) or "-",
            f"long (ends after {idle_exit:g} s idle)" if lane else "ordinary",
            concurrency,
            opts.batch,
            opts.lease_ms,
        )
    if concurrency == 1:
        report = system.worker(lane="long" if lane else "", idle_exit_s=idle_exit).run()
        totals = {
            "turns": report.turns,
            "messages": report.messages,
            "dead_letters": report.dead_letters,
            "retries": report.retries,
        }
    else:
        totals = _run_children(s, concurrency, {**options, "lane": lane, "idle_exit": idle_exit})
    s.out(totals)


def _run_children(s: Settings, n: int, options: dict[str, Any]) -> dict[str, int]:
    args = [sys.executable, "-m", "actor_system.cli", "--json", "--app", str(s.app)]
    if s.url:
        args += ["--url", s.url]
    args += ["worker", "--child"]
    for name, value in options.items():
        if value is not None:
            args += [f"--{name.replace('_', '-')}", str(value)]
    children = [subprocess.Popen(args, stdout=subprocess.PIPE) for _ in range(n)]

    def forward(signum: int, frame: Any) -> None:
        for child in children:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    totals: dict[str, int] = {}
    for child in children:
        out, _ = child.communicate()
        for key, value in (json.loads(out) if out.strip() else {}).items():
            totals[key] = totals.get(key, 0) + value
    return totals


@main.command()
@click.option("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS")
@click.option("--top", type=int, default=10, show_default=True, help="deepest mailboxes shown")
@pass_settings
def stats(s: Settings, watch: float | None, top: int) -> None:
    """Mailbox depths, in-flight messages, leases, deferred messages and dead letters."""
    system = s.system()
    while True:
        data = system.stats()
        data["mailboxes"] = dict(list(data["mailboxes"].items())[:top])
        if not s.json:
            data["next_due"] = iso(data.pop("next_due_ms"))
            data["mailboxes"] = ", ".join(f"{k}={v}" for k, v in data["mailboxes"].items()) or "-"
        if watch and sys.stdout.isatty() and not s.json:
            click.clear()
        s.out(data)
        if not watch:
            return
        time.sleep(watch)


@main.command()
@pass_settings
def migrate(s: Settings) -> None:
    """Move data of the key layout before partitions (0.x) into the partitioned layout.

    Run it once, with every worker stopped, on the Redis a 0.x deployment used (a single
    node). A start on such data is refused until then."""
    from actor_system.adapters.composite import CompositeBackend
    from actor_system.adapters.redis.backend import RedisBackend, old_layout
    from actor_system.adapters.redis.migrate import migrate as move

    system = s.system(writes=True)
    backend = system.backend
    if isinstance(backend, CompositeBackend):
        backend = backend.redis  # S3 state or an external delay queue around these stores
    if not isinstance(backend, RedisBackend):
        raise CommandError("migrate works on the Redis stores only")
    client = backend._client
    if type(client).__name__ == "RedisCluster" or backend._cluster_enabled():
        raise CommandError("a Redis Cluster never held the layout before partitions")
    keys = backend.keys
    found = client.get(keys.layout)
    if found is not None and int(found) != keys.partitions:
        raise CommandError(
            f"this Redis is laid out in {int(found)} partitions; set "
            f"{ENV_PREFIX}PARTITIONS={int(found)}"
        )
    if not old_layout(client, keys.prefix):
        s.out({"migrated": False, "reason": "no data of the layout before partitions"})
        return
    moved = move(client, keys)
    s.out({"migrated": True, "partitions": keys.partitions, **vars(moved)})


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: Iterable[str]) -> None:
    """Run the benchmarks (bench/run.py of a source checkout); arguments pass through."""
    script = Path.cwd() / "bench" / "run.py"
    if not script.exists():
        script = Path(__file__).resolve().parent.parent / "bench" / "run.py"
    if not script.exists():
        raise ConfigError("bench/run.py not found: run this from a source checkout")
    sys.exit(subprocess.call([sys.executable, str(script), *args]))


if __name__ == "__main__":
    main()
