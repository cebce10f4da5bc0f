"""One redis-server beside a 3-master Redis Cluster: the same drains, trickle and deferred
timing on each, in one run.

    python bench/cluster.py                  # full sizes, best of 3 drains (a few minutes)
    python bench/cluster.py --quick          # smoke sizes, about a minute
    python bench/cluster.py --json out.json  # the figures as JSON too

Starts a redis-server and three ``--cluster-enabled yes`` masters joined by
``redis-cli --cluster create`` (tests/cluster.py), all on free loopback ports with
persistence off, and measures on each:

- backlog drain: messages preloaded over many actors (batch 100, so one turn per actor),
  drained by 1 worker in this process (``run_until_idle``) and by 2 ``actor-system worker``
  processes (held with SIGSTOP while the backlog is loaded, timed from SIGCONT until every
  actor's state holds its count);
- Redis round trips per message and per turn of the in-process drains, counted on the
  client's connections: a pipeline to N nodes is N sends, so N round trips (in parallel);
- Redis time per message: the sum of ``usec`` in ``INFO commandstats`` of every master
  after ``CONFIG RESETSTAT`` on each, and the redis-server processes' CPU beside it;
- trickle: one message per actor drained in this process (bench/run.py's trickle), and
  messages asked one at a time of a live worker process (each sent once the previous
  one's turn has committed);
- deferred lateness: messages due uniformly over a few seconds, a live worker process.

Prints a table (one node, cluster, the cluster's overhead at equal worker count) and the
targets as PASS/MISS lines: figures, never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import redis
from redis.cluster import RedisCluster

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actor_system import ActorRef, ActorSystem, ActorType, Options, stored_state  # noqa: E402
from actor_system.adapters.redis import RedisBackend  # noqa: E402
from bench.actors import Due, Inc, Lateness, actors, counter, timer  # noqa: E402
from bench.ours import CountingConnection, _timed, make_system  # noqa: E402
from bench.queues.common import summarize  # noqa: E402
from tests.cluster import RedisCluster as ClusterNodes  # noqa: E402
from tests.cluster import available  # noqa: E402
from tests.conftest import RedisServer  # noqa: E402

WORKER_CMD = [sys.executable, "-m", "actor_system.cli", "--json", "--app", "bench.actors"]
# Commands this script sends itself while worker processes drain (reading the counters'
# states), and the one that resets the counts: left out of Redis's time.
OWN_COMMANDS = ("cmdstat_hget", "cmdstat_config|resetstat")


class LookupCounting(CountingConnection):
    """Counts round trips as CountingConnection does, and apart the ``COMMAND GETKEYS`` that
    redis-py sends by itself to learn where a command goes (a cluster pipeline does so for
    each EVALSHA it cannot place from its own tables)."""

    lookups = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        first = command[0] if isinstance(command, list | tuple) else command
        if b"GETKEYS" in bytes(first[:40]).upper():
            LookupCounting.lookups += 1
        super().send_packed_command(command, check_health)


@dataclass
class Deployment:
    """One node or a cluster, as the benchmark reaches it: by the ports of its masters."""

    name: str
    ports: list[int]
    cluster: bool

    @property
    def url(self) -> str:
        """What a worker process is given: any node's URL (a cluster node switches the
        runtime to redis-py's RedisCluster by itself)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def _each(self, fn: Callable[[redis.Redis], Any]) -> list[Any]:
        out = []
        for port in self.ports:
            with redis.Redis(port=port) as client:
                out.append(fn(client))
        return out

    def flush(self) -> None:
        self._each(lambda c: c.flushall())

    def blocked_clients(self) -> int:
        return sum(int(i["blocked_clients"]) for i in self._each(lambda c: c.info("clients")))

    def start_counting(self) -> list[float]:
        """CONFIG RESETSTAT on every master; the CPU time each redis-server has used."""
        self._each(lambda c: c.config_resetstat())
        return [_cpu_s(i) for i in self._each(lambda c: c.info("cpu"))]

    def counted(self, cpu0: list[float], messages: int) -> dict[str, Any]:
        """Redis's time since ``start_counting``, per message and per master."""
        stats = self._each(lambda c: (c.info("commandstats"), c.info("cpu")))
        usec = [
            sum(v["usec"] for k, v in cmds.items() if k not in OWN_COMMANDS) for cmds, _ in stats
        ]
        evalsha = [cmds.get("cmdstat_evalsha", {}).get("usec", 0) for cmds, _ in stats]
        getkeys = [cmds.get("cmdstat_command|getkeys", {}).get("usec", 0) for cmds, _ in stats]
        cpu = [(_cpu_s(info) - before) * 1e6 for (_, info), before in zip(stats, cpu0, strict=True)]
        return {
            # every command's time, as bench/ours.py sums it: a script's own commands count
            # again inside EVALSHA's time
            "redis_us_per_msg": sum(usec) / messages,
            "redis_evalsha_us_per_msg": sum(evalsha) / messages,
            "redis_getkeys_us_per_msg": sum(getkeys) / messages,
            # the redis-server processes' CPU (network, parsing, cron and cluster bus too)
            "redis_process_cpu_us_per_msg": sum(cpu) / messages,
            "redis_us_per_master": usec,
            "busiest_master_share": max(usec) / max(sum(usec), 1),
        }

    def system(self, **options: Any) -> ActorSystem:
        """A system whose connections count round trips (CountingConnection; on a cluster
        LookupCounting, which counts redis-py's key lookups too)."""
        if not self.cluster:
            return make_system(self.ports[0], **options)
        opts = Options(**options)
        # from_url: only then does redis-py build each node's pool with connection_class
        # (RedisCluster(host=, port=, connection_class=) hands it to Redis(), which refuses it)
        client = RedisCluster.from_url(self.url, connection_class=LookupCounting)
        backend = RedisBackend(client=client, options=opts)
        return ActorSystem(backend, actors=cast("list[ActorType[Any]]", actors), options=opts)


