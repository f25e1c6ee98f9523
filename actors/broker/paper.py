"""The paper broker component: orders -> fills; position, margin, fees, funding, liquidation, equity.

It models a Bitunix BTCUSDT linear perpetual (quantity in BTC, lot 0.0001, tick 0.1, isolated
margin) honestly, so that a paper result means something:

- an order reaches the market `broker.latency_ms` (+ seeded jitter) after it is sent (orders in
  flight keep their order: one connection), and fills against the market as it is then, never as
  it was at the decision; at most `MAX_IN_FLIGHT` orders travel at once (more are refused);
- market orders take the touch, walk the visible book when one is known, and otherwise pay
  `broker.slippage_bps` beyond the touch: never a better price than the market offered;
- limit orders rest and fill only when the market trades through their price (a touch is not
  enough unless `broker.limit_fill_on_touch`), at most the volume traded through them, and the
  liquidity one order takes is gone for the next; a marketable limit takes as a taker;
- stop-market orders trigger on the last price and then fill as market orders;
- maker and taker fees; funding at 00:00, 08:00 and 16:00 UTC on the position open at that instant;
- a position whose mark crosses its liquidation price is liquidated (with the taker fee).

`PaperBroker` is a plain synchronous class (no trio): the only writer of the account. It takes
market events, orders, cancels and the risk gate's commands (`handle(message, now) -> events`),
has timers (an order reaching the market, the next heartbeat: `next_timer()` / `on_timer(now)`),
and gives readers frozen `AccountSnapshot`s and, when the risk gate's `RiskWatch` asks for it or a
trade closed, an `AccountUpdate`. The runtimes (actors/broker/actor.py, actors/kernel.py) call it.
"""

from __future__ import annotations

import math
import random
from collections import deque
from datetime import UTC, datetime
from typing import Any

import attrs

from actors.config import BrokerConfig
from protocols.messages import (
    DEFAULT_SYMBOL,
    AccountSnapshot,
    AccountUpdate,
    Book,
    Cancel,
    Candle,
    ClosedTrade,
    Event,
    FeedStatus,
    Flatten,
    Funding,
    HaltEntries,
    MarketEvent,
    Order,
    Position,
    RiskWatch,
    Side,
    StopSession,
    Tick,
)

LOT = 0.0001  # BTC
TICK = 0.1  # USDT
MIN_QTY = 0.0001  # BTC
MAINTENANCE_MARGIN_RATE = 0.005
FUNDING_EVERY_S = 8 * 3600  # 00:00, 08:00, 16:00 UTC
BOOK_FRESH_S = 2.0  # a book older than this (vs the last quote) is not trusted for walking
EPS = 1e-12


def round_lot(qty: float) -> float:
    """Down to the lot step (never more than asked)."""
    return round(math.floor(qty / LOT + 1e-9) * LOT, 4)


def _worse(side: str, price: float, bps: float) -> float:
    """`price` moved `bps` against a buyer (up) or seller (down), on the tick grid, never better."""
    if side == "buy":
        return round(math.ceil(price * (1 + bps / 10_000) / TICK - 1e-9) * TICK, 1)
    return round(math.floor(price * (1 - bps / 10_000) / TICK + 1e-9) * TICK, 1)


@attrs.define
class OpenTrade:
    """Accumulators for the position currently open, reported when it closes."""

    side: str
    opened_ts: float
    max_qty: float = 0.0
    entry_notional: float = 0.0
    entry_qty: float = 0.0
    exit_notional: float = 0.0
    exit_qty: float = 0.0
    realized_pnl: float = 0.0
    fees: float = 0.0


@attrs.define
class Working:
    """An order resting at the market (limit, stop, or protective)."""

    order: Order
    remaining: float
    arrived_ts: float


def _order_to_dict(order: Order) -> dict[str, Any]:
    return attrs.asdict(order)


@attrs.define
class InFlight:
    """An order (or a cancel) on its way to the market, arriving at `arrival_ts`."""

    arrival_ts: float
    message: Order | Cancel


_new_tuple = tuple.__new__

# The most orders and cancels on their way to the market at once; more are refused (`in_flight_limit`).
MAX_IN_FLIGHT = 64


