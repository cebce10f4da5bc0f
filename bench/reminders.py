"""Reminders beside one-shot deferred messages, against a redis-server given by port.

    python -m bench.reminders            # quick sizes, on a redis-server of its own
    python -m bench.reminders --full     # full sizes (1,000,000 reminders; about 16 min)

bench/run.py calls ``measure`` in the same run as its other figures. Three figures:

- Redis memory per pending reminder (``every=3600``, one per actor, armed by a message whose
  handler calls ``ctx.remind``), beside one pending one-shot deferred message per actor;
- the rate at which reminders due in the same minute are promoted from the delay queue
  into mailboxes, beside as many one-shot deferred messages to as many actors;
- lateness of reminder occurrences on an idle worker process (``ctx.now - ctx.occurrence``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import redis
from pydantic import BaseModel, Field

from actor_system import ActorSystem, ActorType, Context, ManualClock, Options
from actor_system.adapters.redis import RedisBackend
from actor_system.adapters.redis.keys import BUCKETS, REMINDER_BUCKETS
from bench.ours import cli_worker
from bench.queues.common import summarize

ROOT = Path(__file__).resolve().parent.parent


# -- actors ---------------------------------------------------------------------------------


class Count(BaseModel):
    count: int = 0


class Inc(BaseModel):
    pass


class Arm(BaseModel):
    """Set the reminder "r": first due ``delay`` s from the turn, then every ``every`` s."""

    delay: float
    every: float


class Tally(BaseModel):
    late: list[float] = Field(default_factory=list)  # ctx.now - ctx.occurrence, s
    wall: list[float] = Field(default_factory=list)  # handler's time.time() - occurrence, s
    due: list[int] = Field(default_factory=list)  # the occurrences delivered, epoch ms
    missed: int = 0


class Start(BaseModel):
    """Set the reminder "tick": first due at ``at`` (epoch s), then every ``every`` s,
    ``times`` occurrences in all."""

    at: float
    every: float
    times: int


class Tick(BaseModel):
    pass


class Once(BaseModel):
    due_ms: int


# An actor whose state is the bench counter's: default (so not stored) until it has a reminder.
sleeper = ActorType("bench-reminder", state=Count)
ticker = ActorType("bench-ticker", state=Tally)
oneshot = ActorType("bench-oneshot", state=Tally)  # one-shot deferred messages, timed alike


@sleeper.handler
def arm(ctx: Context[Count], msg: Arm) -> None:
    ctx.remind("r", Inc(), delay=msg.delay, every=msg.every)


@sleeper.handler
def inc(ctx: Context[Count], msg: Inc) -> None:
    ctx.state.count += 1


@ticker.handler
def start(ctx: Context[Tally], msg: Start) -> None:
    at = datetime.fromtimestamp(msg.at, UTC)
    ctx.remind("tick", Tick(), at=at, every=msg.every, times=msg.times)


@ticker.handler
def tick(ctx: Context[Tally], msg: Tick) -> None:
    wall = time.time()
    assert ctx.occurrence is not None
    occurrence = ctx.occurrence.timestamp()
    ctx.state.late.append(ctx.now.timestamp() - occurrence)
    ctx.state.wall.append(wall - occurrence)
    ctx.state.due.append(round(occurrence * 1000))
    ctx.state.missed += ctx.missed


@oneshot.handler
def once(ctx: Context[Tally], msg: Once) -> None:
    wall = time.time()
    due = msg.due_ms / 1000
    ctx.state.late.append(ctx.now.timestamp() - due)
    ctx.state.wall.append(wall - due)
    ctx.state.due.append(msg.due_ms)


# ``actor-system worker --app bench.reminders``
actors: list[ActorType[Any]] = [sleeper, ticker, oneshot]


def make_system(port: int, clock: Any = None) -> ActorSystem:
    opts = Options()
    backend = RedisBackend(client=redis.Redis(port=port), options=opts)
    return ActorSystem(backend, actors=actors, options=opts, clock=clock)


# -- memory and promotion -------------------------------------------------------------------

_CHUNK = 10_000
# What a turn leaves besides the actor's state: the processed-id record (expires a dedup
# window after the commit), the lease's receipt and fence (seconds).
_TURN_KEYS = ("done", "doneold", "donetime", "lease", "fence")


def _arm_reminders(system: ActorSystem, n: int) -> float:
    """One reminder per actor, set by a message whose handler calls ``ctx.remind`` and drained
    in this process; due 3600-3659 s from now (the same minute), then every hour. Returns the
    arming rate (turns/s)."""
    start = time.perf_counter()
    for i in range(0, n, _CHUNK):
        batch = [
            (sleeper.ref(str(j)), Arm(delay=3600 + j % 60, every=3600))
            for j in range(i, min(i + _CHUNK, n))
        ]
        system.send_many(batch)
        report = system.run_until_idle()
        assert report.messages == len(batch), report
    return n / (time.perf_counter() - start)


def _send_one_shots(system: ActorSystem, clock: ManualClock, n: int) -> None:
    """One deferred message per actor, due 3600-3659 s from now: what ``system.send(ref,
    Inc(), delay=...)`` stores, pushed 10,000 at a time (as ``ours.delay_scale``)."""
    reg = system.registry
    for i in range(0, n, _CHUNK):
        items = [
            reg.prepare(sleeper.ref(str(j)), Inc(), now_s=clock.now(), delay=3600 + j % 60)
            for j in range(i, min(i + _CHUNK, n))
        ]
        system.backend.push(items, int(clock.now() * 1000))


def _drop_turn_keys(client: redis.Redis, system: ActorSystem, n: int) -> None:
    """Delete what the arming turns left beside the reminders (their processed ids, leases
    and polls' memos, all of which expire on their own), so that what remains is the cost of
    the pending reminders."""
    keys = system.backend.keys  # type: ignore[attr-defined]
    for i in range(0, n, _CHUNK):
        pipe = client.pipeline(transaction=False)
        for j in range(i, min(i + _CHUNK, n)):
            actor = sleeper.ref(str(j)).key
            pipe.delete(*(keys.actor(actor, s) for s in _TURN_KEYS))
        pipe.execute()
    memos = list(client.scan_iter(match=f"{keys.prefix}:{{p*}}:polled:*", count=10_000))
    for i in range(0, len(memos), _CHUNK):
        client.delete(*memos[i : i + _CHUNK])


# What the keyspace's hash table costs per key once it is sized to its keys: an entry (24 B)
# and a bucket pointer (8 B).
_KEY_SLOT = 32


def _used(client: redis.Redis) -> tuple[int, int]:
    """(``used_memory``, the part that is data): ``used_memory`` without the script cache
    and client buffers, with the keyspace's hash tables counted at ``_KEY_SLOT`` per key
    instead of their size. Redis grows a table with its keys but shrinks it only below 10 %
    full, so a table grown by the arming turns' short-lived keys (about five per actor)
    would otherwise stay in the figure."""
    st = client.memory_stats()
    db = st.get("db.0", {})
    tables = int(db.get("overhead.hashtable.main", 0)) + int(
        db.get("overhead.hashtable.expires", 0)
    )
    data = (
        int(st["total.allocated"])
        - int(st["lua.caches"])
        - int(st.get("functions.caches", 0))
        - int(st["clients.normal"])
        - tables
        + _KEY_SLOT * int(st["keys.count"])
    )
    return int(st["total.allocated"]), data


def _state_keys(system: ActorSystem, n: int) -> list[str]:
    keys = system.backend.keys  # type: ignore[attr-defined]
    return [keys.actor(sleeper.ref(str(j)).key, "state") for j in range(n)]


def _schedule_bytes(client: redis.Redis, system: ActorSystem) -> dict[str, int]:
    """The stored state of one actor with its reminder, and the schedule's share of it."""
    from actor_system import stored_state

    key = _state_keys(system, 1)[0]
    data = client.hget(key, "d")
    assert isinstance(data, bytes)
    without = stored_state.with_reminders(data, {})
    return {"state_bytes": len(data), "schedule_bytes": len(data) - len(without)}


def footprint(port: int, n: int, promote: bool) -> dict[str, Any]:
    """Redis memory per pending reminder and per pending one-shot deferred message (one per
    actor, ``n`` actors), and, with ``promote``, the rate at which they are all promoted once
    due (as ``ours.delay_scale``: polls that only promote). Without ``promote``, the split of
    the reminders' memory: state keys, the per-partition index, the delay queue."""
    client = redis.Redis(port=port)
    # Once through every step first: what the server sets up on first use (its scripts, for
    # one) stays out of the figures.
    client.flushall()
    warm_clock = ManualClock()
    warm = make_system(port, warm_clock)
    _arm_reminders(warm, 100)
    _promote(warm, warm_clock, 100)
    warm.run_until_idle()
    out: dict[str, Any] = {"n": n}
    for kind in ("one_shot", "reminder"):
        client.flushall()
        clock = ManualClock()
        system = make_system(port, clock)
        raw0, base = _used(client)
        if kind == "reminder":
            out["arm_turns_per_s"] = _arm_reminders(system, n)
            out["bytes_per_reminder_with_turn_keys"] = (_used(client)[1] - base) / n
            _drop_turn_keys(client, system, n)
            stats = system.stats()
            assert stats["reminders"] == n, stats
            assert stats["actors_with_reminders"] == n, stats
        else:
            _send_one_shots(system, clock, n)
        raw1, data = _used(client)
        assert system.backend.pending() == n
        used = data - base
        out[f"bytes_per_{kind}"] = used / n
        out[f"used_memory_per_{kind}"] = (raw1 - raw0) / n  # as INFO reports it
        out[f"buckets_{kind}"] = _buckets(client, system)
        if kind == "reminder":
            out |= _schedule_bytes(client, system)
            if not promote:
                out |= _split(client, system, n, used)
        if promote:
            out[f"promote_{kind}_per_s"] = _promote(system, clock, n)
            if kind == "reminder":
                out |= _occurrences(client, system, n)
    client.flushall()  # the next benchmark starts on an empty server, not by freeing this
    client.close()
    return out


def _buckets(client: redis.Redis, system: ActorSystem) -> dict[str, float]:
    """How the delay queue's bucket hashes are encoded: Redis keeps a hash as a compact
    listpack while every value is at most ``hash-max-listpack-value`` bytes (64 by default),
    as a hash table (an allocation per field and value) otherwise."""
    keys = system.backend.keys  # type: ignore[attr-defined]
    names = [keys.part(p, f"m{b}") for p in range(keys.partitions) for b in range(BUCKETS)]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.object("encoding", name)
    encodings = [e for e in pipe.execute() if e is not None]
    pipe = client.pipeline(transaction=False)
    for name in names[:: max(1, len(names) // 200)]:
        pipe.hvals(name)
    sizes = [len(v) for vals in pipe.execute() for v in vals]
    limit = client.config_get("hash-max-listpack-value")["hash-max-listpack-value"]
    return {
        "hashes": len(encodings),
        "listpack_share": sum(1 for e in encodings if e == b"listpack") / max(len(encodings), 1),
        "entry_bytes": sum(sizes) / max(len(sizes), 1),
        "listpack_value_limit": int(str(limit)),
    }


def _split(client: redis.Redis, system: ActorSystem, n: int, used: int) -> dict[str, float]:
    """Where a pending reminder's bytes are: delete the state keys, then the index, and
    weigh what went (what is left is the delay queue's entries)."""
    before = _used(client)[1]
    states = _state_keys(system, n)
    for i in range(0, n, _CHUNK):
        client.delete(*states[i : i + _CHUNK])
    after_states = _used(client)[1]
    keys = system.backend.keys  # type: ignore[attr-defined]
    for p in range(keys.partitions):
        index = [keys.reminders(p, b) for b in range(REMINDER_BUCKETS)]
        client.delete(*index, keys.reminder_count(p), keys.reminder_actors(p))
    after_index = _used(client)[1]
    return {
        "state_key_bytes": (before - after_states) / n,
        "index_bytes": (after_states - after_index) / n,
        "delay_queue_bytes": (used - (before - after_index)) / n,
    }


def _promote(system: ActorSystem, clock: ManualClock, n: int) -> float:
    clock.advance(3700)  # all of them due (their due times lie within one minute)
    start = time.perf_counter()
    promoted = 0
    while promoted < n:
        _, got = system.backend.poll(int(clock.now() * 1000), 0, 1000)
        promoted += got
    rate = n / (time.perf_counter() - start)
    assert promoted == n, (promoted, n)
    assert system.backend.pending() == 0
    return rate


def _occurrences(client: redis.Redis, system: ActorSystem, n: int) -> dict[str, Any]:
    """Run the promoted occurrences: each actor should count exactly one, and each reminder
    have its next occurrence armed (nothing lost, doubled or dropped)."""
    import msgpack

    start = time.perf_counter()
    report = system.run_until_idle()
    elapsed = time.perf_counter() - start
    counts: dict[int, int] = {}
    states = _state_keys(system, n)
    for i in range(0, n, _CHUNK):
        pipe = client.pipeline(transaction=False)
        for key in states[i : i + _CHUNK]:
            pipe.hget(key, "d")
        for data in pipe.execute():
            got = msgpack.unpackb(data).get("count", 0) if data else 0
            counts[got] = counts.get(got, 0) + 1
    return {
        "occurrence_turns_per_s": report.messages / elapsed,
        "occurrences_run": report.messages,
        "stale_occurrences": report.stale_occurrences,
        "actors_by_count": {str(k): v for k, v in sorted(counts.items())},
        "next_armed": system.backend.pending(),
        "reminders_after": system.stats()["reminders"],
    }


# -- lateness -------------------------------------------------------------------------------


def _tally(system: ActorSystem, ref: Any) -> Tally:
    state = system.state(ref)
    assert isinstance(state, Tally)
    return state


def _wait(system: ActorSystem, refs: list[Any], expected: int, last: float) -> list[Tally]:
    """The actors' tallies once ``expected`` deliveries (coalesced ones counted) are in, or
    30 s after the ``last`` due time (as ``ours.lateness``); then a second more, in which one
    too many would show up. Nothing is read before the last due time: reading every actor's
    state meanwhile would take CPU from the worker being measured."""
    time.sleep(max(0.0, last + 0.1 - time.time()))
    deadline = last + 30
    while time.time() < deadline:
        if sum(len(t.due) + t.missed for t in (_tally(system, r) for r in refs)) >= expected:
            break
        time.sleep(0.2)
    time.sleep(1.0)
    return [_tally(system, r) for r in refs]


def _late(tallies: list[Tally], expected: int) -> dict[str, Any]:
    dues = [d for t in tallies for d in t.due]
    missed = sum(t.missed for t in tallies)
    return {
        **summarize(sorted(x for t in tallies for x in t.late), expected),
        "wall": summarize(sorted(x for t in tallies for x in t.wall), expected),
        "missed": missed,
        "lost": expected - len(dues) - missed,
        "duplicates": len(dues) - len(set(dues)),
    }


def lateness(port: int, n_actors: int, times: int) -> dict[str, Any]:
    """``n_actors`` actors, each with an ``every=1`` s reminder of ``times`` occurrences whose
    first ones are spread uniformly over a second: ``n_actors`` occurrences a second for
    ``times`` seconds, run by an idle worker process (the rate and count of
    ``ours.lateness`` with ``n_actors * times`` messages over ``times`` seconds). Lateness is
    ``ctx.now - ctx.occurrence`` (the turn's time by the server's clock); ``wall``: the
    handler's ``time.time()`` instead.

    Then, on the same worker, ``one_shot``: as many one-shot deferred messages on the same
    schedule (sent ahead, as ``ours.lateness`` does) to as many actors, measured the same way
    against the due time they carry. ``ours.lateness`` measures from the float due time it
    asked for, which the runtime rounds up to the next ms: up to 1 ms more lateness."""
    client = redis.Redis(port=port)
    client.flushall()
    system = make_system(port)
    refs = [ticker.ref(str(i)) for i in range(n_actors)]
    once = [oneshot.ref(str(i)) for i in range(n_actors)]
    expected = n_actors * times
    with cli_worker(port, "bench.reminders"):
        time.sleep(1.5)  # the worker is up and idle
        first = time.time() + 1.0
        system.send_many(
            [
                (ref, Start(at=first + i / n_actors, every=1.0, times=times))
                for i, ref in enumerate(refs)
            ]
        )
        tallies = _wait(system, refs, expected, first + times - 1 / n_actors)
        left = system.stats()["reminders"], system.backend.pending()
        first = time.time() + 1.0
        for j in range(times):  # the earliest first, as the reminders' schedule
            for i, ref in enumerate(once):
                due = math.ceil((first + j + i / n_actors) * 1000)
                # The runtime rounds ``at`` up to whole ms: half a ms before lands on ``due``.
                at = datetime.fromtimestamp((due - 0.5) / 1000, UTC)
                system.send(ref, Once(due_ms=due), at=at)
        one_shot = _late(_wait(system, once, expected, first + times - 1 / n_actors), expected)
    client.close()
    # Each actor's occurrences in order, on its grid of whole seconds from the first.
    on_grid = all(b > a and (b - a) % 1000 == 0 for t in tallies for a, b in pairwise(t.due))
    return {
        "actors": n_actors,
        "times": times,
        **_late(tallies, expected),
        "on_grid": on_grid,
        "reminders_left": left[0],
        "pending_left": left[1],
        "one_shot": one_shot,
    }


# -- the whole part -------------------------------------------------------------------------


def measure(port: int, quick: bool) -> dict[str, Any]:
    """The figures bench/run.py prints and stores under ``reminders``."""
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        # Lateness first, on a server that has not just freed gigabytes.
        ("lateness", lambda: lateness(port, 100 if quick else 200, 2 if quick else 10)),
        ("memory", lambda: footprint(port, 5_000 if quick else 100_000, promote=False)),
        ("scale", lambda: footprint(port, 10_000 if quick else 1_000_000, promote=True)),
    ]
    res: dict[str, Any] = {"seconds": {}}
    for name, step in steps:
        print(f"reminders: {name} ...", file=sys.stderr)
        start = time.perf_counter()
        res[name] = step()
        res["seconds"][name] = round(time.perf_counter() - start, 1)
    return res


def report(r: dict[str, Any], one_shot_late: dict[str, Any] | None = None) -> str:
    """Lines for the printed summary; ``one_shot_late``: ``ours.lateness`` of the same run."""
    m, s, late = r["memory"], r["scale"], r["lateness"]
    lines = [
        f"reminders: Redis memory per pending reminder {m['bytes_per_reminder']:.0f} B at "
        f"{m['n']:,} (state key {m['state_key_bytes']:.0f}, index {m['index_bytes']:.0f}, "
        f"delay queue {m['delay_queue_bytes']:.0f}; the schedule is {m['schedule_bytes']} of "
        f"the state's {m['state_bytes']} B), {s['bytes_per_reminder']:.0f} B at {s['n']:,}; "
        f"one-shot deferred message, one per actor: {m['bytes_per_one_shot']:.0f} / "
        f"{s['bytes_per_one_shot']:.0f} B",
        f"reminders: {s['n']:,} due in one minute promoted at "
        f"{s['promote_reminder_per_s']:,.0f}/s (as many one-shot deferred messages to as many "
        f"actors: {s['promote_one_shot_per_s']:,.0f}/s); armed at {s['arm_turns_per_s']:,.0f} "
        f"turns/s; occurrences run at {s['occurrence_turns_per_s']:,.0f} turns/s, actors by "
        f"count {s['actors_by_count']}, {s['next_armed']:,} next occurrences armed",
        f"reminders: lateness of {late['messages']:,} occurrences ({late['actors']} actors, "
        f"every 1 s) p50/p99/max {_ms(late)} ms (by the handler's clock {_ms(late['wall'])});"
        f" early {late['early']}, lost {late['lost']}, coalesced {late['missed']}, doubled "
        f"{late['duplicates']}; as many one-shot deferred messages on the same worker "
        f"{_ms(late['one_shot'])} ms",
    ]
    if one_shot_late:
        lines[-1] += f" (ours.lateness: {_ms(one_shot_late)} ms)"
    return "\n".join(lines)


def _ms(d: dict[str, Any]) -> str:
    return f"{d['p50_ms']:.2f}/{d['p99_ms']:.2f}/{d['max_ms']:.2f}"


def sound(r: dict[str, Any]) -> bool:
    """No occurrence early, lost, doubled or left behind; every reminder moved on once."""
    s, late = r["scale"], r["lateness"]
    once = late["one_shot"]
    return bool(
        once["early"] == 0
        and once["lost"] == 0
        and late["early"] == 0
        and late["lost"] == 0
        and late["duplicates"] == 0
        and late["on_grid"]
        and late["reminders_left"] == 0
        and late["pending_left"] == 0
        and s["actors_by_count"] == {"1": s["n"]}
        and s["next_armed"] == s["n"]
        and s["reminders_after"] == s["n"]
    )


def targets(r: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """Judged at the largest population (``scale``), as the one-shot target is at 1,000,000."""
    m, s, late = r["memory"], r["scale"], r["lateness"]
    return [
        (
            "<= 400 bytes / pending reminder",
            s["bytes_per_reminder"] <= 400,
            f"{s['bytes_per_reminder']:.0f} B at {s['n']:,} ({m['bytes_per_reminder']:.0f} at "
            f"{m['n']:,}); one-shot {s['bytes_per_one_shot']:.0f} B",
        ),
        (
            "reminder lateness p99 <= 3 ms",
            late["p99_ms"] <= 3,
            f"{late['p99_ms']:.2f} ms (one-shot on the same worker "
            f"{late['one_shot']['p99_ms']:.2f} ms)",
        ),
        (
            "no reminder occurrence early, lost, doubled or left",
            sound(r),
            f"early {late['early']}, lost {late['lost']}, doubled {late['duplicates']}; "
            f"{s['n']:,} promoted ran {s['actors_by_count']}, {s['next_armed']:,} armed next",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="full sizes (several minutes)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    from bench import ours
    from bench.run import start_redis

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_redis(tmp)
        try:
            res = measure(port, not args.full)
            late_n, spread = (200, 2.0) if not args.full else (2_000, 10.0)
            print("one-shot deferred lateness (ours.lateness) ...", file=sys.stderr)
            one_shot = ours.lateness(port, late_n, spread)
            one_shot.pop("samples", None)
        finally:
            proc.terminate()
            proc.wait(10)
    res["one_shot_lateness"] = one_shot
    res["seconds"]["all"] = round(time.perf_counter() - started, 1)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(report(res, one_shot))
    print(f"seconds: {res['seconds']}")
    print("targets" + ("" if args.full else " (quick mode: sizes too small to judge)"))
    for label, ok, figure in targets(res):
        print(f"  [{'ok' if ok else 'MISS'}] {label}: {figure}")


if __name__ == "__main__":
    main()
