"""Every example runs as documented, on fakeredis and on a real redis-server."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXPECTED = {
    "counter": ["count=6 resets=0", "count=0 resets=3"],
    "reminder": ["fired: ['stretch', 'tea']  polls: 3  reminders left: []"],
    "order_timeout": ["A-1 paid, A-2 cancelled", "refused payments 1"],
    "aws_stores": ["done=['water the plants']", "SQS hops (DelaySeconds): [2, 2]"],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_and_prints_what_happens(
    name: str, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # aws_stores starts its own moto
    out = subprocess.run(
        [sys.executable, "-m", f"examples.{name}", "--redis-url", url],
        capture_output=True,
        text=True,
        timeout=110,  # under pytest's 120 s, so that a hang reports the example's output
        check=True,
    ).stdout
    for line in EXPECTED[name]:
        assert line in out, out
