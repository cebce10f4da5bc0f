"""The chaos run in its short mode (the long mode: ``python -m tests.chaos.run --help``)."""

from __future__ import annotations

import pytest

from tests.chaos.run import NOTHING_LEFT, parser, run
from tests.conftest import skip_unless_selected

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(params=["redis", "cluster"])
def chaos_url(request: pytest.FixtureRequest) -> str:
    """A real redis-server, and a real three-master Redis Cluster."""
    skip_unless_selected(request.param)
    fixture = "cluster_url" if request.param == "cluster" else "redis_url"
    return str(request.getfixturevalue(fixture))


@pytest.mark.timeout(300)
def test_chaos_short_mode_loses_nothing_and_applies_nothing_twice(chaos_url: str) -> None:
    args = parser().parse_args(
        [
            "--url",
            chaos_url,
            "--messages",
            "6000",
            "--actors",
            "200",
            "--workers",
            "3",
            "--seconds",
            "12",
            "--max-delay-s",
            "3",
            "--lease-ms",
            "800",
            "--drain-timeout-s",
            "90",
        ]
    )
    figures = run(args)
    print(figures)
    assert figures.kills + figures.freezes >= 20
    assert figures.kills >= 10
    assert figures.freezes >= 5
    assert figures.lost == 0
    assert figures.duplicated_or_reordered == 0
    assert figures.early == 0
    assert figures.leftovers == NOTHING_LEFT
    assert figures.ok