def _cpu_s(info: dict[str, Any]) -> float:
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _backend(system: ActorSystem) -> RedisBackend:
    return cast(RedisBackend, system.backend)


def _preload(system: ActorSystem, refs: list[ActorRef], messages: int) -> None:
    batch = [(refs[i % len(refs)], Inc()) for i in range(messages)]
    for i in range(0, messages, 1000):
        system.send_many(batch[i : i + 1000])


def _counts(system: ActorSystem, refs: list[ActorRef]) -> list[int]:
    """The counters' committed counts, read in one pipeline (one per node on a cluster)."""
    backend = _backend(system)
    pipe = backend.client.pipeline(transaction=False)
    for ref in refs:
        pipe.hget(backend.keys.actor(ref.key, "state"), "d")
    return [int((stored_state.raw(data) or {}).get("count", 0)) for data in pipe.execute()]


def _wait_drained(system: ActorSystem, refs: list[ActorRef], each: int, timeout_s: float) -> bool:
    """Until every counter holds ``each``: a few actors read at a time, in the order they
    were loaded (about the order they are served), so that watching costs the drain little."""
    left = list(refs)
    deadline = time.monotonic() + timeout_s
    while left:
        head = left[:16]
        done = {r for r, n in zip(head, _counts(system, head), strict=True) if n >= each}
        if done:
            left = [r for r in left if r not in done]
            continue
        if time.monotonic() > deadline:
            return False
        time.sleep(0.003)
    return True


def _check(system: ActorSystem, refs: list[ActorRef], messages: int) -> list[str]:
    """What looks lost, doubled or stuck after a drain (empty: nothing)."""
    problems = []
    counts = _counts(system, refs)
    each = messages // len(refs)
    if sum(counts) != messages:
        problems.append(f"counted {sum(counts):,} of {messages:,} messages")
    if any(n > each for n in counts):
        problems.append(f"{sum(1 for n in counts if n > each)} actors counted a message twice")
    stats = system.stats()
    for key in ("ready_actors", "leases_held", "mailbox_messages", "in_flight_messages"):
        if stats[key]:
            problems.append(f"{key}={stats[key]} after the drain")
    if stats["dead_letters"]:
        problems.append(f"{stats['dead_letters']} dead letters")
    return problems


