"""The risk gate component: the one place where every limit, throttle, circuit breaker and stop
condition lives. A plain synchronous class (no trio); it owns its counters and reads the account
only through the frozen `AccountSnapshot`s that travel with what it is given.

- `on_intent(intent, account, now)`: an intent in, an approved `Order` (and its `order.submitted`
  event) or a rejection (`order.rejected` with a reason code, counted in the final report) out.
- Entries are sized here: `risk.risk_per_trade_pct` of equity over the distance to the strategy's
  stop (or the strategy's own size with `risk.sizing = "fixed"`), then held to the symbol's caps
  (`max_position_size`, `max_notional`, `max_leverage`), the account's across every symbol
  (`max_total_notional`, `max_total_leverage`: the other symbols' positions, and market orders on
  their way, at their marks, their resting limit orders at their limit prices) and the largest
  order the exchange takes of its type and at market (the symbol's instrument: `max_order_qty`;
  an exit larger than the largest of its type goes as several orders), and rounded to the
  symbol's lot. A risk-sized entry over one of
  them is cut to it; a fixed size is refused whole, naming the tightest.
- `max_orders_per_minute` is a sliding window over every order it approves for the strategies,
  exits included (each part of an exit in parts) (an intent it rejects for another reason does not count); the broker's
  protective exits and flatten-on-exit never pass through it.
- `on_account(update)`: the account watched, after the marks its `RiskWatch` asks the broker to
  report (a new UTC day, the end of a cooldown, equity at or below the nearest limit) and after
  every closed trade: `max_loss_pct` stops the session; the circuit breaker flattens and then
  stops the session or halts entries (`on_breaker`; "auto": halt in backtests, stop otherwise):
  `max_daily_drawdown_pct` caps the UTC day (measured from the equity at the day's first mark, reset
  only at 00:00 UTC; after a trip no entries until the next midnight, or `breaker_cooldown_min` if
  that is later); `max_consecutive_losses` halts for `loss_streak_cooldown_min`, and the streak
  counts from zero again. `max_trades` and `max_losses` stop the session. Its effects are commands
  for the broker (`Flatten`, `HaltEntries`, `StopSession`, `RiskWatch`), never calls.
- While the feed's data is stale (`account.stale`), entries are refused (`stale_data`); exits
  still go through.

Orders approved but not yet processed by the broker count as pending (the snapshot's
`processed_signed_qty` and `processed_buy_qty`), so two quick intents cannot together exceed a
limit. The caps hold whichever of the pending orders fill: an entry's room counts what is on its
way in its own direction, never what is on its way the other way (a resting limit may never fill,
an exit may be refused or cut), so a position never grows past a cap whatever becomes of them.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Any, Final

import attrs

from actors.config import RiskConfig
from protocols.instruments import Instrument, fast_round, table_instrument
from protocols.messages import (
    AccountSnapshot,
    AccountUpdate,
    Event,
    Flatten,
    HaltEntries,
    Order,
    OrderIntent,
    Position,
    RiskWatch,
    StopSession,
)
from protocols.records import iso

WINDOW_S: Final = 60.0
DAY_S: Final = 86400.0
# A loss "reaches" a limit in percent within this much of it: (10000 - 9890) / 10000 * 100 is
# 1.0999999999999999, not 1.1 (the limits are compared in floating point)
PCT_EPS: Final = 1e-9
# The equity floor the broker watches sits this much (relative) above the nearest limit, so that
# it never misses a mark at which the gate's own arithmetic would act.
WATCH_MARGIN: Final = 1e-9

RiskOutput = Order | Flatten | HaltEntries | StopSession | RiskWatch | Event
DAILY, STREAK = "max_daily_drawdown", "max_consecutive_losses"  # the breakers, as events name them


def breaker_action(on_breaker: str, *, backtest: bool) -> str:
    """`risk.on_breaker` resolved: "auto" halts entries in backtests and stops live sessions and
    replays; an explicit "stop" or "halt" is obeyed everywhere."""
    if on_breaker == "auto":
        return "halt" if backtest else "stop"
    return on_breaker


@attrs.frozen
class Rejection:
    reason: str
    detail: str


class RiskGate:
    def __init__(
        self,
        config: RiskConfig,
        starting_equity: float,
        *,
        backtest: bool = False,
        instrument: Instrument | None = None,
        instruments: dict[str, Instrument] | None = None,
    ) -> None:
        self.config = config
        # the grid orders are sized and priced on (the broker refuses what is off it): each
        # symbol's (`instruments`), else `instrument` (one symbol), else BTCUSDT's
        default = table_instrument("BTCUSDT")
        assert default is not None
        self.instrument: Instrument = instrument or default
        self.instruments: dict[str, Instrument] = dict(instruments or {})
        if instrument is not None:
            self.instruments.setdefault(instrument.symbol, instrument)
        c = config
        self.max_total_notional = c.max_total_notional or c.max_notional
        self.max_total_leverage = c.max_total_leverage or c.max_leverage
        self.action = breaker_action(config.on_breaker, backtest=backtest)  # "stop" or "halt"
        self.starting_equity = starting_equity
        self.window: deque[float] = deque()
        # every approved order's signed qty, by symbol (pending until the broker processed it),
        # and the buys' part of it (so the pending buys and sells are known apart)
        self.submitted_by_symbol: dict[str, float] = {}
        self.submitted_buy_by_symbol: dict[str, float] = {}
        # the same per strategy: a strategy's exits reduce its own virtual position
        self.submitted_by_strategy: dict[str, float] = {}
        self.submitted_buy_by_strategy: dict[str, float] = {}
        self.strategy_symbols: dict[str, str] = {}  # the symbol each strategy trades (from its orders)
        self.order_seq = 0
        self.trades = 0
        self.losses = 0
        self.consecutive_losses = 0
        self.day: int | None = None
        self.day_start_equity = starting_equity
        self.halted_until: float | None = None  # entries halted by a breaker until then
        self.halt_reason: str | None = None  # the breaker whose halt ends at halted_until
        self.daily_tripped_day: int | None = None  # the UTC day whose drawdown cap tripped: spent
        self.breaker_trips = 0
        # the number of the last breaker flatten's id (`breaker-<n>`): the trips, and past the ids
        # a resume discarded (`skip_ids`)
        self.breaker_seq = 0
        self.stopping = False  # a stop command has been given: nothing more to decide
        # the stop it gave (its reason, detail, time): a session resumed from a checkpoint taken
        # after it stops again at once, for the same reason (actors/session_actors.py)
        self.stop_reason: str | None = None
        self.stop_detail = ""
        self.stop_ts: float | None = None
        self.watching: RiskWatch | None = None  # the last watch the broker was given
        # the id of a breaker's flatten to give at the next account update (a breaker set to halt
        # that tripped at a resume: `limits_reached`)
        self.flatten_due: str | None = None

    # --- checkpoint ------------------------------------------------------------------------------

    _SCALARS = (
        "order_seq",
        "trades",
        "losses",
        "consecutive_losses",
        "day",
        "day_start_equity",
        "halted_until",
        "halt_reason",
        "daily_tripped_day",
        "breaker_trips",
        "breaker_seq",
        "stopping",
        "stop_reason",
        "stop_detail",
        "stop_ts",
        "flatten_due",
    )

    def state(self) -> dict[str, Any]:
        return {
            "window": list(self.window),
            "submitted_by_symbol": dict(self.submitted_by_symbol),
            "submitted_by_strategy": dict(self.submitted_by_strategy),
            "submitted_buy_by_symbol": dict(self.submitted_buy_by_symbol),
            "submitted_buy_by_strategy": dict(self.submitted_buy_by_strategy),
            "strategy_symbols": dict(self.strategy_symbols),
            **{name: getattr(self, name) for name in self._SCALARS},
        }

    def skip_ids(self, ids: Iterable[str]) -> None:
        """After a resume: an order id the events it discarded gave (`o<n>`, a breaker's flatten
        `breaker-<n>[-SYMBOL]`, written after the checkpoint) is never given again (found by an
        audit: a breaker that tripped again after the resume gave `breaker-1` a second time)."""
        for given in ids:
            if given[:1] == "o" and given[1:].isdigit():
                self.order_seq = max(self.order_seq, int(given[1:]))
            elif given.startswith("breaker-"):
                number = given.split("-")[1]
                if number.isdigit():
                    self.breaker_seq = max(self.breaker_seq, int(number))

    def restore(self, state: dict[str, Any], account: AccountSnapshot) -> None:
        """What the gate had sent is kept: orders still working at the market stay pending; those in
        flight at the crash never reached it (the broker refuses them on resume, which counts them
        as processed). A checkpoint from before a key existed keeps the fresh gate's value (no halt
        reason, the day's drawdown cap not spent; nothing pending beyond what the broker processed)."""
        self.window = deque(state["window"])
        for name in self._SCALARS:
            if name in state:
                setattr(self, name, state[name])
        if "breaker_seq" not in state:  # an older checkpoint: its ids were the trips
            self.breaker_seq = self.breaker_trips
        if "submitted_by_symbol" in state:
            self.submitted_by_symbol = dict(state["submitted_by_symbol"])
        else:  # a checkpoint of one symbol, from before symbols were kept apart
            self.submitted_by_symbol = {
                account.symbol: state.get("submitted_signed_qty", account.position().processed_signed_qty)
            }
        saved = state.get("submitted_by_strategy")
        self.submitted_by_strategy = (
            dict(saved)
            if saved is not None  # an older checkpoint: nothing pending beyond what the broker processed
            else {p.strategy_id: p.processed_signed_qty for p in account.positions if p.strategy_id}
        )
        self.strategy_symbols = dict(state.get("strategy_symbols", {}))
        # an older checkpoint kept the signed sums only: what was pending counted on its net side
        buys = state.get("submitted_buy_by_symbol")
        self.submitted_buy_by_symbol = (
            dict(buys)
            if buys is not None
            else {
                symbol: account.position(symbol).processed_buy_qty
                + max(signed - account.position(symbol).processed_signed_qty, 0.0)
                for symbol, signed in self.submitted_by_symbol.items()
            }
        )
        buys = state.get("submitted_buy_by_strategy")
        self.submitted_buy_by_strategy = (
            dict(buys)
            if buys is not None
            else {
                sid: self._own(account, sid).processed_buy_qty
                + max(signed - self._own(account, sid).processed_signed_qty, 0.0)
                for sid, signed in self.submitted_by_strategy.items()
            }
        )
        for p in account.positions:  # an older checkpoint: the strategies that hold positions
            if p.strategy_id:
                self.strategy_symbols.setdefault(p.strategy_id, p.symbol)
        self.watching = None

    # --- intents ---------------------------------------------------------------------------------

    def on_intent(self, intent: OrderIntent, account: AccountSnapshot, now: float) -> list[RiskOutput]:
        """An approved order and its `order.submitted` event (an exit larger than the largest order:
        each of its parts, `orders`), or an `order.rejected` event."""
        decision = self.orders(intent, account, now)
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
        out: list[RiskOutput] = []
        for order in decision:
            submitted = Event(
                now,
                "order.submitted",
                {
                    "order_id": order.id,
                    "side": order.side,
                    "qty": order.qty,
                    "type": order.order_type,
                    "requested_price": order.decision_price,
                    "limit_price": order.limit_price,
                    "trigger_price": order.trigger_price,
                    "stop_price": order.stop_price,
                    "target_price": order.target_price,
                    "reduce_only": order.reduce_only,
                    "reason": order.reason,
                    "strategy_id": order.strategy_id,
                    "symbol": order.symbol,
                    "expire_ts": order.expire_ts,
                },
            )
            out += (submitted, order)
        return out

    def _own(self, account: AccountSnapshot, strategy_id: str) -> Position:
        """A strategy's virtual position, in the symbol it trades."""
        return account.position(self.strategy_symbols.get(strategy_id) or account.symbol, strategy_id)

    def pending(self, account: AccountSnapshot, symbol: str, strategy_id: str = "") -> tuple[float, float]:
        """The buys and the sells sent to `symbol` (with a `strategy_id`: by that strategy) that the
        broker has not finished with yet, each as a size."""
        if strategy_id:
            own = account.position(symbol, strategy_id)
            signed = self.submitted_by_strategy.get(strategy_id, 0.0) - own.processed_signed_qty
            buys = self.submitted_buy_by_strategy.get(strategy_id, 0.0) - own.processed_buy_qty
        else:
            net = account.position(symbol)
            signed = self.submitted_by_symbol.get(symbol, 0.0) - net.processed_signed_qty
            buys = self.submitted_buy_by_symbol.get(symbol, 0.0) - net.processed_buy_qty
        # to the sizes' precision: a sum of sizes minus another is not exactly 0 in floating point
        buys = max(fast_round(buys, 10), 0.0)
        return buys, max(fast_round(buys - signed, 10), 0.0)

    def projected_position(
        self, account: AccountSnapshot, strategy_id: str = "", symbol: str | None = None
    ) -> float:
        """The position in `symbol` (default: the snapshot's) once every order sent is done: the
        account's, or with a `strategy_id`, that strategy's virtual position."""
        symbol = symbol or account.symbol
        buys, sells = self.pending(account, symbol, strategy_id)
        return account.position(symbol, strategy_id).qty + buys - sells

    def reach(self, account: AccountSnapshot, symbol: str, strategy_id: str = "") -> tuple[float, float]:
        """How long and how short the position in `symbol` (a strategy's with a `strategy_id`) can
        become, whichever of the orders on their way fill: the position with every pending buy,
        and with every pending sell (a short as a positive size)."""
        qty = account.position(symbol, strategy_id).qty
        buys, sells = self.pending(account, symbol, strategy_id)
        return qty + buys, sells - qty

    def exposure(self, account: AccountSnapshot, symbol: str, strategy_id: str) -> tuple[float, float, float]:
        """For an entry of `strategy_id` in `symbol`: the other strategies' positions there, each
        the largest it can become either way, summed (gross); and the strategy's own reach, long
        and short (`reach`). The caps hold the gross: strategies share one net position, and one
        strategy's exit can grow the net by what another holds the other way, so only the gross
        bounds it at every instant."""
        long, short = self.reach(account, symbol, strategy_id)
        if not strategy_id:
            return 0.0, long, short
        others = 0.0
        for sid in self._strategies_in(account, symbol):
            if sid != strategy_id:
                others += max(self.reach(account, symbol, sid))
        return others, long, short

    def _strategies_in(self, account: AccountSnapshot, symbol: str) -> list[str]:
        """In a fixed order (sorted): sums over them must not depend on a set's hash order, which
        differs from one process to the next (the last bits of a float sum would)."""
        ids = {p.strategy_id for p in account.positions if p.symbol == symbol and p.strategy_id}
        return sorted(ids | {sid for sid, s in self.strategy_symbols.items() if s == symbol})

    def instrument_of(self, symbol: str, account: AccountSnapshot | None = None) -> Instrument:
        """`symbol`'s instrument: the broker's (the snapshot's, when taken for that symbol: the
        exchange's own figures in a live session), else the one the gate was built with."""
        instrument = account.instrument_for(symbol) if account is not None else None
        return instrument or self.instruments.get(symbol, self.instrument)

    def others_notional(self, account: AccountSnapshot, symbol: str) -> float:
        """The other symbols' projected positions in USDT (several symbols): each strategy's there
        the largest it can become either way (`reach`; the net position's when no strategy has
        traded the symbol), summed; the positions and market orders on their way at their marks
        (the snapshot's `marks`; a symbol with no mark yet at its average price), their resting
        limit orders at their limit prices (the snapshot's `limit_orders`), as an entry is sized at
        its own (found by an audit: they were valued at the mark, so a buy limit far under it took
        more of the account's room than it can ever fill for)."""
        if not account.marks:
            return 0.0
        marks = dict(account.marks)
        limits = {(row[0], row[1]): row[2:] for row in account.limit_orders}
        total = 0.0
        for other in sorted({p.symbol for p in account.positions} | set(self.submitted_by_symbol)):
            if other == symbol:
                continue
            mark = marks.get(other) or account.position(other).avg_price
            for sid in self._strategies_in(account, other) or [""]:
                qty = account.position(other, sid).qty
                buys, sells = self.pending(account, other, sid)
                buy_qty, buy_notional, sell_qty, sell_notional = limits.get(
                    (other, sid), (0.0, 0.0, 0.0, 0.0)
                )
                # the limits are among what is pending (the gate's count bounds the broker's)
                if buy_qty > buys:
                    buy_notional, buy_qty = buy_notional * buys / buy_qty, buys
                if sell_qty > sells:
                    sell_notional, sell_qty = sell_notional * sells / sell_qty, sells
                # the largest it can become either way (`reach`), in USDT
                long = (qty + buys - buy_qty) * mark + buy_notional
                short = (sells - sell_qty - qty) * mark + sell_notional
                total += max(long, short)
        return total

    def check(self, intent: OrderIntent, account: AccountSnapshot, now: float) -> Order | Rejection:
        """The decision on an intent that gives one order (every entry; an exit within the largest
        order of its type); `orders` for any intent."""
        decision = self.orders(intent, account, now)
        if isinstance(decision, Rejection):
            return decision
        assert len(decision) == 1, "an exit in parts: see orders()"
        return decision[0]

    def orders(self, intent: OrderIntent, account: AccountSnapshot, now: float) -> list[Order] | Rejection:
        """The orders approved for `intent`, or why none is: an entry gives one; an exit of more
        than the largest order of its type the exchange takes gives as many orders as close it
        (each the largest, the last what is left), as far as `max_orders_per_minute` has room."""
        entry = not intent.reduce_only
        intent = self._on_grid(intent, account)
        if entry and self.stopping:
            return Rejection("session_stopping", "the session is stopping")
        if entry and self.halted_until is not None and now < self.halted_until:
            return Rejection(
                "breaker_halt",
                f"entries halted by the {self.halt_reason or 'circuit'} breaker until "
                f"{iso(self.halted_until)} ({self.halted_until:.0f})",
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
        if entry:
            sized = self._size(intent, account)
            if isinstance(sized, Rejection):
                return sized
            return [self._approve(intent, sized, now)]
        parts = self._exit_parts(intent, account)
        if isinstance(parts, Rejection):
            return parts
        # as many as the window has room for (one at least, checked above); the rest, if any, on
        # the strategy's next exit
        room = self.config.max_orders_per_minute - len(self.window)
        return [self._approve(intent, qty, now) for qty in parts[:room]]

    def _approve(self, intent: OrderIntent, sized: float, now: float) -> Order:
        """The order of `sized` for `intent`, counted (the window, what is pending)."""
        self.window.append(now)
        signed = sized if intent.side == "buy" else -sized
        symbol = intent.symbol
        by_symbol = self.submitted_by_symbol
        by_symbol[symbol] = by_symbol.get(symbol, 0.0) + signed
        sid = intent.strategy_id
        self.submitted_by_strategy[sid] = self.submitted_by_strategy.get(sid, 0.0) + signed
        if signed > 0:
            buys = self.submitted_buy_by_symbol
            buys[symbol] = buys.get(symbol, 0.0) + signed
            buys = self.submitted_buy_by_strategy
            buys[sid] = buys.get(sid, 0.0) + signed
        if sid:
            self.strategy_symbols[sid] = intent.symbol
        self.order_seq += 1
        # every field by position, in Order's order (keywords: the interpreter matches each name,
        # measured 5.8 against 3.5 us an order)
        return Order(
            f"o{self.order_seq}",  # id
            now,  # ts
            intent.side,
            sized,  # qty
            intent.decision_price,
            intent.reason,
            intent.reduce_only,
            intent.order_type,
            intent.limit_price,
            intent.trigger_price,
            intent.post_only,
            intent.stop_price,
            intent.target_price,
            False,  # protective
            intent.strategy_id,
            intent.symbol,
            intent.expire_ts,
        )

    def _on_grid(self, intent: OrderIntent, account: AccountSnapshot) -> OrderIntent:
        """The intent's prices on the tick grid: the decision price to the nearest tick; the stop
        and target away from the flattering side (a buy's stop down and target up, a sell's the
        other way), as the broker will place them; sizing then uses the stop that will rest."""
        grid = self.instrument_of(intent.symbol, account).round_price
        buy = intent.side == "buy"
        changes: dict[str, Any] = {}
        decision = grid(intent.decision_price)
        if decision != intent.decision_price:
            changes["decision_price"] = decision
        if intent.stop_price is not None:
            stop = grid(intent.stop_price, "down" if buy else "up")
            if stop != intent.stop_price:
                changes["stop_price"] = stop
        if intent.target_price is not None:
            target = grid(intent.target_price, "up" if buy else "down")
            if target != intent.target_price:
                changes["target_price"] = target
        if intent.limit_price is not None:  # never pays more (a buy) or takes less (a sell) than asked
            limit = grid(intent.limit_price, "down" if buy else "up")
            if limit != intent.limit_price:
                changes["limit_price"] = limit
        if intent.trigger_price is not None:  # a buy stop no earlier than asked, a sell stop no later
            trigger = grid(intent.trigger_price, "up" if buy else "down")
            if trigger != intent.trigger_price:
                changes["trigger_price"] = trigger
        return attrs.evolve(intent, **changes) if changes else intent

    def _exit_parts(self, intent: OrderIntent, account: AccountSnapshot) -> list[float] | Rejection:
        """An exit's size, the position it reduces at most, in the orders that send it: one, or for
        a size over the largest order of its type the exchange takes (a position built by several
        entries) several, each the largest and the last what is left (found by an audit: cut to the
        largest, the exit closed part of the position and the rest waited for the strategy's next
        exit signal). A last part under the exchange's minimum takes the minimum from the one
        before it."""
        projected = self.projected_position(account, intent.strategy_id, intent.symbol)
        reduces = projected < 0 if intent.side == "buy" else projected > 0
        qty = fast_round(min(intent.qty, abs(projected)), 8) if reduces else 0.0
        instrument = self.instrument_of(intent.symbol, account)
        if qty < instrument.min_qty:
            # a position still open that the orders on their way already close (an exit resent on
            # each close while the first works: found by an audit, hundreds of these in a thin
            # market's backtest said "no open position" beside a position still open)
            held = account.position(intent.symbol, intent.strategy_id).qty
            opens = held < 0 if intent.side == "buy" else held > 0
            if opens and abs(held) >= instrument.min_qty:
                detail = (
                    f"the orders on their way already close the position ({held:+.4f} {intent.symbol}, "
                    f"{projected:+.4f} once they are done)"
                )
            elif abs(held) >= instrument.min_qty:
                detail = f"a {intent.side} does not reduce the position ({held:+.4f} {intent.symbol})"
            else:
                detail = f"no open position to reduce ({projected:+.4f} {intent.symbol})"
            return Rejection("nothing_to_close", detail)
        largest = instrument.max_order_qty(intent.order_type)
        if qty <= largest:
            return [qty]
        parts: list[float] = []
        while qty > largest:
            parts.append(largest)
            qty = instrument.round_qty(qty - largest, "nearest")
        if qty >= instrument.min_qty:
            parts.append(qty)
        elif qty > 0:  # e.g. 20,005 with 20,000 the largest and 10 the least: 19,995 and 10
            parts[-1] = instrument.round_qty(largest - (instrument.min_qty - qty), "nearest")
            parts.append(instrument.min_qty)
        return parts

    def _size(self, intent: OrderIntent, account: AccountSnapshot) -> float | Rejection:
        c = self.config
        equity = account.equity
        # the price the entry is expected to fill at: a limit's limit when it rests (a buy below
        # the decision price, a sell above), else the decision price (found by an audit: a buy
        # limit at 98 with its stop at 96, decided at 100, was sized for a risk of 4 per unit, not
        # 2: half the risk asked; no shipped strategy decides off its limit price)
        price = intent.decision_price
        limit = intent.limit_price
        if intent.order_type == "limit" and limit is not None:
            price = min(price, limit) if intent.side == "buy" else max(price, limit)
        fixed = c.sizing != "risk"
        if not fixed and intent.stop_price is not None and abs(price - intent.stop_price) > 0:
            wanted = equity * c.risk_per_trade_pct / 100 / abs(price - intent.stop_price)
        else:
            wanted = intent.qty
        symbol = intent.symbol
        instrument = self.instrument_of(symbol, account)
        others_here, long, short = self.exposure(account, symbol, intent.strategy_id)
        sign = 1 if intent.side == "buy" else -1
        # how far the strategy's position already reaches this way, whichever pending orders fill
        # (nothing on its way the other way counts as room: it may never fill)
        reach = long if sign > 0 else short
        # how much more the position may grow in this direction under each cap; the account's
        # caps count what the other symbols hold against them
        others = self.others_notional(account, symbol)
        room = (
            ("max_position_size", c.max_position_size),
            ("max_notional", c.max_notional / price),
            ("max_leverage", c.max_leverage * max(equity, 0.0) / price),
            ("max_total_notional", max(self.max_total_notional - others, 0.0) / price),
            ("max_total_leverage", max(self.max_total_leverage * max(equity, 0.0) - others, 0.0) / price),
        )
        # the tightest, the first of equals (`min` by the room, written out: compiled, a key
        # function is a Python call per cap)
        binding, cap = room[0]
        for name, value in room:
            if value < cap:
                binding, cap = name, value
        allowed = cap - others_here - reach
        # the largest order of its type the exchange takes (the symbol's instrument): a cap on the
        # order, not on the position, held as the caps are (found by an audit: a risk-sized DOGEUSDT
        # entry over it went to the broker, which refused it whole, `qty_above_maximum`), and no
        # larger than one market order closes (a limit entry cut to the larger limit maximum could
        # not be closed by its strategy's market exit: found by an audit, refused on every close)
        largest = min(instrument.max_order_qty(intent.order_type), instrument.max_market_qty)
        if wanted > min(allowed, largest) + 1e-12:
            if largest < allowed:
                if fixed:
                    return Rejection(
                        "max_order_qty",
                        f"size {wanted:.4f} {symbol} is over the largest order the exchange takes for "
                        f"the entry and its market exit, {largest:g}",
                    )
                wanted = largest
            else:
                if fixed or allowed < instrument.min_qty:
                    held = f" (other strategies hold {others_here:.4f})" if others_here else ""
                    return Rejection(
                        binding,
                        f"position could be {sign * (reach + wanted):+.4f} {symbol}{held}; {binding} "
                        f"allows {cap:.4f} at {price:.1f}",
                    )
                wanted = allowed
        # scaled after the caps, the size they let through (found by an audit: scaled before them, a
        # funding gate's half size of a risk-sized entry still came out at the cap, which the
        # default caps make of every risk-sized entry; of a fixed size over a cap, which is refused
        # whole, half went through, though the entry at full size would not have)
        wanted *= intent.size_scale
        qty = instrument.round_qty(wanted)
        if qty < instrument.min_qty:
            return Rejection(
                "below_min_size", f"size {wanted:.6f} {symbol} is below the minimum {instrument.min_qty}"
            )
        return qty

    # --- the account -----------------------------------------------------------------------------

    def limits_reached(self, ts: float, equity: float) -> list[RiskOutput]:
        """At a resume, under the limits given now (they may differ from the session's: a lower
        `max_trades`, `max_losses`, `max_loss_pct`, `max_consecutive_losses` or
        `max_daily_drawdown_pct`): whether the restored counts or the account reach one already
        (found by an audit: the resumed session opened a new position beyond the limit, stopping
        only when that trade closed; the breakers' limits were not looked at, the streak's until
        the next trade closed, the day's until the broker's watch, restored with the old floor,
        fired). The outputs for the resume:

        - a stop limit reached: the gate stops (`stop_reason`), as it would have on the trade or
          the mark that reached it; `[StopSession]`;
        - a breaker's limit reached: it trips (`breaker.tripped`). Set to stop, it stops the
          session (`stop_reason` "breaker"; the breaker's own flatten is left out: the session
          closes its position at the market's next quote, as any stop at a resume does). Set to
          halt, entries are halted (`HaltEntries`) and the breaker's flatten waits for the first
          mark after the resume (`flatten_due`: the quote of before the crash is no price to
          close at), which the watch given asks the broker for;
        - the watch the broker must keep from now on (`RiskWatch`, under the limits given now:
          the one restored with the account was set under the session's), unless it stopped.
        """
        if self.stopping:
            return []
        c = self.config
        loss_pct = (self.starting_equity - equity) / self.starting_equity * 100
        if c.max_trades and self.trades >= c.max_trades:
            return self._stop(ts, "max_trades", f"{self.trades} trades closed")
        if c.max_losses and self.losses >= c.max_losses:
            return self._stop(ts, "max_losses", f"{self.losses} losing trades")
        if loss_pct >= c.max_loss_pct - PCT_EPS:
            return self._stop(ts, "max_loss", f"session loss {loss_pct:.2f} % >= {c.max_loss_pct:g} %")
        halted = self.halted_until is not None and ts < self.halted_until
        tripped: list[RiskOutput] = []
        if c.max_consecutive_losses and self.consecutive_losses >= c.max_consecutive_losses and not halted:
            self.consecutive_losses = 0  # the streak counts from zero again, as at a trip on a close
            tripped = self._trip(
                STREAK,
                f"{c.max_consecutive_losses} losing trades in a row",
                ts,
                equity,
                ts + c.loss_streak_cooldown_min * 60,
            )
        else:
            tripped = self._check_daily(ts, equity)
        out: list[RiskOutput] = []
        for output in tripped:
            if isinstance(output, Flatten):
                if not self.stopping:  # halted: closed at the first mark after the resume
                    self.flatten_due = output.order_id
            else:
                out.append(output)
        if self.stopping:
            return out
        watch = self.watch(ts)
        if self.flatten_due is not None:  # the next mark reported, whatever the account
            watch = RiskWatch(ts, watch.equity_floor, ts)
        self.watching = watch
        return [*out, watch]

    def on_account(self, update: AccountUpdate) -> list[RiskOutput]:
        """After the marks the watch asked for and every closed trade: a new UTC day and the end of
        a halt first, then counters, the loss limit, the breaker, the stop conditions. Returns
        events and commands for the broker."""
        if self.stopping:
            return []
        ts, equity = update.ts, update.account.equity
        out = self._roll(ts, equity)
        if self.flatten_due is not None:  # a breaker tripped at the resume (`limits_reached`)
            out.append(Flatten(ts, "breaker", self.flatten_due))
            self.flatten_due = None
        for trade in update.closed:
            out += self._trade_closed(trade.net_pnl, ts, equity)
            if self.stopping:
                return out
        # a backtest candle's path may have taken the account lower than its close
        low = update.low_equity
        out += self._check_equity(ts, equity if low is None else min(low, equity))
        if not self.stopping:
            watch = self.watch(ts)
            if watch != self.watching:
                self.watching = watch
                out.append(watch)
        return out

    def watch(self, ts: float) -> RiskWatch:
        """What the broker must report: equity at or below the nearest limit (the session loss
        limit; the daily drawdown unless it already tripped today), the next UTC day (its start
        equity), the end of a halt; before the first mark, any mark."""
        floor = self.starting_equity * (1 - self.config.max_loss_pct / 100)
        if self._daily_armed():
            floor = max(floor, self.day_start_equity * (1 - self.config.max_daily_drawdown_pct / 100))
        check_at = -math.inf if self.day is None else (self.day + 1) * DAY_S
        if self.halted_until is not None:
            check_at = min(check_at, self.halted_until)
        return RiskWatch(ts, floor + abs(floor) * WATCH_MARGIN, check_at)

    def _daily_armed(self) -> bool:
        """The daily drawdown cap can still trip today (it trips at most once a UTC day)."""
        return self.daily_tripped_day is None or self.daily_tripped_day != self.day

    def _roll(self, ts: float, equity: float) -> list[RiskOutput]:
        """A new UTC day takes the equity now as its start (the only place it is set), and a halt
        whose time is up is lifted. The mark that opens a day is first held to the last day's cap:
        the loss since that day's last mark happened in one day or the other, and would otherwise
        count against neither (no mark between 23:50 and 00:00:01: the loss is the old day's, and
        a trip then flattens at once, its halt the cooldown)."""
        day = math.floor(ts / DAY_S)
        out: list[RiskOutput] = []
        if day != self.day:
            halted_to_its_end = self.halted_until is not None and self.halted_until >= day * DAY_S
            if self.day is not None and not halted_to_its_end:  # (a halt flattened it: nothing to lose)
                out += self._check_daily(ts, equity)
            self.day, self.day_start_equity = day, equity
        if self.halted_until is None or ts < self.halted_until:
            return out
        reason = self.halt_reason
        self.halted_until = self.halt_reason = None
        fields = {
            "equity": fast_round(equity, 6),
            "reason": reason,
            "day_start_equity": fast_round(self.day_start_equity, 6),
        }
        return [*out, Event(ts, "breaker.reset", fields), HaltEntries(ts, -math.inf, "breaker_reset")]

    def _check_equity(self, ts: float, equity: float) -> list[RiskOutput]:
        """The session loss limit and the daily drawdown breaker, on the account as it is now."""
        if self.stopping:
            return []
        loss_pct = (self.starting_equity - equity) / self.starting_equity * 100
        if loss_pct >= self.config.max_loss_pct - PCT_EPS:
            return self._stop(
                ts, "max_loss", f"session loss {loss_pct:.2f} % >= {self.config.max_loss_pct:g} %"
            )
        return self._check_daily(ts, equity)

    def _check_daily(self, ts: float, equity: float) -> list[RiskOutput]:
        """The daily drawdown breaker of the day `self.day`, on `equity`."""
        if self.stopping or not self._daily_armed() or self.day is None:
            return []
        daily_dd = (
            (self.day_start_equity - equity) / self.day_start_equity * 100 if self.day_start_equity > 0 else 0
        )
        if daily_dd < self.config.max_daily_drawdown_pct - PCT_EPS:
            return []
        self.daily_tripped_day = self.day
        # no entries until the next UTC midnight, and for the cooldown at least
        until = max((self.day + 1) * DAY_S, ts + self.config.breaker_cooldown_min * 60)
        return self._trip(
            DAILY,
            f"drawdown {daily_dd:.2f} % from the day's start ({self.day_start_equity:.2f})",
            ts,
            equity,
            until,
        )

    def _trade_closed(self, net_pnl: float, ts: float, equity: float) -> list[RiskOutput]:
        c = self.config
        self.trades += 1
        # entries halted: the trade was closed by a breaker's flatten (nothing opens meanwhile),
        # not by the strategy: it counts as a trade, never in the streak (which a trip restarts)
        halted = self.halted_until is not None and ts < self.halted_until
        if net_pnl < 0:
            self.losses += 1
            if not halted:
                self.consecutive_losses += 1
        elif not halted:
            self.consecutive_losses = 0
        out: list[RiskOutput] = []
        if c.max_consecutive_losses and self.consecutive_losses >= c.max_consecutive_losses and not halted:
            self.consecutive_losses = 0  # the streak counts from zero again
            out += self._trip(
                STREAK,
                f"{c.max_consecutive_losses} losing trades in a row",
                ts,
                equity,
                ts + c.loss_streak_cooldown_min * 60,
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
        self.stop_reason, self.stop_detail, self.stop_ts = reason, detail, ts
        return [StopSession(ts, reason, detail)]

    def _trip(self, reason: str, detail: str, ts: float, equity: float, until: float) -> list[RiskOutput]:
        """The circuit breaker `reason` tripped: flatten, then stop the session or halt entries
        until `until` (a halt already running longer is kept)."""
        self.breaker_trips += 1
        halt = self.action == "halt"
        if halt and (self.halted_until is None or until > self.halted_until):
            self.halted_until, self.halt_reason = until, reason
        fields: dict[str, Any] = {
            "reason": reason,
            "detail": detail,
            "action": self.action,
            "equity": fast_round(equity, 6),
            "halted_until": self.halted_until if halt else None,
            "halted_until_iso": iso(self.halted_until) if halt and self.halted_until is not None else None,
        }
        out: list[RiskOutput] = [Event(ts, "breaker.tripped", fields)]
        self.breaker_seq += 1
        flatten = Flatten(ts, "breaker", f"breaker-{self.breaker_seq}")
        if not halt:
            out.append(flatten)
            return out + self._stop(ts, "breaker", f"{reason}: {detail}")
        assert self.halted_until is not None
        return [*out, HaltEntries(ts, self.halted_until, reason), flatten]
