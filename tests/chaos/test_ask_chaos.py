"""Chaos for processing in the caller: ingress processes that ``ask`` (and ``send`` with
``process=True``) run turns themselves while drain workers run on the same Redis; ingress
processes and workers are SIGKILLed and restarted, ingress processes frozen (SIGSTOP) for up
to 2.5 leases, at random moments.

The ingress processes (tests/chaos/ask_procs.py) send numbered messages to a few tally
actors, which append ``<sender>:<n>`` to their state with a nonce drawn by the handler run,
and reply with the position at which they applied it and that nonce. A killed ingress
process starts again and sends again from an earlier point under the same idempotency keys;
a lease it held mid-turn expires and a drain (or the other ingress) recovers the claim. A
frozen one may wake up to find its actor taken over: its turn's commit is refused. At the
end:

- every message was applied exactly once, in send order per sender and actor, and nothing is
  left over (mailbox, in-flight list, lease, deferred message, dead letter);
- every reply an ``ask`` returned (logged by the ingress process before anything else) is
  what the committed history says that message produced, position and nonce: the reply of a
  turn that was not committed would carry a nonce the history does not have;
- the reply stored under each message id is that same one.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from actor_system import ActorSystem
from actor_system.envelope import new_id
from tests.chaos.ask_procs import TallyState, actors, asked, asking, read_log, tally, target
from tests.chaos.run import NOTHING_LEFT, leftovers
from tests.integration.workers import worker_args
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ACTORS = 8
PER_ACTOR = 100  # messages per ingress process and actor
SENDERS = ("i0", "i1")
WORKERS = 2
LEASE_MS = 1000
LEASE_S = LEASE_MS / 1000
CHAOS_S = 10.0  # the chaos stops after this long (or once every ingress process is done)
STARTED_S = 0.8  # a process is picked only after this long (its imports are done)
WORK_MS = 5.0  # each handler's work: a kill or freeze often lands mid-turn, holding a lease
PACE_MS = 1.0  # pause after each new message, so that sending spans the chaos
# The faults each run must have had (the chaos goes on a little longer if need be).
MIN_INGRESS_KILLS = 4
MIN_WORKER_KILLS = 3
MIN_MID_TURN = 2  # ingress processes frozen mid-turn, then past their lease


@dataclass(eq=False)
class Proc:
    """One ingress process or drain worker, restarted after each kill."""

    name: str
    args: list[str]
    stderr: Path
    env: dict[str, str] | None = None
    busy: Path | None = None  # an ingress process's busy file (tests/chaos/ask_procs.py)
    proc: subprocess.Popen[bytes] | None = None
    kills: int = 0
    freezes: int = 0
    mid_turn: int = 0  # freezes that caught it running the handler of a message it asked
    started: float = 0.0
    finished: float = 0.0  # when an ingress process was seen done (monotonic)

    def start(self, extra: list[str]) -> None:
        with self.stderr.open("ab") as err:
            self.proc = subprocess.Popen(
                self.args + extra, stdout=subprocess.DEVNULL, stderr=err, env=self.env
            )
        self.started = time.monotonic()

    def freeze(self) -> None:
        """SIGSTOP it, and wait until it is stopped (or gone)."""
        proc = self.proc
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)
        stat = Path(f"/proc/{proc.pid}/stat")

        def stopped() -> bool:
            try:
                return stat.read_text().rsplit(")", 1)[1].split()[0] in "TtZX"
            except (FileNotFoundError, ProcessLookupError):
                return True

        wait_until(stopped, 10, what=f"{self.name} to stop", every_s=0.0005)

    def freeze_mid_turn(self, rng: random.Random) -> bool:
        """Freeze it, if it can be caught running the handler of a message it asked within
        a few tries (True): then it holds its actor's lease, and the commit its ask waits
        for is not written."""
        assert self.busy is not None
        self.freezes += 1
        for _ in range(20):
            self.freeze()
            if asking(self.busy):
                self.mid_turn += 1
                return True
            self.thaw()
            time.sleep(rng.uniform(0.001, 0.004))
        self.freeze()
        return False

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> bool:
        """SIGKILL it; False if it had exited by itself just before."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            return False
        self.proc.send_signal(signal.SIGKILL)
        if self.proc.wait(10) != -signal.SIGKILL:
            return False
        self.kills += 1
        return True


