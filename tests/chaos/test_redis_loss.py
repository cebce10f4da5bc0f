"""Chaos with Redis losing its last writes, again and again, while workers are SIGKILLed and
frozen, with state in S3 and deferred messages hopping through SQS (moto server)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.aws import AwsResources
from tests.chaos.run import NOTHING_LEFT, parser, run
from tests.conftest import RedisServer

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(420)
def test_redis_losing_its_last_second_loses_nothing_with_s3_state_and_sqs_delays(
    tmp_path: Path, aws_env: dict[str, str]
) -> None:
    aws = AwsResources.create("chaos-redis-loss")
    server = RedisServer(tmp_path)
    server.start()
    try:
        args = parser().parse_args(
            [
                "--url",
                server.url,
                "--state",
                f"s3://{aws.bucket}/chaos",
                "--delay",
                # Held by SQS beyond 16 s, back in the sorted set 8 s before due: more than a
                # receipt's visibility (7 s), so one lost with its receiver is still in time.
                f"sqs://{aws.queue}?near=16&max_hop=4&receive_every=0.2",
                "--messages",
                "1500",
                "--actors",
                "40",
                "--workers",
                "2",
                "--seconds",
                "15",
                "--max-delay-s",
                "30",
                "--lease-ms",
                "1000",
                "--redis-loss-every-s",
                "4",
                "--drain-timeout-s",
                "150",
            ]
        )
        figures = run(args, server)
    finally:
        server.stop()
        aws.cleanup()
    print(figures)
    assert figures.redis_losses >= 2
    assert figures.resent > 0
    assert figures.kills + figures.freezes >= 10
    assert figures.lost == 0
    assert figures.duplicated_or_reordered == 0
    assert figures.deferred_reordered == 0
    assert figures.early == 0
    assert figures.leftovers == NOTHING_LEFT
