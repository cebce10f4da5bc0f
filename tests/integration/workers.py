"""Worker subprocesses for integration tests: the real console entry point."""

from __future__ import annotations

import subprocess
import sys


def worker_args(url: str, *extra: str, app: str = "tests.actors") -> list[str]:
    """The command line of one `actor-system worker` printing its report as JSON."""
    return [
        sys.executable,
        "-m",
        "actor_system.cli",
        "--json",
        "--url",
        url,
        "--app",
        app,
        "worker",
        *extra,
    ]


def start_worker(url: str, *extra: str, app: str = "tests.actors") -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        worker_args(url, *extra, app=app), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
