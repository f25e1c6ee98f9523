"""The frozen types actors exchange over channels. Names say who sends them.

Times are session-clock seconds since the Unix epoch (floats); prices in USDT; sizes in BTC.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Literal, Protocol

import attrs
import trio

Side = Literal["buy", "sell"]


def _positive(_inst: object, attribute: attrs.Attribute, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen
class Tick:
    """Feed -> strategy, broker: best bid/ask and last trade price at `ts`. Sizes are 0 when the
    source does not say (then the broker cannot bound a fill by them)."""

    ts: float
    bid: float = attrs.field(validator=_positive)
    ask: float = attrs.field(validator=_positive)
    last: float = attrs.field(validator=_positive)
    bid_qty: float = 0.0
    ask_qty: float = 0.0
    last_qty: float = 0.0

    @property
    def mid(self) -> float:
        return (self.bid + self.ask) / 2


@attrs.frozen
class Candle:
    """Feed -> strategy, broker: a closed candle covering [open_ts, open_ts + interval_s)."""

    open_ts: float
    interval_s: float
    open: float = attrs.field(validator=_positive)
    high: float = attrs.field(validator=_positive)
    low: float = attrs.field(validator=_positive)
    close: float = attrs.field(validator=_positive)
    volume: float = 0.0
    # history from REST (the seed at start, a gap filled after a reconnect): indicators take it,
    # nothing trades on it, the broker ignores it
    backfill: bool = False

    @property
    def close_ts(self) -> float:
        return self.open_ts + self.interval_s


@attrs.frozen
class Book:
    """Feed -> broker: the visible order book (best first), e.g. Bitunix depth_book5/15."""

    ts: float
    bids: tuple[tuple[float, float], ...]
    asks: tuple[tuple[float, float], ...]


@attrs.frozen
class Funding:
    """Feed -> broker: mark price and the funding rate, in percent (Bitunix `price` channel)."""

    ts: float
    mark_price: float = attrs.field(validator=_positive)
    rate_pct: float = 0.0


MarketEvent = Tick | Candle | Book | Funding


# Hot-path constructors for values already checked: they set the slots directly and skip attrs'
# __init__ and its validators, half its cost (a backtest builds a candle and two quotes per row).
# The objects are the same as the classes' own constructors make (tests/test_backtest_runs.py).
_new = object.__new__
_TICK = tuple(getattr(Tick, field.name).__set__ for field in attrs.fields(Tick))
_CANDLE = tuple(getattr(Candle, field.name).__set__ for field in attrs.fields(Candle))


def quote(ts: float, price: float) -> Tick:
    """The quote `Tick(ts, price, price, price)` (sizes unknown), for a price known to be > 0."""
    tick = _new(Tick)
    set_ts, set_bid, set_ask, set_last, set_bid_qty, set_ask_qty, set_last_qty = _TICK
    set_ts(tick, ts)
    set_bid(tick, price)
    set_ask(tick, price)
    set_last(tick, price)
    set_bid_qty(tick, 0.0)
    set_ask_qty(tick, 0.0)
    set_last_qty(tick, 0.0)
    return tick


def checked_candle(
    open_ts: float, interval_s: float, open: float, high: float, low: float, close: float, volume: float
) -> Candle:
    """`Candle(open_ts, interval_s, open, high, low, close, volume)`, for prices known to be > 0."""
    candle = _new(Candle)
    set_open_ts, set_interval, set_open, set_high, set_low, set_close, set_volume, set_backfill = _CANDLE
    set_open_ts(candle, open_ts)
    set_interval(candle, interval_s)
    set_open(candle, open)
    set_high(candle, high)
    set_low(candle, low)
    set_close(candle, close)
    set_volume(candle, volume)
    set_backfill(candle, False)
    return candle


@attrs.frozen
class CandleRun:
    """Backtest feed -> broker, strategy: consecutive candles handed over in one message, because
    nothing but their own market work can happen between them: no timer (a heartbeat, an order
    reaching the market) falls due before the last one closes, and the strategy's lookahead says
    that none of them gives a signal.

    The broker works each candle as if it had come alone: its open quote at its start, then its
    close quote and the candle at its end, moving the session's virtual clock to each of those
    times first; the strategy updates on each close. `quotes[i]` are the
    open and close quotes of `candles[i]`, by the feed's convention (`actors.feeds.history.candle_ticks`)."""

    candles: tuple[Candle, ...]
    quotes: tuple[tuple[Tick, Tick], ...]
    # set by the broker once it has worked the run (the feed waits on it: timers falling due
    # inside the run make the broker sleep, so "every task is blocked" does not mean done yet)
    worked: trio.Event = attrs.field(factory=trio.Event, eq=False, repr=False)


# What a feed hands to the actors: market events, and in backtests runs of candles.
FeedMessage = MarketEvent | CandleRun

OrderType = Literal["market", "limit", "stop_market"]


@attrs.frozen
class OrderIntent:
    """Strategy -> risk: what the strategy wants; the risk gate decides whether and how much.

    An entry states its stop (and optionally its target): the gate sizes it from the risk per
    trade and the stop distance, and the broker attaches them as protective orders. `qty` is the
    strategy's own size, used when `strategy.sizing = "fixed"` and for exits."""

    ts: float
    side: Side
    qty: float = attrs.field(validator=_positive)
    decision_price: float
    reason: str
    reduce_only: bool = False
    order_type: OrderType = "market"
    limit_price: float | None = None
    trigger_price: float | None = None
    post_only: bool = False
    stop_price: float | None = None
    target_price: float | None = None


@attrs.frozen
class Order:
    """Risk -> broker (or the broker itself, for protective orders): an approved order.

    `ts` is when it was sent; it reaches the market after the broker's latency."""

    id: str
    ts: float
    side: Side
    qty: float = attrs.field(validator=_positive)
    decision_price: float
    reason: str
    reduce_only: bool = False
    order_type: OrderType = "market"
    limit_price: float | None = None
    trigger_price: float | None = None
    post_only: bool = False
    stop_price: float | None = None
    target_price: float | None = None
    protective: bool = False

    @property
    def signed_qty(self) -> float:
        return self.qty if self.side == "buy" else -self.qty


@attrs.frozen
class Cancel:
    """Risk -> broker: cancel a working order."""

    order_id: str
    ts: float
    reason: str


@attrs.frozen
class Event:
    """Any actor -> recorder: one line of events.jsonl (the recorder adds `seq`)."""

    ts: float
    kind: str
    fields: dict[str, Any] = attrs.field(factory=dict)


class EventSender(Protocol):
    """How actors hand events to the recorder (a trio send channel, or the recorder's EventSink)."""

    async def send(self, value: Event, /) -> None: ...

    def clone(self) -> EventSender: ...

    def __enter__(self) -> EventSender: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None, /
    ) -> None: ...
