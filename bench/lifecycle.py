"""What an actor per order leaves in Redis once its order is done: a soak of actors that get a
few messages each and then stay idle for good, on a redis-server this script starts.

    python bench/lifecycle.py                 # 10 minutes per mode
    python bench/lifecycle.py --seconds 20    # short
    python bench/lifecycle.py --modes delete  # one mode

Three modes, the same workload (orders created at a steady rate, each gets three messages,
then nothing): actors kept (the default), actors that end with ``ctx.delete()`` on their last
message, and an actor type with ``idle_ttl_s``. Printed per mode: Redis bytes and keys per
ended actor (memory growth over the run divided by the orders done, keys likewise), their
growth per hour at the run's rate, and what is left once the idle time has passed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402

from actor_system import ActorSystem, ActorType, Context  # noqa: E402
from bench.run import start_redis  # noqa: E402


class Order(BaseModel):
    lines: list[str] = Field(default_factory=list)
    total: int = 0


class Line(BaseModel):
    sku: str
    price: int


class Pay(BaseModel):
    pass


class Ship(BaseModel):
    end: bool = False


def order_type(name: str, idle_ttl_s: float | None = None) -> ActorType[Order]:
    actor = ActorType(name, state=Order, idle_ttl_s=idle_ttl_s)

    @actor.handler
    def line(ctx: Context[Order], msg: Line) -> None:
        ctx.state.lines.append(msg.sku)
        ctx.state.total += msg.price

    @actor.handler
    def pay(ctx: Context[Order], msg: Pay) -> None:
        ctx.state.total = -ctx.state.total

    @actor.handler
    def ship(ctx: Context[Order], msg: Ship) -> None:
        if msg.end:
            ctx.delete()

    return actor


def soak(client: redis.Redis, url: str, mode: str, seconds: float, rate: int) -> None:
    client.flushall()
    idle_ttl = 2.0 if mode == "idle_ttl" else None
    actor = order_type(f"order-{mode}", idle_ttl)
    system = ActorSystem.from_url(url, actors=[actor], lease_ms=1000)
    base_mem = int(client.info("memory")["used_memory"])
    base_keys = int(client.dbsize())
    started = time.monotonic()
    orders = 0
    while time.monotonic() - started < seconds:
        tick = time.monotonic()
        batch = []
        for _ in range(rate // 10):
            ref = actor.ref(f"o{orders}")
            batch += [
                (ref, Line(sku="book", price=12)),
                (ref, Pay()),
                (ref, Ship(end=mode == "delete")),
            ]
            orders += 1
        system.send_many(batch)
        system.run_until_idle()
        time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
    ran_s = time.monotonic() - started
    mem = int(client.info("memory")["used_memory"]) - base_mem
    keys = int(client.dbsize()) - base_keys
    per_hour = orders / ran_s * 3600
    time.sleep(7.0)  # past the idle time, the last leases' receipts and fences (lease_ms 1 s)
    left_keys = int(client.dbsize()) - base_keys
    left_mem = int(client.info("memory")["used_memory"]) - base_mem
    print(
        f"{mode:>8}: {orders:,} orders in {ran_s:.0f} s; right after: {mem / orders:,.0f} B and "
        f"{keys / orders:.2f} keys per order (+{mem / orders * per_hour / 1e6:,.0f} MB and "
        f"+{keys / orders * per_hour:,.0f} keys per hour at {per_hour:,.0f} orders/h); "
        f"7 s later: {max(left_mem, 0) / orders:,.0f} B and {left_keys / orders:.2f} keys per order"
    )
    system.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=600.0, help="per mode")
    parser.add_argument("--rate", type=int, default=200, help="new orders per second")
    parser.add_argument(
        "--modes", default="kept,delete,idle_ttl", help="comma-separated, of kept,delete,idle_ttl"
    )
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - {"kept", "delete", "idle_ttl"}
    if unknown:
        parser.error(f"unknown mode(s): {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_redis(tmp)
        try:
            url = f"redis://127.0.0.1:{port}/0"
            client = redis.Redis(port=port)
            for mode in modes:
                soak(client, url, mode, args.seconds, args.rate)
        finally:
            proc.terminate()


if __name__ == "__main__":
    main()
