"""The container fallback on the moto server: jobs longer than a Lambda invocation are
interrupted, move to the long-work lane, one ECS task is started for the burst (moto records
RunTask), and a worker run with that task's command drains the lane and ends when idle; a
worker killed midway loses nothing and applies nothing twice."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from actor_system import ActorSystem, scaffold
from actor_system.runtime import PRESENT_MS
from actor_system.testing import LambdaHarness
from tests.long_app import ACTORS, Job, job
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = str(Path(__file__).resolve().parents[2])
JOB_S = 3.0  # each job: twice what an invocation leaves a handler
LEASE_MS = 3000


def task_command() -> list[str]:
    """The long-work task's command, as serverless.yml defines it."""
    text = scaffold.REFERENCE.serverless_yml()
    found = re.search(r"Command: \[(actor-system, worker[^\]]*)\]", text)
    assert found
    return [part.strip() for part in found[1].split(",")]


@pytest.fixture
def ecs(aws_env: dict[str, str]) -> dict[str, str]:
    """A Fargate cluster, its task definition and a subnet on the moto server."""
    ec2 = boto3.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    name = f"w{time.monotonic_ns()}"
    group = ec2.create_security_group(GroupName=name, Description="w", VpcId=vpc)
    client = boto3.client("ecs")
    cluster = f"long-{time.monotonic_ns()}"
    client.create_cluster(clusterName=cluster)
    registered = client.register_task_definition(
        family=f"{cluster}-long-work",
        requiresCompatibilities=["FARGATE"],
        networkMode="awsvpc",
        cpu="1024",
        memory="2048",
        containerDefinitions=[
            {"name": "worker", "image": "worker:latest", "command": task_command(), "memory": 2048}
        ],
    )
    definition = registered["taskDefinition"]["taskDefinitionArn"]
    url = f"ecs://{cluster}/{definition}?subnets={subnet}&security_groups={group['GroupId']}"
    return {"cluster": cluster, "definition": definition, "url": url}


def tasks(cluster: str) -> list[dict[str, Any]]:
    client = boto3.client("ecs")
    arns = client.list_tasks(cluster=cluster)["taskArns"]
    return list(client.describe_tasks(cluster=cluster, tasks=arns)["tasks"]) if arns else []


def worker(env: dict[str, str], command: list[str]) -> subprocess.Popen[str]:
    """The task's command, run here (``actor-system`` as this interpreter's module); the
    idle exit shortened as a container override would."""
    assert command[0] == "actor-system"
    return subprocess.Popen(
        [sys.executable, "-m", "actor_system.cli", *command[1:], "--idle-exit", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_burst_of_long_jobs_starts_one_task_whose_worker_drains_them_once(
    redis_url: str, aws_env: dict[str, str], ecs: dict[str, str], tmp_path: Path
) -> None:
    starts = tmp_path / "starts"
    queue = boto3.client("sqs").create_queue(QueueName=f"wake-{time.monotonic_ns()}")["QueueUrl"]
    env = {
        **os.environ,
        **aws_env,
        "ACTOR_SYSTEM_REDIS_URL": redis_url,
        "ACTOR_SYSTEM_LEASE_MS": str(LEASE_MS),
        "LONG_APP_STARTS": str(starts),
    }
    lambda_env = {
        **env,
        "ACTOR_SYSTEM_WAKER_URL": queue,
        "ACTOR_SYSTEM_LAMBDA_MARGIN_S": "0.5",
        "ACTOR_SYSTEM_LONG_LANE_URL": ecs["url"],
        "ACTOR_SYSTEM_LONG_AFTER": "2",
    }
    system = ActorSystem.from_url(redis_url, actors=ACTORS, lease_ms=LEASE_MS)
    refs = [job.ref("a"), job.ref("b")]
    for ref in refs:
        for i in range(2):
            system.send(ref, Job(tag=f"{ref.id}{i}", seconds=JOB_S))
    moved = invocations = 0
    sqs = boto3.client("sqs")
    with LambdaHarness("tests.long_app:handler", timeout_s=2, env=lambda_env, cwd=ROOT) as lam:
        # As AWS runs it: the wake queue's messages (continuations: a drain that moved work
        # at the end of its time leaves the start of the worker to one), else the sweep.
        while system.stats()["long_lane_actors"] < len(refs) or not tasks(ecs["cluster"]):
            assert invocations < 20, system.stats()
            got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
            for m in got:
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
            records = [
                {"eventSource": "aws:sqs", "messageId": m["MessageId"], "body": m["Body"]}
                for m in got
            ]
            result = lam.invoke({"Records": records} if got else {"actor_system": "sweep"})
            assert "errorType" not in result, result
            moved += result.get("moved", 0)
            invocations += 1
    assert moved == len(refs)
    assert system.dead_letters() == []
    assert all(system.state(ref).done == [] for ref in refs)  # nothing finished in Lambda
    [task] = tasks(ecs["cluster"])  # one task for the burst, not one per move
    assert task["taskDefinitionArn"] == ecs["definition"]
    assert task["startedBy"] == "actor-system"
    command = boto3.client("ecs").describe_task_definition(
        taskDefinition=task["taskDefinitionArn"]
    )["taskDefinition"]["containerDefinitions"][0]["command"]
    worker_env = {**env, "ACTOR_SYSTEM_APP": "tests.long_app:ACTORS"}

    # The first task is killed in its second job: it committed one job at most.
    first = worker(worker_env, command)

    def started_here() -> int:
        return sum(line.endswith(f" {first.pid}") for line in starts.read_text().splitlines())

    wait_until(lambda: started_here() >= 2, timeout_s=60, what="2 jobs started by the task")
    time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    left = sum(len(system.state(ref).done) for ref in refs)
    assert left < 4  # it was killed mid-work

    second = worker(worker_env, command)
    _out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert "long-work lane stayed empty" in err
    for ref in refs:
        assert system.state(ref).done == [f"{ref.id}0", f"{ref.id}1"]  # each once, in order
    assert system.dead_letters() == []
    stats = system.stats()
    assert (stats["long_lane_actors"], stats["in_flight_messages"], stats["mailbox_messages"]) == (
        0,
        0,
        0,
    )
    # The second worker took its presence with it; the killed one's lapses on its own.
    backend = system.backend
    assert backend.client.zcard(backend.keys.lane_present) == 1
    assert not backend.claim_launch(1_000, int(time.time() * 1000))
    killed_lapsed = int(time.time() * 1000) + PRESENT_MS + 1_000
    assert system.backend.claim_launch(1_000, killed_lapsed)
    # A sweep with an empty lane starts nothing.
    with LambdaHarness("tests.long_app:handler", timeout_s=5, env=lambda_env, cwd=ROOT) as lam:
        lam.invoke({"actor_system": "sweep"})
    assert len(tasks(ecs["cluster"])) == 1
    system.close()
