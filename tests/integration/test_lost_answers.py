"""A script that ran but whose answer was lost (the connection reset after Redis answered) is
run again with the same arguments and recognised: the poll's actors come back under the
round's token, the begin finds its own lease and hands back the same claim. No actor waits
for its lease to expire, and nothing runs twice."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from actor_system import ActorSystem, ManualClock
from tests.actors import Note, actors, logger

pytestmark = pytest.mark.integration


def lose_answers(
    system: ActorSystem, scripts: set[str], times: int, in_a_row: bool = False
) -> list[str]:
    """Make the next ``times`` pipelines that run one of ``scripts`` execute and then fail
    as a reset connection does (every other one, unless ``in_a_row``: the retry of a lost
    answer goes through); returns the names of the scripts whose answers were lost."""
    backend: Any = system.backend
    real_pipeline = backend.client.pipeline
    lost: list[str] = []
    sha_names: dict[str, str] = {}
    spare = [False]  # the next matching pipeline goes through

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real_pipeline(*args, **kwargs)
        real_execute = pipe.execute

        def execute(*a: Any, **k: Any) -> Any:
            if not sha_names:
                sha_names.update({sha: name for name, sha in backend._sha.items()})
            names = {sha_names.get(str(c[0][1]), "") for c in pipe.command_stack}
            result = real_execute(*a, **k)  # Redis ran it ...
            hit = names & scripts
            if hit and spare[0]:
                spare[0] = False
            elif hit and len(lost) < times:
                lost.extend(sorted(hit))
                spare[0] = not in_a_row
                raise redis.ConnectionError("connection reset by peer")  # ... the answer is lost
            return result

        pipe.execute = execute
        return pipe

    backend.client.pipeline = pipeline
    return lost


@pytest.mark.parametrize("script", ["poll", "begin", "commit"])
def test_a_lost_answer_costs_a_round_trip_not_a_lease(redis_url: str, script: str) -> None:
    clock = ManualClock()
    system = ActorSystem.from_url(redis_url, actors=actors, clock=clock, actors_per_round=1)
    refs = [logger.ref(f"l{i}") for i in range(4)]
    system.send_many([(r, Note(text=str(n))) for n in range(3) for r in refs])
    lost = lose_answers(system, {script}, times=2)
    report = system.run_until_idle()  # the manual clock never reaches a lease's expiry
    assert lost == [script, script]
    assert report.messages == 12
    for r in refs:
        assert system.state(r).log == ["0", "1", "2"]  # type: ignore[attr-defined]
    stats = system.stats()
    assert (stats["leases_held"], stats["in_flight_messages"], stats["mailbox_messages"]) == (
        0,
        0,
        0,
    )
    assert report.recovered == 0  # nothing waited for a lease to expire


def test_a_connection_that_stays_broken_is_a_backend_error(redis_url: str) -> None:
    system = ActorSystem.from_url(redis_url, actors=actors)
    system.send(logger.ref("x"), Note(text="a"))
    lose_answers(system, {"poll"}, times=10, in_a_row=True)
    from actor_system import BackendError

    with pytest.raises(BackendError, match="connection reset by peer"):
        system.run_until_idle()
