"""Virtual environments for the job queues we compare with (their redis-py pins conflict)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"

# Lower bounds keep pip from backtracking to releases that do not build on Python 3.11.
SPECS: dict[str, list[str]] = {
    "arq": ["arq>=0.26"],
    "dramatiq": ["dramatiq[redis]>=1.17"],
    "rq": ["rq>=2.0"],
    "celery": ["celery[redis]>=5.5", "kombu>=5.5"],
}


def python_of(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def ensure(names: list[str]) -> dict[str, Path]:
    """Create (in parallel) the venvs that are missing or out of date; their interpreters."""
    pending = []
    for name in names:
        marker = VENVS / name / ".spec"
        spec = " ".join(SPECS[name])
        if marker.exists() and marker.read_text() == spec:
            continue
        # Quoted: unquoted, ">=0.26" became a redirection to a file named "=0.26".
        pins = " ".join(shlex.quote(p) for p in SPECS[name])
        cmd = (
            f"{shlex.quote(sys.executable)} -m venv --clear {shlex.quote(str(VENVS / name))} && "
            f"{shlex.quote(str(python_of(name)))} -m pip install -q "
            f"--disable-pip-version-check {pins} && "
            f"printf %s {shlex.quote(spec)} > {shlex.quote(str(marker))}"
        )
        pending.append((name, subprocess.Popen(["bash", "-c", cmd])))
    for name, proc in pending:
        if proc.wait() != 0:
            raise SystemExit(f"could not install {name} into {VENVS / name}")
    return {name: python_of(name) for name in names}


def version_of(name: str) -> str:
    out = subprocess.run(
        [str(python_of(name)), "-m", "pip", "show", name.split("[")[0]],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return next((ln.split()[1] for ln in out.splitlines() if ln.startswith("Version:")), "?")
