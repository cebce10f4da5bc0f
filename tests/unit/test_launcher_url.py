"""ACTOR_SYSTEM_LONG_LANE_URL: what starts a long-work worker, and the errors of a bad URL."""

from __future__ import annotations

import pytest

from actor_system import ConfigError
from actor_system.adapters.aws import launcher_from_url


def test_an_ecs_url_names_cluster_task_definition_and_network() -> None:
    arn = "arn:aws:ecs:us-east-1:123456789012:task-definition/shop-long-work:3"
    launcher = launcher_from_url(f"ecs://shop/{arn}?subnets=s-1,s-2&security_groups=g&public_ip=1")
    assert launcher.cluster == "shop"
    assert launcher.task_definition == arn
    assert launcher.subnets == ("s-1", "s-2")
    assert launcher.security_groups == ("g",)
    assert launcher.public_ip
    assert launcher.launch_type == "FARGATE"
    ec2 = launcher_from_url("ecs://shop/long-work?launch_type=EC2")
    assert (ec2.launch_type, ec2.subnets) == ("EC2", ())


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqs://queue", "unknown long-work launcher URL"),
        ("ecs://cluster", "unknown long-work launcher URL"),
        ("ecs:///task?subnets=s", "unknown long-work launcher URL"),
        ("ecs://c/t", "a Fargate task needs subnets"),
        ("ecs://c/t?subnets=", "a Fargate task needs subnets"),
        ("ecs://c/t?subnets=s&subnet=x", "unknown parameter(s) subnet"),
        ("ecs://c/t?subnets=s&launch_type=LAMBDA", "FARGATE, EC2 or EXTERNAL"),
    ],
)
def test_a_bad_url_is_refused_with_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        launcher_from_url(url)
