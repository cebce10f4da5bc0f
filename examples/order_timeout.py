"""An order that cancels itself unless paid within N seconds; a payment cancels the timeout.

Run: python -m examples.order_timeout [--redis-url redis://localhost:6379/0]
"""

from __future__ import annotations

from pydantic import BaseModel

from actor_system import ActorSystem, ActorType, Context, ManualClock
from examples._cli import redis_url


class OrderState(BaseModel):
    status: str = "new"  # new -> awaiting_payment -> paid | cancelled
    amount: int = 0
    timeout_id: str = ""
    refused_payments: int = 0


class Place(BaseModel):
    amount: int
    pay_within_s: float


class Pay(BaseModel):
    amount: int


class PaymentTimeout(BaseModel):
    pass


orders = ActorType("order", state=OrderState)


@orders.handler
def place(ctx: Context[OrderState], msg: Place) -> None:
    if ctx.state.status != "new":
        return
    ctx.state.status = "awaiting_payment"
    ctx.state.amount = msg.amount
    ctx.state.timeout_id = ctx.send(ctx.self, PaymentTimeout(), delay=msg.pay_within_s)


@orders.handler
def pay(ctx: Context[OrderState], msg: Pay) -> None:
    if ctx.state.status == "awaiting_payment" and msg.amount == ctx.state.amount:
        ctx.state.status = "paid"
        ctx.cancel(ctx.state.timeout_id)
    else:
        ctx.state.refused_payments += 1  # too late or wrong amount: refund it


@orders.handler
def payment_timeout(ctx: Context[OrderState], msg: PaymentTimeout) -> None:
    # Checked against the state: a timeout promoted just before the payment is a no-op.
    if ctx.state.status == "awaiting_payment":
        ctx.state.status = "cancelled"


def main() -> None:
    clock = ManualClock()
    system = ActorSystem.from_url(redis_url(__doc__ or ""), actors=[orders], clock=clock)
    paid, unpaid = orders.ref("A-1"), orders.ref("A-2")
    for ref in (paid, unpaid):
        system.send(ref, Place(amount=4200, pay_within_s=900))
    system.run_until_idle()
    print(f"placed two orders, 15 minutes to pay; deferred timeouts: {system.backend.pending()}")
    clock.advance(600)
    system.send(paid, Pay(amount=4200))
    system.run_until_idle()
    print(
        f"t+10 min: A-1 paid -> {system.state(paid).status}, its timeout cancelled; "  # type: ignore[attr-defined]
        f"deferred timeouts: {system.backend.pending()}"
    )
    clock.advance(300)
    system.run_until_idle()
    print(f"t+15 min: A-1 {system.state(paid).status}, A-2 {system.state(unpaid).status}")  # type: ignore[attr-defined]
    clock.advance(60)
    system.send(unpaid, Pay(amount=4200))
    system.run_until_idle()
    late = system.state(unpaid)
    print(
        f"t+16 min: late payment for A-2 refused: status {late.status}, "  # type: ignore[attr-defined]
        f"refused payments {late.refused_payments}"
    )  # type: ignore[attr-defined]
    system.close()


if __name__ == "__main__":
    main()
