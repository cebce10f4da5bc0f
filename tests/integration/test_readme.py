"""The README's commands and code run as written, so the documentation cannot rot."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.waiting import wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
# The set-up and test commands are what CI itself runs (.ci/run); running pytest from pytest
# would recurse, so they are checked for presence only.
SETUP = ["pip install -e '.[dev]'", "pytest"]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def shell_commands() -> list[str]:
    return [ln.strip() for b in blocks("bash") for ln in b.splitlines() if ln.strip()]


def test_readme_starts_with_the_setup_and_test_commands() -> None:
    assert shell_commands()[:2] == SETUP
    assert (ROOT / ".ci" / "run").read_text().count("\npytest\n") == 1


@pytest.mark.slow  # npm ci and the Serverless package need downloads; the bench takes a while
@pytest.mark.timeout(400)
@pytest.mark.parametrize("command", [c for c in shell_commands() if c not in SETUP])
def test_readme_shell_command_runs(command: str, redis_url: str) -> None:
    command = command.replace("redis://localhost:6379/0", redis_url)
    if command.startswith("actor-system bench"):
        # Offline: the job queues' venvs (arq, dramatiq, rq, celery) need downloads; their
        # figures are measured by hand (bench/README.md).
        command = command.replace("bench", "bench --no-queues", 1)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    if " worker" in command and "--check" not in command and "--lane long" not in command:
        proc = subprocess.Popen(
            shlex.split(command, comments=True),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Stop it once every worker process waits for work (blocked on Redis), so the signal
        # finds its handlers installed however long the start takes on a busy machine.
        match = re.search(r"--concurrency (\d+)", command)
        workers = int(match.group(1)) if match else 1

        def blocked_clients() -> int:
            with redis.Redis.from_url(redis_url) as client:
                return sum("b" in c["flags"] for c in client.client_list())

        try:
            wait_until(lambda: blocked_clients() >= workers, what=f"{workers} idle worker(s)")
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
    else:
        done = subprocess.run(
            shlex.split(command, comments=True),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=380,  # under the mark's 400
        )
        proc, out, err = done, done.stdout, done.stderr
    assert proc.returncode == 0, f"{command}\n{out}\n{err}"
    assert "Traceback" not in err


def test_readme_python_blocks_run_in_order(tmp_path: Path) -> None:
    source = "\n".join(blocks("python"))
    script = tmp_path / "readme_blocks.py"
    script.write_text(source)
    env = {**os.environ, "ACTOR_SYSTEM_REDIS_URL": "fakeredis://", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "count=2" in done.stdout
