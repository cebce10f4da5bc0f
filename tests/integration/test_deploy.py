"""The Serverless deployment packages offline (no AWS credentials or network), its template
passes cfn-lint, and its IAM is least privilege."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def osls_package(out: Path, *args: str) -> Path:
    """``npx osls package`` into ``out`` with fake credentials: nothing may reach AWS."""
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "fake",
        "AWS_SECRET_ACCESS_KEY": "fake",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    }
    done = subprocess.run(
        ["npx", "osls", "package", "--stage", "test", "--package", str(out), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("npx") is None or not (ROOT / "node_modules" / "osls").exists():
        if os.environ.get("CI"):
            pytest.fail("npx osls is missing; .ci/run installs it with npm ci")
        pytest.skip("run `npm ci` first")
    return osls_package(tmp_path_factory.mktemp("sls"))


@pytest.fixture(scope="module")
def template(packaged: Path) -> dict[str, Any]:
    return dict(json.loads((packaged / "cloudformation-template-update-stack.json").read_text()))


def test_template_passes_cfn_lint(packaged: Path) -> None:
    # W3005 (a DependsOn already implied by a GetAtt) is in the framework's own output.
    done = subprocess.run(
        [
            "cfn-lint",
            "--ignore-checks",
            "W3005",
            "--",
            str(packaged / "cloudformation-template-update-stack.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_iam_policies_name_no_wildcard_action_or_resource(template: dict[str, Any]) -> None:
    roles = {k: r for k, r in template["Resources"].items() if r["Type"] == "AWS::IAM::Role"}
    assert set(roles) == {
        "DrainRole",
        "IngressRole",
        "SchedulerRole",
        "LongWorkExecutionRole",
        "LongWorkTaskRole",
    }
    statements = 0
    for name, role in roles.items():
        for policy in role["Properties"]["Policies"]:
            for st in policy["PolicyDocument"]["Statement"]:
                statements += 1
                actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                assert all("*" not in a for a in actions), (name, actions)
                resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
                if actions == ["ecr:GetAuthorizationToken"]:
                    # The one action AWS grants on "*" only (no resource-level permissions):
                    # ECS needs it to pull the worker's image.
                    assert (name, resources) == ("LongWorkExecutionRole", ["*"])
                    continue
                for resource in resources:
                    assert resource != "*", (name, st)
                    named = json.dumps(resource).replace(":*", "")  # log streams
                    for prefix in ("/wake-*", "/deferred-*", "/actors/*"):  # our name prefixes
                        named = named.replace(prefix, "")
                    assert "*" not in named, (name, resource)
    assert statements >= 8
    drain = json.dumps(roles["DrainRole"])
    assert '"sqs:SendMessage"' in drain
    assert '"Fn::GetAtt": ["WakeQueue", "Arn"]' in drain
    assert "/actors/*" in drain  # only the state prefix of the bucket
    ingress = json.dumps(roles["IngressRole"])
    # The ingress runs turns and wakes the drain: it sends to the wake queue, never
    # receives from it or deletes, and invokes no function.
    assert '"sqs:SendMessage"' in ingress
    assert "sqs:ReceiveMessage" not in ingress
    assert "sqs:DeleteMessage" not in ingress
    assert "lambda:" not in ingress
    assert "/actors/*" in ingress
    # The drain starts the long-work task of its own task definition, in its own cluster,
    # and passes only that task's roles (and the Scheduler's).
    [run] = [st for st in roles["DrainRole"]["Properties"]["Policies"][0]["PolicyDocument"][
        "Statement"] if st["Action"] == "ecs:RunTask"]  # fmt: skip
    assert run["Resource"] == {"Ref": "LongWorkTaskDefinition"}
    assert run["Condition"] == {
        "ArnEquals": {"ecs:cluster": {"Fn::GetAtt": ["LongWorkCluster", "Arn"]}}
    }
    [passes] = [st for st in roles["DrainRole"]["Properties"]["Policies"][0]["PolicyDocument"][
        "Statement"] if st["Action"] == "iam:PassRole"]  # fmt: skip
    assert {r["Fn::GetAtt"][0] for r in passes["Resource"]} == {
        "SchedulerRole",
        "LongWorkTaskRole",
        "LongWorkExecutionRole",
    }
    task = json.dumps(roles["LongWorkTaskRole"])
    assert "/actors/*" in task
    assert "sqs:ReceiveMessage" not in task
    assert "ecs:" not in task
    assert "lambda:" not in task


def test_long_work_task_and_its_launcher(template: dict[str, Any]) -> None:
    res = template["Resources"]
    definition = res["LongWorkTaskDefinition"]["Properties"]
    assert definition["RequiresCompatibilities"] == ["FARGATE"]
    [container] = definition["ContainerDefinitions"]
    assert container["Command"] == ["actor-system", "worker", "--lane", "long"]
    assert container["HealthCheck"]["Command"] == ["CMD", "actor-system", "worker", "--check"]
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert env["ACTOR_SYSTEM_APP"] == "deploy.drain:ACTORS"
    logs = container["LogConfiguration"]["Options"]
    assert logs["awslogs-group"] == {"Ref": "LongWorkLogGroup"}
    assert res["LongWorkLogGroup"]["Properties"]["RetentionInDays"] == 14
    variables = res["DrainLambdaFunction"]["Properties"]["Environment"]["Variables"]
    # On once the task's subnets are given (a CloudFormation condition on that parameter).
    assert variables["ACTOR_SYSTEM_LONG_AFTER"] == {"Fn::If": ["HasWorkerSubnets", "2", "0"]}
    lane = json.dumps(variables["ACTOR_SYSTEM_LONG_LANE_URL"])
    assert '"ecs://", {"Ref": "LongWorkCluster"}, "/", {"Ref": "LongWorkTaskDefinition"}' in lane
    assert template["Conditions"]["HasWorkerSubnets"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "WorkerSubnets"}, ""]}]
    }


def test_the_local_stage_has_plain_values_and_no_authorizer(tmp_path: Path) -> None:
    """``--stage local`` (serverless-offline) replaces every CloudFormation reference in
    the functions' environment and drops the IAM authorizer, which the emulator refuses."""
    if shutil.which("npx") is None or not (ROOT / "node_modules" / "osls").exists():
        pytest.skip("run `npm ci` first")
    out = tmp_path / "local"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "fake", "AWS_SECRET_ACCESS_KEY": "fake"}
    env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"
    done = subprocess.run(
        ["npx", "osls", "package", "--stage", "local", "--package", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    template = json.loads((out / "cloudformation-template-update-stack.json").read_text())
    res = template["Resources"]
    for function in ("DrainLambdaFunction", "IngressLambdaFunction"):
        variables = res[function]["Properties"]["Environment"]["Variables"]
        assert all(isinstance(v, str) for v in variables.values()), variables
        assert variables["ACTOR_SYSTEM_WAKER_URL"] == ""
        assert variables["ACTOR_SYSTEM_LONG_LANE_URL"] == ""
    route = res["HttpApiRoutePostActorsTypeVarIdVarMessages"]["Properties"]
    assert "AuthorizationType" not in route


def test_drain_function_triggers_and_resources(template: dict[str, Any]) -> None:
    res = template["Resources"]
    drain = res["DrainLambdaFunction"]["Properties"]
    assert drain["Runtime"] == "python3.12"
    assert drain["RecursiveLoop"] == "Allow"  # continuations are bounded by max_chain
    mapping = res["DrainEventSourceMappingSQSWakeQueue"]["Properties"]
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    rule = res["DrainEventsRuleSchedule1"]["Properties"]
    assert rule["ScheduleExpression"] == "rate(1 minute)"
    assert json.loads(rule["Targets"][0]["Input"]) == {"actor_system": "sweep"}
    queue = res["WakeQueue"]["Properties"]
    assert queue["VisibilityTimeout"] >= 6 * drain["Timeout"]
    assert "deadLetterTargetArn" in queue["RedrivePolicy"]
    bucket = res["StateBucket"]["Properties"]
    assert bucket["VersioningConfiguration"]["Status"] == "Enabled"
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    route = res["HttpApiRoutePostActorsTypeVarIdVarMessages"]["Properties"]
    assert route["RouteKey"] == "POST /actors/{type}/{id}/messages"
    assert route["AuthorizationType"] == "AWS_IAM"


def test_package_holds_our_code_and_linux_wheels(packaged: Path) -> None:
    with zipfile.ZipFile(packaged / "actor-system.zip") as z:
        names = set(z.namelist())
    assert "deploy/drain.py" in names
    assert "actor_system/aws_lambda.py" in names
    assert "actor_system/adapters/redis/scripts/commit.lua" in names
    assert not any(n.startswith("adapters/") for n in names)  # only under actor_system
    assert any(
        n.startswith("pydantic_core/_pydantic_core.cpython-312-x86_64-linux-gnu") for n in names
    )
    assert any(n.startswith("msgpack/_cmsgpack.cpython-312-x86_64-linux-gnu") for n in names)
    assert "redis/client.py" in names
    assert "pydantic/main.py" in names
    assert not any(n.startswith(("tests/", "bench/", "node_modules/")) for n in names)


@pytest.fixture(scope="module")
def packaged_here(tmp_path_factory: pytest.TempPathFactory, packaged: Path) -> Path:
    """The package built for this interpreter's Python version, unzipped: the same tree AWS
    would run, importable here (the default package targets Python 3.12)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    out = osls_package(tmp_path_factory.mktemp("sls-here"), f"--param=pythonVersion={version}")
    tree = out / "tree"
    with zipfile.ZipFile(out / "actor-system.zip") as z:
        z.extractall(tree)
    return tree


def lambda_runtime_dir(tmp_path: Path) -> Path:
    """What Lambda's Python runtime adds to the package: boto3 and its dependencies."""
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    for name in ("boto3", "botocore", "jmespath", "s3transfer", "dateutil", "urllib3", "six"):
        module = importlib.import_module(name)
        source = Path(module.__file__ or "")
        target = source.parent if source.name == "__init__.py" else source
        (runtime / target.name).symlink_to(target)
    return runtime


def test_packaged_handler_imports_and_runs_one_invocation(
    packaged_here: Path, redis_url: str, aws_env: dict[str, str], tmp_path: Path
) -> None:
    import boto3

    from actor_system import ActorSystem
    from actor_system.testing import LambdaHarness
    from examples.counter import Add, counter

    queue = boto3.client("sqs").create_queue(QueueName="deploy-wake")["QueueUrl"]
    system = ActorSystem.from_url(redis_url, actors=[counter])
    system.send(counter.ref("deployed"), Add(n=7))
    path = f"{packaged_here}:{lambda_runtime_dir(tmp_path)}"
    env = {
        **aws_env,
        "PYTHONPATH": path,
        "ACTOR_SYSTEM_REDIS_URL": redis_url,
        "ACTOR_SYSTEM_WAKER_URL": queue,
        "ACTOR_SYSTEM_CONTINUE_URL": queue,
    }
    with LambdaHarness(
        "deploy.drain:handler", timeout_s=10, env=env, cwd=str(tmp_path), python_args=("-S",)
    ) as lam:
        result = lam.invoke({"actor_system": "sweep"})
    assert result.get("messages") == 1, result
    assert system.state(counter.ref("deployed")).count == 7  # type: ignore[attr-defined]
    probe = subprocess.run(
        [
            sys.executable,
            "-S",
            "-c",
            "import pydantic, redis, msgpack, deploy.drain; "
            "print(callable(deploy.drain.handler), pydantic.__file__)",
        ],
        env={**env, "ACTOR_SYSTEM_REDIS_URL": "redis://127.0.0.1:1/0"},
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert probe[0] == "True"
    assert probe[1].startswith(str(packaged_here))  # imported from the package, not the venv


# -- the optional dashboard function ------------------------------------------------------


@pytest.fixture(scope="module")
def with_dashboard(tmp_path_factory: pytest.TempPathFactory, packaged: Path) -> dict[str, Any]:
    out = osls_package(tmp_path_factory.mktemp("sls-dashboard"), "--param=dashboard=on")
    done = subprocess.run(
        ["cfn-lint", "--ignore-checks", "W3005", "--",
         str(out / "cloudformation-template-update-stack.json")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads((out / "cloudformation-template-update-stack.json").read_text()))


def test_the_dashboard_function_is_off_by_default(template: dict[str, Any]) -> None:
    assert not [name for name in template["Resources"] if "Dashboard" in name]
    routes = [r for r in template["Resources"].values() if r["Type"] == "AWS::ApiGatewayV2::Route"]
    assert [r["Properties"]["RouteKey"] for r in routes] == ["POST /actors/{type}/{id}/messages"]


def test_the_dashboard_function_when_on(with_dashboard: dict[str, Any]) -> None:
    """``--param=dashboard=on``: the function runs the module's ``dashboard`` handler under
    /dashboard of the same HTTP API, every route behind the IAM authorizer, with a role that
    reads state and never receives from the wake queue or writes state."""
    res = with_dashboard["Resources"]
    function = res["DashboardLambdaFunction"]["Properties"]
    assert function["Handler"] == "deploy/drain.dashboard"
    assert function["Role"] == {"Fn::GetAtt": ["DashboardRole", "Arn"]}
    variables = function["Environment"]["Variables"]
    assert variables["ACTOR_SYSTEM_DASHBOARD_READ_ONLY"] == "false"
    assert variables["ACTOR_SYSTEM_DASHBOARD_TOKEN"] == ""
    routes = {
        r["Properties"]["RouteKey"]: r["Properties"]
        for r in res.values()
        if r["Type"] == "AWS::ApiGatewayV2::Route"
    }
    assert set(routes) == {
        "POST /actors/{type}/{id}/messages",
        "GET /dashboard",
        "ANY /dashboard/{proxy+}",
    }
    assert all(r["AuthorizationType"] == "AWS_IAM" for r in routes.values())
    role = json.dumps(res["DashboardRole"])
    statements = res["DashboardRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    for st in statements:  # "*" only where AWS has no resource-level permission
        assert st["Resource"] != "*" or st["Action"] == "scheduler:ListSchedules", st
    assert '"sqs:GetQueueAttributes"' in role  # the overview counts an sqs:// delay store
    assert "scheduler:CreateSchedule" not in role
    assert "iam:PassRole" not in role
    assert '"s3:GetObject"' in role
    assert "s3:PutObject" not in role
    assert "sqs:ReceiveMessage" not in role
    assert "lambda:" not in role
    assert "-dashboard:*" in role  # its own log group only


def test_the_packaged_dashboard_serves_a_page(
    packaged_here: Path, redis_url: str, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """The package holds the dashboard's libraries: its handler, run from the unzipped
    package as Lambda runs it, answers an HTTP API request with the overview."""
    from actor_system.testing import LambdaHarness
    from tests.integration.test_dashboard_lambda import http_event, text

    env = {
        **aws_env,
        "PYTHONPATH": f"{packaged_here}:{lambda_runtime_dir(tmp_path)}",
        "ACTOR_SYSTEM_REDIS_URL": redis_url,
    }
    with LambdaHarness(
        "deploy.drain:dashboard", timeout_s=10, env=env, cwd=str(tmp_path), python_args=("-S",)
    ) as lam:
        page = lam.invoke(http_event("GET", "/dashboard/"))
        css = lam.invoke(http_event("GET", "/dashboard/static/dashboard.css"))
    assert page["statusCode"] == 200, page
    assert 'href="/dashboard/deferred"' in text(page)
    assert css["statusCode"] == 200
