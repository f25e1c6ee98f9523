"""The risk gate component: the one place where every limit, throttle, circuit breaker and stop
condition lives. A plain synchronous class (no trio); it owns its counters and reads the account
only through the frozen `AccountSnapshot`s that travel with what it is given.

- `on_intent(intent, account, now)`: an intent in, an approved `Order` (and its `order.submitted`
  event) or a rejection (`order.rejected` with a reason code, counted in the final report) out.
- Entries are sized here: `risk.risk_per_trade_pct` of equity over the distance to the strategy's
  stop (or the strategy's own size with `risk.sizing = "fixed"`), then held to the caps
  (`max_position_size`, `max_notional`, `max_leverage`) and rounded to the lot.
- `max_orders_per_minute` is a sliding window over every order the strategies ask for, exits
  included; the broker's protective exits and flatten-on-exit never pass through it.
- `on_account(update)`: the account watched, after the marks its `RiskWatch` asks the broker to
  report (a new UTC day, the end of a cooldown, equity at or below the nearest limit) and after
  every closed trade: `max_loss_pct` stops the session; the circuit breaker
  (`max_daily_drawdown_pct`, `max_consecutive_losses`) flattens and then stops the session or halts
  entries for the cooldown; `max_trades` and `max_losses` stop the session. Its effects are
  commands for the broker (`Flatten`, `HaltEntries`, `StopSession`, `RiskWatch`), never calls.
- While the feed's data is stale (`account.stale`), entries are refused (`stale_data`); exits
  still go through.

Orders approved but not yet processed by the broker count as pending (the snapshot's
`processed_signed_qty`), so two quick intents cannot together exceed a limit.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import attrs

from actors.broker.paper import MIN_QTY, round_lot
from actors.config import RiskConfig
from protocols.messages import (
    AccountSnapshot,
    AccountUpdate,
    Event,
    Flatten,
    HaltEntries,
    Order,
    OrderIntent,
    RiskWatch,
    StopSession,
)

WINDOW_S = 60.0
DAY_S = 86400.0
# The equity floor the broker watches sits this much (relative) above the nearest limit, so that
# it never misses a mark at which the gate's own arithmetic would act.
WATCH_MARGIN = 1e-9

RiskOutput = Order | Flatten | HaltEntries | StopSession | RiskWatch | Event


@attrs.frozen
class Rejection:
    reason: str
    detail: str


class RiskGate:
    def __init__(self, config: RiskConfig, starting_equity: float) -> None:
        self.config = config
        self.starting_equity = starting_equity
        self.window: deque[float] = deque()
        self.submitted_signed_qty = 0.0
        self.order_seq = 0
        self.trades = 0
        self.losses = 0
        self.consecutive_losses = 0
        self.day: int | None = None
        self.day_start_equity = starting_equity
        self.halted_until: float | None = None
        self.breaker_trips = 0
        self.stopping = False  # a stop command has been given: nothing more to decide
        self.watching: RiskWatch | None = None  # the last watch the broker was given

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
        "stopping",
    )

    def state(self) -> dict[str, Any]:
        return {"window": list(self.window), **{name: getattr(self, name) for name in self._SCALARS}}

    def restore(self, state: dict[str, Any], account: AccountSnapshot) -> None:
        """Orders in flight at the crash never reached the market (the broker refuses them on
        resume): nothing is pending after it."""
        self.window = deque(state["window"])
        for name in self._SCALARS:
            if name in state:
                setattr(self, name, state[name])
        self.submitted_signed_qty = account.position().processed_signed_qty
        self.watching = None

    # --- intents ---------------------------------------------------------------------------------

    def on_intent(self, intent: OrderIntent, account: AccountSnapshot, now: float) -> list[RiskOutput]:
        """An approved order and its `order.submitted` event, or an `order.rejected` event."""
        decision = self.check(intent, account, now)
        if isinstance(decision, Rejection):
            return [
                Event(
                    now,
                    "order.rejected",
                    {
                        "side": intent.side,
                        "qty": intent.qty,
                        "reason": decision.reason,
                        "detail": decision.detail,
                        "stage": "risk",
                        "intent": intent.reason,
                        "strategy_id": intent.strategy_id,
                        "symbol": intent.symbol,
                    },
                )
            ]
        submitted = Event(
            now,
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
                "strategy_id": decision.strategy_id,
                "symbol": decision.symbol,
            },
        )
        return [submitted, decision]

    def pending_signed_qty(self, account: AccountSnapshot) -> float:
        return self.submitted_signed_qty - account.position().processed_signed_qty

    def projected_position(self, account: AccountSnapshot) -> float:
        return account.position().qty + self.pending_signed_qty(account)

    def check(self, intent: OrderIntent, account: AccountSnapshot, now: float) -> Order | Rejection:
        entry = not intent.reduce_only
        if entry and self.stopping:
            return Rejection("session_stopping", "the session is stopping")
        if entry and self.halted_until is not None and now < self.halted_until:
            return Rejection(
                "breaker_halt", f"entries halted by the circuit breaker until {self.halted_until:.0f}"
            )
        if entry and account.stale:
            return Rejection("stale_data", "market data is stale or the feed is down")
        while self.window and self.window[0] <= now - WINDOW_S:
            self.window.popleft()
        if len(self.window) >= self.config.max_orders_per_minute:
            return Rejection(
                "max_orders_per_minute",
                f"{len(self.window)} orders in the last {WINDOW_S:g} s (limit {self.config.max_orders_per_minute})",
            )
        sized = self._size(intent, account) if entry else self._exit_size(intent, account)
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
            strategy_id=intent.strategy_id,
            symbol=intent.symbol,
        )

    def _exit_size(self, intent: OrderIntent, account: AccountSnapshot) -> float | Rejection:
        projected = self.projected_position(account)
        reduces = projected < 0 if intent.side == "buy" else projected > 0
        qty = round(min(intent.qty, abs(projected)), 8) if reduces else 0.0
        if qty < MIN_QTY:
            return Rejection("nothing_to_close", f"no open position to reduce ({projected:+.4f} BTC)")
        return qty

    def _size(self, intent: OrderIntent, account: AccountSnapshot) -> float | Rejection:
        c = self.config
        equity = account.equity
        price = intent.decision_price
        if c.sizing == "risk" and intent.stop_price is not None and abs(price - intent.stop_price) > 0:
            wanted = equity * c.risk_per_trade_pct / 100 / abs(price - intent.stop_price)
        else:
            wanted = intent.qty
        before = self.projected_position(account)
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

    def on_account(self, update: AccountUpdate) -> list[RiskOutput]:
        """After the marks the watch asked for and every closed trade: counters, the loss limit,
        the breaker, the stop conditions. Returns events and commands for the broker."""
        if self.stopping:
            return []
        ts, equity = update.ts, update.account.equity
        out: list[RiskOutput] = []
        for trade in update.closed:
            out += self._trade_closed(trade.net_pnl, ts, equity)
            if self.stopping:
                return out
        out += self._marked(ts, equity)
        if not self.stopping:
            watch = self.watch(ts)
            if watch != self.watching:
                self.watching = watch
                out.append(watch)
        return out

    def watch(self, ts: float) -> RiskWatch:
        """What the broker must report: equity at or below the nearest limit (the session loss
        limit; the daily drawdown unless entries are halted), the next UTC day (its start equity),
        the end of a cooldown; before the first mark, any mark."""
        floor = self.starting_equity * (1 - self.config.max_loss_pct / 100)
        if self.halted_until is None:
            floor = max(floor, self.day_start_equity * (1 - self.config.max_daily_drawdown_pct / 100))
        check_at = -math.inf if self.day is None else (self.day + 1) * DAY_S
        if self.halted_until is not None:
            check_at = min(check_at, self.halted_until)
        return RiskWatch(ts, floor + abs(floor) * WATCH_MARGIN, check_at)

    def _marked(self, ts: float, equity: float) -> list[RiskOutput]:
        day = math.floor(ts / DAY_S)
        if day != self.day:
            self.day, self.day_start_equity = day, equity
        out: list[RiskOutput] = []
        if self.halted_until is not None and ts >= self.halted_until:
            self.halted_until = None
            self.day_start_equity = equity  # a new drawdown budget after the cooldown
            out.append(Event(ts, "breaker.reset", {"equity": round(equity, 6)}))
            out.append(HaltEntries(ts, -math.inf, "breaker_reset"))
        return out + self._check_equity(ts, equity)

    def _check_equity(self, ts: float, equity: float) -> list[RiskOutput]:
        """The session loss limit and the daily drawdown breaker, on the account as it is now."""
        if self.stopping:
            return []
        out: list[RiskOutput] = []
        loss_pct = (self.starting_equity - equity) / self.starting_equity * 100
        if loss_pct >= self.config.max_loss_pct:
            return self._stop(
                ts, "max_loss", f"session loss {loss_pct:.2f} % >= {self.config.max_loss_pct:g} %"
            )
        daily_dd = (
            (self.day_start_equity - equity) / self.day_start_equity * 100 if self.day_start_equity > 0 else 0
        )
        if daily_dd >= self.config.max_daily_drawdown_pct and self.halted_until is None:
            out += self._trip(
                "max_daily_drawdown", f"drawdown {daily_dd:.2f} % from the day's start", ts, equity
            )
        return out

    def _trade_closed(self, net_pnl: float, ts: float, equity: float) -> list[RiskOutput]:
        c = self.config
        self.trades += 1
        if net_pnl < 0:
            self.losses += 1
            self.consecutive_losses += 1
        else:
            self.consecutive_losses = 0
        out: list[RiskOutput] = []
        if (
            c.max_consecutive_losses
            and self.consecutive_losses >= c.max_consecutive_losses
            and not (self.halted_until is not None and ts < self.halted_until)  # the trip's own flatten
        ):
            self.consecutive_losses = 0
            out += self._trip(
                "max_consecutive_losses", f"{c.max_consecutive_losses} losing trades in a row", ts, equity
            )
        if self.stopping:
            return out
        if c.max_trades and self.trades >= c.max_trades:
            return out + self._stop(ts, "max_trades", f"{self.trades} trades closed")
        if c.max_losses and self.losses >= c.max_losses:
            return out + self._stop(ts, "max_losses", f"{self.losses} losing trades")
        # a closing fill moves equity too: the loss limit must not wait for the next mark
        return out + self._check_equity(ts, equity)

    def _stop(self, ts: float, reason: str, detail: str) -> list[RiskOutput]:
        """End the session; entries already on their way are refused by the broker."""
        self.stopping = True
        return [StopSession(ts, reason, detail)]

    def _trip(self, reason: str, detail: str, ts: float, equity: float) -> list[RiskOutput]:
        """The circuit breaker: flatten, then stop the session or halt entries for the cooldown."""
        self.breaker_trips += 1
        action = self.config.on_breaker
        out: list[RiskOutput] = [
            Event(
                ts,
                "breaker.tripped",
                {"reason": reason, "detail": detail, "action": action, "equity": round(equity, 6)},
            )
        ]
        if action == "stop":
            out.append(Flatten(ts, "breaker", f"breaker-{self.breaker_trips}"))
            return out + self._stop(ts, "breaker", f"{reason}: {detail}")
        self.halted_until = ts + self.config.breaker_cooldown_min * 60
        out.append(HaltEntries(ts, self.halted_until, reason))
        out.append(Flatten(ts, "breaker", f"breaker-{self.breaker_trips}"))
        return out