class PaperBroker:
    """Linear USDT-margined perpetual, one symbol, netting position, isolated margin.

    `heartbeat_s`: a `heartbeat` event (one metrics row) every that many seconds on whole periods
    from `started_ts`, before `end_ts`. `defer_to_next_quote` (backtests with
    `broker.backtest_fill = "next_open"`): a market order waits for a quote newer than its decision
    (the next candle's open) however short the latency."""

    def __init__(
        self,
        config: BrokerConfig,
        rng: random.Random | None = None,
        *,
        symbol: str = DEFAULT_SYMBOL,
        heartbeat_s: float = math.inf,
        started_ts: float = 0.0,
        end_ts: float = math.inf,
        defer_to_next_quote: bool = False,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.config = config
        self.rng = rng or random.Random(0)
        self.symbol = symbol
        self.starting_equity = config.starting_equity
        self.taker_fee_rate = config.taker_fee_bps / 10_000
        self.maker_fee_rate = config.maker_fee_bps / 10_000
        # the liquidation price over the entry price, long and short (`liquidation_price`)
        self._liq_long = 1 - 1 / config.leverage + MAINTENANCE_MARGIN_RATE
        self._liq_short = 1 + 1 / config.leverage - MAINTENANCE_MARGIN_RATE
        self.defer_to_next_quote = defer_to_next_quote
        self.max_in_flight = max_in_flight
        # the risk gate's commands: entries reaching the market before this time are refused
        # (HaltEntries), and once the session is stopping, every entry (StopSession)
        self.entries_halted_until: float | None = None
        self.stopping = False
        self.position_qty = 0.0  # signed BTC
        self.avg_price = 0.0
        self.realized_pnl = 0.0
        self.fees_maker = 0.0
        self.fees_taker = 0.0
        self.funding_paid = 0.0
        self.funding_rate_pct = 0.0
        self.mark: float | None = None
        self.last_tick: Tick | None = None
        self.book: Book | None = None
        self.last_ts: float | None = None
        self.next_funding_ts = -math.inf  # the next funding instant after last_ts
        self.stale = False  # the feed said its data is stale (FeedStatus)
        self.processed_signed_qty = 0.0  # every gate order's signed qty once filled, refused or cancelled
        self.fill_seq = 0
        self.protective_seq = 0
        self.working: dict[str, Working] = {}
        self.awaiting_quote: list[Order] = []
        self.in_flight: deque[InFlight] = deque()
        self.trade: OpenTrade | None = None
        self._position: Position | None = None  # the last snapshot's, reused while unchanged
        self.peak_equity = self.starting_equity
        self.max_drawdown_pct = 0.0
        # timers
        self.heartbeat_s = heartbeat_s
        self.started_ts = started_ts
        self.end_ts = end_ts
        self.next_heartbeat = math.inf
        self.schedule_heartbeats(started_ts)
        # the risk gate's watch (RiskWatch): what makes an AccountUpdate due
        self.watch_floor = -math.inf
        self.watch_at = -math.inf  # until the gate sets its watch, every mark is reported
        self.update_due = False
        self.closed: list[ClosedTrade] = []

    def schedule_heartbeats(self, now: float) -> None:
        """The next heartbeat: the next whole period from the start after `now` (a resumed
        session does not make up the rows of its downtime)."""
        if math.isfinite(self.heartbeat_s):
            period = self.heartbeat_s
            ts = self.started_ts + period * (math.floor((now - self.started_ts) / period) + 1)
            self.next_heartbeat = ts if ts < self.end_ts else math.inf

    # --- the view -------------------------------------------------------------------------------

    @property
    def fees_paid(self) -> float:
        return self.fees_maker + self.fees_taker

    @property
    def mark_price(self) -> float | None:
        """The exchange's mark price when the feed gives one (Funding), else the quotes' mid."""
        if self.mark is not None:
            return self.mark
        return self.last_tick.mid if self.last_tick else None

    @property
    def unrealized_pnl(self) -> float:
        mark = self.mark_price
        if mark is None or abs(self.position_qty) < EPS:
            return 0.0
        return (mark - self.avg_price) * self.position_qty

    @property
    def equity(self) -> float:
        # the same arithmetic, in the same order, as starting + realized - fees_paid - funding +
        # unrealized_pnl, inlined: it runs after every market event
        pos = self.position_qty
        equity = (
            self.starting_equity + self.realized_pnl - (self.fees_maker + self.fees_taker) - self.funding_paid
        )
        if not -EPS < pos < EPS:
            mark = self.mark
            if mark is None and self.last_tick is not None:
                mark = (self.last_tick.bid + self.last_tick.ask) / 2
            if mark is not None:
                equity += (mark - self.avg_price) * pos
        return equity

    @property
    def notional(self) -> float:
        mark = self.mark_price or self.avg_price
        return abs(self.position_qty) * mark

    @property
    def drawdown_pct(self) -> float:
        return (
            0.0
            if self.peak_equity <= 0
            else max(0.0, (self.peak_equity - self.equity) / self.peak_equity * 100)
        )

    @property
    def liquidation_price(self) -> float | None:
        """Isolated margin: where the position's margin minus maintenance is gone."""
        if abs(self.position_qty) < EPS:
            return None
        lev = self.config.leverage
        if self.position_qty > 0:
            return self.avg_price * (1 - 1 / lev + MAINTENANCE_MARGIN_RATE)
        return self.avg_price * (1 + 1 / lev - MAINTENANCE_MARGIN_RATE)

    def open_positions(self) -> list[dict[str, Any]]:
        if abs(self.position_qty) < EPS:
            return []
        liq = self.liquidation_price
        return [
            {
                "side": "long" if self.position_qty > 0 else "short",
                "qty": round(abs(self.position_qty), 8),
                "avg_price": round(self.avg_price, 8),
                "unrealized_pnl": round(self.unrealized_pnl, 8),
                "liquidation_price": round(liq, 1) if liq else None,
            }
        ]

    def latency_s(self) -> float:
        """The delay from sending an order to it reaching the market (seeded jitter)."""
        jitter = self.rng.uniform(0, self.config.latency_jitter_ms) if self.config.latency_jitter_ms else 0.0
        return (self.config.latency_ms + jitter) / 1000

    # --- checkpoint ------------------------------------------------------------------------------

    _SCALARS = (
        "position_qty",
        "avg_price",
        "realized_pnl",
        "fees_maker",
        "fees_taker",
        "funding_paid",
        "funding_rate_pct",
        "mark",
        "last_ts",
        "processed_signed_qty",
        "fill_seq",
        "protective_seq",
        "peak_equity",
        "max_drawdown_pct",
        "entries_halted_until",
        "stopping",
        "stale",
        "watch_floor",
        "watch_at",
    )

    def state(self) -> dict[str, Any]:
        """Everything a checkpoint keeps (JSON-able: an infinite watch is kept as None)."""
        state: dict[str, Any] = {name: getattr(self, name) for name in self._SCALARS}
        for name in ("watch_floor", "watch_at"):
            if not math.isfinite(state[name]):
                state[name] = None
        state["next_heartbeat"] = self.next_heartbeat if math.isfinite(self.next_heartbeat) else None
        state["awaiting_quote"] = [attrs.asdict(order) for order in self.awaiting_quote]
        state["last_tick"] = self.last_tick._asdict() if self.last_tick else None
        state["trade"] = attrs.asdict(self.trade) if self.trade else None
        state["working"] = [
            {"order": _order_to_dict(w.order), "remaining": w.remaining, "arrived_ts": w.arrived_ts}
            for w in self.working.values()
        ]
        state["in_flight"] = [
            {
                "arrival_ts": f.arrival_ts,
                "cancel" if isinstance(f.message, Cancel) else "order": attrs.asdict(f.message),
            }
            for f in self.in_flight
        ]
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """The state of a checkpoint. Orders that were in flight are kept; `abandon_in_flight`
        refuses them when a resumed session starts (they never reached the market)."""
        for name in self._SCALARS:
            if name in state:  # a checkpoint of an older version may lack the newer ones
                setattr(self, name, state[name])
        for name in ("watch_floor", "watch_at"):
            if getattr(self, name) is None:
                setattr(self, name, -math.inf)  # report every mark until the gate says again
        if "next_heartbeat" in state:
            self.next_heartbeat = math.inf if state["next_heartbeat"] is None else state["next_heartbeat"]
        self.awaiting_quote = [Order(**order) for order in state.get("awaiting_quote", [])]
        self.last_tick = Tick(**state["last_tick"]) if state["last_tick"] else None
        self.trade = OpenTrade(**state["trade"]) if state["trade"] else None
        self.working = {
            w["order"]["id"]: Working(Order(**w["order"]), w["remaining"], w["arrived_ts"])
            for w in state["working"]
        }
        self.next_funding_ts = (
            (math.floor(self.last_ts / FUNDING_EVERY_S) + 1) * FUNDING_EVERY_S
            if self.last_ts is not None
            else -math.inf
        )
        self.in_flight = deque(
            InFlight(f["arrival_ts"], Cancel(**f["cancel"]) if "cancel" in f else Order(**f["order"]))
            for f in state.get("in_flight", [])
        )

    # --- market ---------------------------------------------------------------------------------

    def on_market(self, event: MarketEvent, ts: float) -> list[Event]:
        """Mark to market, charge funding, work resting orders, liquidate; returns the events."""
        cls = type(event)
        if cls is Tick:
            return self.on_quote(event, ts)  # type: ignore[arg-type]
        if cls is Candle:
            return self.on_candle(event, ts)  # type: ignore[arg-type]
        if cls is Book:
            self.book = event  # type: ignore[assignment]
            return []
        if cls is FeedStatus:
            self.stale = event.stale  # type: ignore[union-attr]
            return []
        assert isinstance(event, Funding)
        events = self._advance(ts)
        self.mark = event.mark_price
        self.funding_rate_pct = event.rate_pct
        return self._mark(events, ts)

    def on_quote(self, tick: Tick, ts: float) -> list[Event]:
        """A quote: the market's best bid/ask and last trade now. It runs for every quote (two
        per candle in a backtest), so what cannot change anything is skipped."""
        events = self._advance(ts) if ts >= self.next_funding_ts else []
        self.last_ts = ts
        self.last_tick = tick
        if self.working:
            events += self._work_quote(tick, ts)
        if self.awaiting_quote:
            waiting, self.awaiting_quote = self.awaiting_quote, []
            for order in waiting:
                events += self._execute(order, ts)
        return self._mark(events, ts)

    def on_candle(self, candle: Candle, ts: float) -> list[Event]:
        """A closed candle: its range works resting orders (its close quote, at the same instant,
        did the rest). History (`backfill`) has no market to trade against; without resting
        orders a candle changes nothing."""
        if candle.backfill or not self.working:
            return []
        events = self._advance(ts) if ts >= self.next_funding_ts else []
        self.last_ts = ts
        events += self._work_candle(candle, ts)
        return self._mark(events, ts)

    def _advance(self, ts: float) -> list[Event]:
        """Time moves to `ts`: funding for each instant passed since the last market event."""
        events: list[Event] = []
        if ts >= self.next_funding_ts:
            if self.last_ts is not None:
                events = self._funding_due(self.last_ts, ts)
            self.next_funding_ts = (math.floor(ts / FUNDING_EVERY_S) + 1) * FUNDING_EVERY_S
        self.last_ts = ts
        return events

    def _mark(self, events: list[Event], ts: float) -> list[Event]:
        """After a market event: equity, the liquidation check, the peak and deepest drawdown,
        and whether the risk gate's watch fired; once, inline (the `equity` property's
        arithmetic)."""
        pos = self.position_qty
        equity = (
            self.starting_equity + self.realized_pnl - (self.fees_maker + self.fees_taker) - self.funding_paid
        )
        if not -EPS < pos < EPS:
            mark = self.mark
            tick = self.last_tick
            if mark is None and tick is not None:
                mark = (tick.bid + tick.ask) / 2
            if mark is not None:
                if pos > 0:
                    crossed = mark <= self.avg_price * self._liq_long
                else:
                    crossed = mark >= self.avg_price * self._liq_short
                if crossed and tick is not None:
                    events += self._check_liquidation(ts)
                    equity = self.equity
                else:
                    equity += (mark - self.avg_price) * pos
        self._update_drawdown(equity)
        if equity <= self.watch_floor or ts >= self.watch_at:
            self.update_due = True
        return events

    def _update_drawdown(self, equity: float | None = None) -> None:
        """The peak and the deepest drawdown from it (`max` of each, written out)."""
        if equity is None:
            equity = self.equity
        if equity > self.peak_equity:
            self.peak_equity = equity
        peak = self.peak_equity
        if peak > 0:
            drawdown = (peak - equity) / peak * 100
            if drawdown > self.max_drawdown_pct:
                self.max_drawdown_pct = drawdown

    def _funding_due(self, last_ts: float, ts: float) -> list[Event]:
        """Funding for each 00/08/16 UTC instant passed since the last market event (`last_ts`)."""
        events: list[Event] = []
        instant = (math.floor(last_ts / FUNDING_EVERY_S) + 1) * FUNDING_EVERY_S
        while instant <= ts:
            events += self._charge_funding(instant)
            instant += FUNDING_EVERY_S
        return events

    def _charge_funding(self, instant: float) -> list[Event]:
        mark = self.mark_price
        if abs(self.position_qty) < EPS or mark is None:
            return []
        amount = self.position_qty * mark * self.funding_rate_pct / 100  # longs pay a positive rate
        self.funding_paid += amount
        return [
            Event(
                instant,
                "funding",
                {
                    "instant": datetime.fromtimestamp(instant, UTC).isoformat().replace("+00:00", "Z"),
                    "rate_pct": self.funding_rate_pct,
                    "mark_price": mark,
                    "position_qty": round(self.position_qty, 8),
                    "amount": amount,
                },
            )
        ]

    def _work_quote(self, tick: Tick, ts: float) -> list[Event]:
        """Resting orders against a new quote: stops trigger on the last price; limits fill when
        the last trade went through their price, up to the size traded."""
        events: list[Event] = []
        available = tick.last_qty if tick.last_qty > 0 else math.inf
        for working in sorted(self.working.values(), key=lambda w: w.arrived_ts):
            order = working.order
            if working.order.id not in self.working:
                continue  # cancelled by an earlier fill in this loop (OCO)
            if order.order_type == "stop_market":
                assert order.trigger_price is not None
                hit = (
                    tick.last >= order.trigger_price
                    if order.side == "buy"
                    else tick.last <= order.trigger_price
                )
                if hit:
                    del self.working[order.id]
                    events += self._take(order, working.remaining, ts, tick)
            elif order.order_type == "limit" and available > EPS:
                assert order.limit_price is not None
                if self._traded_through(order.side, order.limit_price, tick.last):
                    qty = round_lot(min(working.remaining, available))
                    if qty >= MIN_QTY:
                        available -= qty
                        events += self._rest_fill(working, qty, order.limit_price, ts, tick)
        return events

    def _traded_through(self, side: str, limit: float, price: float) -> bool:
        if self.config.limit_fill_on_touch:
            return price <= limit if side == "buy" else price >= limit
        return price < limit if side == "buy" else price > limit

    def _work_candle(self, candle: Candle, ts: float) -> list[Event]:
        """Backtests: a candle's range also works resting orders (its quotes already did the rest)."""
        events: list[Event] = []
        tick = self.last_tick or Tick(ts=ts, bid=candle.close, ask=candle.close, last=candle.close)
        span = max(candle.high - candle.low, TICK)
        for working in sorted(self.working.values(), key=lambda w: w.arrived_ts):
            order = working.order
            if order.id not in self.working:
                continue
            if order.order_type == "stop_market":
                assert order.trigger_price is not None
                hit = (
                    candle.high >= order.trigger_price
                    if order.side == "buy"
                    else candle.low <= order.trigger_price
                )
                if hit:  # filled at the trigger, moved against us, never better than the candle allowed
                    del self.working[order.id]
                    price = _worse(order.side, order.trigger_price, self.config.slippage_bps)
                    events += self._fill(order, working.remaining, price, "taker", ts, tick)
            elif order.order_type == "limit":
                assert order.limit_price is not None
                through = (
                    (order.limit_price - candle.low)
                    if order.side == "buy"
                    else (candle.high - order.limit_price)
                )
                if through > 0 or (self.config.limit_fill_on_touch and through >= 0):
                    volume = candle.volume * min(1.0, through / span) if candle.volume > 0 else math.inf
                    qty = round_lot(min(working.remaining, volume))
                    if qty >= MIN_QTY:
                        events += self._rest_fill(working, qty, order.limit_price, ts, tick)
        return events

    def _check_liquidation(self, ts: float) -> list[Event]:
        # liquidation_price and mark_price, inlined: this runs after every market event in a position
        pos = self.position_qty
        if -EPS < pos < EPS or self.last_tick is None:
            return []
        mark = self.mark if self.mark is not None else self.last_tick.mid
        lev = self.config.leverage
        if pos > 0:
            liq = self.avg_price * (1 - 1 / lev + MAINTENANCE_MARGIN_RATE)
            crossed = mark <= liq
        else:
            liq = self.avg_price * (1 + 1 / lev - MAINTENANCE_MARGIN_RATE)
            crossed = mark >= liq
        if not crossed:
            return []
        side: Side = "sell" if self.position_qty > 0 else "buy"
        order = Order(
            id=f"liq-{self.fill_seq + 1}",
            ts=ts,
            side=side,
            qty=round(abs(self.position_qty), 8),
            decision_price=mark,
            reason="liquidation",
            reduce_only=True,
            protective=True,
        )
        events = [
            Event(
                ts,
                "liquidation",
                {"mark_price": mark, "liquidation_price": liq, "position_qty": round(self.position_qty, 8)},
            )
        ]
        events += self.cancel_all(ts, "liquidation")
        price = self.last_tick.bid if side == "sell" else self.last_tick.ask
        return events + self._fill(order, order.qty, price, "taker", ts, self.last_tick)

    # --- orders ---------------------------------------------------------------------------------

    def on_arrival(self, order: Order, ts: float) -> list[Event]:
        """The order reaches the market now."""
        if self.last_tick is None:
            return self._refuse(order, ts, "no_market_data", order.qty)
        entry = not order.reduce_only and not order.protective
        if entry and self.stopping:
            return self._refuse(order, ts, "session_stopping", order.qty)
        halted = self.entries_halted_until
        if entry and halted is not None and ts < halted:
            return self._refuse(order, ts, "breaker_halt", order.qty)
        stale_quote = self.last_tick.ts < order.ts  # the quote the decision itself saw
        if self.defer_to_next_quote and stale_quote and order.order_type == "market" and not order.protective:
            self.awaiting_quote.append(order)
            return []
        return self._execute(order, ts)

    def _execute(self, order: Order, ts: float) -> list[Event]:
        tick = self.last_tick
        assert tick is not None
        qty = order.qty
        if order.reduce_only:
            closable = (
                abs(self.position_qty) if self.position_qty * (1 if order.side == "buy" else -1) < 0 else 0.0
            )
            if closable < EPS:
                return self._refuse(order, ts, "reduce_only_nothing_to_close", qty)
            if qty > closable + EPS:
                self._count_processed(order, qty - closable)
                qty = round(closable, 8)
        elif not self._margin_ok(order, qty, tick):
            return self._refuse(order, ts, "insufficient_margin", qty)
        if order.order_type == "market":
            return self._take(order, qty, ts, tick)
        if order.order_type == "limit":
            assert order.limit_price is not None
            touch = tick.ask if order.side == "buy" else tick.bid
            marketable = order.limit_price >= touch if order.side == "buy" else order.limit_price <= touch
            if marketable and order.post_only:
                return self._refuse(order, ts, "post_only_would_take", qty)
            if marketable:
                return self._fill(order, qty, touch, "taker", ts, tick)
        return self._rest(order, qty, ts)

    def _rest(self, order: Order, qty: float, ts: float) -> list[Event]:
        """`order` rests at the market (a limit or a stop) for `qty`."""
        self.working[order.id] = Working(order, qty, ts)
        return [
            Event(
                ts,
                "order.working",
                {
                    "order_id": order.id,
                    "type": order.order_type,
                    "side": order.side,
                    "qty": qty,
                    "limit_price": order.limit_price,
                    "trigger_price": order.trigger_price,
                    "reason": order.reason,
                },
            )
        ]

    def _margin_ok(self, order: Order, qty: float, tick: Tick) -> bool:
        """Initial margin: the position after the order, at the touch, over leverage, within equity."""
        signed = qty if order.side == "buy" else -qty
        after = abs(self.position_qty + signed)
        if after <= abs(self.position_qty):
            return True
        price = tick.ask if order.side == "buy" else tick.bid
        return after * price / self.config.leverage <= self.equity

    def cancel(self, cancel: Cancel) -> list[Event]:
        working = self.working.pop(cancel.order_id, None)
        if working is None:
            return [
                Event(
                    cancel.ts, "order.cancel_rejected", {"order_id": cancel.order_id, "reason": "not_working"}
                )
            ]
        self._count_processed(working.order, working.remaining)
        return [
            Event(
                cancel.ts,
                "order.cancelled",
                {"order_id": cancel.order_id, "reason": cancel.reason, "remaining": working.remaining},
            )
        ]

    def cancel_all(self, ts: float, reason: str) -> list[Event]:
        return [e for order_id in list(self.working) for e in self.cancel(Cancel(order_id, ts, reason))]

    def _refuse(self, order: Order, ts: float, reason: str, qty: float) -> list[Event]:
        self._count_processed(order, qty)
        return [
            Event(
                ts,
                "order.rejected",
                {
                    "order_id": order.id,
                    "side": order.side,
                    "qty": qty,
                    "reason": reason,
                    "stage": "broker",
                    "intent": order.reason,
                },
            )
        ]

    def _count_processed(self, order: Order, qty: float) -> None:
        if not order.protective:
            self.processed_signed_qty += qty if order.side == "buy" else -qty

    def _take(self, order: Order, qty: float, ts: float, tick: Tick) -> list[Event]:
        """Take liquidity: walk a fresh book level by level, else the touch plus slippage."""
        book = self.book
        levels = (book.asks if order.side == "buy" else book.bids) if book else ()
        if book is not None and levels and ts - book.ts <= BOOK_FRESH_S:
            events: list[Event] = []
            left = qty
            for price, size in levels:
                take = round_lot(min(left, size)) if left > size else round(left, 8)
                if take < EPS:
                    continue
                events += self._fill(order, take, price, "taker", ts, tick, partial=True)
                left = round(left - take, 8)
                if left < MIN_QTY:
                    break
            if left >= MIN_QTY:  # deeper than the book we can see: the last level, moved against us
                events += self._fill(
                    order,
                    left,
                    _worse(order.side, levels[-1][0], self.config.slippage_bps),
                    "taker",
                    ts,
                    tick,
                    partial=True,
                )
            return events
        touch = tick.ask if order.side == "buy" else tick.bid
        return self._fill(order, qty, _worse(order.side, touch, self.config.slippage_bps), "taker", ts, tick)

    def _rest_fill(self, working: Working, qty: float, price: float, ts: float, tick: Tick) -> list[Event]:
        working.remaining = round(working.remaining - qty, 8)
        if working.remaining < MIN_QTY:
            del self.working[working.order.id]
        return self._fill(working.order, qty, price, "maker", ts, tick, partial=working.remaining >= MIN_QTY)

    def _fill(
        self,
        order: Order,
        qty: float,
        price: float,
        liquidity: str,
        ts: float,
        tick: Tick,
        partial: bool = False,
    ) -> list[Event]:
        """Book one fill: fee, position, realized PnL; returns order.filled and position.closed events."""
        rate = self.taker_fee_rate if liquidity == "taker" else self.maker_fee_rate
        fee = qty * price * rate
        signed = qty if order.side == "buy" else -qty
        self._count_processed(order, qty)
        self.fill_seq += 1
        if liquidity == "taker":
            self.fees_taker += fee
        else:
            self.fees_maker += fee
        events: list[Event] = []
        closed: OpenTrade | None = None
        realized = 0.0
        pos = self.position_qty
        remaining = signed
        if pos * signed < 0:  # reduces (and maybe flips) the position
            closing = min(abs(pos), abs(signed))
            realized = (price - self.avg_price) * closing * (1 if pos > 0 else -1)
            self.realized_pnl += realized
            trade = self._trade(ts, pos)
            trade.realized_pnl += realized
            trade.fees += fee * closing / qty
            trade.exit_notional += closing * price
            trade.exit_qty += closing
            self.position_qty = round(pos + (closing if pos < 0 else -closing), 10)
            remaining = signed + (closing if signed < 0 else -closing)
            if abs(self.position_qty) < EPS:
                self.position_qty = 0.0
                self.avg_price = 0.0
                closed, self.trade = trade, None
        if abs(remaining) > EPS:  # opens or adds
            new_qty = self.position_qty + remaining
            self.avg_price = (self.avg_price * abs(self.position_qty) + price * abs(remaining)) / abs(new_qty)
            self.position_qty = round(new_qty, 10)
            trade = self._trade(ts, new_qty)
            trade.fees += fee * abs(remaining) / qty
            trade.entry_notional += abs(remaining) * price
            trade.entry_qty += abs(remaining)
            trade.max_qty = max(trade.max_qty, abs(new_qty))
        events.append(self._fill_event(order, qty, price, liquidity, fee, rate, realized, ts, tick, partial))
        if closed is not None:
            events.append(self._closed_event(closed, ts, order.reason))
            events += self.cancel_all(ts, "position_closed")  # protective orders die with the position
            self.closed.append(ClosedTrade(self.symbol, closed.realized_pnl - closed.fees, order.strategy_id))
        if order.stop_price is not None or order.target_price is not None:
            events += self._attach_protection(order, ts)
        self._update_drawdown()
        return events

    def _fill_event(
        self,
        order: Order,
        qty: float,
        price: float,
        liquidity: str,
        fee: float,
        rate: float,
        realized: float,
        ts: float,
        tick: Tick,
        partial: bool,
    ) -> Event:
        touch = tick.ask if order.side == "buy" else tick.bid
        return Event(
            ts,
            "order.filled",
            {
                "order_id": order.id,
                "fill_id": f"f{self.fill_seq}",
                "side": order.side,
                "qty": round(qty, 8),
                "type": order.order_type,
                "requested_price": order.decision_price,
                "reference_price": touch,
                "fill_price": price,
                "bid": tick.bid,
                "ask": tick.ask,
                "liquidity": liquidity,
                "fee": fee,
                "fee_bps": rate * 10_000,
                "slippage_bps": _slippage_bps(order.side, order.decision_price, price),
                "slippage_mid_bps": _slippage_bps(order.side, tick.mid, price),
                "latency_ms": round((ts - order.ts) * 1000, 3),
                "partial": partial,
                "realized_pnl": realized,
                "position_qty": round(self.position_qty, 8),
                "reason": order.reason,
            },
        )

    def _attach_protection(self, entry: Order, ts: float) -> list[Event]:
        """An entry's stop-loss (stop-market) and take-profit (limit), reduce-only, one cancels the other."""
        if abs(self.position_qty) < EPS:
            return []
        for working in [w for w in self.working.values() if w.order.protective]:
            del self.working[working.order.id]  # re-attached for the whole position
        exit_side: Side = "sell" if self.position_qty > 0 else "buy"
        qty = round(abs(self.position_qty), 8)
        events: list[Event] = []
        if entry.stop_price is not None:
            events += self._protect(exit_side, qty, "stop_market", entry.stop_price, "stop_loss", ts)
        if entry.target_price is not None:
            events += self._protect(exit_side, qty, "limit", entry.target_price, "take_profit", ts)
        return events

    def _protect(
        self, side: Side, qty: float, kind: str, price: float, reason: str, ts: float
    ) -> list[Event]:
        self.protective_seq += 1
        order = Order(
            id=f"p{self.protective_seq}",
            ts=ts,
            side=side,
            qty=qty,
            decision_price=price,
            reason=reason,
            reduce_only=True,
            order_type="stop_market" if kind == "stop_market" else "limit",
            limit_price=price if kind == "limit" else None,
            trigger_price=price if kind == "stop_market" else None,
            protective=True,
        )
        return self._rest(order, qty, ts)

    def _trade(self, ts: float, signed_pos: float) -> OpenTrade:
        if self.trade is None:
            self.trade = OpenTrade(side="long" if signed_pos > 0 else "short", opened_ts=ts)
        return self.trade

    def _closed_event(self, trade: OpenTrade, ts: float, reason: str) -> Event:
        return Event(
            ts,
            "position.closed",
            {
                "side": trade.side,
                "qty": round(trade.max_qty, 8),
                "entry_price": trade.entry_notional / trade.entry_qty if trade.entry_qty else 0.0,
                "exit_price": trade.exit_notional / trade.exit_qty if trade.exit_qty else 0.0,
                "realized_pnl": trade.realized_pnl,
                "fees": trade.fees,
                "net_pnl": trade.realized_pnl - trade.fees,
                "opened_ts": trade.opened_ts,
                "held_s": round(ts - trade.opened_ts, 3),
                "exit_reason": reason,
            },
        )

    def flatten_order(self, ts: float, order_id: str, reason: str = "flatten_on_exit") -> Order | None:
        """The market order that closes the open position, or None when flat."""
        if abs(self.position_qty) < EPS:
            return None
        side: Side = "sell" if self.position_qty > 0 else "buy"
        tick = self.last_tick
        price = 0.0 if tick is None else tick.bid if side == "sell" else tick.ask
        return Order(
            id=order_id,
            ts=ts,
            side=side,
            qty=round(abs(self.position_qty), 8),
            decision_price=price,
            reason=reason,
            reduce_only=True,
            protective=True,
        )

    def flatten(self, ts: float, reason: str, order_id: str) -> list[Event]:
        """Cancel every working order and close the position at once (fees and slippage apply)."""
        events = self.cancel_all(ts, reason)
        order = self.flatten_order(ts, order_id, reason)
        if order is not None and self.last_tick is not None:
            events.append(
                Event(
                    ts,
                    "order.submitted",
                    {
                        "order_id": order.id,
                        "side": order.side,
                        "qty": order.qty,
                        "type": "market",
                        "requested_price": order.decision_price,
                        "reduce_only": True,
                        "reason": reason,
                    },
                )
            )
            events += self._take(order, order.qty, ts, self.last_tick)
        return events

    # --- the component's interface ------------------------------------------------------------------

    def handle(
        self,
        message: MarketEvent | Order | Cancel | Flatten | HaltEntries | StopSession | RiskWatch,
        now: float,
    ) -> list[Event]:
        """Any input, by type: a market event, an order or cancel (on its way to the market from
        now), or a risk command. Returns the events (for the recorder)."""
        if isinstance(message, Order):
            return self.on_order(message, now)
        if isinstance(message, Cancel):
            return self.on_cancel(message, now)
        if isinstance(message, Flatten | HaltEntries | StopSession | RiskWatch):
            return self.on_command(message, now)
        return self.on_market(message, now)

    def on_order(self, order: Order, now: float) -> list[Event]:
        """An order sent now: it reaches the market after the latency, after those sent before it."""
        if len(self.in_flight) >= self.max_in_flight:
            return self._refuse(order, now, "in_flight_limit", order.qty)
        self._send(order, now)
        return []

    def on_cancel(self, cancel: Cancel, now: float) -> list[Event]:
        """A cancel sent now: like an order, it reaches the market after the latency."""
        if len(self.in_flight) >= self.max_in_flight:
            return [
                Event(
                    now, "order.cancel_rejected", {"order_id": cancel.order_id, "reason": "in_flight_limit"}
                )
            ]
        self._send(cancel, now)
        return []

    def _send(self, message: Order | Cancel, now: float) -> None:
        at = now + self.latency_s()
        if self.in_flight and self.in_flight[-1].arrival_ts > at:
            at = self.in_flight[-1].arrival_ts  # one connection: they arrive in the order sent
        self.in_flight.append(InFlight(at, message))

    def on_command(self, command: Flatten | HaltEntries | StopSession | RiskWatch, now: float) -> list[Event]:
        """The risk gate's commands."""
        if isinstance(command, Flatten):
            return self.flatten(now, command.reason, command.order_id)
        if isinstance(command, HaltEntries):
            self.entries_halted_until = command.until if command.until > -math.inf else None
        elif isinstance(command, StopSession):
            self.stopping = True
        else:
            self.watch_floor, self.watch_at = command.equity_floor, command.check_at
            if self.last_tick is not None and (self.equity <= self.watch_floor or now >= self.watch_at):
                self.update_due = True
        return []

    def next_timer(self) -> float:
        """When the next timer falls due: an order reaching the market, or a heartbeat (inf: none)."""
        due = self.next_heartbeat
        if self.in_flight and self.in_flight[0].arrival_ts < due:
            return self.in_flight[0].arrival_ts
        return due

    def on_timer(self, now: float) -> list[Event]:
        """The earliest timer due at or before `now`, at its own due time (an order before a
        heartbeat at the same instant); one per call, so that the risk gate can react to each
        (an exit that reaches a limit stops the entry that arrives with it)."""
        due = self.next_timer()
        if due > now:
            return []
        if self.in_flight and self.in_flight[0].arrival_ts == due:
            message = self.in_flight.popleft().message
            if isinstance(message, Cancel):
                return self.cancel(attrs.evolve(message, ts=due))
            return self.on_arrival(message, due)
        self.schedule_heartbeats(due)
        return [Event(due, "heartbeat", self.heartbeat_fields(due))]

    def heartbeat_fields(self, ts: float) -> dict[str, float | None]:
        """One metrics row: the account at `ts`."""
        return {
            "elapsed_s": round(ts - self.started_ts, 3),
            "price": self.mark_price,
            "equity": round(self.equity, 6),
            "realized_pnl": round(self.realized_pnl, 6),
            "unrealized_pnl": round(self.unrealized_pnl, 6),
            "fees_paid": round(self.fees_paid, 6),
            "position_qty": round(self.position_qty, 8),
            "drawdown_pct": round(self.drawdown_pct, 4),
        }

    def abandon_in_flight(self, now: float, reason: str = "lost_at_restart") -> list[Event]:
        """A resumed session: the orders that were on their way when the process died never
        reached the market; each is refused (and counted as processed)."""
        events: list[Event] = []
        while self.in_flight:
            message = self.in_flight.popleft().message
            if isinstance(message, Order):
                events += self._refuse(message, now, reason, message.qty)
        return events

    def snapshot(self, now: float) -> AccountSnapshot:
        """The account now, frozen: what every other component reads (built once per step that
        needs it, so computed in one pass)."""
        pos = self.position_qty
        mark = self.mark
        if mark is None and self.last_tick is not None:
            mark = (self.last_tick.bid + self.last_tick.ask) / 2
        unrealized = 0.0 if mark is None or -EPS < pos < EPS else (mark - self.avg_price) * pos
        cash = (
            self.starting_equity + self.realized_pnl - (self.fees_maker + self.fees_taker) - self.funding_paid
        )
        equity = cash + unrealized
        peak = self.peak_equity
        position = self._position
        if (
            position is None
            or position.qty != pos
            or position.avg_price != self.avg_price
            or position.processed_signed_qty != self.processed_signed_qty
        ):
            position = self._position = Position(self.symbol, pos, self.avg_price, self.processed_signed_qty)
        # tuple.__new__ with every field in order: the named tuple's own __new__ is one more call
        return _new_tuple(
            AccountSnapshot,
            (
                now,
                self.symbol,
                self.starting_equity,
                equity,
                self.realized_pnl,
                unrealized,
                self.fees_maker + self.fees_taker,
                self.funding_paid,
                0.0 if peak <= 0 else max(0.0, (peak - equity) / peak * 100),
                mark,
                (position,),
                len(self.working) + len(self.in_flight),
                self.stale,
            ),
        )

    def account_update(self, now: float) -> AccountUpdate | None:
        """The update the risk gate asked to hear (its watch) or trades closed since the last one;
        None when there is nothing to tell."""
        if not self.update_due and not self.closed:
            return None
        closed, self.closed = tuple(self.closed), []
        self.update_due = False
        return AccountUpdate(now, self.snapshot(now), closed)


def _slippage_bps(side: str, reference: float, fill: float) -> float:
    """Positive when the fill is worse for us than the reference price."""
    if reference <= 0:
        return 0.0
    diff = fill - reference if side == "buy" else reference - fill
    return diff / reference * 10_000
