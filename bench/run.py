"""Benchmarks: actor-system beside arq, dramatiq, rq and celery, on one redis-server.

    python bench/run.py                  # full mode (several minutes)
    python bench/run.py --quick          # smoke mode for CI (under 2 minutes, no thresholds)
    python bench/run.py --no-queues      # only actor-system
    python bench/run.py --json out.json --plot bench/lateness.png

Starts its own redis-server on a free port; the job queues run in venvs of their own under
bench/.venvs (created on first use). Prints one table, the targets, and optionally JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import ours, reminders, venvs  # noqa: E402
from bench.actors import async_counter  # noqa: E402

QUEUES = ["arq", "dramatiq", "rq", "celery"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], int]:
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(500):
        try:
            client.ping()
            return proc, port
        except redis.ConnectionError:
            time.sleep(0.01)
    sys.exit("redis-server did not start")


def run_queue(name: str, python: Path, port: int, scenario: str, *args: str) -> dict[str, Any]:
    env = {**os.environ, "BENCH_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    script = ROOT / "bench" / "queues" / f"{name}_bench.py"
    done = subprocess.run(
        [str(python), str(script), scenario, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        print(f"{name} {scenario} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return {}
    return dict(json.loads(done.stdout))


def measure(port: int, quick: bool, with_queues: bool) -> dict[str, dict[str, Any]]:
    n = 2_000 if quick else 20_000
    n_enqueue = 1_000 if quick else 5_000
    late_n, spread = (200, 2.0) if quick else (2_000, 10.0)
    under = 5_000 if quick else 50_000  # the backlog the lateness_backlog figures drain
    res: dict[str, dict[str, Any]] = {}
    print("actor-system ...", file=sys.stderr)
    backlog = ours.throughput(port, n, 100)
    res["actor-system"] = {
        **ours.enqueue(port, n_enqueue),
        "backlog_100": backlog,
        "backlog_1": ours.throughput(port, n, 1),
        "trickle": ours.throughput(port, n, n),  # every actor holds one message
        "backlog_100_async": ours.throughput(port, n, 100, actor=async_counter),
        "lateness": ours.lateness(port, late_n, spread),
        "lateness_backlog": ours.lateness_under_backlog(port, under, late_n, spread),
        "delay_scale": ours.delay_scale(port, 20_000 if quick else 1_000_000),
        "import": ours.import_times(),
    }
    res["actor-system"]["reminders"] = reminders.measure(port, quick)
    if with_queues:
        measure_queues(res, port, quick, n, n_enqueue, late_n, spread, under)
    print("AWS adapters (moto) ...", file=sys.stderr)
    res["actor-system"]["aws"] = measure_aws(port, quick)
    return res


def measure_aws(port: int, quick: bool) -> dict[str, Any]:
    """S3 state beside Redis state, SQS beside the sorted set (bench/aws.py), if moto is here."""
    try:
        import moto  # noqa: F401
    except ImportError:
        return {}
    from bench import aws

    moto_proc, _ = aws.start_moto()
    try:
        return aws.measure(port, quick)
    finally:
        moto_proc.terminate()
        moto_proc.wait(10)


def measure_queues(
    res: dict[str, dict[str, Any]],
    port: int,
    quick: bool,
    n: int,
    n_enqueue: int,
    late_n: int,
    spread: float,
    under: int,
) -> None:
    pythons = venvs.ensure(QUEUES)
    for name in QUEUES:
        print(f"{name} ...", file=sys.stderr)
        py = pythons[name]
        backlog_q = run_queue(name, py, port, "backlog", "--n", str(500 if quick else n))
        res[name] = {
            "version": venvs.version_of(name),
            **run_queue(name, py, port, "enqueue", "--n", str(n_enqueue)),
            "backlog_100": backlog_q,
            "backlog_1": backlog_q,  # a job queue has no per-actor ordering: same figure
            "trickle": backlog_q,  # every job is one message
            "lateness": run_queue(
                name, py, port, "lateness", "--n", str(late_n), "--spread", str(spread)
            ),
            "lateness_backlog": run_queue(
                name,
                py,
                port,
                "lateness_backlog",
                "--n",
                str(late_n),
                "--spread",
                str(spread),
                "--backlog",
                str(under),
            ),
        }


def fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"
    return str(v)


def table(res: dict[str, dict[str, Any]]) -> str:
    headers = [
        "system",
        "enqueue/s",
        "enqueue batched/s",
        "backlog 100 actors/s",
        "backlog 1 actor/s",
        "trickle/s",
        "late p50 ms",
        "p99 ms",
        "max ms",
        "early",
        "lost",
        "under backlog p99 ms",
        "lost",
    ]
    rows = []
    for name, r in res.items():
        late = r.get("lateness", {})
        rows.append(
            [
                name,
                fmt(r.get("enqueue_msgs_per_s")),
                fmt(r.get("enqueue_batched_msgs_per_s")),
                fmt(r.get("backlog_100", {}).get("msgs_per_s")),
                fmt(r.get("backlog_1", {}).get("msgs_per_s")),
                fmt(r.get("trickle", {}).get("msgs_per_s")),
                fmt(late.get("p50_ms")),
                fmt(late.get("p99_ms")),
                fmt(late.get("max_ms")),
                fmt(late.get("early")),
                fmt(late.get("lost")),
                fmt(r.get("lateness_backlog", {}).get("p99_ms")),
                fmt(r.get("lateness_backlog", {}).get("lost")),
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("-|-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def targets(res: dict[str, dict[str, Any]]) -> list[tuple[str, bool, str]]:
    us = res["actor-system"]
    others = [r for name, r in res.items() if name != "actor-system"]

    def best(key: str) -> float:
        return max((r.get(key, {}).get("msgs_per_s", 0.0) for r in others), default=0.0)

    out = []
    if others:
        for key, factor in (("backlog_100", 20), ("trickle", 3)):
            ratio = us[key]["msgs_per_s"] / max(best(key), 1e-9)
            out.append((f"{key} >= {factor}x the fastest queue", ratio >= factor, f"{ratio:.1f}x"))
    late, scale, imp = us["lateness"], us["delay_scale"], us["import"]
    out += [
        ("deferred p99 <= 3 ms", late["p99_ms"] <= 3, f"{late['p99_ms']:.2f} ms"),
        ("deferred max <= 25 ms", late["max_ms"] <= 25, f"{late['max_ms']:.2f} ms"),
        (
            "deferred p99 <= 10 ms under a backlog",
            us["lateness_backlog"]["p99_ms"] <= 10,
            f"{us['lateness_backlog']['p99_ms']:.2f} ms ({us['lateness_backlog']['backlog']:,})",
        ),
        (
            "no deferred message early or lost",
            late["early"] == 0 and late["lost"] == 0,
            f"early {late['early']}, lost {late['lost']}",
        ),
        (
            "<= 0.05 round trips / message (batch 100)",
            us["backlog_100"]["round_trips_per_msg"] <= 0.05,
            f"{us['backlog_100']['round_trips_per_msg']:.4f}",
        ),
        (
            "<= 2 round trips / turn (trickle)",
            us["trickle"]["round_trips_per_turn"] <= 2,
            f"{us['trickle']['round_trips_per_turn']:.2f}",
        ),
        (
            "<= 256 bytes / pending deferred message",
            scale["bytes_per_pending"] <= 256,
            f"{scale['bytes_per_pending']:.0f} B",
        ),
        (
            ">= 50,000 promotions / s",
            scale["promote_msgs_per_s"] >= 50_000,
            f"{scale['promote_msgs_per_s']:,.0f}/s",
        ),
        (
            "import <= 1.2x its dependencies",
            imp["ratio_to_deps"] <= 1.2,
            f"{imp['import_actor_system_ms']:.0f} ms vs {imp['import_deps_ms']:.0f} ms",
        ),
        ("boto3 not imported", not imp["boto3_imported"], str(imp["boto3_imported"])),
    ]
    return out + reminders.targets(us["reminders"])


def plot(res: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, r in res.items():
        samples = sorted(r.get("lateness", {}).get("samples", []))
        if not samples:
            continue
        xs = [max(s * 1000, 0.01) for s in samples]
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=f"{name} ({r['lateness'].get('early', 0)} early)")
    ax.set_xscale("log")
    ax.set_xlabel("lateness of deferred delivery (ms, log scale; early shown at 0.01)")
    ax.set_ylabel("fraction delivered")
    ax.set_title("Deferred messages due uniformly over the run, one worker each")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI smoke runs")
    parser.add_argument("--no-queues", action="store_true", help="skip arq/dramatiq/rq/celery")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--plot", type=Path, help="write the lateness plot (PNG) here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_redis(tmp)
        try:
            res = measure(port, args.quick, not args.no_queues)
        finally:
            proc.terminate()
            proc.wait(10)
    if args.json:
        slim = {
            k: {
                m: ({x: y for x, y in v.items() if x != "samples"} if isinstance(v, dict) else v)
                for m, v in r.items()
            }
            for k, r in res.items()
        }
        args.json.write_text(json.dumps(slim, indent=2, default=str) + "\n")
    if args.plot:
        plot(res, args.plot)

    print(table(res))
    us = res["actor-system"]
    print(
        f"\nactor-system: round trips/message {us['backlog_100']['round_trips_per_msg']:.4f} "
        f"(batch 100), {us['trickle']['round_trips_per_turn']:.2f} per turn (trickle); CPU "
        f"{us['backlog_100']['cpu_us_per_msg']:.1f} us/message (batch 100), "
        f"{us['trickle']['cpu_us_per_msg']:.1f} (trickle); async def handlers "
        f"{us['backlog_100_async']['cpu_us_per_msg']:.1f} us/message (batch 100); Redis "
        f"time in commands {us['backlog_100']['redis_us_per_msg']:.2f} us/message (batch "
        f"100), {us['trickle']['redis_us_per_msg']:.2f} (trickle)"
    )
    scale = us["delay_scale"]
    print(
        f"delay queue: {scale['pending']:,} pending, {scale['bytes_per_pending']:.0f} B each, "
        f"promoted at {scale['promote_msgs_per_s']:,.0f}/s; immediate send p50/p99 "
        f"{scale['immediate_send_p50_ms_idle']:.2f}/{scale['immediate_send_p99_ms_idle']:.2f} ms "
        f"idle, {scale['immediate_send_p50_ms_during']:.2f}/"
        f"{scale['immediate_send_p99_ms_during']:.2f} ms (max "
        f"{scale['immediate_send_max_ms_during']:.1f}) while the batch is promoted"
    )
    print(reminders.report(us["reminders"], us["lateness"]))
    imp = us["import"]
    print(
        f"import actor_system {imp['import_actor_system_ms']:.0f} ms (its dependencies "
        f"{imp['import_deps_ms']:.0f} ms); handler module {imp['import_handler_module_ms']:.0f} ms"
    )
    for name, r in res.items():
        if "lateness" in r and r["lateness"].get("timing"):
            settings = r.get("backlog_100", {}).get("settings")
            print(f"{name}: {r['lateness']['timing']}" + (f"; {settings}" if settings else ""))
    if us.get("aws"):
        from bench import aws

        print("\n" + aws.report(us["aws"]))
    print("\ntargets" + (" (quick mode: sizes too small to judge)" if args.quick else ""))
    for label, ok, figure in targets(res):
        print(f"  [{'ok' if ok else 'MISS'}] {label}: {figure}")


if __name__ == "__main__":
    main()