@contextmanager
def workers(
    dep: Deployment, n: int, out: dict[str, Any]
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``n`` worker processes on ``dep``, yielded once all of them are idle (blocked on Redis
    for work); stopped with SIGTERM after. Their totals (JSON on stdout) go to
    ``out["worker_messages"]``, anything they logged to ``out["problems"]``."""
    env = {**os.environ, "ACTOR_SYSTEM_REDIS_URL": dep.url}
    procs: list[subprocess.Popen[bytes]] = []
    files: list[tuple[IO[bytes], IO[bytes]]] = []
    with ExitStack() as stack:
        try:
            for _ in range(n):
                stdout = stack.enter_context(tempfile.TemporaryFile())
                stderr = stack.enter_context(tempfile.TemporaryFile())
                files.append((stdout, stderr))
                procs.append(
                    subprocess.Popen(
                        [*WORKER_CMD, "worker"], cwd=ROOT, env=env, stdout=stdout, stderr=stderr
                    )
                )
            deadline = time.monotonic() + 60
            while dep.blocked_clients() < n:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"{n} worker processes on {dep.name} did not become idle")
                time.sleep(0.05)
            yield procs
        finally:
            _stop(procs, files, out)


def _stop(
    procs: list[subprocess.Popen[bytes]],
    files: list[tuple[IO[bytes], IO[bytes]]],
    out: dict[str, Any],
) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)  # it may be stopped
            p.send_signal(signal.SIGTERM)
    problems = out.setdefault("problems", [])
    totals = []
    for p, (stdout, stderr) in zip(procs, files, strict=True):
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            problems.append(f"worker {p.pid} did not stop within 30 s of SIGTERM")
            p.kill()
            p.wait(10)
        stdout.seek(0)
        stderr.seek(0)
        try:
            totals.append(int(json.loads(stdout.read())["messages"]))
        except (ValueError, KeyError, TypeError):
            totals.append(-1)
        lines = stderr.read().decode(errors="replace").strip().splitlines()
        logged = "\n".join(line for line in lines if "worker starting" not in line)
        if logged:
            problems.append(f"worker {p.pid} logged: {logged[-500:]}")
        if p.returncode not in (0, -signal.SIGTERM):
            problems.append(f"worker {p.pid} exited with {p.returncode}")
    out["worker_messages"] = totals


def drain_in_process(dep: Deployment, messages: int, n_actors: int) -> dict[str, Any]:
    """Preload a backlog, then drain it in this process (as bench/ours.py's throughput):
    full turns with lease, state load, claim, commit."""
    dep.flush()
    system = dep.system()
    refs = [counter.ref(str(i)) for i in range(n_actors)]
    _preload(system, refs, messages)
    cpu0 = dep.start_counting()
    CountingConnection.round_trips = LookupCounting.lookups = 0
    process0 = time.process_time()
    start = time.perf_counter()
    report = system.run_until_idle()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - process0
    trips, lookups = CountingConnection.round_trips, LookupCounting.lookups
    out: dict[str, Any] = {
        "messages": messages,
        "actors": n_actors,
        "msgs_per_s": messages / elapsed,
        "round_trips_per_msg": trips / messages,
        "round_trips_per_turn": trips / max(report.turns, 1),
        # of the round trips, redis-py's COMMAND GETKEYS (each a serial round trip of its own)
        "key_lookups_per_msg": lookups / messages,
        "turns": report.turns,
        "cpu_us_per_msg": cpu / messages * 1e6,
        **dep.counted(cpu0, messages),
    }
    out["problems"] = _check(system, refs, messages)
    if report.messages != messages:
        out["problems"].append(f"run_until_idle reported {report.messages:,} messages")
    system.close()
    return out


def drain_processes(dep: Deployment, messages: int, n_actors: int, n: int) -> dict[str, Any]:
    """The same backlog drained by ``n`` worker processes: loaded while they are stopped
    (SIGSTOP), timed from SIGCONT until every counter holds its count."""
    dep.flush()
    system = dep.system()
    refs = [counter.ref(str(i)) for i in range(n_actors)]
    out: dict[str, Any] = {"messages": messages, "actors": n_actors, "workers": n}
    with workers(dep, n, out) as procs:
        for p in procs:
            p.send_signal(signal.SIGSTOP)
        _preload(system, refs, messages)
        cpu0 = dep.start_counting()
        start = time.perf_counter()
        for p in procs:
            p.send_signal(signal.SIGCONT)
        drained = _wait_drained(system, refs, messages // n_actors, 120)
        elapsed = time.perf_counter() - start
        out.update(msgs_per_s=messages / elapsed, **dep.counted(cpu0, messages))
    if not drained:
        out["problems"].append("not drained within 120 s")
    out["problems"] += _check(system, refs, messages)
    if sum(out["worker_messages"]) != messages:
        out["problems"].append(f"workers reported {out['worker_messages']} messages")
    system.close()
    return out


def trickle_live(dep: Deployment, messages: int) -> dict[str, Any]:
    """Messages asked one at a time of a live worker process, each to an actor of its own
    (so each turn holds one message): the next is sent once the previous one's reply record
    is committed (awaited with a blocking read, no polling)."""
    dep.flush()
    system = dep.system()
    backend = _backend(system)
    out: dict[str, Any] = {"messages": messages, "problems": []}
    warmup = 20
    took: list[float] = []
    with workers(dep, 1, out):
        start = 0.0
        for i in range(warmup + messages):
            if i == warmup:
                start = time.perf_counter()
            ref = timer.ref(f"t{i}")
            sent = time.perf_counter()
            item = system.registry.prepare(ref, Due(due=time.time()), now_s=time.time(), reply="")
            backend.push([item], int(time.time() * 1000))
            if backend.wait_reply(item.id, 30) is None:
                out["problems"].append(f"message {i} not committed within 30 s")
                break
            if i >= warmup:
                took.append(time.perf_counter() - sent)
        elapsed = time.perf_counter() - start
    done = range(warmup, warmup + len(took))
    states = [cast(Lateness, system.state(timer.ref(f"t{i}"))) for i in done]
    ran = [x for state in states for x in state.samples]
    summary = summarize(sorted(took), messages)
    out.update(
        msgs_per_s=len(took) / elapsed,
        p50_ms=summary["p50_ms"],
        p99_ms=summary["p99_ms"],
        max_ms=summary["max_ms"],
        handler_p50_ms=summarize(sorted(ran), messages)["p50_ms"],
    )
    system.close()
    return out


def lateness(dep: Deployment, messages: int, spread_s: float) -> dict[str, Any]:
    """Deferred messages due uniformly over ``spread_s``, a live worker process (as
    bench/ours.py's lateness)."""
    dep.flush()
    system = dep.system()
    out: dict[str, Any] = {}
    with workers(dep, 1, out):
        samples = _timed(system, messages, time.time() + 1.0, spread_s)
    system.close()
    return {**out, **summarize(samples, messages)}


def measure(single: Deployment, cluster: Deployment, quick: bool) -> dict[str, Any]:
    messages, n_actors = (2_000, 50) if quick else (20_000, 200)
    repeats = 1 if quick else 3
    trickle_n = 200 if quick else 1_000
    late_n, spread = (200, 2.0) if quick else (2_000, 10.0)
    deps = (single, cluster)
    res: dict[str, Any] = {
        "sizes": {
            "messages": messages,
            "actors": n_actors,
            "repeats": repeats,
            "trickle_messages": trickle_n,
            "deferred_messages": late_n,
            "deferred_spread_s": spread,
            "masters": len(cluster.ports),
        },
        **{d.name: {} for d in deps},
    }

    def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
        return max(runs, key=lambda r: r["msgs_per_s"]) | {
            "runs_msgs_per_s": [r["msgs_per_s"] for r in runs],
            "problems": [p for r in runs for p in r.get("problems", [])],
        }

    drains: list[tuple[str, Callable[[Deployment], dict[str, Any]]]] = [
        ("drain_1", lambda d: drain_in_process(d, messages, n_actors)),
        ("drain_2", lambda d: drain_processes(d, messages, n_actors, 2)),
    ]
    for key, run in drains:
        runs: dict[str, list[dict[str, Any]]] = {d.name: [] for d in deps}
        for i in range(repeats):
            for d in deps:  # alternating, so that both see the same load on the machine
                print(f"{key} on {d.name} ({i + 1}/{repeats}) ...", file=sys.stderr)
                runs[d.name].append(run(d))
        for d in deps:
            res[d.name][key] = best(runs[d.name])
    for d in deps:
        print(f"trickle and deferred on {d.name} ...", file=sys.stderr)
        res[d.name]["trickle_turns"] = drain_in_process(d, messages, messages)
        res[d.name]["trickle_live"] = trickle_live(d, trickle_n)
        res[d.name]["lateness"] = lateness(d, late_n, spread)
    return res


def _overhead(one: float, clustered: float, higher_is_better: bool) -> float:
    """How much worse the cluster's figure is, in %."""
    if higher_is_better:
        return (1 - clustered / one) * 100
    return (clustered / one - 1) * 100


ROWS: list[tuple[str, str, str, str, bool | None]] = [
    # label, measurement, figure, format, higher is better (None: no overhead column)
    ("drain msg/s, 1 worker in-process", "drain_1", "msgs_per_s", ",.0f", True),
    ("drain msg/s, 2 worker processes", "drain_2", "msgs_per_s", ",.0f", True),
    ("1 msg per actor msg/s, in-process", "trickle_turns", "msgs_per_s", ",.0f", True),
    ("asked 1 at a time msg/s, 1 process", "trickle_live", "msgs_per_s", ",.0f", True),
    ("  send -> commit seen p50 ms", "trickle_live", "p50_ms", ".2f", False),
    ("  send -> commit seen p99 ms", "trickle_live", "p99_ms", ".2f", False),
    ("  send -> handler ran p50 ms", "trickle_live", "handler_p50_ms", ".2f", False),
    ("round trips / message, drain", "drain_1", "round_trips_per_msg", ".4f", None),
    ("  of which redis-py's GETKEYS", "drain_1", "key_lookups_per_msg", ".4f", None),
    ("round trips / turn, drain", "drain_1", "round_trips_per_turn", ".2f", None),
    ("round trips / turn, 1 msg per actor", "trickle_turns", "round_trips_per_turn", ".2f", None),
    ("client CPU us / message, drain", "drain_1", "cpu_us_per_msg", ".1f", False),
    ("Redis us / message in commands, drain", "drain_1", "redis_us_per_msg", ".2f", None),
    ("  of which EVALSHA", "drain_1", "redis_evalsha_us_per_msg", ".2f", None),
    ("  of which COMMAND GETKEYS", "drain_1", "redis_getkeys_us_per_msg", ".2f", None),
    ("  redis-server process CPU", "drain_1", "redis_process_cpu_us_per_msg", ".2f", None),
    ("  busiest master's share", "drain_1", "busiest_master_share", ".0%", None),
    ("Redis us / message, 2 worker processes", "drain_2", "redis_us_per_msg", ".2f", None),
    ("deferred lateness p50 ms", "lateness", "p50_ms", ".2f", False),
    ("deferred lateness p99 ms", "lateness", "p99_ms", ".2f", False),
    ("deferred lateness max ms", "lateness", "max_ms", ".2f", False),
    ("deferred early / lost", "lateness", "early", "d", None),
]


def table(res: dict[str, Any], single: str, cluster: str) -> str:
    headers = ["figure", single, cluster, "cluster overhead"]
    rows = []
    for label, key, figure, spec, higher in ROWS:
        a, b = res[single][key].get(figure), res[cluster][key].get(figure)
        if figure == "early":
            cells = [f"{r[key]['early']} / {r[key]['lost']}" for r in (res[single], res[cluster])]
        else:
            cells = [format(x, spec) if x is not None else "-" for x in (a, b)]
        over = "" if higher is None or not a or b is None else f"{_overhead(a, b, higher):+.1f} %"
        rows.append([label, *cells, over])
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    align = [str.ljust, str.rjust, str.rjust, str.rjust]
    lines = [" | ".join(f(h, w) for f, h, w in zip(align, headers, widths, strict=True))]
    lines.append("-|-".join("-" * w for w in widths))
    lines += [
        " | ".join(f(c, w) for f, c, w in zip(align, row, widths, strict=True)) for row in rows
    ]
    return "\n".join(lines)


def targets(res: dict[str, Any], single: str, cluster: str) -> list[tuple[str, bool, str]]:
    one, many = res[single], res[cluster]
    out = []
    for key, what in (("drain_1", "1 worker"), ("drain_2", "2 worker processes")):
        over = _overhead(one[key]["msgs_per_s"], many[key]["msgs_per_s"], True)
        out.append(
            (
                f"cluster overhead <= 15 % at equal worker count, {what}",
                over <= 15,
                f"{over:+.1f} %",
            )
        )
    trips, lookups = many["drain_1"]["round_trips_per_msg"], many["drain_1"]["key_lookups_per_msg"]
    out.append(
        (
            "round trips / message in the backlog <= 0.02 (cluster, batch 100)",
            trips <= 0.02,
            f"{trips:.4f} ({trips - lookups:.4f} without redis-py's GETKEYS; one node "
            f"{one['drain_1']['round_trips_per_msg']:.4f})",
        )
    )
    # Judged on the redis-server processes' CPU time: commandstats sums the time spent in
    # each command, a script's own commands again inside EVALSHA's (shown beside).
    for name, res_of, where in (
        ("one node: a shard's ceiling", one, "one node"),
        ("cluster, summed over every master", many, "cluster"),
    ):
        d = res_of["drain_1"]
        cpu = d["redis_process_cpu_us_per_msg"]
        out.append(
            (
                f"Redis CPU <= 3 us / message at batch 100 ({name})",
                cpu <= 3,
                f"{cpu:.2f} us of process CPU ({where}; in scripts "
                f"{d['redis_evalsha_us_per_msg']:.2f}, in commands counted twice "
                f"{d['redis_us_per_msg']:.2f})",
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, to check it runs")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    if not available():
        sys.exit("redis-server and redis-cli are needed (apt-get install redis-server)")
    with tempfile.TemporaryDirectory() as tmp:
        node = RedisServer(Path(tmp))
        (Path(tmp) / "cluster").mkdir()
        nodes = ClusterNodes(Path(tmp) / "cluster")
        try:
            node.start()
            nodes.start()
            single = Deployment("one node", [node.port], cluster=False)
            cluster = Deployment(
                f"cluster ({len(nodes.nodes)} masters)", [n.port for n in nodes.nodes], True
            )
            res = measure(single, cluster, args.quick)
        finally:
            nodes.stop()
            node.stop()
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str) + "\n")

    sizes = res["sizes"]
    print(
        f"backlog: {sizes['messages']:,} messages over {sizes['actors']} actors "
        f"({sizes['messages'] // sizes['actors']} each, batch 100), best of {sizes['repeats']}; "
        f"asked one at a time: {sizes['trickle_messages']:,}; deferred: "
        f"{sizes['deferred_messages']:,} due over {sizes['deferred_spread_s']:.0f} s"
    )
    print(table(res, single.name, cluster.name))
    print(
        "\nRound trips are sends on the client's connections: a pipeline to N nodes counts N "
        "(they run in parallel).\nRedis time in commands sums INFO commandstats over every "
        "master (a script's own commands count again inside EVALSHA's time); the process CPU "
        "includes network, parsing, cron and the cluster bus."
    )
    if res[cluster.name]["drain_1"]["key_lookups_per_msg"]:
        print(
            f"redis-py {redis.__version__} places each EVALSHA of a cluster pipeline by asking a "
            "node (COMMAND GETKEYS): one more round trip per script call, made one after another "
            "while the pipeline is built (none when the call names its node with target_nodes=)."
        )
    for d in (single, cluster):
        share = res[d.name]["drain_2"].get("worker_messages")
        print(f"{d.name}: messages per worker process in the 2-worker drain: {share}")
    problems = [
        f"{d.name} {key}: {p}"
        for d in (single, cluster)
        for key, r in res[d.name].items()
        for p in r.get("problems", [])
    ]
    print("\nchecks: " + ("nothing lost, doubled or stuck" if not problems else "problems"))
    for p in problems:
        print(f"  {p}")
    print("\ntargets" + (" (quick mode: sizes too small to judge)" if args.quick else ""))
    for label, ok, figure in targets(res, single.name, cluster.name):
        print(f"  [{'PASS' if ok else 'MISS'}] {label}: {figure}")


if __name__ == "__main__":
    main()
