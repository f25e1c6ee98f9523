"""The risk gate: order intents in, approved orders or rejections out.

Every limit lives here. A rejection is an `order.rejected` event with a reason code, counted in the
final report. The gate reads the broker's account view; orders it approved but the broker has not
processed yet count as pending, so two quick intents cannot together exceed a limit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import trio

from actors.config import RiskConfig
from protocols.messages import Event, Order, OrderIntent

WINDOW_S = 60.0


class AccountView(Protocol):
    @property
    def position_qty(self) -> float: ...

    @property
    def processed_signed_qty(self) -> float: ...


@attrs.frozen
class Rejection:
    reason: str
    detail: str


class RiskGate:
    """Pure decision logic; `check` is called once per intent with the session time."""

    def __init__(self, config: RiskConfig, view: AccountView) -> None:
        self.config = config
        self.view = view
        self.window: deque[float] = deque()
        self.submitted_signed_qty = 0.0
        self.order_seq = 0

    def snapshot(self) -> dict[str, Any]:
        return {"window": list(self.window), "order_seq": self.order_seq}

    def restore(self, state: dict[str, Any]) -> None:
        """Orders in flight at the crash never reached the broker: nothing is pending after it."""
        self.window = deque(state["window"])
        self.order_seq = state["order_seq"]
        self.submitted_signed_qty = self.view.processed_signed_qty

    @property
    def pending_signed_qty(self) -> float:
        return self.submitted_signed_qty - self.view.processed_signed_qty

    def projected_position(self) -> float:
        return self.view.position_qty + self.pending_signed_qty

    def check(self, intent: OrderIntent, now: float) -> Order | Rejection:
        while self.window and self.window[0] <= now - WINDOW_S:
            self.window.popleft()
        if len(self.window) >= self.config.max_orders_per_minute:
            return Rejection(
                "max_orders_per_minute",
                f"{len(self.window)} orders in the last {WINDOW_S:g} s (limit {self.config.max_orders_per_minute})",
            )
        signed = intent.qty if intent.side == "buy" else -intent.qty
        before = self.projected_position()
        after = before + signed
        if abs(after) > self.config.max_position_size + 1e-12 and abs(after) > abs(before):
            return Rejection(
                "max_position_size",
                f"position would be {after:+.4f} BTC (limit {self.config.max_position_size:g})",
            )
        self.window.append(now)
        self.submitted_signed_qty += signed
        self.order_seq += 1
        return Order(
            id=f"o{self.order_seq}",
            ts=now,
            side=intent.side,
            qty=intent.qty,
            decision_price=intent.decision_price,
            reason=intent.reason,
            reduce_only=intent.reduce_only,
        )


async def run_risk(
    gate: RiskGate,
    intents_rx: trio.MemoryReceiveChannel[OrderIntent],
    orders_tx: trio.MemorySendChannel[Order],
    events_tx: trio.MemorySendChannel[Event],
    now: Callable[[], float],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Actor: approves or rejects each intent, in order."""
    with intents_rx, orders_tx, events_tx:
        task_status.started()
        async for intent in intents_rx:
            ts = now()
            decision = gate.check(intent, ts)
            if isinstance(decision, Rejection):
                await events_tx.send(
                    Event(
                        ts,
                        "order.rejected",
                        {
                            "side": intent.side,
                            "qty": intent.qty,
                            "reason": decision.reason,
                            "detail": decision.detail,
                            "stage": "risk",
                            "intent": intent.reason,
                        },
                    )
                )
                continue
            await events_tx.send(
                Event(
                    ts,
                    "order.submitted",
                    {
                        "order_id": decision.id,
                        "side": decision.side,
                        "qty": decision.qty,
                        "type": "market",
                        "requested_price": decision.decision_price,
                        "reduce_only": decision.reduce_only,
                        "reason": decision.reason,
                    },
                )
            )
            await orders_tx.send(decision)
