"""Ingress processes of the ask chaos test (tests/chaos/test_ask_chaos.py).

    python -m tests.chaos.ask_procs --url redis://... --sender i0 --actors 8 --per-actor 100 \
        --log /tmp/i0.log --lease-ms 1000 --work-ms 5 --pace-ms 1 --seed 7

An ingress process sends its numbered messages ``Mark(sender, n)``, ``n`` from 0, to tally
actor ``t<n % actors>``, one at a time, each under the idempotency key ``<sender>:<n>``:
mostly with ``system.ask`` (the turn runs here when it can), every fourth one with
``system.send(..., process=True)``. A tally actor appends ``<sender>:<n>`` to its state,
with a nonce drawn by that handler run, and replies with both: where it applied the message
and the nonce. A run whose turn is not committed (killed, or frozen past its lease and
taken over) draws a nonce that the committed history does not have.

With ``--busy-file``, one byte of that file (a shared mapping) is 1 while a handler runs in
the process, 2 while that handler runs a message this process asked: the test freezes the
process there, mid-turn, holding the lease, before the commit its ask is waiting for.

Each answer is appended to the process's log with a single ``write`` the moment it is known,
before anything else: ``<n> ask <position> <nonce>`` or ``<n> send <message id>``.
SIGKILLed and started again, the process reads its log and sends again from an earlier point
(from 0, or up to ``3 x actors`` messages before the first one it has no answer for), under
the same keys: what was already processed must be dropped, and an ask must get the first
reply. An ask without a reply within ASK_TIMEOUT_S ends the process with an error rather
than asking again, which would send the message again and hide a loss.
"""

from __future__ import annotations

import argparse
import logging
import mmap
import os
import random
import sys
import time
from pathlib import Path

from pydantic import BaseModel, Field

from actor_system import ActorSystem, ActorType, Context, NoReply

ASK_TIMEOUT_S = 15.0


class Mark(BaseModel):
    sender: str
    n: int
    work_ms: float = 0.0  # how long the handler works (sleeps), holding the lease


class Applied(BaseModel):
    """The reply: where the message was applied, and the nonce of the handler run."""

    position: int
    nonce: str


class TallyState(BaseModel):
    applied: list[str] = Field(default_factory=list)  # "<sender>:<n>" in the order applied
    nonces: list[str] = Field(default_factory=list)  # the nonce of each, in the same order
    # Handlers that ran with attempt > 1: a claim taken over from a holder that died or
    # was frozen mid-turn.
    redelivered: int = 0


tally = ActorType("tally", state=TallyState)


# In an ingress process: its sender name, and one shared byte, 1 while a handler runs here,
# 2 while it runs a message this process asked (so the test can freeze the process
# mid-turn, holding its actor's lease). None elsewhere.
_sender: str | None = None
_busy: mmap.mmap | None = None


@tally.handler
def mark(ctx: Context[TallyState], msg: Mark) -> Applied:
    if _busy is not None:
        _busy[0] = 2 if msg.sender == _sender and asked(msg.n) else 1
    try:
        if msg.work_ms:
            time.sleep(msg.work_ms / 1000)  # holding the lease: a kill often lands mid-turn
        nonce = os.urandom(6).hex()
        ctx.state.applied.append(f"{msg.sender}:{msg.n}")
        ctx.state.nonces.append(nonce)
        if ctx.attempt > 1:
            ctx.state.redelivered += 1
        return Applied(position=len(ctx.state.applied) - 1, nonce=nonce)
    finally:
        if _busy is not None:
            _busy[0] = 0


def asking(path: Path) -> bool:
    """True while the ingress process with this busy file runs a handler for a message it
    asked (its own turn: the commit its ask waits for is not written yet)."""
    return path.read_bytes()[:1] == b"\x02"


actors = [tally]


def target(n: int, n_actors: int) -> str:
    return f"t{n % n_actors}"


def asked(n: int) -> bool:
    """Every fourth message is sent with ``process=True``, the others asked."""
    return n % 4 != 3


def read_log(path: Path) -> list[tuple[int, str, list[str]]]:
    """The log's lines: (n, "ask" or "send", [position, nonce] or [message id])."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            continue  # never expected (one write per line), but a torn line answers nothing
        n, kind, *values = line.split()
        out.append((int(n), kind, values))
    return out


def resume_from(
    logged: list[tuple[int, str, list[str]]], n_actors: int, rng: random.Random
) -> tuple[int, int]:
    """Where a restarted process starts sending again: from 0 (a quarter of the time) or a
    few messages before the first one it has no answer for (the second number)."""
    answered = {n for n, _, _ in logged}
    first_unanswered = 0
    while first_unanswered in answered:
        first_unanswered += 1
    if first_unanswered and rng.random() < 0.25:
        return 0, first_unanswered
    return max(first_unanswered - rng.randrange(3 * n_actors + 1), 0), first_unanswered


def ingress(args: argparse.Namespace) -> None:
    # Warnings to stderr: the test counts the turns whose lease was lost (after a freeze).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    global _busy, _sender
    _sender = args.sender
    if args.busy_file:
        Path(args.busy_file).write_bytes(b"\x00")
        with open(args.busy_file, "r+b") as f:
            _busy = mmap.mmap(f.fileno(), 1)
    log_path = Path(args.log)
    rng = random.Random(args.seed)
    start, new = resume_from(read_log(log_path), args.actors, rng)
    system = ActorSystem.from_url(args.url, actors=actors, lease_ms=args.lease_ms)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for n in range(start, args.actors * args.per_actor):
            ref = tally.ref(target(n, args.actors))
            msg = Mark(sender=args.sender, n=n, work_ms=args.work_ms)
            key = f"{args.sender}:{n}"
            if asked(n):
                # No second ask on NoReply: that would send it again and hide a message lost
                # by a recovery. A claim whose holder died or froze is recovered within a
                # lease or two: long before this.
                try:
                    reply = system.ask(ref, msg, timeout=ASK_TIMEOUT_S, idempotency_key=key)
                except NoReply:
                    sys.exit(f"no reply to {key} within {ASK_TIMEOUT_S} s")
                assert isinstance(reply, Applied)
                os.write(fd, f"{n} ask {reply.position} {reply.nonce}\n".encode())
            else:
                mid = system.send(ref, msg, process=True, idempotency_key=key)
                os.write(fd, f"{n} send {mid}\n".encode())
            if n >= new and args.pace_ms:
                time.sleep(args.pace_ms / 1000)  # new messages spread over the chaos
    finally:
        os.close(fd)
        system.close()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", required=True)
    p.add_argument("--sender", required=True)
    p.add_argument("--actors", type=int, default=8)
    p.add_argument("--per-actor", type=int, default=100)
    p.add_argument("--log", required=True)
    p.add_argument("--lease-ms", type=int, default=1000)
    p.add_argument("--work-ms", type=float, default=0.0, help="each handler's work")
    p.add_argument("--pace-ms", type=float, default=0.0, help="pause after each new message")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--busy-file", help="a byte that is 1 or 2 while a handler runs here")
    return p


if __name__ == "__main__":
    ingress(parser().parse_args())