@dataclass
class Run:
    ingress: list[Proc]
    workers: list[Proc]
    rng: random.Random
    finished: set[str] = field(default_factory=set)
    frozen: dict[str, tuple[Proc, float]] = field(default_factory=dict)  # name -> thaw time

    def running(self) -> list[Proc]:
        procs = [p for p in self.ingress if p.name not in self.finished] + self.workers
        return [p for p in procs if p.name not in self.frozen]

    def restart(self, p: Proc) -> None:
        seed = ["--seed", str(self.rng.randrange(1 << 30))]
        p.start(seed if p in self.ingress else [])

    def reap(self) -> None:
        """Note ingress processes that are done; one that failed fails the test."""
        for p in self.ingress:
            assert p.proc is not None
            rc = p.proc.poll()
            if rc is None or p.name in self.finished:
                continue
            assert rc == 0, f"{p.name} exited with {rc}: {p.stderr.read_text()[-3000:]}"
            self.finished.add(p.name)
            p.finished = time.monotonic()

    def refused(self) -> int:
        """Turns of the ingress processes whose lease was lost (taken over while frozen):
        the commit was refused, or the turn stopped at its next handler."""
        logs = "".join(p.stderr.read_text() for p in self.ingress if p.stderr.exists())
        return logs.count("lost before commit") + logs.count("lost during its turn")

    def enough(self) -> bool:
        """Each kind of fault has happened (what the test asserts)."""
        return (
            sum(p.kills for p in self.ingress) >= MIN_INGRESS_KILLS
            and sum(p.kills for p in self.workers) >= MIN_WORKER_KILLS
            and sum(p.mid_turn for p in self.ingress) >= MIN_MID_TURN
            and self.refused() >= 1
        )

    def thaw(self, now: float) -> None:
        for name, (p, at) in list(self.frozen.items()):
            if at <= now:
                p.thaw()
                del self.frozen[name]

    def stop(self) -> None:
        self.thaw(math.inf)
        for p in self.ingress:
            if p.proc is not None and p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait(10)
        for p in self.workers:
            assert p.proc is not None
            p.proc.send_signal(signal.SIGTERM)
        for p in self.workers:
            assert p.proc is not None
            try:
                p.proc.wait(30)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait(10)


def chaos(run: Run) -> None:
    """Every 0.15-0.5 s, one of: freeze an ingress process with SIGSTOP (mid-turn when it
    can be caught there, then past its lease), SIGKILL an ingress process, SIGKILL a worker;
    a killed process starts again. Only a process up for STARTED_S is picked: one still
    importing has nothing to lose. Goes on past CHAOS_S (up to twice that) until each kind
    of fault has happened (``Run.enough``)."""
    until = time.monotonic() + CHAOS_S
    try:
        while time.monotonic() < until or (not run.enough() and time.monotonic() < until + CHAOS_S):
            time.sleep(run.rng.uniform(0.15, 0.5))
            now = time.monotonic()
            run.thaw(now)
            run.reap()
            if len(run.finished) == len(run.ingress):
                return
            up = [p for p in run.running() if now - p.started > STARTED_S]
            ingress = [p for p in up if p in run.ingress]
            workers = [p for p in up if p in run.workers]
            action = run.rng.random()
            if ingress and action < 0.4:
                # Mid-turn and past the lease, a drain takes the actor over, and the frozen
                # caller's commit is refused when it wakes up: its ask must then answer
                # with the reply the drain committed, not with its own turn's.
                victim = run.rng.choice(ingress)
                if victim.freeze_mid_turn(run.rng):
                    frozen_s = run.rng.uniform(1.3 * LEASE_S, 2.5 * LEASE_S)
                else:
                    frozen_s = run.rng.uniform(0.05, 2.5 * LEASE_S)
                run.frozen[victim.name] = (victim, now + frozen_s)
                continue
            candidates = ingress if action < 0.8 else workers
            if not candidates:
                continue
            victim = run.rng.choice(candidates)
            if victim.kill():
                run.restart(victim)
            else:
                run.reap()  # it had finished just before the signal
    finally:
        run.thaw(math.inf)


