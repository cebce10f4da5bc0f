"""A drain whose Redis answers get lost: the ledger workload drained by one worker through a
TCP proxy (tests/faultproxy.py) that drops 5 % of Redis's answers and resets their
connections (Redis ran the command, the worker never hears), at the default lease (30 s),
beside the same drain with no fault. A lost answer should cost a round trip, not a lease.

    python bench/faults.py                # 20 ledgers x 150 entries, seeds 1..5
    python bench/faults.py --per-actor 20 --seeds 2 --batch 100 --actors-per-round 64

Small turns and rounds by default (2 messages, 4 actors): many round trips per drain, so
many chances for a fault to land, as in tests/integration/test_network_faults.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from actor_system import ActorSystem  # noqa: E402
from bench.run import start_redis  # noqa: E402
from tests.chaos.actors import Entry, LedgerState, ledger, relay  # noqa: E402
from tests.faultproxy import FaultProxy  # noqa: E402

ACTORS = 20


def drain(
    port: int, proxy: FaultProxy, db: int, per_actor: int, seed: int | None, **options: int
) -> dict[str, float]:
    """Send the workload straight to Redis, then drain it through the proxy; the figures."""
    direct = ActorSystem.from_url(f"redis://127.0.0.1:{port}/{db}", actors=[ledger, relay])
    redis.Redis(port=port, db=db).flushdb()
    refs = [ledger.ref(f"a{i}") for i in range(ACTORS)]
    direct.send_many([(r, Entry(sender="p", seq=s)) for s in range(1, per_actor + 1) for r in refs])
    total = ACTORS * per_actor
    system = ActorSystem.from_url(proxy.url(db), actors=[ledger, relay], **options)
    system.clock.now()  # connect and load the scripts before the faults start
    system.cancel("0" * 32)
    worker = system.worker()
    before = proxy.counters()
    if seed is not None:
        proxy.reset_after_answer(0.05, rng_seed=seed)
    started = time.monotonic()
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    while True:
        states = [direct.state(r) for r in refs]
        applied = sum(s.applied for s in states if isinstance(s, LedgerState))
        if applied >= total or time.monotonic() - started > 120:
            break
        time.sleep(0.005)
    took = time.monotonic() - started
    proxy.heal()
    worker.stop()
    thread.join(30)
    after = proxy.counters()
    wrong = sum(s.out_of_order for s in states if isinstance(s, LedgerState))
    system.close()
    direct.close()
    return {
        "seconds": took,
        "applied": applied,
        "total": total,
        "requests": after["requests"] - before["requests"],
        "dropped": after["answers_dropped"] - before["answers_dropped"],
        "out_of_order": wrong,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-actor", type=int, default=150, help="entries per ledger")
    parser.add_argument("--seeds", type=int, default=5, help="faulty drains, seeds 1..N")
    parser.add_argument("--batch", type=int, default=2, help="messages per turn")
    parser.add_argument("--actors-per-round", type=int, default=4)
    args = parser.parse_args()
    options = {"batch": args.batch, "actors_per_round": args.actors_per_round}
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_redis(tmp)
        try:
            with FaultProxy("127.0.0.1", port) as proxy:
                clean = drain(port, proxy, 1, args.per_actor, None, **options)
                print(
                    f"clean: {clean['total']:,} messages in {clean['seconds']:.2f} s, "
                    f"{clean['requests']} requests"
                )
                ratios = []
                for seed in range(1, args.seeds + 1):
                    r = drain(port, proxy, 1 + seed, args.per_actor, seed, **options)
                    ratio = r["seconds"] / clean["seconds"]
                    ratios.append(ratio)
                    exact = r["applied"] == r["total"] and r["out_of_order"] == 0
                    print(
                        f"seed {seed}: {r['seconds']:.2f} s ({ratio:.2f}x clean), "
                        f"{r['dropped']} of {r['requests']} answers dropped "
                        f"({r['dropped'] / max(r['requests'], 1):.1%}); "
                        f"{'exactly once, in order' if exact else 'NOT EXACT: ' + str(r)}"
                    )
                print(f"target: within 2x of the clean drain; worst {max(ratios):.2f}x")
        finally:
            proc.terminate()


if __name__ == "__main__":
    main()
