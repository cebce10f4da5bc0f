"""The real console script, run as a subprocess against a real redis-server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest

from actor_system import ActorSystem
from tests.actors import Add, Boom, Note, actors, counter, logger
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

EXE = shutil.which("actor-system") or "actor-system"


def cli(url: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [EXE, "--url", url, "--app", "tests.actors", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def test_send_then_state_round_trip(redis_url: str) -> None:
    mid = cli(redis_url, "send", "counter", "a", "Add", '{"n": 3}').stdout.strip()
    assert len(mid) == 32
    ActorSystem.from_url(redis_url, actors=actors).run_until_idle()
    assert json.loads(cli(redis_url, "state", "counter", "a").stdout)["count"] == 3


def test_user_mistakes_are_one_line_and_exit_2(redis_url: str) -> None:
    cases = [
        (("send", "counter", "a", "Add", '{"n": "x"}'), "invalid Add payload"),
        (("send", "ghost", "a", "Add", "{}"), "'ghost' is not registered"),
        (("send", "counter", "a", "Nope", "{}"), "no handler for message type 'Nope'"),
        (("send", "counter", "a", "Add", '{"n": 1}', "--delay", "-5"), "must be a finite"),
        (("deferred", "cancel", "f" * 32), "no pending deferred message"),
        (("dlq", "show", "f" * 32), "no dead letter with id"),
        (("dlq", "redrive"), "either a MESSAGE_ID or --all"),
    ]
    for args, message in cases:
        done = cli(redis_url, *args, ok=False)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    bad = subprocess.run([EXE, "--url", "redsi://x", "stats"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "unknown URL scheme 'redsi'" in bad.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("stats",),
        ("state", "counter", "a"),
        ("send", "counter", "a", "Add", '{"n": 1}'),
        ("deferred", "list"),
        ("deferred", "cancel", "f" * 32),
        ("dlq", "list"),
        ("dlq", "show", "f" * 32),
        ("delete", "counter", "a", "--yes"),
    ],
)
def test_an_unreachable_redis_is_one_line_and_exit_2(args: tuple[str, ...]) -> None:
    done = cli("redis://127.0.0.1:1/0", *args, ok=False)
    assert done.returncode == 2, done.stderr
    assert "Connection refused" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


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
