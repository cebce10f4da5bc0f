"""``actor-system init``: a new project of one's own actors passes its own tests on a wheel
install of the library, packages with the Serverless framework into a zip holding the
project's code, the library and its dependencies (nothing of this repository), and its
packaged handler runs an invocation. The repository's serverless.yml is the same template."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from actor_system import scaffold
from tests.conftest import free_port
from tests.integration.test_deploy import lambda_runtime_dir
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "actor_system.cli"]


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("init") / "my-shop"
    out = run(*CLI, "init", str(folder))
    assert "my_shop/actors.py" in out
    return folder


def test_init_writes_the_project(project: Path) -> None:
    files = {p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()}
    assert {
        "my_shop/__init__.py",
        "my_shop/actors.py",
        "my_shop/handler.py",
        "tests/test_actors.py",
        "serverless.yml",
        "package.json",
        "package-lock.json",
        "requirements.txt",
        "requirements-dev.txt",
        "README.md",
        ".gitignore",
        "Dockerfile",
        ".dockerignore",
        "wheels/actor_system-0.1.0-py3-none-any.whl",
    } <= files
    texts = [f for f in files if not f.endswith(".whl")]
    assert not [f for f in texts if f.endswith(".tmpl") or "{{" in (project / f).read_text()]
    requirements = (project / "requirements.txt").read_text()
    assert "./wheels/actor_system-0.1.0-py3-none-any.whl" in requirements
    yml = (project / "serverless.yml").read_text()
    assert "service: my-shop\n" in yml
    assert yml.count("handler: my_shop/handler.handler") == 2
    assert "handler: my_shop/handler.dashboard" in yml  # the optional dashboard function
    assert "dashboard = system.dashboard_handler()" in (project / "my_shop/handler.py").read_text()
    assert "    - my_shop/**\n" in yml
    assert "examples" not in yml
    assert "deploy/" not in yml
    assert "Value: my_shop.actors:ACTORS" in yml  # the long-work worker's actor types
    docker = (project / "Dockerfile").read_text()
    assert docker.startswith("# The long-work worker")
    assert "FROM python:3.12-slim" in docker
    assert "COPY my_shop/ my_shop/" in docker
    assert 'CMD ["actor-system", "worker", "--lane", "long"]' in docker
    package = json.loads((project / "package.json").read_text())
    lock = json.loads((project / "package-lock.json").read_text())
    assert package["name"] == lock["name"] == lock["packages"][""]["name"] == "my-shop"
    ours = json.loads((ROOT / "package.json").read_text())
    assert package["devDependencies"] == ours["devDependencies"]  # pinned: one version each
    assert lock["packages"][""]["devDependencies"] == ours["devDependencies"]


def test_the_new_project_passes_its_own_tests_on_a_wheel_install(
    project: Path, tmp_path: Path
) -> None:
    """The library installed from the project's wheel (not this checkout), beside an
    application package named ``adapters`` (the library's own live under actor_system)."""
    site = tmp_path / "site"
    wheel = next((project / "wheels").glob("*.whl"))
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    run(*pip, "--target", str(site), str(wheel))
    app = tmp_path / "app"
    shutil.copytree(project, app)
    (app / "adapters").mkdir()
    (app / "adapters" / "__init__.py").write_text("WHOSE = 'the application'\n")
    (app / "tests" / "test_imports.py").write_text(
        "import adapters\n"
        "import actor_system\n"
        "from actor_system.adapters.redis import RedisBackend\n\n\n"
        "def test_the_wheel_and_the_applications_adapters() -> None:\n"
        f"    assert actor_system.__file__.startswith({str(site)!r})\n"
        "    assert adapters.WHOSE == 'the application'\n"
        "    assert RedisBackend.__module__.startswith('actor_system.adapters')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=app, env=env)
    assert "2 passed" in out, out
    cli = site / "bin" / "actor-system"
    assert cli.exists()  # the wheel's console script


def test_init_refuses_a_folder_in_use_and_bad_names(project: Path, tmp_path: Path) -> None:
    cases = [
        ([str(project)], "exists and is not an empty folder"),
        ([str(tmp_path / "json")], "would hide another one"),
        ([str(tmp_path / "redis")], "would hide another one"),
        ([str(tmp_path / "x"), "--module", "class"], "not a lower-case Python package name"),
        ([str(tmp_path / "y"), "--service", "9lives"], "not a service name"),
    ]
    for args, message in cases:
        done = subprocess.run([*CLI, "init", *args], capture_output=True, text=True, check=False)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "x").exists()


def test_the_reference_serverless_yml_is_rendered_from_the_template() -> None:
    """One template for the repository's deployment and every new project's: regenerate
    with ``python -m actor_system.scaffold > serverless.yml``."""
    assert (ROOT / "serverless.yml").read_text() == scaffold.REFERENCE.serverless_yml()
    for name in ("package.json", "package-lock.json"):  # links to the template's
        assert (ROOT / name).resolve() == (scaffold.TEMPLATE / name).resolve()


def test_the_deployment_requirements_name_every_runtime_dependency() -> None:
    """The repository's Lambda package installs ``deploy/requirements.txt``: a dependency
    added to pyproject.toml and missing there fails at the function's first import. Only
    the embedded Redis of local runs stays out of the package."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {Requirement(dep).name for dep in project["dependencies"]} - {"fakeredis"}
    lines = (ROOT / "deploy" / "requirements.txt").read_text().splitlines()
    named = {Requirement(line).name for line in lines if line and not line.startswith("#")}
    assert wanted <= named, sorted(wanted - named)


# -- packaging with the Serverless framework (npm ci first) -------------------------------


def osls_package(project: Path, folder: Path, *args: str) -> Path:
    """``npx osls package`` in a copy of the new project, with this repository's
    node_modules (the same package-lock.json) and fake credentials: nothing reaches AWS."""
    if shutil.which("npx") is None or not (ROOT / "node_modules" / "osls").exists():
        if os.environ.get("CI"):
            pytest.fail("npx osls is missing; .ci/run installs it with npm ci")
        pytest.skip("run `npm ci` first")
    work = folder / "my-shop"
    shutil.copytree(project, work)
    (work / "node_modules").symlink_to(ROOT / "node_modules")
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "fake",
        "AWS_SECRET_ACCESS_KEY": "fake",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    }
    run("npx", "osls", "package", "--stage", "dev", *args, cwd=work, env=env)
    return work / ".serverless"


@pytest.fixture(scope="module")
def packaged(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as deployed (Python 3.12 wheels)."""
    return osls_package(project, tmp_path_factory.mktemp("init-sls"))


@pytest.fixture(scope="module")
def packaged_here(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package built for this interpreter's Python, to run its handler here."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    folder = tmp_path_factory.mktemp("init-sls-here")
    return osls_package(project, folder, f"--param=pythonVersion={version}")


@pytest.mark.slow
def test_the_package_holds_the_project_the_library_and_its_dependencies(packaged: Path) -> None:
    with zipfile.ZipFile(packaged / "my-shop.zip") as z:
        names = set(z.namelist())
    assert {"my_shop/handler.py", "my_shop/actors.py"} <= names
    assert "actor_system/aws_lambda.py" in names
    assert "actor_system/adapters/redis/scripts/commit.lua" in names
    assert {"redis/client.py", "pydantic/main.py", "msgpack/__init__.py"} <= names
    tops = {n.split("/")[0] for n in names}
    assert not tops & {"examples", "deploy", "tests", "bench", "adapters", "wheels", "node_modules"}
    assert not tops & {"fakeredis", "lupa", "sortedcontainers"}  # the embedded Redis stays out
    assert not any("/project/" in n for n in names)  # the init template stays out
    template = json.loads((packaged / "cloudformation-template-update-stack.json").read_text())
    drain = template["Resources"]["DrainLambdaFunction"]["Properties"]
    assert drain["Handler"] == "my_shop/handler.handler"
    assert drain["RecursiveLoop"] == "Allow"


@pytest.mark.slow
def test_the_new_projects_template_passes_cfn_lint(packaged: Path) -> None:
    template = packaged / "cloudformation-template-update-stack.json"
    run("cfn-lint", "--ignore-checks", "W3005", "--", str(template))


@pytest.mark.slow
@pytest.mark.integration
def test_the_packaged_handler_runs_an_invocation(
    packaged_here: Path, redis_url: str, aws_env: dict[str, str], tmp_path: Path
) -> None:
    import boto3

    from actor_system.testing import LambdaHarness

    tree = tmp_path / "tree"
    with zipfile.ZipFile(packaged_here / "my-shop.zip") as z:
        z.extractall(tree)
    queue = boto3.client("sqs").create_queue(QueueName="init-wake")["QueueUrl"]
    env = {
        **aws_env,
        "PYTHONPATH": f"{tree}:{lambda_runtime_dir(tmp_path)}",
        "ACTOR_SYSTEM_REDIS_URL": redis_url,
        "ACTOR_SYSTEM_WAKER_URL": queue,
        "ACTOR_SYSTEM_CONTINUE_URL": queue,
    }
    cli = [sys.executable, "-S", "-c", "from actor_system.cli import main; main()"]
    send = [*cli, "--app", "my_shop.actors:ACTORS"]
    run(*send, "send", "counter", "c1", "Add", '{"n": 5}', env=env)
    with LambdaHarness(
        "my_shop.handler:handler", timeout_s=10, env=env, cwd=str(tmp_path), python_args=("-S",)
    ) as lam:
        result = lam.invoke({"actor_system": "sweep"})
    assert result.get("messages") == 1, result
    state = run(*send, "state", "counter", "c1", env=env)
    assert json.loads(state)["count"] == 5


@pytest.mark.slow
@pytest.mark.integration
def test_the_local_stage_runs_under_serverless_offline(
    project: Path, redis_url: str, tmp_path: Path
) -> None:
    """``npx osls offline --stage local`` in the new project, against a local redis-server:
    a POST to the ingress is answered 202 and the message is committed; with
    ``?wait=commit`` the answer waits for the commit; a bad payload gets a 400."""
    if not (ROOT / "node_modules" / "serverless-offline").exists():
        if os.environ.get("CI"):
            pytest.fail("serverless-offline is missing; .ci/run installs it with npm ci")
        pytest.skip("run `npm ci` first")
    work = tmp_path / "my-shop"
    shutil.copytree(project, work)
    (work / "node_modules").symlink_to(ROOT / "node_modules")
    http, lam = free_port(), free_port()
    # serverless-offline runs `python3` from PATH ($VIRTUAL_ENV/bin first): this interpreter.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
    env.update(AWS_ACCESS_KEY_ID="fake", AWS_SECRET_ACCESS_KEY="fake")
    command = ["npx", "osls", "offline", "--stage", "local", f"--param=redisUrl={redis_url}"]
    command += ["--httpPort", str(http), "--lambdaPort", str(lam)]
    log = tmp_path / "offline.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until(lambda: port_open(http), timeout_s=120, what="serverless-offline listening")
        base = f"http://127.0.0.1:{http}/actors/counter/c1/messages"
        status, body = post(base, {"type": "Add", "payload": {"n": 2}})
        assert status == 202, (body, log.read_text())
        assert len(json.loads(body)["id"]) == 32
        status, body = post(f"{base}?wait=commit", {"type": "Add", "payload": {"n": 3}})
        assert status == 200, (body, log.read_text())
        status, body = post(base, {"type": "Add", "payload": {"n": "x"}})
        assert status == 400, body
        assert "invalid Add payload: n:" in body
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    env["PYTHONPATH"] = str(work)
    app = ["--url", redis_url, "--app", "my_shop.actors:ACTORS"]
    state = run(*CLI, *app, "state", "counter", "c1", env=env)
    assert json.loads(state)["count"] == 5


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def post(url: str, body: dict[str, object]) -> tuple[int, str]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
