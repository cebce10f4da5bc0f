"""What the port contract tests share: ``Ports``, a backend under test seen only through
its port methods, with the manual clock that times it and helpers that build messages and
commits the way the runtime does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from actor_system.envelope import ID_LENGTH
from actor_system.ports import Claim, Commit, Outcome
from tests.actors import Add, counter

if TYPE_CHECKING:
    from actor_system import ActorSystem, ManualClock
    from actor_system.envelope import Outgoing
    from actor_system.ports import Backend

LEASE_MS = 1_000  # every lease the tests take: short, so that expiry needs a small clock step
WINDOW_MS = 60_000  # the dedup window every recording commit passes
DONE_MAX = 1_000
EXTERNAL_DELAY = frozenset({"sqs", "scheduler"})  # deferred messages held outside Redis


@dataclass
class Ports:
    """A backend under test, with the clock that times it."""

    system: ActorSystem
    backend: Backend
    clock: ManualClock
    store: str  # the ``stores`` parameter: fakeredis, redis, s3, sqs or scheduler
    request: pytest.FixtureRequest

    def now_ms(self) -> int:
        # Rounded, not truncated: a clock moved by float steps may sit a hair below a ms.
        return round(self.clock.now() * 1000)

    def advance_ms(self, ms: int) -> int:
        """Move the clock forward to exactly ``ms`` later; the new time in ms."""
        now = self.now_ms() + ms
        self.clock.set(now / 1000)
        return now

    def message(self, actor_id: str, n: int = 1, *, delay: float | None = None) -> Outgoing:
        """A message to ``counter/<actor_id>`` prepared as ``system.send`` does (deferred by
        ``delay`` seconds, if given); nothing is delivered."""
        return self.system.registry.prepare(
            counter.ref(actor_id), Add(n=n), now_s=self.clock.now(), delay=delay
        )

    def push(self, *items: Outgoing) -> int:
        """Push ``items`` (no drain claimed); how many were accepted."""
        accepted, wake = self.backend.push(list(items), self.now_ms())
        assert wake is False  # wake_ms=0: the sender never starts a drain
        return accepted

    def begin(self, actor: str, token: str, *, batch: int = 10) -> Claim | None:
        [claim] = self.backend.begin([actor], token, LEASE_MS, batch, self.now_ms())
        return claim

    def commit(
        self,
        claim: Claim,
        token: str,
        actions: list[Outcome],
        *,
        state: bytes | None = None,
        **fields: Any,
    ) -> int | None:
        """Commit ``actions`` for ``claim``'s entries, recording ids for the dedup window as
        the runtime does; ``fields`` are further Commit fields."""
        commit = Commit(
            claim.actor,
            token,
            claim.fence,
            state,
            actions,
            ids=[e[:ID_LENGTH].decode() for e, _ in claim.entries],
            done_window_ms=WINDOW_MS,
            done_max=DONE_MAX,
            **fields,
        )
        [version] = self.backend.commit([commit], self.now_ms())
        return version


def ids(claim: Claim | None) -> list[str]:
    """The message ids of a claim's entries, in claim order."""
    assert claim is not None
    return [e[:ID_LENGTH].decode() for e, _ in claim.entries]


def attempts(claim: Claim | None) -> list[int]:
    """The earlier failed attempts of a claim's entries, in claim order."""
    assert claim is not None
    return [n for _, n in claim.entries]