@pytest.mark.timeout(180)
def test_processing_in_the_caller_under_sigkill_applies_once_and_asks_see_only_commits(
    redis_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    system = ActorSystem.from_url(redis_url, actors=actors, lease_ms=LEASE_MS)
    seed = int.from_bytes(os.urandom(4), "big")
    print(f"chaos seed {seed}")
    run = Run(ingress=[], workers=[], rng=random.Random(seed))
    for sender in SENDERS:
        args = [sys.executable, "-m", "tests.chaos.ask_procs", "--url", redis_url]
        args += ["--sender", sender, "--actors", str(ACTORS), "--per-actor", str(PER_ACTOR)]
        args += ["--log", str(tmp_path / f"{sender}.log"), "--lease-ms", str(LEASE_MS)]
        args += ["--work-ms", str(WORK_MS), "--pace-ms", str(PACE_MS)]
        busy_file = tmp_path / f"{sender}.busy"
        args += ["--busy-file", str(busy_file)]
        run.ingress.append(Proc(sender, args, tmp_path / f"{sender}.err", busy=busy_file))
    for i in range(WORKERS):
        args = worker_args(
            redis_url, "--lease-ms", str(LEASE_MS), "--batch", "20", app="tests.chaos.ask_procs"
        )
        # Idle workers look for expired leases every 0.1 s: a frozen caller's actor is
        # taken over soon after its lease ends, mostly before the caller wakes up.
        env = {**os.environ, "ACTOR_SYSTEM_POLL_INTERVAL_S": "0.1"}
        run.workers.append(Proc(f"w{i}", args, tmp_path / f"w{i}.err", env))
    for p in run.ingress + run.workers:
        run.restart(p)
    started = time.monotonic()
    try:
        chaos(run)
        chaos_s = time.monotonic() - started

        def ingress_done() -> bool:
            run.reap()
            return len(run.finished) == len(run.ingress)

        wait_until(ingress_done, what="the ingress processes to send everything")
        # Leases of processes killed mid-turn expire; the workers recover their claims.
        wait_until(
            lambda: leftovers(client, system) == NOTHING_LEFT,
            what="the drains to settle",
            every_s=0.1,
        )
    finally:
        run.stop()
    total_s = time.monotonic() - started

    # Exactly once, in send order per (sender, actor).
    states: dict[str, TallyState] = {}
    for a in range(ACTORS):
        actor_id = target(a, ACTORS)
        state = system.state(tally.ref(actor_id))
        assert isinstance(state, TallyState)
        states[actor_id] = state
        want = {f"{s}:{n}" for s in SENDERS for n in range(a, ACTORS * PER_ACTOR, ACTORS)}
        applied = state.applied
        duplicated = len(applied) - len(set(applied))
        lost = want - set(applied)
        assert duplicated == 0, f"{actor_id}: {duplicated} applied twice"
        assert not lost, f"{actor_id}: {len(lost)} lost, e.g. {sorted(lost)[:5]}"
        assert set(applied) == want
        assert len(state.nonces) == len(applied)
        for s in SENDERS:
            ns = [int(k.split(":")[1]) for k in applied if k.startswith(f"{s}:")]
            assert ns == sorted(ns), f"{actor_id}: {s}'s messages applied out of order"

    # Every reply an ask returned is what the committed history says that message produced
    # (a resent ask got the first reply); every message was answered.
    asks = resent = 0
    for s in SENDERS:
        answered: set[int] = set()
        for n, kind, values in read_log(tmp_path / f"{s}.log"):
            key = f"{s}:{n}"
            actor_id = target(n, ACTORS)
            state = states[actor_id]
            assert kind == ("ask" if asked(n) else "send")
            if kind == "ask":
                asks += 1
                resent += n in answered
                position, nonce = int(values[0]), values[1]
                committed_at = state.applied.index(key)
                assert (position, nonce) == (committed_at, state.nonces[committed_at]), (
                    f"ask {key} returned position {position} nonce {nonce}; committed: "
                    f"position {committed_at} nonce {state.nonces[committed_at]}"
                )
            else:
                assert values == [new_id(tally.ref(actor_id).key, key)]
            answered.add(n)
        assert answered == set(range(ACTORS * PER_ACTOR)), f"{s}: not every message answered"
    # The reply stored under each asked message's id is the committed one too; a plain
    # send's return value is not kept.
    for actor_id, state in states.items():
        for position, key in enumerate(state.applied):
            mid = new_id(tally.ref(actor_id).key, key)
            if not asked(int(key.split(":")[1])):
                assert system.backend.reply(mid) is None, f"a reply kept for send {key}"
                continue
            want_reply = {"position": position, "nonce": state.nonces[position]}
            assert system.reply(mid) == want_reply, f"stored reply of {key} on {actor_id}"

    procs = run.ingress + run.workers
    refused = run.refused()
    print(
        f"chaos {chaos_s:.1f}s, ingress done at "
        f"{ {p.name: round(p.finished - started, 1) for p in run.ingress} }, total "
        f"{total_s:.1f}s, kills { {p.name: p.kills for p in procs} }, freezes "
        f"{ {p.name: p.freezes for p in run.ingress} } ({sum(p.mid_turn for p in procs)} "
        f"mid-turn), asks answered {asks} ({resent} again), handlers run again after a kill "
        f"or freeze {sum(s.redelivered for s in states.values())}, callers' turns whose "
        f"lease was lost {refused}"
    )
    assert sum(p.kills for p in run.ingress) >= MIN_INGRESS_KILLS
    assert sum(p.kills for p in run.workers) >= MIN_WORKER_KILLS
    assert sum(p.mid_turn for p in run.ingress) >= MIN_MID_TURN
    assert refused >= 1  # a caller's own turn was not committed, yet its ask answered
    assert resent > 0
    system.close()
    client.close()
