"""The installed package: a regular (not editable) install puts nothing but ``actor_system``
in site-packages, so an application with an ``adapters`` package of its own (common in
ports-and-adapters code) imports both. Built offline from this checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NOT_SOURCE = (".git", ".venv", "build", "*.egg-info", "node_modules", "bench", "tests", "*cache*")

APP = """
import adapters
from adapters.redis import mine

import actor_system
from actor_system.adapters.redis import RedisBackend
from tests_app import run

assert adapters.MINE and mine() == "the application's own"
assert "site-packages" in actor_system.__file__, actor_system.__file__
assert RedisBackend.__module__ == "actor_system.adapters.redis.backend"
print(run())
"""

ACTORS = """
from pydantic import BaseModel

from actor_system import ActorSystem, ActorType, Context


class Count(BaseModel):
    n: int = 0


class Add(BaseModel):
    n: int


counter = ActorType("counter", state=Count)


@counter.handler
def add(ctx: Context[Count], msg: Add) -> None:
    ctx.state.n += msg.n


def run() -> int:
    system = ActorSystem.from_url("fakeredis://", actors=[counter])
    system.send(counter.ref("a"), Add(n=2))
    system.run_until_idle()
    return system.state(counter.ref("a")).n
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # From a copy: a build leaves build/ and *.egg-info behind, and stale files there would
    # end up in the wheel.
    source = out / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(out), str(source)],
        check=True, capture_output=True, cwd=out,
    )  # fmt: skip
    [built] = out.glob("actor_system-*.whl")
    return built


def test_the_wheel_holds_only_actor_system(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"actor_system"}
    assert "actor_system/adapters/redis/scripts/commit.lua" in names
    assert "actor_system/adapters/s3.py" in names
    assert "actor_system/py.typed" in names
    assert "actor_system/project/serverless.yml" in names  # what `actor-system init` writes
    assert "actor_system/project/app/handler.py.tmpl" in names
    assert "actor_system/project/package-lock.json" in names


def installed(wheel: Path, env_dir: Path) -> Path:
    """A venv with the wheel installed; returns its bin folder. The dependencies come from
    this interpreter's site-packages (offline); the package itself from the wheel, installed
    into the venv's own site-packages, which come first."""
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-index", str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    return env_dir / "bin"


def test_an_application_with_its_own_adapters_package(wheel: Path, tmp_path: Path) -> None:
    python = installed(wheel, tmp_path / "venv") / "python"
    app = tmp_path / "app"
    (app / "adapters" / "redis").mkdir(parents=True)
    (app / "adapters" / "__init__.py").write_text("MINE = True\n")
    (app / "adapters" / "redis" / "__init__.py").write_text(
        'def mine() -> str:\n    return "the application\'s own"\n'
    )
    (app / "tests_app.py").write_text(ACTORS)
    (app / "main.py").write_text(APP)
    done = subprocess.run(
        [str(python), "main.py"], cwd=app, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"


def test_init_from_a_wheel_install(wheel: Path, tmp_path: Path) -> None:
    """``actor-system init`` finds its template in the installed package, and the wheel it
    writes for the new project holds the same files as the one it was installed from."""
    bin_dir = installed(wheel, tmp_path / "venv")
    project = tmp_path / "shop"
    subprocess.run([str(bin_dir / "actor-system"), "init", str(project)], check=True, cwd=tmp_path)
    assert (project / "shop" / "handler.py").exists()
    [written] = (project / "wheels").glob("*.whl")
    with zipfile.ZipFile(wheel) as a, zipfile.ZipFile(written) as b:
        ours = {n for n in a.namelist() if n.startswith("actor_system/")}
        theirs = {n for n in b.namelist() if n.startswith("actor_system/")}
    assert ours == theirs
