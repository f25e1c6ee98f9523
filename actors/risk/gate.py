"""The risk gate: the one place where every limit, throttle, circuit breaker and stop condition lives.

- Intents in, approved orders or rejections out. Every rejection is an `order.rejected` event with
  a reason code, counted in the final report.
- Entries are sized here: `risk.risk_per_trade_pct` of equity over the distance to the strategy's
  stop (or the strategy's own size with `risk.sizing = "fixed"`), then held to the caps
  (`max_position_size`, `max_notional`, `max_leverage`) and rounded to the lot.
- `max_orders_per_minute` is a sliding window over every order the strategy asks for, exits
  included; the broker's protective exits and flatten-on-exit never pass through it.
- The account is watched after every mark and every closed trade (the broker calls `on_marked` and
  `on_trade_closed` synchronously, so the checks see exactly the state that caused them):
  `max_loss_pct` stops the session; the circuit breaker (`max_daily_drawdown_pct`,
  `max_consecutive_losses`) flattens and then stops or halts entries for the cooldown;
  `max_trades` and `max_losses` stop the session.
- While market data is stale, entries are refused (`stale_data`); exits still go through.

Orders approved but not yet processed by the broker count as pending, so two quick intents cannot
together exceed a limit.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import trio

from actors.broker.paper import MIN_QTY, PaperAccount, round_lot
from actors.config import RiskConfig
from protocols.messages import Cancel, Event, EventSender, Order, OrderIntent

WINDOW_S = 60.0
DAY_S = 86400.0


class Health(Protocol):
    @property
    def stale(self) -> bool: ...


@attrs.frozen
class Rejection:
    reason: str
    detail: str


def _no_stop(reason: str, detail: str = "") -> None:
    return None


class RiskGate:
    """Pure decision logic; `check` is called once per intent with the session time."""

    def __init__(
        self,
        config: RiskConfig,
        view: PaperAccount,
        *,
        health: Health | None = None,
        stop: Callable[[str, str], None] = _no_stop,
    ) -> None:
        self.config = config
        self.view = view
        self.health = health
        self.stop = stop
        self.window: deque[float] = deque()
        self.submitted_signed_qty = 0.0
        self.order_seq = 0
        self.trades = 0
        self.losses = 0
        self.consecutive_losses = 0
        self.day: int | None = None
        self.day_start_equity = view.starting_equity
        self.halted_until: float | None = None
        self.breaker_trips = 0
        self._tripping = False
        view.on_marked = self.on_marked
        view.on_trade_closed = self.on_trade_closed

    # --- checkpoint ------------------------------------------------------------------------------

    _SCALARS = (
        "order_seq",
        "trades",
        "losses",
        "consecutive_losses",
        "day",
        "day_start_equity",
        "halted_until",
        "breaker_trips",
    )

    def snapshot(self) -> dict[str, Any]:
        return {"window": list(self.window), **{name: getattr(self, name) for name in self._SCALARS}}

    def restore(self, state: dict[str, Any]) -> None:
        """Orders in flight at the crash never reached the broker: nothing is pending after it."""
        self.window = deque(state["window"])
        for name in self._SCALARS:
            setattr(self, name, state[name])
        self.view.entries_halted_until = self.halted_until
        self.submitted_signed_qty = self.view.processed_signed_qty

    # --- intents ---------------------------------------------------------------------------------

    @property
    def pending_signed_qty(self) -> float:
        return self.submitted_signed_qty - self.view.processed_signed_qty

    def projected_position(self) -> float:
        return self.view.position_qty + self.pending_signed_qty

    def check(self, intent: OrderIntent, now: float) -> Order | Rejection:
        entry = not intent.reduce_only
        if entry and self.halted_until is not None and now < self.halted_until:
            return Rejection(
                "breaker_halt", f"entries halted by the circuit breaker until {self.halted_until:.0f}"
            )
        if entry and self.health is not None and self.health.stale:
            return Rejection("stale_data", "market data is stale or the feed is down")
        while self.window and self.window[0] <= now - WINDOW_S:
            self.window.popleft()
        if len(self.window) >= self.config.max_orders_per_minute:
            return Rejection(
                "max_orders_per_minute",
                f"{len(self.window)} orders in the last {WINDOW_S:g} s (limit {self.config.max_orders_per_minute})",
            )
        sized = self._size(intent) if entry else self._exit_size(intent)
        if isinstance(sized, Rejection):
            return sized
        self.window.append(now)
        self.submitted_signed_qty += sized if intent.side == "buy" else -sized
        self.order_seq += 1
        return Order(
            id=f"o{self.order_seq}",
            ts=now,
            side=intent.side,
            qty=sized,
            decision_price=intent.decision_price,
            reason=intent.reason,
            reduce_only=intent.reduce_only,
            order_type=intent.order_type,
            limit_price=intent.limit_price,
            trigger_price=intent.trigger_price,
            post_only=intent.post_only,
            stop_price=intent.stop_price,
            target_price=intent.target_price,
        )

    def _exit_size(self, intent: OrderIntent) -> float | Rejection:
        projected = self.projected_position()
        reduces = projected < 0 if intent.side == "buy" else projected > 0
        qty = round(min(intent.qty, abs(projected)), 8) if reduces else 0.0
        if qty < MIN_QTY:
            return Rejection("nothing_to_close", f"no open position to reduce ({projected:+.4f} BTC)")
        return qty

    def _size(self, intent: OrderIntent) -> float | Rejection:
        c = self.config
        equity = self.view.equity
        price = intent.decision_price
        if c.sizing == "risk" and intent.stop_price is not None and abs(price - intent.stop_price) > 0:
            wanted = equity * c.risk_per_trade_pct / 100 / abs(price - intent.stop_price)
        else:
            wanted = intent.qty
        before = self.projected_position()
        sign = 1 if intent.side == "buy" else -1
        room = {  # how much more the position may grow in this direction under each cap
            "max_position_size": c.max_position_size,
            "max_notional": c.max_notional / price,
            "max_leverage": c.max_leverage * max(equity, 0.0) / price,
        }
        binding, cap = min(room.items(), key=lambda kv: kv[1])
        allowed = cap - before * sign
        if wanted > allowed + 1e-12:
            if c.sizing != "risk" or allowed < MIN_QTY:
                return Rejection(
                    binding,
                    f"position would be {before + sign * wanted:+.4f} BTC; {binding} allows "
                    f"{cap:.4f} BTC at {price:.1f}",
                )
            wanted = allowed
        qty = round_lot(wanted)
        if qty < MIN_QTY:
            return Rejection("below_min_size", f"size {wanted:.6f} BTC is below the minimum {MIN_QTY} BTC")
        return qty

    # --- the account -----------------------------------------------------------------------------

    def on_marked(self, ts: float, equity: float | None = None) -> list[Event]:
        """After every mark: the UTC day's start equity, the loss limit, the drawdown breaker.
        `equity`: the account's, when the caller has just computed it."""
        if equity is None:
            equity = self.view.equity
        day = math.floor(ts / DAY_S)
        if day != self.day:
            self.day, self.day_start_equity = day, equity
        events: list[Event] = []
        if self.halted_until is not None and ts >= self.halted_until:
            self.halted_until = None
            self.view.entries_halted_until = None
            self.day_start_equity = equity  # a new drawdown budget after the cooldown
            events.append(Event(ts, "breaker.reset", {"equity": round(equity, 6)}))
        return events + self._check_equity(ts, equity)

    def _check_equity(self, ts: float, equity: float | None = None) -> list[Event]:
        """The session loss limit and the daily drawdown breaker, on the account as it is now."""
        if self.view.entries_halted_until == math.inf:
            return []  # the session is already stopping
        if equity is None:
            equity = self.view.equity
        events: list[Event] = []
        loss_pct = (self.view.starting_equity - equity) / self.view.starting_equity * 100
        if loss_pct >= self.config.max_loss_pct:
            self._stop("max_loss", f"session loss {loss_pct:.2f} % >= {self.config.max_loss_pct:g} %")
        daily_dd = (
            (self.day_start_equity - equity) / self.day_start_equity * 100 if self.day_start_equity > 0 else 0
        )
        if daily_dd >= self.config.max_daily_drawdown_pct and self.halted_until is None:
            events += self.trip("max_daily_drawdown", f"drawdown {daily_dd:.2f} % from the day's start", ts)
        return events

    def on_trade_closed(self, net_pnl: float, ts: float) -> list[Event]:
        c = self.config
        self.trades += 1
        if net_pnl < 0:
            self.losses += 1
            self.consecutive_losses += 1
        else:
            self.consecutive_losses = 0
        events: list[Event] = []
        if c.max_consecutive_losses and self.consecutive_losses >= c.max_consecutive_losses:
            self.consecutive_losses = 0
            events += self.trip(
                "max_consecutive_losses", f"{c.max_consecutive_losses} losing trades in a row", ts
            )
        if c.max_trades and self.trades >= c.max_trades:
            self._stop("max_trades", f"{self.trades} trades closed")
        if c.max_losses and self.losses >= c.max_losses:
            self._stop("max_losses", f"{self.losses} losing trades")
        # a closing fill moves equity too: the loss limit must not wait for the next quote
        return events + self._check_equity(ts)

    def _stop(self, reason: str, detail: str) -> None:
        """Ask the watchdog to end the session; entries already on their way are refused."""
        self.view.entries_halted_until = math.inf
        self.stop(reason, detail)

    def trip(self, reason: str, detail: str, ts: float) -> list[Event]:
        """The circuit breaker: flatten, then stop the session or halt entries for the cooldown.

        The flatten's own closing fill re-enters the account checks; it cannot trip again."""
        if self._tripping:
            return []
        self._tripping = True
        try:
            return self._trip(reason, detail, ts)
        finally:
            self._tripping = False

    def _trip(self, reason: str, detail: str, ts: float) -> list[Event]:
        self.breaker_trips += 1
        action = self.config.on_breaker
        events = [
            Event(
                ts,
                "breaker.tripped",
                {"reason": reason, "detail": detail, "action": action, "equity": round(self.view.equity, 6)},
            )
        ]
        if action == "stop":
            self.view.entries_halted_until = math.inf
        else:
            self.halted_until = ts + self.config.breaker_cooldown_min * 60
            self.view.entries_halted_until = self.halted_until
        events += self.view.flatten(ts, "breaker", f"breaker-{self.breaker_trips}")
        if action == "stop":
            self.stop("breaker", f"{reason}: {detail}")
        return events


async def run_risk(
    gate: RiskGate,
    intents_rx: trio.MemoryReceiveChannel[OrderIntent],
    orders_tx: trio.MemorySendChannel[Order | Cancel],
    events_tx: EventSender,
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
                        "type": decision.order_type,
                        "requested_price": decision.decision_price,
                        "limit_price": decision.limit_price,
                        "trigger_price": decision.trigger_price,
                        "stop_price": decision.stop_price,
                        "target_price": decision.target_price,
                        "reduce_only": decision.reduce_only,
                        "reason": decision.reason,
                    },
                )
            )
            await orders_tx.send(decision)
