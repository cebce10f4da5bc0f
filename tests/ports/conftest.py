"""The ``ports`` fixture: a system over each store of ``stores`` (fakeredis, a real
redis-server, S3 state, SQS delay, Scheduler delay), its backend driven by a manual clock."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.actors import counter
from tests.ports.harness import Ports

if TYPE_CHECKING:
    from actor_system import ActorSystem, ManualClock


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The contract on the AWS stores (moto) runs with the slow suites: the default run
    keeps it on fakeredis and a real redis-server."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        store = callspec.params.get("stores") if callspec is not None else None
        if store in ("s3", "sqs", "scheduler") and "ports" in item.path.parts:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def ports(make_system: Any, clock: ManualClock, request: pytest.FixtureRequest) -> Ports:
    system: ActorSystem = make_system(counter)
    store = str(request.node.callspec.params["stores"])
    return Ports(system, system.backend, clock, store, request)
