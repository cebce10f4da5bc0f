"""The real console script, run as a subprocess against a real redis-server."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import typing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgpack
import pytest
from pydantic import BaseModel

from actor_system import ActorSystem, ActorType, Context
from actor_system.ports import DeadLetter
from tests.actors import Add, Boom, CounterState, Note, actors, counter, logger
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

EXE = shutil.which("actor-system") or "actor-system"
UNKNOWN_ID = "f" * 32
UNREACHABLE = "redis://127.0.0.1:1/0"
ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")


def cli(
    url: str, *args: str, ok: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [EXE, "--url", url, "--app", "tests.actors", *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed command prints (exit code 2, nothing on stdout)."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("actor-system: ")
    return lines[0]


def test_send_then_state_round_trip(redis_url: str) -> None:
    mid = cli(redis_url, "send", "counter", "a", "Add", '{"n": 3}').stdout.strip()
    assert len(mid) == 32
    ActorSystem.from_url(redis_url, actors=actors).run_until_idle()
    assert json.loads(cli(redis_url, "state", "counter", "a").stdout)["count"] == 3


def test_user_mistakes_are_one_line_and_exit_2(redis_url: str) -> None:
    cases = [
        (
            ("send", "counter", "a", "Nope", "{}"),
            "actor type 'counter' has no handler for message type 'Nope' (known: Add)",
        ),
        (
            ("send", "counter", "a", "Add", '{"n": 1}', "--delay", "-5"),
            "delay=-5.0 must be a finite number of seconds >= 0",
        ),
        (
            ("deferred", "cancel", UNKNOWN_ID),
            f"no pending deferred message {UNKNOWN_ID} (delivered or unknown)",
        ),
        (("dlq", "show", UNKNOWN_ID), f"no dead letter with id {UNKNOWN_ID}"),
        (("dlq", "redrive"), "redriven takes either a MESSAGE_ID or --all"),
        (("reply", "xyz"), "'xyz' is not a message id (32 lowercase hex digits)"),
    ]
    for args, message in cases:
        assert error_line(cli(redis_url, *args, ok=False)) == f"actor-system: {message}", args


# Every command that talks to Redis (worker retries an unreachable one: it is left out there).
REDIS_COMMANDS = [
    ("stats",),
    ("state", "counter", "a"),
    ("state", "--raw", "counter", "a"),
    ("send", "counter", "a", "Add", '{"n": 1}'),
    ("ask", "counter", "a", "Add", '{"n": 1}'),
    ("delete", "counter", "a", "--yes"),
    ("reply", UNKNOWN_ID),
    ("recover",),
    ("deferred", "list"),
    ("deferred", "cancel", UNKNOWN_ID),
    ("dlq", "list"),
    ("dlq", "show", UNKNOWN_ID),
    ("dlq", "redrive", "--all"),
    ("dlq", "purge", "--all", "--yes"),
]
NOT_AN_INT = "n: Input should be a valid integer, unable to parse string as an integer"
GHOST = "actor type 'ghost' is not registered with this system (known: counter, logger, probe)"
ERROR_CASES = (
    [
        pytest.param(
            "redsi://x", args, "unknown URL scheme 'redsi' in 'redsi://x'", id=f"scheme-{args[0]}"
        )
        for args in [*REDIS_COMMANDS, ("worker",)]
    ]
    + [
        pytest.param(UNREACHABLE, args, "Connection refused.", id=f"unreachable-{args[0]}")
        for args in REDIS_COMMANDS
    ]
    + [
        pytest.param("", args, GHOST, id=f"ghost-{args[0]}")
        for args in [
            ("send", "ghost", "a", "Add", '{"n": 1}'),
            ("ask", "ghost", "a", "Add", '{"n": 1}'),
            ("state", "ghost", "a"),
        ]
    ]
    + [
        pytest.param(
            "",
            (verb, "counter", "a", "Add", '{"n": "x"}'),
            f"invalid Add payload: {NOT_AN_INT}",
            id=f"payload-{verb}",
        )
        for verb in ("send", "ask")
    ]
)


@pytest.mark.slow  # 34 subprocesses: with the slow suites
@pytest.mark.parametrize(("url", "args", "message"), ERROR_CASES)
def test_every_command_error_is_one_line_and_exit_2(
    url: str, args: tuple[str, ...], message: str, redis_url: str
) -> None:
    line = error_line(cli(url or redis_url, *args, ok=False))
    if url == UNREACHABLE:  # each command names the call that failed
        assert line.startswith("actor-system: Redis "), line
        assert line.endswith(
            f"failed: ConnectionError: Error 111 connecting to 127.0.0.1:1. {message}"
        )
    elif url:
        assert line.startswith(f"actor-system: {message}"), line
    else:
        assert line == f"actor-system: {message}"


def test_verbose_prints_the_traceback_instead(redis_url: str) -> None:
    done = cli(redis_url, "--verbose", "send", "ghost", "a", "Add", "{}", ok=False)
    assert done.returncode == 2
    assert done.stderr.startswith("Traceback (most recent call last):\n")
    assert done.stderr.rstrip().splitlines()[-1] == f"actor_system.errors.UnknownActorType: {GHOST}"
    assert "actor-system: " not in done.stderr


def plant_state(redis_url: str, key: str, mapping: dict[str, object]) -> None:
    """Store state bytes straight into Redis, as an older deploy would have left them."""
    system = ActorSystem.from_url(redis_url, actors=actors)
    name = system.backend.keys.actor(key, "state")  # type: ignore[attr-defined]
    data = msgpack.packb(mapping, use_bin_type=True)
    system.backend.client.hset(name, mapping={"d": data, "v": 1})  # type: ignore[attr-defined]
    system.close()


def test_a_stored_state_that_no_longer_fits_is_one_line(redis_url: str) -> None:
    plant_state(redis_url, "counter/bad", {"count": "x" * 500, "seen": [1, 2, 3], "_v": 1})
    line = error_line(cli(redis_url, "state", "counter", "bad", ok=False))
    assert line == (
        "actor-system: stored state of actor type 'counter' (version 1) does not validate "
        "against CounterState: the state stored for actor counter/bad does not fit the current "
        "model (count: Input should be a valid integer, unable to parse string as an integer; "
        "seen.0: Input should be a valid string; seen.1: Input should be a valid string; and 1 "
        "more); state --raw prints it"
    )
    raw = json.loads(cli(redis_url, "state", "--raw", "counter", "bad").stdout)
    assert raw == {"count": "x" * 500, "seen": [1, 2, 3], "_v": 1}
    verbose = cli(redis_url, "--verbose", "state", "counter", "bad", ok=False)
    assert verbose.returncode == 2
    assert "stored_state.StateInvalid: stored state of actor type 'counter'" in verbose.stderr
    assert verbose.stderr.rstrip().splitlines()[-1] == f"actor_system.cli.CommandError: {line[14:]}"


class Older:
    """The models of an older deploy: its Add took n as text."""

    class Add(BaseModel):
        n: str


older_counter = ActorType("counter", state=CounterState)


@older_counter.handler
def older_add(ctx: Context[CounterState], msg: Older.Add) -> None:
    pass


def test_validation_errors_are_field_message_items(redis_url: str, tmp_path: Path) -> None:
    bad = cli(redis_url, "send", "counter", "a", "Add", '{"n": "x", "work_ms": "y"}', ok=False)
    assert error_line(bad) == (
        f"actor-system: invalid Add payload: {NOT_AN_INT}; "
        "work_ms: Input should be a valid number, unable to parse string as a number"
    )
    # A pydantic error raised by the app itself as it is imported
    (tmp_path / "badapp.py").write_text(
        "from pydantic import BaseModel\n"
        "class Item(BaseModel):\n    n: int\n    m: int\n"
        "Item.model_validate({'n': 'x'})\n"
    )
    done = subprocess.run(
        [EXE, "--url", redis_url, "--app", "badapp", "stats"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert error_line(done) == (
        f"actor-system: cannot import actor module 'badapp': invalid Item: {NOT_AN_INT}; "
        "m: Field required"
    )
    # A message that fails validation where it is processed: the runtime's reason lists
    # pydantic's errors as Python dicts; the CLI prints them as items.
    sender = ActorSystem.from_url(redis_url, actors=[older_counter])
    mid = sender.send(older_counter.ref("v"), Older.Add(n="x"))
    ActorSystem.from_url(redis_url, actors=actors).run_until_idle()
    row = cli(redis_url, "dlq", "list").stdout.splitlines()[2]
    assert row.endswith(
        "payload fails validation for Add: n: Input should be a valid integer, unable ..."
    )
    shown = cli(redis_url, "dlq", "show", mid).stdout
    assert f"reason    payload fails validation for Add: {NOT_AN_INT}\n" in shown
    assert "[{" not in shown


def test_dlq_show_prints_the_decoded_message(redis_url: str) -> None:
    system = ActorSystem.from_url(redis_url, actors=actors, max_attempts=1)
    mid = system.send(logger.ref("x"), Boom(times=1))
    system.run_until_idle()
    dead = system.dead_letter(mid)
    assert dead is not None
    text = cli(redis_url, "dlq", "show", mid).stdout
    lines = text.splitlines()
    assert lines[:5] == [
        f"id        {mid}",
        "actor     logger/x",
        f"at        {lines[2][10:]}",
        "attempts  1",
        "reason    failed 1 times, last: RuntimeError: boom on attempt 1",
    ]
    assert ISO_MS.fullmatch(lines[2][10:])
    assert lines[5:10] == [
        "message   Boom",
        "target    logger/x",
        'payload   {"times": 1}',
        "attempt   1",
        f"sent      {lines[9][10:]}",
    ]
    assert ISO_MS.fullmatch(lines[9][10:])
    assert lines[10] == "due       -"
    assert lines[11] == "error     " + dead.error.splitlines()[0]
    assert lines[-1] == "          RuntimeError: boom on attempt 1"
    assert "entry" not in text
    raw = cli(redis_url, "dlq", "show", "--raw", mid).stdout.splitlines()
    assert raw[:-1] == lines
    assert raw[-1] == f"entry     {dead.entry.hex()}"
    data = json.loads(cli(redis_url, "--json", "dlq", "show", mid).stdout)
    assert data["envelope"] == {
        "id": mid,
        "type": "Boom",
        "target": "logger/x",
        "payload": {"times": 1},
        "attempt": 1,
        "sent_at": lines[9][10:],
        "due_at": None,
        "reply": None,
    }
    assert data["entry"] == dead.entry.hex()
    assert data["decode_error"] is None
    assert data["reason"] == dead.reason
    system.close()


def push_dead_letter(redis_url: str, dead: DeadLetter) -> None:
    """A dead letter stored as the runtime stores one."""
    system = ActorSystem.from_url(redis_url, actors=actors)
    backend: typing.Any = system.backend
    backend.client.lpush(
        backend.keys.dlq(backend.keys.part_of(dead.actor) if dead.actor else 0), dead.encode()
    )
    system.close()


def test_dlq_show_of_an_undecodable_entry_shows_the_reason_and_the_bytes(redis_url: str) -> None:
    now_ms = int(time.time() * 1000)
    push_dead_letter(
        redis_url, DeadLetter(UNKNOWN_ID, "counter/x", "undecodable entry", 1, now_ms, "", b"junk")
    )
    lines = cli(redis_url, "dlq", "show", UNKNOWN_ID).stdout.splitlines()
    assert lines[3:] == [
        "attempts  1",
        "reason    undecodable entry",
        "message   undecodable: entry of 4 bytes is too short to hold an envelope",
        "error     -",
        f"entry     {b'junk'.hex()}",
    ]
    data = json.loads(cli(redis_url, "--json", "dlq", "show", UNKNOWN_ID).stdout)
    assert data["envelope"] is None
    assert data["decode_error"] == "entry of 4 bytes is too short to hold an envelope"
    assert data["entry"] == b"junk".hex()


def test_dlq_list_shows_the_first_line_of_a_reason(redis_url: str) -> None:
    now_ms = int(time.time() * 1000)
    for mid, reason in (("a" * 32, "first line\nsecond line\nthird"), ("b" * 32, "y" * 200)):
        push_dead_letter(redis_url, DeadLetter(mid, "counter/x", reason, 1, now_ms, "", b""))
    lines = cli(redis_url, "dlq", "list").stdout.splitlines()
    assert len(lines) == 4  # header, rule, two rows
    assert lines[2].startswith("b" * 32)
    assert lines[2].endswith("  " + "y" * 77 + "...")
    assert lines[3].startswith("a" * 32)
    assert lines[3].endswith("  first line ...")
    listed = json.loads(cli(redis_url, "--json", "dlq", "list").stdout)
    assert [d["reason"] for d in listed] == ["y" * 200, "first line\nsecond line\nthird"]


def test_deferred_list_and_cancel(redis_url: str) -> None:
    mid = cli(redis_url, "send", "counter", "d", "Add", '{"n": 1}', "--delay", "600").stdout
    at = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0, tzinfo=None)
    cli(redis_url, "send", "counter", "e", "Add", '{"n": 1}', "--at", at.isoformat())
    listed = json.loads(cli(redis_url, "--json", "deferred", "list").stdout)
    assert [d["actor"] for d in listed] == ["counter/d", "counter/e"]
    assert listed[1]["due"].startswith(at.isoformat())
    only = json.loads(cli(redis_url, "--json", "deferred", "list", "--actor", "counter/e").stdout)
    assert [d["actor"] for d in only] == ["counter/e"]
    assert "counter/d" in cli(redis_url, "deferred", "list").stdout  # the table form
    cli(redis_url, "deferred", "cancel", mid.strip())
    assert len(json.loads(cli(redis_url, "--json", "deferred", "list").stdout)) == 1


def test_deferred_list_shows_types_and_takes_a_key_prefix(redis_url: str) -> None:
    system = ActorSystem.from_url(redis_url, actors=actors)
    ids = [
        system.send(counter.ref("o1"), Add(n=1), delay=600),
        system.send(logger.ref("l1"), Note(text="x"), delay=700),
        system.send(counter.ref("o2"), Add(n=2), delay=800),
    ]
    system.close()
    listed = json.loads(cli(redis_url, "--json", "deferred", "list").stdout)
    assert [(d["id"], d["actor"], d["type"]) for d in listed] == [
        (ids[0], "counter/o1", "Add"),
        (ids[1], "logger/l1", "Note"),
        (ids[2], "counter/o2", "Add"),
    ]
    table = cli(redis_url, "deferred", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "ACTOR", "TYPE", "DUE", "(UTC)"]
    assert table[3].split()[:3] == [ids[1], "logger/l1", "Note"]

    def actors_of(key: str) -> list[str]:
        out = cli(redis_url, "--json", "deferred", "list", "--actor", key).stdout
        return [d["actor"] for d in json.loads(out)]

    assert actors_of("counter") == ["counter/o1", "counter/o2"]
    assert actors_of("counter/") == ["counter/o1", "counter/o2"]
    assert actors_of("count") == ["counter/o1", "counter/o2"]
    assert actors_of("counter/o2") == ["counter/o2"]
    assert actors_of("counter/o") == []  # a full key: no actor counter/o
    assert actors_of("logger") == ["logger/l1"]
    assert actors_of("ghost") == []


def test_payloads_from_stdin_and_files(redis_url: str, tmp_path: Path) -> None:
    add = tmp_path / "add.json"
    add.write_text('{"n": 5}')
    cli(redis_url, "send", "counter", "p", "Add", "-", stdin='{"n": 2}')
    cli(redis_url, "send", "counter", "p", "Add", f"@{add}")
    asked = cli(redis_url, "ask", "counter", "p", "Add", f"@{add}")
    assert json.loads(asked.stdout) is None  # the handler returns nothing
    ActorSystem.from_url(redis_url, actors=actors).run_until_idle()
    assert json.loads(cli(redis_url, "state", "counter", "p").stdout)["count"] == 12
    nope = tmp_path / "nope.json"
    missing = cli(redis_url, "send", "counter", "p", "Add", f"@{nope}", ok=False)
    assert error_line(missing) == (
        f"actor-system: cannot read payload file '{nope}': No such file or directory"
    )
    empty = cli(redis_url, "send", "counter", "p", "Add", "-", ok=False, stdin="")
    assert error_line(empty) == (
        "actor-system: invalid Add payload: not JSON: Expecting value: line 1 column 1 (char 0)"
    )


def test_state_of_an_actor_without_stored_state(redis_url: str) -> None:
    none = cli(redis_url, "state", "counter", "nobody")
    assert none.stdout == '{"count":0,"seen":[]}\n'
    assert none.stderr == (
        "actor-system: actor counter/nobody has no stored state (printed: its default)\n"
    )
    as_json = cli(redis_url, "--json", "state", "counter", "nobody")
    assert json.loads(as_json.stdout) == {
        "actor": "counter/nobody",
        "exists": False,
        "state": {"count": 0, "seen": []},
    }
    assert as_json.stderr == ""
    system = ActorSystem.from_url(redis_url, actors=actors)
    mid = system.send(counter.ref("some"), Add(n=3))
    system.run_until_idle()
    some = cli(redis_url, "state", "counter", "some")
    assert (json.loads(some.stdout), some.stderr) == ({"count": 3, "seen": [mid]}, "")
    found = json.loads(cli(redis_url, "--json", "state", "counter", "some").stdout)
    assert found == {"actor": "counter/some", "exists": True, "state": {"count": 3, "seen": [mid]}}


WRITES = {
    "send": ("send", "counter", "a", "Add", '{"n": 1}'),
    "ask": ("ask", "counter", "a", "Add", '{"n": 1}'),
    "delete": ("delete", "counter", "a", "--yes"),
    "recover": ("recover",),
    "deferred cancel": ("deferred", "cancel", UNKNOWN_ID),
    "reminders forget": ("reminders", "forget", "counter", "a", "tick"),
    "dlq redrive": ("dlq", "redrive", "--all"),
    "dlq purge": ("dlq", "purge", "--all", "--yes"),
}


@pytest.mark.parametrize("command", WRITES)
def test_commands_that_write_refuse_fakeredis(command: str) -> None:
    assert error_line(cli("fakeredis://", *WRITES[command], ok=False)) == (
        f"actor-system: fakeredis:// lives in this process: what {command} writes would "
        "vanish when the command exits; use a redis:// URL"
    )


def test_commands_that_only_read_take_fakeredis() -> None:
    assert json.loads(cli("fakeredis://", "--json", "stats").stdout)["mailbox_messages"] == 0
    assert json.loads(cli("fakeredis://", "--json", "dlq", "list").stdout) == []


def test_dead_letters_list_show_redrive_purge(redis_url: str) -> None:
    system = ActorSystem.from_url(redis_url, actors=actors, max_attempts=1)
    bad = system.send(logger.ref("x"), Boom(times=1))
    other = system.send(logger.ref("y"), Boom(times=5))
    system.run_until_idle()
    listed = json.loads(cli(redis_url, "--json", "dlq", "list").stdout)
    assert {d["id"] for d in listed} == {bad, other}
    shown = json.loads(cli(redis_url, "--json", "dlq", "show", bad).stdout)
    assert "RuntimeError: boom on attempt 1" in shown["reason"]
    assert "Traceback" in shown["error"]
    cli(redis_url, "dlq", "redrive", bad)
    system.run_until_idle()  # attempt 1 again after redrive... and Boom(times=1) fails once
    assert system.state(logger.ref("x")).log == []  # type: ignore[attr-defined]
    # redrive resets the attempt count, so with more attempts allowed it now succeeds
    retry = ActorSystem.from_url(redis_url, actors=actors, max_attempts=3)
    cli(redis_url, "dlq", "redrive", bad)

    def retried() -> list[str]:
        retry.run_until_idle()  # attempt 1 fails; attempt 2 comes after the backoff (~1 s)
        return retry.state(logger.ref("x")).log  # type: ignore[attr-defined,no-any-return]

    assert wait_until(retried, what="the retry after the backoff") == ["boom attempt 2"]
    done = cli(redis_url, "--json", "dlq", "purge", "--all", "--yes")
    assert json.loads(done.stdout) == {"purged": 1}
    assert json.loads(cli(redis_url, "--json", "dlq", "list").stdout) == []


def test_stats_shows_depths_leases_and_deferred(redis_url: str) -> None:
    system = ActorSystem.from_url(redis_url, actors=actors)
    system.send_many([(counter.ref("s"), Add(n=1))] * 5 + [(logger.ref("t"), Note(text="x"))])
    system.send(counter.ref("s"), Add(n=1), delay=100)
    data = json.loads(cli(redis_url, "--json", "stats").stdout)
    assert data["mailbox_messages"] == 6
    assert data["mailboxes"] == {"counter/s": 5, "logger/t": 1}
    assert data["pending_deferred"] == 1
    assert data["next_due_ms"] > time.time() * 1000
    assert data["ready_actors"] == 2
    assert "mailbox_messages" in cli(redis_url, "stats").stdout


def test_worker_with_concurrency_drains_and_stops_on_sigterm(redis_url: str) -> None:
    system = ActorSystem.from_url(redis_url, actors=actors)
    system.send_many([(counter.ref(f"w{i % 10}"), Add(n=1)) for i in range(1000)])
    proc = subprocess.Popen(
        [
            EXE,
            "--json",
            "--url",
            redis_url,
            "--app",
            "tests.actors",
            "worker",
            "--concurrency",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(
        lambda: sum(system.state(counter.ref(f"w{i}")).count for i in range(10)) >= 1000,  # type: ignore[attr-defined]
        what="1000 messages",
        every_s=0.05,
    )
    proc.send_signal(signal.SIGTERM)  # each child stops after its round and reports it
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["messages"] == 1000


def test_json_logs_carry_actor_and_message_fields(redis_url: str) -> None:
    system = ActorSystem.from_url(redis_url, actors=actors, max_attempts=1)
    mid = system.send(logger.ref("j"), Boom(times=1))
    proc = subprocess.Popen(
        [
            EXE,
            "--log-format",
            "json",
            "--url",
            redis_url,
            "--app",
            "tests.actors",
            "worker",
            "--max-attempts",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(system.backend.dead_letter_count, what="a dead letter", every_s=0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    dead = [r for r in records if r["message"].startswith("dead letter")]
    assert dead, err
    assert dead[0]["actor"] == "logger/j"
    assert dead[0]["message_id"] == mid
    assert dead[0]["level"] == "ERROR"
    assert {"timestamp", "location", "service"} <= set(dead[0])


def test_stats_watch_refreshes_until_interrupted(redis_url: str) -> None:
    import threading

    lines: list[str] = []
    with subprocess.Popen(
        [EXE, "--json", "--url", redis_url, "stats", "--watch", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        stdout = proc.stdout
        assert stdout is not None

        def read() -> None:
            for line in stdout:  # each snapshot is flushed as it is printed
                lines.append(line)

        reader = threading.Thread(target=read)
        reader.start()
        # Interrupt once it has refreshed a few times (a fixed sleep can end before the CLI
        # has even started on a busy machine).
        try:
            wait_until(lambda: sum(ln.startswith("{") for ln in lines) >= 3, what="3 snapshots")
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
            reader.join(60)
    snapshots = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(snapshots) >= 3
    assert all("pending_deferred" in s for s in snapshots)


def test_ask_prints_the_reply_and_reply_reads_it_again(redis_url: str) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [EXE, "--url", redis_url, "--app", "tests.wake_actors", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "ACTOR_SYSTEM_MAX_ATTEMPTS": "1"},
        )

    asked = run("ask", "tally", "t", "Bump", '{"n": 4}', "--idempotency-key", "k")
    assert asked.returncode == 0, asked.stderr
    assert json.loads(asked.stdout) == {"total": 4}
    again = run("ask", "tally", "t", "Bump", '{"n": 4}', "--idempotency-key", "k")
    assert json.loads(again.stdout) == {"total": 4}  # the first reply; not processed twice
    failed = run("ask", "tally", "t", "Fail", '{"why": "no stock"}')
    assert failed.returncode == 2
    # The turn ran here: its dead letter is logged, then the command's one-line error.
    *logged, error = failed.stderr.strip().splitlines()
    assert error.startswith("actor-system: message ")
    assert error.endswith("failed: failed 1 times, last: RuntimeError: no stock")
    assert ["dead letter" in line for line in logged] == [True]
    assert "Traceback" not in failed.stderr
    mid = ActorSystem.from_url(redis_url, actors=actors).dead_letters()[0].id
    assert "no stock" in run("reply", mid).stderr
    unknown = run("reply", "f" * 32)
    assert unknown.returncode == 2
    assert "no reply to message" in unknown.stderr


def test_delete_ends_an_actor(redis_url: str) -> None:
    cli(redis_url, "send", "counter", "gone", "Add", '{"n": 3}')
    system = ActorSystem.from_url(redis_url, actors=actors)
    system.run_until_idle()
    assert system.raw_state(counter.ref("gone")) is not None
    refused = subprocess.run(
        [EXE, "--url", redis_url, "delete", "counter", "gone"],
        input="n\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0  # not confirmed: nothing deleted
    assert system.raw_state(counter.ref("gone")) is not None
    done = subprocess.run(
        [EXE, "--url", redis_url, "--json", "delete", "counter", "gone", "--yes"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"deleted": "counter/gone", "had_state": True}
    assert system.raw_state(counter.ref("gone")) is None


def test_reminders_list_and_forget(redis_url: str) -> None:
    from tests.reminder_actors import Arm, timer
    from tests.reminder_actors import actors as reminder_actors

    system = ActorSystem.from_url(redis_url, actors=reminder_actors)
    for i in range(3):
        system.send(timer.ref(f"t{i}"), Arm(every=600, times=5))
    system.send(timer.ref("t0"), Arm(name="daily", cron="0 9 * * *", tz="Europe/Berlin"))
    system.run_until_idle()

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [EXE, "--url", redis_url, "--app", "tests.reminder_actors", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if ok:
            assert done.returncode == 0, done.stderr
        return done

    rows = json.loads(run("--json", "reminders", "list").stdout)
    assert sorted((r["actor"], r["name"]) for r in rows) == [
        ("timer/t0", "daily"),
        ("timer/t0", "tick"),
        ("timer/t1", "tick"),
        ("timer/t2", "tick"),
    ]
    daily = next(r for r in rows if r["name"] == "daily")
    assert daily["schedule"] == "cron 0 9 * * * Europe/Berlin"
    assert daily["remaining"] is None
    assert ISO_MS.fullmatch(daily["due"])
    table = run("reminders", "list", "timer", "t1").stdout.splitlines()
    assert table[0].split() == ["ACTOR", "NAME", "TYPE", "DUE", "(UTC)", "SCHEDULE", "LEFT"]
    assert table[2].split()[:3] == ["timer/t1", "tick", "Tick"]
    assert table[2].split()[-3:] == ["every", "600s", "5"]
    assert len(json.loads(run("--json", "reminders", "list", "timer").stdout)) == 4
    assert json.loads(run("--json", "reminders", "list", "nosuch").stdout) == []
    assert json.loads(run("--json", "stats").stdout)["reminders"] == 4

    assert run("reminders", "forget", "timer", "t0", "daily").stdout.strip() == (
        "forgot daily of timer/t0"
    )
    assert [r.name for r in system.reminders(timer.ref("t0"))] == ["tick"]
    assert error_line(run("reminders", "forget", "timer", "t0", "daily", ok=False)) == (
        "actor-system: actor timer/t0 has no reminder 'daily'"
    )
    assert error_line(run("reminders", "list", "bad type!", ok=False)).startswith(
        "actor-system: actor type 'bad type!' must match"
    )
    assert json.loads(run("--json", "stats").stdout)["reminders"] == 3
    system.close()
