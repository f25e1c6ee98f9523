"""The messages components exchange: frozen attrs types and, for the most frequent (`Tick`,
`Candle`, `AccountSnapshot`), named tuples; data only (no trio objects).

Each type's docstring names its direction (`OrderIntent`: strategy -> risk gate; `Order`: risk gate
-> broker; ...). Every market event, intent, order and account figure carries its `symbol` (a session
may trade several). Times are session-clock seconds since the Unix epoch (floats);
prices in USDT; sizes in the contract's base asset (BTC for BTCUSDT).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Final, Literal, NamedTuple, Protocol

import attrs

from protocols.instruments import Instrument

Side = Literal["buy", "sell"]

# The symbol a message is about when its maker does not say (recordings made before symbols were
# explicit, and tests); sessions always set it (each strategy's symbol, session.symbol by default).
DEFAULT_SYMBOL = "BTCUSDT"


def _positive(_inst: object, attribute: attrs.Attribute, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


# --- market events: feed -> broker -> (risk gate, strategies) ------------------------------------


def _check_prices(kind: str, **prices: float) -> None:
    for name, value in prices.items():
        if not value > 0:
            raise ValueError(f"{kind}.{name} must be > 0, got {value!r}")


class _TickFields(NamedTuple):
    ts: float
    bid: float
    ask: float
    last: float
    bid_qty: float = 0.0
    ask_qty: float = 0.0
    last_qty: float = 0.0
    symbol: str = DEFAULT_SYMBOL
    source: str = ""


class Tick(_TickFields):
    """Feed -> broker (-> strategies): best bid/ask and last trade price at `ts`. Sizes are 0 when
    the source does not say (then the broker cannot bound a fill by them). `source` says where the
    quote came from: "ws" the exchange's WebSocket, "rest" its REST API polled during a failover,
    "mock" the mock source; "" when nobody said (a backtest's candles, older recordings). The
    broker's mark says which source its price came from (`mark_source` in the metrics).

    Ticks and candles are immutable named tuples rather than attrs classes: a backtest builds two
    quotes and a candle per row, and a tuple is built several times faster. Prices are checked
    (> 0) when built by name; `quote` and `checked_candle` build already checked values."""

    __slots__ = ()

    def __new__(
        cls,
        ts: float,
        bid: float,
        ask: float,
        last: float,
        bid_qty: float = 0.0,
        ask_qty: float = 0.0,
        last_qty: float = 0.0,
        symbol: str = DEFAULT_SYMBOL,
        source: str = "",
    ) -> Tick:
        _check_prices("Tick", bid=bid, ask=ask, last=last)
        return _new_tuple(cls, (ts, bid, ask, last, bid_qty, ask_qty, last_qty, symbol, source))

    @property
    def mid(self) -> float:
        return (self.bid + self.ask) / 2


class _CandleFields(NamedTuple):
    open_ts: float
    interval_s: float
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0
    # history from REST (the seed at start, a gap filled after a reconnect): indicators take it,
    # nothing trades on it, the broker ignores it
    backfill: bool = False
    symbol: str = DEFAULT_SYMBOL


class Candle(_CandleFields):
    """Feed -> broker (-> strategies): a closed candle covering [open_ts, open_ts + interval_s)."""

    __slots__ = ()

    def __new__(
        cls,
        open_ts: float,
        interval_s: float,
        open: float,
        high: float,
        low: float,
        close: float,
        volume: float = 0.0,
        backfill: bool = False,
        symbol: str = DEFAULT_SYMBOL,
    ) -> Candle:
        _check_prices("Candle", open=open, high=high, low=low, close=close)
        return _new_tuple(cls, (open_ts, interval_s, open, high, low, close, volume, backfill, symbol))

    @property
    def close_ts(self) -> float:
        return self.open_ts + self.interval_s


_new_tuple = tuple.__new__


@attrs.frozen
class Book:
    """Feed -> broker: the visible order book (best first), e.g. Bitunix depth_book5/15."""

    ts: float
    bids: tuple[tuple[float, float], ...]
    asks: tuple[tuple[float, float], ...]
    symbol: str = DEFAULT_SYMBOL


@attrs.frozen
class Funding:
    """Feed -> broker: mark price and the funding rate, in percent per the symbol's funding
    interval (Bitunix `price` channel). `source` as a `Tick`'s. `settled_ts`: the funding instant
    the rate was settled at (Bitunix's `ft`: `fr` is the rate last settled, so the rate an instant
    charges arrives after it); None: a rate tied to no instant (the broker charges it at the next
    one). `next_ts`: the symbol's next funding instant (`nft`), `interval_s` its funding interval
    (`nft - ft`: 8 h for most contracts, 4 h or 1 h for some); the broker charges the symbol at the
    instants they give (`next_ts` and every `interval_s` from it), and at 00:00, 08:00 and 16:00
    UTC while the exchange has said nothing (None)."""

    ts: float
    mark_price: float = attrs.field(validator=_positive)
    rate_pct: float = 0.0
    symbol: str = DEFAULT_SYMBOL
    source: str = ""
    settled_ts: float | None = None
    next_ts: float | None = None
    interval_s: float | None = None


# a FeedStatus's reason when the live feed gave up at start and the mock source took over: the
# broker then charges no funding (the mock has no rates; the report's funding_source is "none")
FALLBACK_REASON = "fallback to the mock source"


@attrs.frozen
class FeedStatus:
    """Feed -> broker (-> risk gate): the feed's data became stale (no data, the socket down) or
    fresh again. The risk gate refuses entries while it is stale. A market event like the others:
    recorded in market.jsonl, so a replay sees the same stale periods."""

    ts: float
    stale: bool
    reason: str = ""
    symbol: str = DEFAULT_SYMBOL


# prices and sizes market data may have: below this (1e15; found by audits: a candle file's price of
# 1e308, finite, overflowed the broker's price grid, and a live frame's was taken as well). Far above
# any market, and where the mock's walk stops (actors/feeds/mock.py MAX_MID). The candle files'
# reader (actors/feeds/history.py MAX_CSV_VALUE) and the Bitunix frames' and REST rows' validator
# (protocols/bitunix.py, `too_large`) hold data to it.
MAX_MARKET_VALUE: Final = 1e15

# the `source` of the exchange's own quotes (the Bitunix feed's WebSocket, its REST polling): their
# `last_qty` says a trade since the last quote (0: none, the `last` an older print's)
EXCHANGE_QUOTE_SOURCES: Final = frozenset({"ws", "rest"})

# `Instrument` (protocols/instruments.py), feed -> broker: what the exchange accepts for the symbol
# (tick, lot, limits, margin tiers); the live feed sends it once at start, before the first quote,
# from `trading_pairs` (or the shipped table when that fails). Recorded in market.jsonl like the rest.
MarketEvent = Tick | Candle | Book | Funding | FeedStatus | Instrument


def quote(ts: float, price: float, symbol: str = DEFAULT_SYMBOL) -> Tick:
    """The quote `Tick(ts, price, price, price, symbol=symbol)` (sizes unknown), for a price
    already known to be > 0 (no check: a backtest builds two per row)."""
    return _new_tuple(Tick, (ts, price, price, price, 0.0, 0.0, 0.0, symbol, ""))


def checked_candle(
    open_ts: float,
    interval_s: float,
    open: float,
    high: float,
    low: float,
    close: float,
    volume: float,
    symbol: str = DEFAULT_SYMBOL,
) -> Candle:
    """`Candle(open_ts, interval_s, open, high, low, close, volume, symbol=symbol)`, for prices
    already checked (> 0) by the caller."""
    return _new_tuple(Candle, (open_ts, interval_s, open, high, low, close, volume, False, symbol))


# --- the account: broker -> risk gate, strategies --------------------------------------------------


@attrs.frozen
class Position:
    """One symbol's position in an account snapshot. `processed_signed_qty`: the signed size of
    every order of the risk gate's the broker has finished with (filled, refused or cancelled), and
    `processed_buy_qty` the buys' part of it, so the gate can tell which of its orders, and on which
    side, are still on their way."""

    symbol: str
    qty: float  # signed
    avg_price: float
    processed_signed_qty: float = 0.0
    # "": the account's (net) position; else one strategy's virtual position in that symbol
    strategy_id: str = ""
    processed_buy_qty: float = 0.0
    # a strategy's virtual position: the positions it has opened so far (from flat, or by a flip),
    # so a strategy tells a position closed and opened again the same way between two of its
    # looks from the one it saw (found by an audit); 0 for the account's net position
    opened: int = 0


class AccountSnapshot(NamedTuple):
    """Broker -> risk gate, strategies: the account as it was at `ts`, frozen. It travels with the
        messages that need it (`AccountUpdate`, `MarketView`, and so `OrderIntent` decisions): nobody
        reads the broker's live state. `symbol` is the symbol it was taken for (the market event's;
    by default the session's): `mark_price`, `stale` and `funding_rate_pct` are that symbol's, the
    money figures the whole account's; `positions` holds every symbol's.

        A named tuple rather than an attrs class (as `Tick` and `Candle`): the broker builds one for
        each market event a strategy takes, and a tuple is built several times faster."""

    ts: float
    symbol: str
    starting_equity: float
    equity: float
    realized_pnl: float
    unrealized_pnl: float
    fees_paid: float
    funding_paid: float
    drawdown_pct: float
    mark_price: float | None
    positions: tuple[Position, ...]
    open_orders: int = 0
    stale: bool = False  # the feed's data is stale (FeedStatus)
    # the funding rate last settled, percent per 8 h (positive: longs pay): the feed's (a symbol on
    # a 4 h or 1 h interval: its rate per interval scaled to 8 h, x2 or x8), or the
    # backtest's schedule's row at or before now (as live: never the next, not yet known);
    # strategies gate entries on it
    funding_rate_pct: float = 0.0
    # several symbols (actors/broker/portfolio.py): each symbol's mark price, for the account-wide
    # limits; empty with one symbol (its mark is `mark_price`)
    marks: tuple[tuple[str, float], ...] = ()
    # `open_orders` by the strategy that sent them (its id; "" nobody's: flattens); empty when none
    strategy_orders: tuple[tuple[str, int], ...] = ()
    # what the exchange accepts for `symbol` (tick, lot, minimum size), as the broker applies it: in
    # a live session the exchange's own figures once its `Instrument` came; the risk gate rounds
    # and sizes on it, strategies put their prices on its grid (found by an audit: they used the
    # shipped table's, and a stop on DOGEUSDT's was put 21 % away); None: the gate's own
    instrument: Instrument | None = None
    # several symbols (actors/broker/portfolio.py): the strategies' limit orders working or on their
    # way (not the broker's stops and targets), by symbol and strategy: `(symbol, strategy_id,
    # buy_qty, buy_notional, sell_qty, sell_notional)`, each notional what is left of the orders at
    # their limit prices; the account-wide caps value another symbol's resting entries so (found by
    # an audit: at the mark). Empty with one symbol, which has no account-wide caps of its own
    limit_orders: tuple[tuple[str, str, float, float, float, float], ...] = ()

    def instrument_for(self, symbol: str) -> Instrument | None:
        """`instrument` when it is `symbol`'s (the snapshot is taken for one symbol), else None."""
        instrument = self.instrument
        return instrument if instrument is not None and instrument.symbol == symbol else None

    def open_orders_of(self, strategy_id: str) -> int:
        """The strategy's own orders working or on their way (not another strategy's brackets)."""
        for sid, count in self.strategy_orders:
            if sid == strategy_id:
                return count
        return 0

    def position(self, symbol: str | None = None, strategy_id: str = "") -> Position:
        """The account's net position in `symbol` (the session's by default), or with a
        `strategy_id`, that strategy's virtual position (flat when it has none)."""
        symbol = symbol or self.symbol
        for p in self.positions:
            if p.symbol == symbol and p.strategy_id == strategy_id:
                return p
        return Position(symbol, 0.0, 0.0, 0.0, strategy_id)

    @property
    def position_qty(self) -> float:
        return self.position().qty


@attrs.frozen
class ClosedTrade:
    """Inside `AccountUpdate`: a position that closed, with its net result (PnL after fees)."""

    symbol: str
    net_pnl: float
    strategy_id: str = ""


@attrs.frozen
class AccountUpdate:
    """Broker -> risk gate: the account changed in a way the gate asked to hear about (its
    `RiskWatch`), or trades closed. The gate answers with risk commands, or nothing."""

    ts: float
    account: AccountSnapshot
    closed: tuple[ClosedTrade, ...] = ()
    # a backtest: the lowest equity a candle's path took the account to (at its extreme against
    # the position), when that reached the watch's floor; None: none did (`account.equity` is it)
    low_equity: float | None = None


@attrs.frozen
class MarketView:
    """Broker -> risk gate -> strategies: a market event the broker has worked, with the account
    as the broker and the gate's reactions left it."""

    event: MarketEvent
    account: AccountSnapshot


# --- orders: strategy -> risk gate -> broker --------------------------------------------------------

OrderType = Literal["market", "limit", "stop_market"]


@attrs.frozen
class OrderIntent:
    """Strategy -> risk gate: what the strategy wants; the gate decides whether and how much.

    An entry states its stop (and optionally its target): the gate sizes it from the risk per
    trade and the stop distance, and the broker attaches them as protective orders. `qty` is the
    strategy's own size, used when `risk.sizing = "fixed"` and for exits."""

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
    strategy_id: str = ""
    symbol: str = DEFAULT_SYMBOL
    # the risk gate's size times this (a strategy's own reduction, e.g. half size under a high
    # funding rate); 1 for a full-size entry
    size_scale: float = 1.0
    # good till: a resting order not filled by this time is cancelled (`expired`); None: until cancelled
    expire_ts: float | None = None


@attrs.frozen
class Order:
    """Risk gate -> broker (or the broker itself, for protective orders): an approved order.

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
    strategy_id: str = ""
    symbol: str = DEFAULT_SYMBOL
    expire_ts: float | None = None  # good till (OrderIntent.expire_ts)

    @property
    def signed_qty(self) -> float:
        return self.qty if self.side == "buy" else -self.qty


@attrs.frozen
class Cancel:
    """Risk gate -> broker: cancel a working order."""

    order_id: str
    ts: float
    reason: str


# --- risk commands: risk gate -> broker (and the session) ------------------------------------------


@attrs.frozen
class Flatten:
    """Risk gate -> broker: cancel every working order and close every position at once, through
    the normal fill path (fees and slippage apply)."""

    ts: float
    reason: str
    order_id: str


@attrs.frozen
class HaltEntries:
    """Risk gate -> broker: refuse entries that reach the market before `until` (exits and
    protective orders still work)."""

    ts: float
    until: float
    reason: str


@attrs.frozen
class StopSession:
    """Risk gate -> broker and the session: stop the session with this reason. The broker refuses
    every entry from now on; the runtime ends the session after the current step."""

    ts: float
    reason: str
    detail: str = ""


@attrs.frozen
class RiskWatch:
    """Risk gate -> broker: send an `AccountUpdate` after a mark that leaves equity at or below
    `equity_floor`, after the first mark at or after `check_at`, and whenever a trade closes."""

    ts: float
    equity_floor: float
    check_at: float


RiskCommand = Flatten | HaltEntries | StopSession | RiskWatch
# What the broker takes besides market events.
BrokerInput = Order | Cancel | RiskCommand


# --- records ---------------------------------------------------------------------------------------


@attrs.frozen
class Event:
    """Any component -> recorder: one line of events.jsonl (the recorder adds `seq`)."""

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
