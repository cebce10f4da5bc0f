"""The ``ports`` fixture: a system over each store of ``stores`` (fakeredis, a real
redis-server, S3 state, SQS delay, Scheduler delay), its backend driven by a manual clock."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.actors import counter
from tests.ports.harness import Ports

if TYPE_CHECKING:
    from actor_system import ActorSystem, ManualClock


@pytest.fixture
def ports(make_system: Any, clock: ManualClock, request: pytest.FixtureRequest) -> Ports:
    system: ActorSystem = make_system(counter)
    store = str(request.node.callspec.params["stores"])
    return Ports(system, system.backend, clock, store, request)
