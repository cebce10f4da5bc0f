"""Actors whose final state proves delivery: per-sender sequences, counts, due times."""

from __future__ import annotations

from pydantic import BaseModel, Field

from actor_system import ActorType, Context


class Entry(BaseModel):
    """An immediate message: ``seq`` counts from 1 per (sender, receiver)."""

    sender: str
    seq: int


class Due(BaseModel):
    """A deferred message that must not run before ``due_ms``; from one ``sender``, due
    messages must run in due order."""

    key: str
    due_ms: int
    sender: str = ""


class Relay(BaseModel):
    """Ask a relay actor to forward one Entry to ``target`` (actor-to-actor traffic)."""

    target: str


class LedgerState(BaseModel):
    last: dict[str, int] = Field(default_factory=dict)  # sender -> last seq applied
    applied: int = 0
    out_of_order: int = 0  # a seq other than last + 1: a loss, a duplicate or a reordering
    deferred: list[str] = Field(default_factory=list)
    last_due: dict[str, int] = Field(default_factory=dict)  # sender -> latest due_ms run
    deferred_out_of_order: int = 0  # a due time before one already run from that sender
    early: int = 0
    max_late_ms: int = 0
    late_ms: list[int] = Field(default_factory=list)


class RelayState(BaseModel):
    next_seq: dict[str, int] = Field(default_factory=dict)


ledger = ActorType("ledger", state=LedgerState)
relay = ActorType("relay", state=RelayState)


@ledger.handler
def entry(ctx: Context[LedgerState], msg: Entry) -> None:
    s = ctx.state
    if msg.seq != s.last.get(msg.sender, 0) + 1:
        s.out_of_order += 1
    s.last[msg.sender] = max(msg.seq, s.last.get(msg.sender, 0))
    s.applied += 1


@ledger.handler
def due(ctx: Context[LedgerState], msg: Due) -> None:
    now_ms = int(ctx.now.timestamp() * 1000)
    if now_ms < msg.due_ms:
        ctx.state.early += 1
    ctx.state.max_late_ms = max(ctx.state.max_late_ms, now_ms - msg.due_ms)
    ctx.state.late_ms.append(now_ms - msg.due_ms)
    ctx.state.deferred.append(msg.key)
    if msg.due_ms < ctx.state.last_due.get(msg.sender, 0):
        ctx.state.deferred_out_of_order += 1
    ctx.state.last_due[msg.sender] = max(msg.due_ms, ctx.state.last_due.get(msg.sender, 0))


@relay.handler
def forward(ctx: Context[RelayState], msg: Relay) -> None:
    seq = ctx.state.next_seq.get(msg.target, 0) + 1
    ctx.state.next_seq[msg.target] = seq
    ctx.send(ledger.ref(msg.target), Entry(sender=f"relay/{ctx.self.id}", seq=seq))


actors = [ledger, relay]
