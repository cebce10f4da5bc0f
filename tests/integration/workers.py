"""Worker subprocesses for integration tests: the real console entry point, our actors."""

from __future__ import annotations

import subprocess
import sys


def start_worker(url: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "actor_system.cli",
            "--json",
            "--url",
            url,
            "--app",
            "tests.actors",
            "worker",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
