"""The paper broker component: orders -> fills; position, margin, fees, funding, liquidation, equity.

It models a Bitunix linear perpetual (its `Instrument`: tick, lot, minimum and maximum quantity,
maintenance-margin tiers; isolated margin) honestly, so that a paper result means something
(docs/fills.md has every rule, with the choices where the exchange's behaviour is unknown):

- an order reaches the market `broker.latency_ms` (+ seeded jitter) after it is sent (orders in
  flight keep their order: one connection), and fills against the market as it is then, never as
  it was at the decision; at most `MAX_IN_FLIGHT` orders travel at once (more are refused);
- every order is checked against the instrument as the exchange would (grid, minimum, maximum:
  refused with the exchange's reason); the stop and target of an entry are put on the tick grid in
  the direction that does not flatter the trader;
- market orders walk the visible book when one is known, using up what they take until the next
  book; with only the touch known they take at most its size at the touch and the rest at the
  impact model; with no size known they pay `broker.slippage_bps` beyond the touch: never a better
  price than the market offered;
- limit orders rest and fill only when the market trades through their price (a touch is not
  enough unless `broker.limit_fill_on_touch`); a marketable limit takes as a taker;
- stop-market orders trigger on the last price and then fill as market orders;
- an entry's stop and target are one group sized to the position: a partial fill of one resizes
  the other, a fill closing the position cancels the other, and no reduce-only or protective fill
  ever increases the position or flips it;
- backtests (`bars`): each candle is worked along a path (`broker.intrabar`), stops, limits and
  liquidation alike, wicks included; the fills of one candle take at most
  `broker.max_volume_participation` of its volume (the rest fills on later candles);
- maker and taker fees; funding at 00:00, 08:00 and 16:00 UTC, or live at the symbol's instants as
  the exchange gives them (`Funding.next_ts`, `interval_s`), on the position open at that
  instant (the feed's rate, or a `FundingRates` schedule in backtests);
- a position whose mark crosses its liquidation price (the instrument's maintenance tier) is
  liquidated at its bankruptcy price: the loss is the position's margin, plus the taker fee.

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
from collections.abc import Callable, Container, Iterable
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import attrs

from actors.config import BrokerConfig
from actors.feeds.funding import FUNDING_EVERY_S, next_instant
from actors.feeds.history import CLOSE_TICK_LEAD_S
from protocols.instruments import Instrument, fast_round, table_instrument
from protocols.messages import (
    DEFAULT_SYMBOL,
    EXCHANGE_QUOTE_SOURCES,
    FALLBACK_REASON,
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
    quote,
)

# a rate settled this close to an instant is that instant's (the exchange's clock and ours differ
# a little; instants are 1 h apart or more)
SETTLED_SLACK_S: Final = 60.0
BOOK_FRESH_S: Final = 2.0  # a book older than this (vs the last quote) is not trusted for walking
EPS: Final = 1e-12


class FundingSchedule(Protocol):
    """Funding rates for backtests (actors/feeds/funding.py): the rate in force at an instant,
    the funding instants (00:00, 08:00, 16:00 UTC unless its file says its own) and the interval
    a rate is for."""

    source: str

    def rate_pct_at(self, instant: float) -> float: ...

    def next_instant(self, ts: float) -> float: ...

    def interval_s_at(self, instant: float) -> float: ...


def _iso_instant(ts: float) -> str:
    """A funding instant as the events write it: `2026-09-23T08:00:00Z`."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _fallback_instrument(symbol: str) -> Instrument:
    """A symbol the shipped table does not know: BTCUSDT's grid and tiers under its name (said as
    the source, so the report shows it)."""
    base = table_instrument("BTCUSDT")
    assert base is not None
    return attrs.evolve(base, symbol=symbol, source="table:BTCUSDT (no entry for the symbol)")


@attrs.define
class Virtual:
    """One strategy's virtual position in the symbol: its own fills (and its share of the fills
    that are nobody's own: a flatten, a liquidation), netted as the account nets its position."""

    qty: float = 0.0
    avg_price: float = 0.0
    processed_signed_qty: float = 0.0  # its orders the broker has finished with (the gate's pending)
    processed_buy_qty: float = 0.0  # the buys among them
    trade_net: float = 0.0  # the round trip open now: its realized PnL less its fees and funding so far
    opened: int = 0  # the positions opened so far (from flat, or by a flip): `Position.opened`

    def book(self, signed: float, price: float, fee: float = 0.0) -> tuple[float, float | None]:
        """A fill of `signed` at `price` paying `fee` (its share of the fill's); returns the
        realized PnL (the account's arithmetic) and, when the fill ends the round trip of the
        virtual position (flat, or a flip), that round trip's net PnL (realized less fees, the fee
        split between closing and opening as the account splits it): the risk gate counts each
        strategy's trades, not only the net position's."""
        pos = self.qty
        realized = 0.0
        rest = signed
        closed: float | None = None
        if pos * signed < 0:
            closing = min(abs(pos), abs(signed))
            realized = (price - self.avg_price) * closing * (1 if pos > 0 else -1)
            self.trade_net += realized - fee * closing / abs(signed)
            self.qty = fast_round(pos + (closing if pos < 0 else -closing), 10)
            rest = signed + (closing if signed < 0 else -closing)
            if abs(self.qty) < EPS:
                self.qty = 0.0
                self.avg_price = 0.0
                closed, self.trade_net = self.trade_net, 0.0
        if abs(rest) > EPS:
            if abs(self.qty) < EPS:  # flat, or just closed: a new position
                self.opened += 1
            self.trade_net -= fee * abs(rest) / abs(signed)
            new_qty = self.qty + rest
            self.avg_price = (self.avg_price * abs(self.qty) + price * abs(rest)) / abs(new_qty)
            self.qty = fast_round(new_qty, 10)
        return realized, closed


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
    triggered: bool = False  # a stop that triggered, or a market order's rest: it takes at each chance


def _order_to_dict(order: Order) -> dict[str, Any]:
    return attrs.asdict(order)


@attrs.define
class InFlight:
    """An order (or a cancel) on its way to the market, arriving at `arrival_ts`."""

    arrival_ts: float
    message: Order | Cancel


_new_tuple: Final = tuple.__new__

# What a broker takes (`handle`): a market event, an order, a cancel or a risk command.
BrokerMessage = MarketEvent | Order | Cancel | Flatten | HaltEntries | StopSession | RiskWatch


class Routes(Protocol):
    """A broker's inputs by type (PaperBroker, and Portfolio over its legs)."""

    def on_order(self, order: Order, now: float) -> list[Event]: ...
    def on_cancel(self, cancel: Cancel, now: float) -> list[Event]: ...
    def on_command(
        self, command: Flatten | HaltEntries | StopSession | RiskWatch, now: float
    ) -> list[Event]: ...
    def on_market(self, event: MarketEvent, ts: float) -> list[Event]: ...


def route(broker: Routes, message: BrokerMessage, now: float) -> list[Event]:
    """`message` to the broker's method for its type."""
    if isinstance(message, Order):
        return broker.on_order(message, now)
    if isinstance(message, Cancel):
        return broker.on_cancel(message, now)
    # a tuple of types: compiled, `A | B | ...` builds a union object at every call
    if isinstance(message, (Flatten, HaltEntries, StopSession, RiskWatch)):
        return broker.on_command(message, now)
    return broker.on_market(message, now)


def next_heartbeat(started_ts: float, period: float, now: float, end_ts: float) -> float:
    """The next heartbeat: the next whole period from the start after `now` (a resumed session
    does not make up the rows of its downtime); inf when there is none (no period, or past the end)."""
    if not math.isfinite(period):
        return math.inf
    k = math.floor((now - started_ts) / period) + 1
    ts = started_ts + period * k
    while ts <= now:  # the division rounded a period short (a period such as 0.7 s): the one after
        k += 1
        ts = started_ts + period * k
    return ts if ts < end_ts else math.inf


# The most orders and cancels on their way to the market at once; more are refused (`in_flight_limit`).
MAX_IN_FLIGHT: Final = 64

try:  # mypy's, there where the compiled build is (setup.py)
    from mypy_extensions import mypyc_attr
except ImportError:  # the interpreted build: mypyc's decorator does nothing here

    def mypyc_attr(*_args: Any, **_kwargs: Any) -> Callable[[type], type]:  # type: ignore[misc]
        return lambda cls: cls


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled, tests' brokers may still extend it
class PaperBroker:
    """Linear USDT-margined perpetual, one symbol, netting position, isolated margin.

    `heartbeat_s`: a `heartbeat` event (one metrics row) every that many seconds on whole periods
    from `started_ts`, before `end_ts`. `defer_to_next_quote` (backtests with
    `broker.backtest_fill = "next_open"`): a market order waits for a quote stamped at or after its decision
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
        bars: bool = False,
        instrument: Instrument | None = None,
        funding: FundingSchedule | None = None,
        margin_equity: Callable[[PaperBroker], float] | None = None,
        funding_modelled: bool = True,
    ) -> None:
        self.config = config
        self.pessimistic = config.intrabar == "pessimistic"  # `broker.intrabar`, read every candle
        # False: no funding source at all (the report's funding_source "none"): no funding events
        # (they said "rate 0" where nothing was known), the instants still pass
        self.funding_modelled = funding_modelled
        # several symbols (actors/broker/portfolio.py): the account's equity this symbol's new
        # margin may use (the account's, less the margin the other symbols' positions hold)
        self.margin_equity = margin_equity
        # before the ids it gives (fills, protective orders, liquidations): unique per account
        # (a portfolio's legs: "<SYMBOL>-")
        self.id_prefix = ""
        self.rng = rng or random.Random(0)
        self.symbol = symbol
        self.instrument = instrument or table_instrument(symbol) or _fallback_instrument(symbol)
        self._price_scale = 10**self.instrument.price_decimals
        self.funding = funding
        self.starting_equity = config.starting_equity
        self.taker_fee_rate = config.taker_fee_bps / 10_000
        self.maker_fee_rate = config.maker_fee_bps / 10_000
        # backtests over candles: quotes only mark; each candle is worked along its path, then
        # gives the close quote (`on_candle`)
        self.bars = bars
        self.participation = config.max_volume_participation
        self.quote_budget = math.inf  # what market orders may still take at the current quote (bars)
        self.bar_volume: float | None = None  # the last candle's volume (bars)
        self.path_price: float | None = None  # where the last candle's path ended (bars)
        # live: the open time of the last candle the session was handed, history included (kept by
        # its checkpoints: a resumed session's feed hands out only those after it)
        self.candle_open_ts: float | None = None
        # what market orders took from the current book ((side, price) -> qty) and touch
        self.book_taken: dict[tuple[str, float], float] = {}
        self.touch_taken = 0.0
        self.liq_price = math.nan  # the open position's liquidation price (nan: flat)
        # when a fill last opened or added to the position (its liquidation price moved): a
        # backtest's gap before then was not gone through with this position (`_first_hit`)
        self.entry_ts = -math.inf
        self.next_expiry = math.inf  # the earliest good-till time of a working order (or earlier)
        self.liquidations = 0
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
        # live (no schedule): the instant the last `Funding`'s rate was settled at (None: no rate
        # tied to an instant yet), and the instants passed before their own rate came (Bitunix's
        # `fr` is the rate last settled: the rate an instant charges arrives after it), each
        # with the position, mark and holders it had then, waiting for it (`_charge_funding`)
        self.funding_settled_ts: float | None = None
        # whether a `Funding` (a live feed's rate) ever came: the report says when none did (found
        # by a report audit: a session that never connected described "live rates")
        self.funding_rates_came = False
        self.funding_pending: list[dict[str, Any]] = []
        # the funding instants: `funding_anchor_ts + k * funding_every_s`; 00:00, 08:00, 16:00 UTC
        # until the feed says the symbol's (a `Funding`'s `next_ts`, `interval_s`: the exchange's
        # `nft` and `nft - ft`; found by an audit: a symbol on 4 h or 1 h funding was charged at
        # the 8 h instants only, its rate per 4 h taken for one per 8 h)
        self.funding_anchor_ts = 0.0
        self.funding_every_s = float(FUNDING_EVERY_S)
        # the mark: the latest price given, from any source (a quote's mid, the exchange's mark
        # price), and where it came from (`Tick.source`: "ws", "rest", ...; "" before any)
        self.mark: float | None = None
        self.mark_source = ""
        self._last_tick: Tick | None = None
        # a quiet candle's close quote, its fields kept and the quote built when first read
        # (`last_tick`): most quiet candles' quotes are never read before the next candle's
        self._lazy_quote = False
        self._lazy_ts = 0.0
        self._lazy_bid = 0.0
        self._lazy_ask = 0.0
        self._lazy_price = 0.0
        self._lazy_symbol = ""
        self.book: Book | None = None
        self.last_ts: float | None = None
        self.next_funding_ts = -math.inf  # the next funding instant after last_ts
        self.stale = False  # the feed said its data is stale (FeedStatus)
        self.processed_signed_qty = 0.0  # every gate order's signed qty once filled, refused or cancelled
        self.processed_buy_qty = 0.0  # the buys' part of it (the gate's pending, side by side)
        self.fill_seq = 0
        self.protective_seq = 0
        self.working: dict[str, Working] = {}
        self.awaiting_quote: list[Order] = []
        self.in_flight: deque[InFlight] = deque()
        self.trade: OpenTrade | None = None
        self._position: Position | None = None  # the last snapshot's, reused while unchanged
        # each strategy's virtual position (by strategy id; "": orders of no strategy's)
        self.virtual: dict[str, Virtual] = {}
        self._virtual_positions: tuple[Position, ...] | None = None  # the snapshot's, while unchanged
        self.peak_equity = self.starting_equity
        self.max_drawdown_pct = 0.0
        # a backtest candle's extremes marked along its path (`_mark_extremes`): a Portfolio reads
        # them here, to mark the account's drawdown at them too (None: nobody reads them)
        self.path_equities: list[float] | None = None
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
        # the lowest equity at or below the watch's floor along a backtest candle's path since
        # the last update (`_mark_equity`; inf: none), told to the gate with it
        self.path_low = math.inf
        self.closed: list[ClosedTrade] = []

    @property
    def last_tick(self) -> Tick | None:
        """The latest quote (a backtest's: on the instrument's grid, `_grid_quote`)."""
        if self._lazy_quote:
            self._lazy_quote = False
            fields = (self._lazy_ts, self._lazy_bid, self._lazy_ask, self._lazy_price)
            self._last_tick = _new_tuple(Tick, (*fields, 0.0, 0.0, 0.0, self._lazy_symbol, "candles"))
        return self._last_tick

    @last_tick.setter
    def last_tick(self, tick: Tick | None) -> None:
        self._lazy_quote = False
        self._last_tick = tick

    def schedule_heartbeats(self, now: float) -> None:
        self.next_heartbeat = next_heartbeat(self.started_ts, self.heartbeat_s, now, self.end_ts)

    # --- the view -------------------------------------------------------------------------------

    @property
    def fees_paid(self) -> float:
        return self.fees_maker + self.fees_taker

    @property
    def mark_price(self) -> float | None:
        """The mark: the freshest price from any source, i.e. the last one given, whether a quote's
        mid (WebSocket book or ticker, REST polling, the mock source, a backtest's candles) or the
        exchange's mark price (`Funding`, the `price` channel); `mark_source` says which source."""
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
        return self.liq_price

    def _update_liq(self) -> None:
        """The open position's liquidation price: its margin (entry notional over leverage) less
        the maintenance margin of its tier (by entry notional) is gone."""
        pos = self.position_qty
        if -EPS < pos < EPS:
            self.liq_price = math.nan
            return
        notional = abs(pos) * self.avg_price
        mmr = self.instrument.maintenance_margin_rate(notional)
        lev = self.config.leverage
        if pos > 0:
            self.liq_price = self.avg_price * (1 - 1 / lev + mmr)
        else:
            self.liq_price = self.avg_price * (1 + 1 / lev - mmr)

    def bankruptcy_price(self) -> float:
        """Where the position's whole margin is gone, on the tick grid rounded toward the position
        (the loss never exceeds the margin)."""
        lev = self.config.leverage
        if self.position_qty > 0:
            return self.instrument.round_price(self.avg_price * (1 - 1 / lev), "up")
        return self.instrument.round_price(self.avg_price * (1 + 1 / lev), "down")

    def open_positions(self) -> list[dict[str, Any]]:
        if abs(self.position_qty) < EPS:
            return []
        liq = self.liquidation_price
        long = self.position_qty > 0
        return [
            {
                "side": "long" if long else "short",
                "qty": fast_round(abs(self.position_qty), 8),
                "avg_price": fast_round(self.avg_price, 8),
                "unrealized_pnl": fast_round(self.unrealized_pnl, 8),
                # on the instrument's grid, toward the position (never further away than it is:
                # found by a review, SOLUSDT's 128.849 was said as 128.8)
                "liquidation_price": self.instrument.round_price(liq, "up" if long else "down")
                if liq
                else None,
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
        "funding_settled_ts",
        "funding_anchor_ts",
        "funding_every_s",
        "funding_modelled",
        "funding_rates_came",
        "mark",
        "mark_source",
        "last_ts",
        "processed_signed_qty",
        "processed_buy_qty",
        "fill_seq",
        "protective_seq",
        "peak_equity",
        "max_drawdown_pct",
        "entries_halted_until",
        "stopping",
        "stale",
        "watch_floor",
        "watch_at",
        "bar_volume",
        "path_price",
        "touch_taken",
        "liquidations",
        "quote_budget",
        "candle_open_ts",
    )

    def state(self) -> dict[str, Any]:
        """Everything a checkpoint keeps (JSON-able: an infinite watch is kept as None)."""
        state: dict[str, Any] = {name: getattr(self, name) for name in self._SCALARS}
        for name in ("watch_floor", "watch_at", "quote_budget"):
            if not math.isfinite(state[name]):
                state[name] = None
        state["book_taken"] = [[side, price, qty] for (side, price), qty in self.book_taken.items()]
        state["funding_pending"] = [dict(pending) for pending in self.funding_pending]
        state["virtual"] = {sid: attrs.asdict(v) for sid, v in self.virtual.items()}
        state["instrument"] = self.instrument.to_dict()
        state["next_heartbeat"] = self.next_heartbeat if math.isfinite(self.next_heartbeat) else None
        state["awaiting_quote"] = [attrs.asdict(order) for order in self.awaiting_quote]
        state["last_tick"] = self.last_tick._asdict() if self.last_tick else None
        state["trade"] = attrs.asdict(self.trade) if self.trade else None
        state["working"] = [
            {
                "order": _order_to_dict(w.order),
                "remaining": w.remaining,
                "arrived_ts": w.arrived_ts,
                "triggered": w.triggered,
            }
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

    def skip_ids(self, ids: Iterable[str]) -> None:
        """After a resume: a fill or protective-order id the events it discarded gave
        (`<id_prefix>f<n>`, `<id_prefix>p<n>`, written after the checkpoint) is never given again."""
        start = len(self.id_prefix)
        for given in ids:
            number = given[start + 1 :]
            if not (given.startswith(self.id_prefix) and number.isdigit()):
                continue
            if given[start] == "f":
                self.fill_seq = max(self.fill_seq, int(number))
            elif given[start] == "p":
                self.protective_seq = max(self.protective_seq, int(number))

    def restore(self, state: dict[str, Any]) -> None:
        """The state of a checkpoint. Orders that were in flight are kept; `abandon_in_flight`
        refuses them when a resumed session starts (they never reached the market)."""
        # a state's None for an unbounded figure: the watch reports every mark until the gate says
        # again; market orders may take any size at the current quote
        unbounded = {"watch_floor": -math.inf, "watch_at": -math.inf, "quote_budget": math.inf}
        for name in self._SCALARS:
            if name in state:  # a checkpoint of an older version may lack the newer ones
                value = state[name]
                setattr(self, name, unbounded[name] if value is None and name in unbounded else value)
        if "funding_rates_came" not in state:  # an older checkpoint: not known, taken as came
            self.funding_rates_came = True
        self.book_taken = {(side, price): qty for side, price, qty in state.get("book_taken", [])}
        self.funding_pending = [dict(pending) for pending in state.get("funding_pending", [])]
        self.virtual = {sid: Virtual(**v) for sid, v in state.get("virtual", {}).items()}
        self._virtual_positions = None
        if state.get("instrument"):
            self.instrument = Instrument.from_dict(state["instrument"])
            self._price_scale = 10**self.instrument.price_decimals
        if "next_heartbeat" in state:
            self.next_heartbeat = math.inf if state["next_heartbeat"] is None else state["next_heartbeat"]
        self.awaiting_quote = [Order(**order) for order in state.get("awaiting_quote", [])]
        self.last_tick = Tick(**state["last_tick"]) if state["last_tick"] else None
        self.trade = OpenTrade(**state["trade"]) if state["trade"] else None
        self.working = {
            w["order"]["id"]: Working(
                Order(**w["order"]), w["remaining"], w["arrived_ts"], w.get("triggered", False)
            )
            for w in state["working"]
        }
        self.next_expiry = self._earliest_expiry()
        self._update_liq()
        self.next_funding_ts = self._next_funding(self.last_ts) if self.last_ts is not None else -math.inf
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
            book: Book = event  # type: ignore[assignment]
            self.book = book
            self.book_taken = {}  # a new book: what was taken from the last one is forgotten
            last = self.last_tick
            if last is not None and book.bids and book.asks:
                # its best bid and ask are the quote a fill now meets, before the tick the feed
                # sends after it (found by CI under load: an order's timer between the two walked
                # the new book and recorded the last book's touch beside it)
                (bid, bid_qty), (ask, ask_qty) = book.bids[0], book.asks[0]
                self.last_tick = _new_tuple(
                    Tick, (book.ts, bid, ask, last.last, bid_qty, ask_qty, 0.0, book.symbol, last.source)
                )
            return []
        if cls is FeedStatus:
            self.stale = event.stale  # type: ignore[union-attr]
            if event.reason == FALLBACK_REASON and self.funding is None:  # type: ignore[union-attr]
                # the mock source took over from the live feed: no rates will come, and funding is
                # not modelled (found by the determinism audit: such a session, funding_source
                # "none", charged funding at rate 0 at 08:00 UTC on the mark of its last quote)
                self.funding_modelled = False
            return []
        if cls is Instrument:  # the exchange's own figures (live sessions, at start)
            self.instrument = event  # type: ignore[assignment]
            self._price_scale = 10**self.instrument.price_decimals
            self._update_liq()
            return []
        assert isinstance(event, Funding)
        events = self._advance(ts)
        self.mark = event.mark_price
        self.mark_source = event.source
        self.funding_rate_pct = event.rate_pct
        self.funding_rates_came = True
        if event.settled_ts is not None:
            self.funding_settled_ts = event.settled_ts
            if self.funding_pending:
                events += self._charge_pending(ts, event.settled_ts)
        if event.next_ts is not None or event.interval_s is not None:
            # the exchange's schedule from now on: the instants after `ts` are its (those up to
            # `ts` were charged on the schedule in force when they passed)
            if event.interval_s is not None:
                self.funding_every_s = float(event.interval_s)
            if event.next_ts is not None:
                self.funding_anchor_ts = float(event.next_ts)
            self.next_funding_ts = self._next_funding(ts)
        return self._mark(events, ts)

    def on_quote(self, tick: Tick, ts: float) -> list[Event]:
        """A quote: the market's best bid/ask and last trade now. It runs for every quote (once
        per candle in a backtest), so what cannot change anything is skipped. In a backtest a quote
        only marks (and meets the orders arriving at it): the candle's path works resting orders."""
        events = self._advance(ts) if ts >= self.next_funding_ts else []
        self.last_ts = ts
        self.touch_taken = 0.0
        if ts >= self.next_expiry:
            events += self._expire(ts)
        if self.bars:
            tick = self._grid_quote(tick.ts, tick.last, tick.symbol)
            self.last_tick = tick
            self.mark = (tick.bid + tick.ask) / 2
            self.mark_source = "candles"
            volume = self.bar_volume
            self.quote_budget = self.participation * volume if volume else math.inf
        else:
            self.last_tick = tick
            self.mark = (tick.bid + tick.ask) / 2
            self.mark_source = tick.source
            if self.working:
                events += self._work_quote(tick, ts)
        if self.awaiting_quote:
            events += self._release_awaiting(tick, ts)
        return self._mark(events, ts)

    def _grid_quote(self, ts: float, price: float, symbol: str) -> Tick:
        """A backtest's quote at a candle's price, on the instrument's grid: a price between two
        ticks (data from a finer-ticked market) is bid at the tick below and asked at the tick
        above, so that no fill is ever off the grid or better than the price."""
        bid, ask = _grid_bid_ask(price, self._price_scale)
        return _new_tuple(Tick, (ts, bid, ask, price, 0.0, 0.0, 0.0, symbol, "candles"))

    def _grid_mid(self, price: float) -> float:
        """The mid of `_grid_quote(ts, price, symbol)`, without building the quote."""
        bid, ask = _grid_bid_ask(price, self._price_scale)
        return (bid + ask) / 2

    def _release_awaiting(self, tick: Tick, ts: float) -> list[Event]:
        """Orders waiting for a quote stamped at or after their decision (`defer_to_next_quote`) meet this one."""
        events: list[Event] = []
        waiting, self.awaiting_quote = self.awaiting_quote, []
        for order in waiting:
            if tick.ts < order.ts:
                self.awaiting_quote.append(order)
                continue
            # a halt or a stop that came while it waited holds for it too (found by a review: an
            # entry parked before a breaker's halt filled during it)
            refusal = self._entry_refusal(order, ts)
            events += self._refuse(order, ts, refusal, order.qty) if refusal else self._execute(order, ts)
        return events

    def _entry_refusal(self, order: Order, ts: float) -> str | None:
        """Why an entry may not reach the market now: the session is stopping, or entries are
        halted (a breaker's) until later; None for exits and protective orders."""
        if order.reduce_only or order.protective:
            return None
        if self.stopping:
            return "session_stopping"
        halted = self.entries_halted_until
        if halted is not None and ts < halted:
            return "breaker_halt"
        return None

    def on_candle(self, candle: Candle, ts: float) -> list[Event]:
        """A closed candle. History (`backfill`) has no market to trade against. Live, its range
        works resting orders (its quotes did the rest). In a backtest (`bars`) it is the market
        from its open to its close: resting orders, stops and liquidation are worked along its
        path (from where the last one ended: a gap fills at the open), then its close is the quote."""
        if not self.bars:
            self.candle_open_ts = candle.open_ts
            if candle.backfill or not self.working:
                return []
            live_events = self._advance(ts) if ts >= self.next_funding_ts else []
            self.last_ts = ts
            live_events += self._walk(candle, ts, None)
            return self._mark(live_events, ts)
        if candle.backfill:
            return []
        events: list[Event] = []
        pos = self.position_qty
        if (
            self.working
            or (pos > EPS and candle.low <= self.liq_price)  # a wick (or a gap: the open is in the range)
            or (pos < -EPS and candle.high >= self.liq_price)
        ):
            events += self._walk(candle, ts, self.path_price)
        elif not -EPS < pos < EPS:
            self._mark_extremes(candle.open, candle.high, candle.low, pos, self._cash())
        if ts >= self.next_expiry:  # after the path: an order good till the candle's end lived through it
            events += self._expire(ts)
        close = candle.close
        self.path_price = close
        volume = self.bar_volume = candle.volume
        self.quote_budget = self.participation * volume if volume else math.inf
        tick = self.last_tick = self._grid_quote(
            candle.open_ts + candle.interval_s - CLOSE_TICK_LEAD_S, close, candle.symbol
        )
        self.mark = (tick.bid + tick.ask) / 2
        self.mark_source = "candles"
        self.touch_taken = 0.0
        # funding at an instant the candle ends on is charged on its close, once the path is done
        if ts >= self.next_funding_ts:
            events += self._advance(ts)
        self.last_ts = ts
        if self.awaiting_quote:
            events += self._release_awaiting(tick, ts)
        return self._mark(events, ts)

    def quiet_candle(self, candle: Candle) -> bool:
        """A backtest candle nothing can happen in, in one call: `on_quote` of its open quote, then
        `on_candle`, leaving the same state, for a candle with no waiting order and no resting
        order within reach of its path, no funding instant or expiry, no liquidation along its
        path or at either mark, and a risk watch that fires at neither mark. Anything else:
        returns False having changed nothing, and the caller takes the two steps (the kernel, with
        no timer due and no quote subscriber; tests/test_kernel.py compares its event logs with
        the actors', which take both steps; tests/test_quiet_candle.py the states)."""
        # the candle's fields by position, not by name: compiled, a named tuple's field read by name
        # is a generic attribute lookup, several times the cost (measured: 26 against 6 ns a field)
        open_ts, interval_s, open_, high, low, close, volume, backfill, symbol = candle
        close_ts = open_ts + interval_s
        if (
            self.awaiting_quote
            or self.update_due
            or self.closed
            or close_ts >= self.next_funding_ts
            or close_ts >= self.next_expiry
            or not self.bars
            or backfill
        ):
            return False
        if self.working and not self._out_of_reach(candle):
            return False
        # the two quotes and marks the two steps make (`_grid_quote`: on the instrument's grid; of
        # the open's quote only its mid is kept)
        open_mark = self._grid_mid(open_)
        bid, ask = _grid_bid_ask(close, self._price_scale)
        close_mark = (bid + ask) / 2
        # equity at each mark: `_mark`'s arithmetic, in its order
        cash = (
            self.starting_equity + self.realized_pnl - (self.fees_maker + self.fees_taker) - self.funding_paid
        )
        pos = self.position_qty
        if -EPS < pos < EPS:
            open_equity = close_equity = cash
        else:
            liq = self.liq_price
            if pos > 0:
                if low <= liq or open_mark <= liq or close_mark <= liq:
                    return False
            elif high >= liq or open_mark >= liq or close_mark >= liq:
                return False
            open_equity = cash + (open_mark - self.avg_price) * pos
            close_equity = cash + (close_mark - self.avg_price) * pos
        floor = self.watch_floor
        if open_equity <= floor or close_equity <= floor or close_ts >= self.watch_at:
            return False
        # nor at the extreme against the position (`_mark_extremes` tells the gate)
        if not -EPS < pos < EPS and cash + ((low if pos > 0 else high) - self.avg_price) * pos <= floor:
            return False
        # nothing happens: the state the two steps leave (the open's mark, the extremes along the
        # path, the close's mark: `_mark_extremes`)
        self._update_drawdown(open_equity)
        if not -EPS < pos < EPS:
            self._mark_extremes(open_, high, low, pos, cash)
        self._update_drawdown(close_equity)
        self.path_price = close
        self.bar_volume = volume
        self.quote_budget = self.participation * volume if volume else math.inf
        # the close's quote (`_grid_quote`), built when read (`last_tick`)
        self._lazy_ts = close_ts - CLOSE_TICK_LEAD_S
        self._lazy_bid = bid
        self._lazy_ask = ask
        self._lazy_price = close
        self._lazy_symbol = symbol
        self._lazy_quote = True
        self.mark = close_mark
        self.mark_source = "candles"
        self.touch_taken = 0.0
        self.last_ts = close_ts
        return True

    def _out_of_reach(self, candle: Candle) -> bool:
        """No resting order can trigger or fill along the candle's path (from the last candle's
        close through its range): `_first_hit`'s conditions, over the whole path at once."""
        lo, hi = candle.low, candle.high
        if self.path_price is not None:  # the gap from the last close to the open
            lo, hi = min(lo, self.path_price), max(hi, self.path_price)
        for working in self.working.values():
            order = working.order
            if working.triggered:
                return False
            if order.order_type == "stop_market":
                trigger = order.trigger_price
                if trigger is None or (hi >= trigger if order.side == "buy" else lo <= trigger):
                    return False
            elif order.order_type == "limit":
                limit = order.limit_price
                if limit is None or (lo <= limit if order.side == "buy" else hi >= limit):
                    return False
            else:
                return False
        return True

    def _advance(self, ts: float) -> list[Event]:
        """Time moves to `ts`: funding for each instant passed since the last market event."""
        events: list[Event] = []
        if ts >= self.next_funding_ts:
            if self.last_ts is not None:
                events = self._funding_due(self.last_ts, ts)
            self.next_funding_ts = self._next_funding(ts)
        self.last_ts = ts
        return events

    def _next_funding(self, ts: float) -> float:
        """The first funding instant after `ts`: the exchange's schedule (`funding_anchor_ts`
        and every `funding_every_s` from it), or 00:00, 08:00, 16:00 UTC until it says one; with
        a backtest's rates, theirs (00/08/16 UTC, or its file's settlements)."""
        if self.funding is not None:
            return float(self.funding.next_instant(ts))
        return float(next_instant(ts, self.funding_anchor_ts, self.funding_every_s))

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
                crossed = mark <= self.liq_price if pos > 0 else mark >= self.liq_price
                if crossed and tick is not None:
                    events += self._liquidate(ts, mark)
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
        """Funding for each instant passed since the last market event (`last_ts`): 00/08/16
        UTC, or the symbol's own schedule once the exchange has said it."""
        events: list[Event] = []
        instant = self._next_funding(last_ts)
        while instant <= ts:
            events += self._charge_funding(instant, ts)
            instant = self._next_funding(instant)
        return events

    def _charge_funding(self, instant: float, now: float) -> list[Event]:
        """The account pays funding on its net position; each strategy its share, as its virtual
        position would (opposite ones netting to 0 still pay and receive theirs: found by an
        audit, they were charged nothing at a net of exactly 0, and their full amounts beside it).
        Live, once the feed's rates say when they were settled: an instant after the last rate's
        waits for its own (`funding_pending`), with the position, mark and holders of now. A
        backtest's charge is stamped at its instant (between two candles); a live one when it is
        booked, `now` (the first market event after the instant: after a restart, past the
        downtime; found by an audit, stamped at the instant it was written after the resume's
        events, earlier than them)."""
        mark = self.mark_price
        holders = [[s, v.qty] for s, v in self.virtual.items() if not -EPS < v.qty < EPS]
        if (abs(self.position_qty) < EPS and len(holders) < 2) or mark is None or not self.funding_modelled:
            return []
        if self.funding is not None:
            rate = self.funding.rate_pct_at(instant)
        elif self.funding_settled_ts is not None and self.funding_settled_ts < instant - SETTLED_SLACK_S:
            self.funding_pending.append(
                {"instant": instant, "mark": mark, "qty": self.position_qty, "holders": holders}
            )
            return []
        else:
            rate = self.funding_rate_pct
        booked = instant if self.bars else max(instant, now)
        return [self._funding_event(booked, instant, rate, mark, self.position_qty, holders)]

    def _charge_pending(self, ts: float, settled_ts: float) -> list[Event]:
        """The instants waiting for their rate that the rate settled at `settled_ts` covers (its
        own instant, or a later one when the feed missed theirs), charged now at that rate."""
        events: list[Event] = []
        waiting: list[dict[str, Any]] = []
        for pending in self.funding_pending:
            if settled_ts >= pending["instant"] - SETTLED_SLACK_S:
                events.append(self._pending_event(ts, pending, settled_ts))
            else:
                waiting.append(pending)
        self.funding_pending = waiting
        return events

    def settle_funding(self, ts: float) -> list[Event]:
        """The session ends at `ts`: live, an instant passed since the last market event is
        charged (on the position open at it, before the flatten), and the instants still waiting
        for their rate are charged at the last rate known (the event's `rate_settled_at` says
        which instant that one was settled at)."""
        events = self._funding_before(ts)
        pending, self.funding_pending = self.funding_pending, []
        return events + [self._pending_event(ts, p, self.funding_settled_ts) for p in pending]

    def _pending_event(self, ts: float, pending: dict[str, Any], settled_ts: float | None) -> Event:
        event = self._funding_event(
            ts, pending["instant"], self.funding_rate_pct, pending["mark"], pending["qty"], pending["holders"]
        )
        if settled_ts is not None:
            event.fields["rate_settled_at"] = _iso_instant(settled_ts)
        return event

    def _funding_event(
        self, ts: float, instant: float, rate: float, mark: float, qty: float, holders: list[list[Any]]
    ) -> Event:
        """The charge of `rate` at `instant` on the position `qty` at `mark`, split among `holders`
        (the strategies' virtual positions then), booked now."""
        flat = abs(qty) < EPS
        amount = 0.0 if flat else qty * mark * rate / 100  # longs pay a positive rate
        self.funding_paid += amount
        total = sum(q for _, q in holders)
        shares: list[tuple[str, float]]
        if flat:
            shares = [(s, q * mark * rate / 100) for s, q in holders]
        elif len(holders) > 1 and abs(total) > EPS:
            shares = [(s, amount * q / total) for s, q in holders]
        else:
            shares = [(holders[0][0] if holders else "", amount)]
        allocations = [[s, share] for s, share in shares]
        for sid, share in shares:  # in the round trip it is paid in, as the report counts it
            virtual = self.virtual.get(sid)
            if virtual is not None and virtual.qty:
                virtual.trade_net -= share
        return Event(
            ts,
            "funding",
            {
                "instant": _iso_instant(instant),
                "rate_pct": rate,
                "mark_price": mark,
                "position_qty": fast_round(qty, 8),
                "amount": amount,
                "allocations": allocations,
                "symbol": self.symbol,
            },
        )

    def _work_quote(self, tick: Tick, ts: float) -> list[Event]:
        """Live: resting orders against a new quote: stops trigger on the last price; limits fill
        when the last trade went through their price, up to the size traded. The exchange's
        quotes (`source` ws, rest) say a trade by their `last_qty` (the feed's trade quotes): one
        of 0 repeats the last price of an earlier trade, which fills no limit (found by an audit:
        a limit that arrived after a print at its price, the book above it, was filled by that
        print on the next book quote). The mock's quotes are each a trade of unknown size."""
        events: list[Event] = []
        last_qty = tick.last_qty
        available = last_qty if last_qty > 0 or tick.source in EXCHANGE_QUOTE_SOURCES else math.inf
        for working in sorted(self.working.values(), key=lambda w: w.arrived_ts):
            order = working.order
            if working.order.id not in self.working:
                continue  # cancelled or resized away by an earlier fill in this loop
            if order.order_type == "stop_market" or working.triggered:
                assert order.trigger_price is not None or working.triggered
                hit = working.triggered or (
                    tick.last >= order.trigger_price  # type: ignore[operator]
                    if order.side == "buy"
                    else tick.last <= order.trigger_price  # type: ignore[operator]
                )
                if hit:
                    del self.working[order.id]
                    events += self._take(order, working.remaining, ts, tick)
            elif order.order_type == "limit" and available > EPS:
                assert order.limit_price is not None
                if self._traded_through(order.side, order.limit_price, tick.last):
                    qty = self.instrument.round_qty(min(working.remaining, available))
                    if qty >= self.instrument.min_qty:
                        available -= qty
                        events += self._rest_fill(working, qty, order.limit_price, ts, tick)
        return events

    def _traded_through(self, side: str, limit: float, price: float) -> bool:
        if self.config.limit_fill_on_touch:
            return price <= limit if side == "buy" else price >= limit
        return price < limit if side == "buy" else price > limit

    # --- a candle's path ----------------------------------------------------------------------------

    def _path(self, candle: Candle) -> tuple[float, float, float, float]:
        """The prices a candle is worked along (`broker.intrabar`): open, an extreme, the other,
        close. 'ohlc': the extreme nearer the open first (a tie: the low). 'pessimistic': the
        extreme against the open position first (a long's stop before its target); flat, as 'ohlc'."""
        o, h, lo, c = candle.open, candle.high, candle.low, candle.close
        pos = self.position_qty
        if self.config.intrabar == "pessimistic" and not -EPS < pos < EPS:
            low_first = pos > 0
        else:
            low_first = o - lo <= h - o
        return (o, lo, h, c) if low_first else (o, h, lo, c)

    def _walk(self, candle: Candle, ts: float, jump_from: float | None) -> list[Event]:
        """Work the candle along its path. Between two points the price passes every level in
        between, in order, so what triggers first is what the price reaches first; from
        `jump_from` (the last candle's close) to the open it jumps: a stop crossed by the gap
        fills at the open, a liquidation crossed by it comes first. The fills of the candle take
        at most `max_volume_participation` of its volume (a liquidation is not limited)."""
        points = self._path(candle)
        budget = self.participation * candle.volume if candle.volume > 0 else math.inf
        events: list[Event] = []
        done: set[str] = set()  # orders that cannot take more in this candle
        a = points[0] if jump_from is None else jump_from
        for i, b in enumerate(points):
            first = i == 0
            for _ in range(10_000):  # each round fills, removes or sets aside one order
                jump = first and a != b
                # an order that arrived in this candle (at its open quote or later) did not rest
                # through the gap before it (found by a review: a sell limit placed at an open
                # 5,000 below the last close filled at its own price, 1,500 above the candle's
                # high); live, the quotes worked it from its arrival, the candle's range only
                # what was working for the whole of it (a wick before an order does not fill it)
                since = candle.open_ts if (jump or not self.bars) else math.inf
                hit = self._first_hit(a, b, done, first, jump, since)
                if hit is None:
                    break
                level, kind, working = hit
                at = b if first else level  # where the market is when it triggers
                tick = quote(ts, self.instrument.round_price(at), candle.symbol)
                if kind == "liquidation":
                    events += self._liquidate(ts, at, tick)
                else:
                    assert working is not None
                    order = working.order
                    qty = working.remaining
                    if qty > budget:
                        qty = self.instrument.round_qty(budget)
                    if qty < self.instrument.min_qty:
                        done.add(order.id)
                        continue
                    budget -= qty
                    before = self.fill_seq
                    if kind == "limit":
                        assert order.limit_price is not None
                        events += self._rest_fill(
                            working, qty, order.limit_price, ts, tick, at if self.bars else None
                        )
                    else:  # a stop triggers (or a triggered order's rest): a market order now
                        rest_of_stop = working.triggered and order.order_type == "stop_market"
                        working.triggered = True
                        working.remaining = fast_round(working.remaining - qty, 8)
                        if working.remaining < self.instrument.min_qty:
                            self.working.pop(order.id, None)
                        price, bound = self._in_range(
                            order.side,
                            self._stop_rest_price(order, at, candle) if rest_of_stop else at,
                            candle,
                        )
                        events += self._fill(
                            order,
                            qty,
                            price,
                            "taker",
                            ts,
                            tick,
                            partial=order.id in self.working,
                            source="candle",
                            at=at if self.bars else None,
                            bound=bound,
                        )
                    if self.fill_seq == before or order.id in self.working:
                        done.add(order.id)  # nothing filled, or the rest waits for the next candle
                a = at
            a = b
            # an extreme: the drawdown there, as it now stands (flat: nothing moved since the last mark)
            if self.bars and (i == 1 or i == 2) and not -EPS < self.position_qty < EPS:
                self._mark_at(b)
        return events

    def _cash(self) -> float:
        """Equity with no position open: `equity`'s arithmetic, in its order."""
        return (
            self.starting_equity + self.realized_pnl - (self.fees_maker + self.fees_taker) - self.funding_paid
        )

    def _mark_extremes(self, open_: float, high: float, low: float, pos: float, cash: float) -> None:
        """A backtest candle nothing traded in, with a position open: the equity at its two
        extremes, in the path's order (`_path`), goes into the peak and the deepest drawdown, as a
        live session's marks at every quote would (its open and close are the quotes' marks). A
        wick against the position is a drawdown even when the candle closes where it opened (found
        by an audit: the report's maximum drawdown counted the marks at opens and closes only)."""
        avg = self.avg_price
        low_equity = cash + (low - avg) * pos
        high_equity = cash + (high - avg) * pos
        # pessimistic: the extreme against the position first
        low_first = pos > 0 if self.pessimistic else open_ - low <= high - open_
        first, second = (low_equity, high_equity) if low_first else (high_equity, low_equity)
        self._mark_equity(first)
        self._mark_equity(second)

    def _mark_at(self, price: float) -> None:
        """The equity with the position valued at `price` (where a backtest candle's path is), into
        the peak and the deepest drawdown."""
        pos = self.position_qty
        self._mark_equity(self._cash() + ((price - self.avg_price) * pos if not -EPS < pos < EPS else 0.0))

    def _mark_equity(self, equity: float) -> None:
        """Equity at a point of a backtest candle's path: into the drawdown, and to the risk gate
        when it reaches the watch's floor (found by an audit: a wick through the loss limit, the
        candle closing where it opened, never stopped a backtest that a live session's quotes
        would have stopped)."""
        self._update_drawdown(equity)
        if equity <= self.watch_floor:
            self.update_due = True
            if equity < self.path_low:
                self.path_low = equity
        if self.path_equities is not None:
            self.path_equities.append(equity)

    @staticmethod
    def _stop_rest_price(order: Order, open_price: float, candle: Candle) -> float:
        """Where the rest of a stop that the participation cap split fills, on a later candle: the
        worse of the candle's open and the stop's trigger, as far as the candle's range reaches.
        The market would have taken all of it when the stop triggered, walking the book down (a
        sell), so a rest is never better than the trigger when the candle went back through it,
        and at the candle's worst price when it stayed on the better side all along (a price the
        market offered: the low for a sell, the high for a buy)."""
        trigger = order.trigger_price
        assert trigger is not None
        if order.side == "sell":
            return max(candle.low, min(open_price, trigger))
        return min(candle.high, max(open_price, trigger))

    def _first_hit(
        self, a: float, b: float, done: set[str], first: bool, jump: bool, since: float = math.inf
    ) -> tuple[float, str, Working | None] | None:
        """What the price, moving from `a` to `b`, reaches first: (level, kind, order), among the
        orders that arrived before `since`. Live, no liquidation: the mark triggers it (`_mark`),
        not a candle's last-trade wick."""
        lo, hi = (a, b) if a <= b else (b, a)
        best: tuple[float, int, float, float, str, Working | None] | None = None
        pos = self.position_qty
        # not on the gap into a candle for a position entered (or added to) at its open or later:
        # it did not go through the gap, whose other end was checked at the open quote with the
        # position held then (found by an audit: a long bought at an open 1 % above the last
        # close, at 100x, was liquidated by that gap at its bankruptcy price, below the candle's low)
        if self.bars and not -EPS < pos < EPS and not (jump and self.entry_ts >= since):
            liq = self.liq_price
            if pos > 0 and lo <= liq:
                level = liq if a > liq else a
                best = (-3.0 if jump else abs(level - a), 2, 0.0, level, "liquidation", None)
            elif pos < 0 and hi >= liq:
                level = liq if a < liq else a
                best = (-3.0 if jump else abs(level - a), 2, 0.0, level, "liquidation", None)
        touch = self.config.limit_fill_on_touch
        for working in self.working.values():
            order = working.order
            if order.id in done or (working.arrived_ts >= since and not working.triggered):
                continue  # (a triggered order's rest is a market order: it takes the open)
            buy = order.side == "buy"
            if working.triggered:
                if not first:
                    continue
                level, rank = a, 0
                key = (-2.0, rank, working.arrived_ts, level, "stop", working)
            elif order.order_type == "stop_market":
                trigger = order.trigger_price
                assert trigger is not None
                if buy:  # rising to the trigger
                    if hi < trigger:
                        continue
                    level = trigger if a < trigger else a
                else:
                    if lo > trigger:
                        continue
                    level = trigger if a > trigger else a
                key = (abs(level - a), 1, working.arrived_ts, level, "stop", working)
            elif order.order_type == "limit":
                limit = order.limit_price
                assert limit is not None
                if buy:  # falling through the limit
                    if not (lo < limit or (touch and lo <= limit)):
                        continue
                    level = limit if a > limit else a
                else:
                    if not (hi > limit or (touch and hi >= limit)):
                        continue
                    level = limit if a < limit else a
                key = (abs(level - a), 3, working.arrived_ts, level, "limit", working)
            else:
                continue
            if best is None or key[:3] < best[:3]:
                best = key
        if best is None:
            return None
        return best[3], best[4], best[5]

    def _in_range(self, side: str, price: float, candle: Candle) -> tuple[float, float | None]:
        """A market order on a candle's path (a stop triggered, the rest of a stop or of a capped
        order) at `price`, where the market was, moved `broker.slippage_bps` against, but never
        beyond the candle's range: a sell not under its low, a buy not over its high, the worst
        prices anyone traded at in it (found by an audit: a stop whose trigger lay within the
        slippage of the low filled below it, a price the market never offered). Returns the price
        and the candle's extreme it was cut at (None: the whole slippage taken). On the grid: the
        extreme is rounded into the candle (data finer than the tick), yet never better than
        `price` itself rounded against the trader."""
        worse = self._worse(side, price)
        round_price = self.instrument.round_price
        if side == "sell":
            floor = min(round_price(candle.low, "up"), round_price(price, "down"))
            return (floor, floor) if worse < floor else (worse, None)
        ceiling = max(round_price(candle.high, "down"), round_price(price, "up"))
        return (ceiling, ceiling) if worse > ceiling else (worse, None)

    def _worse(self, side: str, price: float, bps: float | None = None) -> float:
        """`price` moved `bps` (default `broker.slippage_bps`) against a buyer (up) or a seller
        (down), on the tick grid, never better."""
        if bps is None:
            bps = self.config.slippage_bps
        if side == "buy":
            return self.instrument.round_price(price * (1 + bps / 10_000), "up")
        return self.instrument.round_price(price * (1 - bps / 10_000), "down")

    def _liquidate(self, ts: float, mark: float, tick: Tick | None = None) -> list[Event]:
        """The exchange takes the position at its bankruptcy price: the loss is the position's
        margin, plus the taker fee on the closing fill (Bitunix publishes no separate liquidation
        fee: docs/fills.md)."""
        pos = self.position_qty
        if -EPS < pos < EPS:
            return []
        tick = tick or self.last_tick
        if tick is None:
            tick = quote(ts, self.instrument.round_price(mark), self.symbol)
        side: Side = "sell" if pos > 0 else "buy"
        qty = fast_round(abs(pos), 8)
        notional = qty * self.avg_price
        price = self.bankruptcy_price()
        self.liquidations += 1
        order = Order(
            id=f"{self.id_prefix}liq-{self.fill_seq + 1}",
            ts=ts,
            side=side,
            qty=qty,
            decision_price=price,
            reason="liquidation",
            reduce_only=True,
            protective=True,
        )
        events = [
            Event(
                ts,
                "liquidation",
                {
                    "mark_price": mark,
                    "liquidation_price": self.liq_price,
                    "bankruptcy_price": price,
                    "position_qty": fast_round(pos, 8),
                    "margin": notional / self.config.leverage,
                    "maintenance_margin_rate": self.instrument.maintenance_margin_rate(notional),
                    "symbol": self.symbol,
                },
            )
        ]
        events += self.cancel_all(ts, "liquidation")
        return events + self._fill(order, qty, price, "taker", ts, tick, source="bankruptcy")

    # --- orders ---------------------------------------------------------------------------------

    def on_arrival(self, order: Order, ts: float) -> list[Event]:
        """The order reaches the market now. Live, a funding instant passed since the last market
        event is charged first, on the position open at it (found by an audit: the fill went
        first, and a position opened 0.1 s after 16:00 paid the 16:00 funding; in a backtest each
        candle's quote and close have charged every instant before an order arrives)."""
        return self._funding_before(ts) + self._arrive(order, ts)  # the funding first

    def _funding_before(self, ts: float) -> list[Event]:
        """Live: the funding instants passed since the last market event, charged before what
        happens at `ts` (a backtest's quotes and closes have charged them already)."""
        if self.bars or ts < self.next_funding_ts or self.last_ts is None:
            return []
        return self._advance(ts)

    def _arrive(self, order: Order, ts: float) -> list[Event]:
        if self.last_tick is None:
            return self._refuse(order, ts, "no_market_data", order.qty)
        refusal = self._entry_refusal(order, ts)
        if refusal is not None:
            return self._refuse(order, ts, refusal, order.qty)
        if not order.protective:  # what the exchange itself would refuse
            price = order.limit_price if order.order_type == "limit" else order.trigger_price
            refusal = self.instrument.refusal(order.qty, order.order_type, price, self.config.leverage)
            if refusal is not None:
                return self._refuse(order, ts, refusal, order.qty)
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
            own = self._own_qty(order)
            closable = abs(own) if own * (1 if order.side == "buy" else -1) < 0 else 0.0
            if closable < EPS:
                return self._refuse(order, ts, "reduce_only_nothing_to_close", qty)
            if qty > closable + EPS:
                self._count_processed(order, qty - closable)
                qty = fast_round(closable, 8)
                events = [self._resized(order.id, qty, ts)]  # the record says why the rest never fills
                return events + self._execute_qty(order, qty, ts, tick)
        else:
            refusal = self._margin_refusal(order, qty, tick)
            if refusal is not None:
                return self._refuse(order, ts, refusal, qty)
        return self._execute_qty(order, qty, ts, tick)

    def _execute_qty(self, order: Order, qty: float, ts: float, tick: Tick) -> list[Event]:
        """`qty` of the order, allowed, reaches the market: it takes, or rests."""
        if order.order_type == "market":
            return self._take(order, qty, ts, tick)
        if order.order_type == "limit":
            assert order.limit_price is not None
            touch = tick.ask if order.side == "buy" else tick.bid
            marketable = order.limit_price >= touch if order.side == "buy" else order.limit_price <= touch
            if marketable and order.post_only:
                return self._refuse(order, ts, "post_only_would_take", qty)
            if marketable:  # it takes as a market order would, never beyond its limit (found by a
                # review: it took its whole size at the touch, beside a market order walking the book)
                return self._take(order, qty, ts, tick, limit=order.limit_price)
        return self._rest(order, qty, ts)

    def _expire(self, ts: float) -> list[Event]:
        """Working orders whose good-till time has come are cancelled (`expired`): at the first
        market event at or after it (a backtest: the quote or candle that reaches it)."""
        events: list[Event] = []
        for working in list(self.working.values()):
            expire_ts = working.order.expire_ts
            if expire_ts is not None and expire_ts <= ts:
                events += self.cancel(Cancel(working.order.id, ts, "expired"))
        self.next_expiry = self._earliest_expiry()
        return events

    def _earliest_expiry(self) -> float:
        return min(
            (w.order.expire_ts for w in self.working.values() if w.order.expire_ts is not None),
            default=math.inf,
        )

    def _rest(self, order: Order, qty: float, ts: float, note: str = "") -> list[Event]:
        """`order` rests at the market (a limit or a stop, or a market order's rest) for `qty`."""
        self.working[order.id] = Working(order, qty, ts, triggered=order.order_type == "market")
        if order.expire_ts is not None and order.expire_ts < self.next_expiry:
            self.next_expiry = order.expire_ts
        fields: dict[str, Any] = {
            "order_id": order.id,
            "type": order.order_type,
            "side": order.side,
            "qty": qty,
            "limit_price": order.limit_price,
            "trigger_price": order.trigger_price,
            "reason": order.reason,
            "symbol": self.symbol,
        }
        if note:
            fields["note"] = note
        return [Event(ts, "order.working", fields)]

    def _margin_refusal(self, order: Order, qty: float, tick: Tick) -> str | None:
        """Initial margin: the position after the order, at the touch, over leverage, within
        equity ('insufficient_margin'); and the leverage within the maintenance tier of the
        position's notional ('risk_limit_exceeded', the exchange's 20002)."""
        signed = qty if order.side == "buy" else -qty
        after = abs(self.position_qty + signed)
        if after <= abs(self.position_qty):
            return None
        price = tick.ask if order.side == "buy" else tick.bid
        equity = self.equity if self.margin_equity is None else self.margin_equity(self)
        if after * price / self.config.leverage > equity:
            return "insufficient_margin"
        if self.config.leverage > self.instrument.tier(after * price).max_leverage:
            return "risk_limit_exceeded"
        return None

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

    def cancel_all(self, ts: float, reason: str, keep: Container[str] = ()) -> list[Event]:
        """Every working order cancelled, but those in `keep`."""
        return [
            e
            for order_id in list(self.working)
            if order_id not in keep
            for e in self.cancel(Cancel(order_id, ts, reason))
        ]

    def _fit_exits(self, ts: float) -> list[Event]:
        """After a fill: the working exits fit the position. Reduce-only and protective orders
        that can no longer reduce it (flat, or the wrong side) are cancelled; those larger than the
        position are cut to it (`order.amended`), so that one of a stop and a target filling
        resizes the other and neither can flip the position, and an exit's rest never waits for
        more than it can fill."""
        events: list[Event] = []
        for working in list(self.working.values()):
            order = working.order
            if not (order.reduce_only or order.protective):
                continue
            pos = self._own_qty(order)
            against = pos * (1 if order.side == "buy" else -1) < 0
            if -EPS < pos < EPS or not against:
                events += self.cancel(Cancel(order.id, ts, "position_closed"))
            elif working.remaining > abs(pos) + EPS:
                # a reduce-only exit's rest too (found by an audit: an exit's rest that a later
                # fill left larger than the position was cut to it at its own fill, unrecorded:
                # its order was never done by the events' account)
                self._count_processed(order, working.remaining - abs(pos))
                working.remaining = fast_round(abs(pos), 8)
                events.append(self._resized(order.id, working.remaining, ts))
        return events

    @staticmethod
    def _resized(order_id: str, qty: float, ts: float) -> Event:
        """An exit cut to the position it may close: `qty` is what it has still to fill, now."""
        return Event(ts, "order.amended", {"order_id": order_id, "qty": qty, "reason": "resized_to_position"})

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
                    "symbol": self.symbol,
                },
            )
        ]

    def _count_processed(self, order: Order, qty: float) -> None:
        if not order.protective:
            virtual = self._virtual(order.strategy_id)
            if order.side == "buy":
                self.processed_signed_qty += qty
                self.processed_buy_qty += qty
                virtual.processed_signed_qty += qty
                virtual.processed_buy_qty += qty
            else:
                self.processed_signed_qty -= qty
                virtual.processed_signed_qty -= qty
            self._virtual_positions = None

    def _virtual(self, strategy_id: str) -> Virtual:
        virtual = self.virtual.get(strategy_id)
        if virtual is None:
            virtual = self.virtual[strategy_id] = Virtual()
        return virtual

    def _own_qty(self, order: Order) -> float:
        """The position an order of a strategy's reduces: its virtual one; for an order of no
        strategy's (a flatten, a liquidation, an untagged order), the account's."""
        if order.strategy_id:
            virtual = self.virtual.get(order.strategy_id)
            return virtual.qty if virtual is not None else 0.0
        return self.position_qty

    def _allocate(self, order: Order, signed: float, price: float, fee: float) -> list[list[Any]]:
        """A fill's split among the strategies' virtual positions: an order of a strategy's is
        wholly its own; a fill of no strategy's order that closes (a flatten, a liquidation) goes
        to the strategies holding positions, in proportion to them (each closes the same share of
        its own). The fee in proportion to each share's size. `[strategy_id, signed, realized, fee]`."""
        sid = order.strategy_id
        shares: list[tuple[str, float]]
        if sid or not order.protective:
            shares = [(sid, signed)]
        else:
            holders = [(s, v.qty) for s, v in self.virtual.items() if not -EPS < v.qty < EPS]
            total = sum(q for _, q in holders)
            shares = (
                [(s, signed * q / total) for s, q in holders]
                if holders and abs(total) > EPS
                else [("", signed)]
            )
        self._virtual_positions = None
        gross = sum(abs(q) for _, q in shares)
        allocations: list[list[Any]] = []
        for s, q in shares:
            share_fee = fee if len(shares) == 1 else fee * abs(q) / gross
            realized, closed = self._virtual(s).book(q, price, share_fee)
            if closed is not None:  # the strategy's round trip ended: the risk gate counts it
                self.closed.append(ClosedTrade(self.symbol, closed, s))
            allocations.append([s, fast_round(q, 10), realized, share_fee])
        return allocations

    def _take(
        self,
        order: Order,
        qty: float,
        ts: float,
        tick: Tick,
        *,
        capped: bool = True,
        limit: float | None = None,
    ) -> list[Event]:
        """Take liquidity now. A fresh book: walk it level by level, using up what is taken until
        the next book, and past its last level pay `slippage_bps` beyond it. Else the touch: with
        its size known, at most what is left of it at the touch and the rest by the impact model
        (each further touch-size one more `slippage_bps` step); with no size known, the touch plus
        `slippage_bps`. In a backtest at most what the participation cap leaves (the rest waits
        for the next candle); `capped=False` (flatten, liquidation) takes it all. `limit`: a
        marketable limit order's price, beyond which nothing fills (the touch plus slippage
        beyond it fills at it); what it cannot take rests at it."""
        events: list[Event] = []
        if self.bars and capped and qty > self.quote_budget:
            now_qty = self.instrument.round_qty(self.quote_budget)
            rest = fast_round(qty - max(now_qty, 0.0), 8)
            if now_qty >= self.instrument.min_qty:
                self.quote_budget -= now_qty
                events += self._take(order, now_qty, ts, tick, capped=False, limit=limit)
                if limit is not None:  # what it could not take at its price rests with the rest
                    rest = fast_round(rest + now_qty - self._filled_now(events, order.id), 8)
            else:
                now_qty = 0.0
            if rest >= self.instrument.min_qty or now_qty == 0.0:
                events += self._rest(order, rest, ts, note="" if limit is not None else "participation_cap")
            return events
        if self.bars and capped:
            self.quote_budget -= qty
        buy = order.side == "buy"
        side = order.side
        book = self.book
        levels = (book.asks if buy else book.bids) if book else ()
        if book is not None and levels and ts - book.ts <= BOOK_FRESH_S:
            left = qty
            taken = self.book_taken
            for price, size in levels:
                if limit is not None and (price > limit if buy else price < limit):
                    break
                size = fast_round(size - taken.get((side, price), 0.0), 8)
                if size < EPS:
                    continue
                take = self.instrument.round_qty(min(left, size)) if left > size else fast_round(left, 8)
                if take < EPS:
                    continue
                taken[(side, price)] = taken.get((side, price), 0.0) + take
                events += self._fill(order, take, price, "taker", ts, tick, partial=True, source="book")
                left = fast_round(left - take, 8)
                if left < self.instrument.min_qty:
                    break
            if left >= self.instrument.min_qty:  # deeper than the book we can see
                price = self._worse(side, levels[-1][0])
                if limit is not None and (price > limit if buy else price < limit):
                    return events + self._rest(order, left, ts)
                events += self._fill(
                    order, left, price, "taker", ts, tick, partial=True, source="beyond_book"
                )
            return events
        touch = tick.ask if buy else tick.bid
        touch_size = tick.ask_qty if buy else tick.bid_qty
        if touch_size <= 0:
            price = self._worse(side, touch)
            if limit is not None:
                price = min(price, limit) if buy else max(price, limit)
            return self._fill(order, qty, price, "taker", ts, tick, source="touch_slippage")
        at_touch = self.instrument.round_qty(min(qty, max(touch_size - self.touch_taken, 0.0)))
        left = fast_round(qty - at_touch, 8)
        if at_touch >= EPS:
            self.touch_taken += at_touch
            events += self._fill(
                order, at_touch, touch, "taker", ts, tick, partial=left >= EPS, source="touch"
            )
        if left >= EPS:
            steps = math.ceil(left / touch_size - 1e-9)
            price = self._worse(side, touch, self.config.slippage_bps * max(steps, 1))
            if limit is not None and (price > limit if buy else price < limit):
                return events + self._rest(order, left, ts)
            events += self._fill(
                order, left, price, "taker", ts, tick, partial=at_touch >= EPS, source="impact"
            )
        return events

    @staticmethod
    def _filled_now(events: list[Event], order_id: str) -> float:
        """The quantity `events` filled of the order."""
        return round(
            sum(
                e.fields["qty"]
                for e in events
                if e.kind == "order.filled" and e.fields["order_id"] == order_id
            ),
            8,
        )

    def _rest_fill(
        self, working: Working, qty: float, price: float, ts: float, tick: Tick, at: float | None = None
    ) -> list[Event]:
        working.remaining = fast_round(working.remaining - qty, 8)
        if working.remaining < self.instrument.min_qty:
            del self.working[working.order.id]
        partial = working.remaining >= self.instrument.min_qty
        return self._fill(
            working.order, qty, price, "maker", ts, tick, partial=partial, source="resting", at=at
        )

    def _fill(
        self,
        order: Order,
        qty: float,
        price: float,
        liquidity: str,
        ts: float,
        tick: Tick,
        partial: bool = False,
        source: str = "touch",
        at: float | None = None,
        bound: float | None = None,
    ) -> list[Event]:
        """Book one fill: fee, position, realized PnL; returns order.filled and position.closed events.
        A reduce-only or protective fill takes at most the position, and only against it. `at`: where
        the market is when it fills, along a backtest candle's path, where the equity after it is
        marked (None: at the mark, the last quote's). `bound`: the candle's extreme a path fill's
        slippage was cut at (`_in_range`), recorded as `range_bound`."""
        signed = qty if order.side == "buy" else -qty
        pos = self.position_qty
        if order.reduce_only or order.protective:
            own = self._own_qty(order)
            closable = abs(own) if own * signed < 0 else 0.0
            if qty > closable + EPS:
                self._count_processed(order, qty - closable)
                qty = fast_round(closable, 8)
                if qty < EPS:
                    return []
                signed = qty if order.side == "buy" else -qty
        rate = self.taker_fee_rate if liquidity == "taker" else self.maker_fee_rate
        fee = qty * price * rate
        self._count_processed(order, qty)
        self.fill_seq += 1
        if liquidity == "taker":
            self.fees_taker += fee
        else:
            self.fees_maker += fee
        events: list[Event] = []
        closed: OpenTrade | None = None
        realized = 0.0
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
            self.position_qty = fast_round(pos + (closing if pos < 0 else -closing), 10)
            remaining = signed + (closing if signed < 0 else -closing)
            if abs(self.position_qty) < EPS:
                self.position_qty = 0.0
                self.avg_price = 0.0
                closed, self.trade = trade, None
        if abs(remaining) > EPS:  # opens or adds
            new_qty = self.position_qty + remaining
            self.avg_price = (self.avg_price * abs(self.position_qty) + price * abs(remaining)) / abs(new_qty)
            self.position_qty = fast_round(new_qty, 10)
            trade = self._trade(ts, new_qty)
            trade.fees += fee * abs(remaining) / qty
            trade.entry_notional += abs(remaining) * price
            trade.entry_qty += abs(remaining)
            trade.max_qty = max(trade.max_qty, abs(new_qty))
            self.entry_ts = ts
        self._update_liq()
        allocations = self._allocate(order, signed, price, fee)
        events.append(
            self._fill_event(order, qty, price, liquidity, fee, rate, realized, ts, tick, partial, source)
        )
        events[-1].fields["allocations"] = allocations
        if bound is not None:
            events[-1].fields["range_bound"] = bound
        if closed is not None:
            events.append(self._closed_event(closed, ts, order.reason))
        if self.working:
            events += self._fit_exits(ts)  # protective orders die with the position, or fit it
        if order.stop_price is not None or order.target_price is not None:
            events += self._attach_protection(order, ts)
        if at is None:
            self._update_drawdown()
        else:  # found by an audit: marked at the candle's open, a limit filled lower made a false peak
            self._mark_at(at)
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
        source: str = "touch",
    ) -> Event:
        touch = tick.ask if order.side == "buy" else tick.bid
        return Event(
            ts,
            "order.filled",
            {
                "order_id": order.id,
                "fill_id": f"{self.id_prefix}f{self.fill_seq}",
                "side": order.side,
                "qty": fast_round(qty, 8),
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
                "latency_ms": fast_round((ts - order.ts) * 1000, 3),
                "partial": partial,
                "realized_pnl": realized,
                "position_qty": fast_round(self.position_qty, 8),
                "reason": order.reason,
                "source": source,
                "levels": [[price, fast_round(qty, 8)]],
                "strategy_id": order.strategy_id,
                "symbol": self.symbol,
            },
        )

    def _attach_protection(self, entry: Order, ts: float) -> list[Event]:
        """An entry's stop-loss (stop-market) and take-profit (limit), reduce-only, one group sized
        to the whole position. Their prices go on the tick grid away from the flattering side: a
        long's stop down and target up, a short's stop up and target down."""
        pos = self._own_qty(entry)
        if -EPS < pos < EPS or (pos > 0) != (entry.side == "buy"):
            return []  # the order only reduced the position: its stop and target are not for it
        events: list[Event] = []
        sid = entry.strategy_id
        for working in [
            w for w in self.working.values() if w.order.protective and w.order.strategy_id == sid
        ]:
            # re-attached for the whole position
            events += self.cancel(Cancel(working.order.id, ts, "bracket_replaced"))
        long = pos > 0
        exit_side: Side = "sell" if long else "buy"
        qty = fast_round(abs(pos), 8)
        grid = self.instrument.round_price
        if entry.stop_price is not None:
            stop = grid(entry.stop_price, "down" if long else "up")
            events += self._protect(exit_side, qty, "stop_market", stop, "stop_loss", ts, sid)
        if entry.target_price is not None:
            target = grid(entry.target_price, "up" if long else "down")
            events += self._protect(exit_side, qty, "limit", target, "take_profit", ts, sid)
        return events

    def _protect(
        self, side: Side, qty: float, kind: str, price: float, reason: str, ts: float, strategy_id: str = ""
    ) -> list[Event]:
        self.protective_seq += 1
        order = Order(
            id=f"{self.id_prefix}p{self.protective_seq}",
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
            strategy_id=strategy_id,
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
                "qty": fast_round(trade.max_qty, 8),
                "entry_price": trade.entry_notional / trade.entry_qty if trade.entry_qty else 0.0,
                "exit_price": trade.exit_notional / trade.exit_qty if trade.exit_qty else 0.0,
                "realized_pnl": trade.realized_pnl,
                "fees": trade.fees,
                "net_pnl": trade.realized_pnl - trade.fees,
                "opened_ts": trade.opened_ts,
                "held_s": fast_round(ts - trade.opened_ts, 3),
                "exit_reason": reason,
                "symbol": self.symbol,
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
            qty=fast_round(abs(self.position_qty), 8),
            decision_price=price,
            reason=reason,
            reduce_only=True,
            protective=True,
        )

    def flatten(self, ts: float, reason: str, order_id: str) -> list[Event]:
        """Cancel every working order and close the position at once (fees and slippage apply;
        not held to the participation cap: a session ends flat). The closing fill is shared by
        the strategies' virtual positions, so each ends flat. When the net position is flat
        already while strategies hold opposite virtual positions (netting to 0), nothing is
        traded: they are crossed against each other at the mark (`_cross`; found by an audit:
        a breaker's flatten kept them, with their stops and targets, and one of those filling
        reopened the account's exposure while entries were halted)."""
        order = self.flatten_order(ts, order_id, reason)
        events = self.cancel_all(ts, reason)
        if order is None:
            return events + self._cross(ts, reason)
        if self.last_tick is not None:
            fields: dict[str, Any] = {
                "order_id": order.id,
                "side": order.side,
                "qty": order.qty,
                "type": "market",
                "requested_price": order.decision_price,
                "reduce_only": True,
                "reason": reason,
                "symbol": self.symbol,
            }
            if not self.bars:
                # live: the quote it closes at is the last the market offered, as old as this (a
                # feed down at the end, a session restarted past its end: `stale_flatten` alerts)
                fields["quote_age_s"] = fast_round(max(0.0, ts - self.last_tick.ts), 3)
            events.append(Event(ts, "order.submitted", fields))
            events += self._take(order, order.qty, ts, self.last_tick, capped=False)
        return events

    def _cross(self, ts: float, reason: str) -> list[Event]:
        """The net position flat, the strategies' virtual positions (opposite, netting to 0)
        closed against each other at the mark: nothing reaches the exchange, so no fee and no
        slippage; each strategy realizes its own at the mark, and between them they realize what
        the account booked when their fills netted (the sum does not depend on the price). A
        `position.crossed` event, its `allocations` as a fill's (`[strategy_id, signed_qty,
        realized_pnl, fee]`, the fee 0)."""
        mark = self.mark_price
        holders = [(s, v.qty) for s, v in self.virtual.items() if not -EPS < v.qty < EPS]
        if not holders or mark is None or not -EPS < self.position_qty < EPS:
            return []
        allocations: list[list[Any]] = []
        for s, q in holders:
            realized, closed = self.virtual[s].book(-q, mark)
            if closed is not None:  # the strategy's round trip ended: the risk gate counts it
                self.closed.append(ClosedTrade(self.symbol, closed, s))
            allocations.append([s, -q, realized, 0.0])
        self._virtual_positions = None
        fields = {"symbol": self.symbol, "price": mark, "reason": reason, "allocations": allocations}
        return [Event(ts, "position.crossed", fields)]

    # --- the component's interface ------------------------------------------------------------------

    def handle(self, message: BrokerMessage, now: float) -> list[Event]:
        """Any input, by type: a market event, an order or cancel (on its way to the market from
        now), or a risk command. Returns the events (for the recorder)."""
        return route(self, message, now)

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
            # no entry reaches the market from here on, and none working fills: each is cancelled
            # now (found by an audit: a resting limit entry filled while a resumed session waited
            # for a quote to flatten at, after its end; its stop and target travel with it); exits stay
            self.stopping = True
            exits = {oid for oid, w in self.working.items() if w.order.reduce_only or w.order.protective}
            if len(exits) < len(self.working):
                return self.cancel_all(now, "session_stopping", keep=exits)
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

    def heartbeat_fields(self, ts: float) -> dict[str, float | str | None]:
        """One metrics row: the account at `ts`."""
        return {
            "elapsed_s": fast_round(ts - self.started_ts, 3),
            "price": self.mark_price,
            "mark_source": self.mark_source,
            "equity": fast_round(self.equity, 6),
            "realized_pnl": fast_round(self.realized_pnl, 6),
            "unrealized_pnl": fast_round(self.unrealized_pnl, 6),
            "fees_paid": fast_round(self.fees_paid, 6),
            # (found by an audit: without it the row's figures did not add up to its equity)
            "funding_paid": fast_round(self.funding_paid, 6),
            "position_qty": fast_round(self.position_qty, 8),
            "drawdown_pct": fast_round(self.drawdown_pct, 4),
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

    def snapshot(self, now: float, symbol: str | None = None) -> AccountSnapshot:
        """The account now, frozen: what every other component reads (built once per step that
        needs it, so computed in one pass). `symbol`: the market event's (one symbol here)."""
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
            or position.processed_buy_qty != self.processed_buy_qty
        ):
            position = self._position = Position(
                self.symbol, pos, self.avg_price, self.processed_signed_qty, "", self.processed_buy_qty
            )
        positions = self._virtual_positions
        if positions is None:
            positions = self._virtual_positions = (
                position,
                *(
                    Position(
                        self.symbol,
                        v.qty,
                        v.avg_price,
                        v.processed_signed_qty,
                        sid,
                        v.processed_buy_qty,
                        v.opened,
                    )
                    for sid, v in self.virtual.items()
                    if sid
                ),
            )
        elif positions[0] is not position:
            positions = self._virtual_positions = (position, *positions[1:])
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
                positions,
                len(self.working) + len(self.in_flight),
                self.stale,
                self.funding_rate_now(now),
                (),
                self._strategy_orders() if self.working or self.in_flight else (),
                self.instrument,
                (),  # limit_orders: the portfolio's (several symbols)
            ),
        )

    def limit_orders(self) -> list[tuple[str, str, float, float, float, float]]:
        """`AccountSnapshot.limit_orders` of this symbol: the strategies' limit orders working or on
        their way (the broker's protective ones aside), what is left of them, by strategy."""
        sums: dict[str, list[float]] = {}
        orders = [(w.order, w.remaining) for w in self.working.values()]
        orders += [(f.message, f.message.qty) for f in self.in_flight if isinstance(f.message, Order)]
        for order, left in orders:
            price = order.limit_price
            if order.protective or order.order_type != "limit" or price is None:
                continue
            row = sums.setdefault(order.strategy_id, [0.0, 0.0, 0.0, 0.0])
            at = 0 if order.side == "buy" else 2
            row[at] += left
            row[at + 1] += left * price
        return [(self.symbol, sid, row[0], row[1], row[2], row[3]) for sid, row in sorted(sums.items())]

    def _strategy_orders(self) -> tuple[tuple[str, int], ...]:
        """The orders working or on their way, counted by the strategy that sent them (a cancel on
        its way counts for its order's strategy)."""
        counts: dict[str, int] = {}
        for working in self.working.values():
            sid = working.order.strategy_id
            counts[sid] = counts.get(sid, 0) + 1
        for flight in self.in_flight:
            message = flight.message
            if isinstance(message, Order):
                sid = message.strategy_id
            else:
                target = self.working.get(message.order_id)
                sid = target.order.strategy_id if target is not None else ""
            counts[sid] = counts.get(sid, 0) + 1
        return tuple(sorted(counts.items()))

    def funding_rate_now(self, now: float) -> float:
        """The funding rate a strategy sees now (percent per 8 h): the last settled, as live (the
        `price` channel's `fr`), in a backtest the schedule's row at or before `now` (found by an
        audit: the row of the next funding instant, a rate not yet known, looked ahead). A live
        symbol on another funding interval than 8 h: its rate per interval scaled to 8 h (a 4 h
        rate x2, a 1 h rate x8: what the position pays in 8 h at that rate), so that the
        strategies' gates, in percent per 8 h, compare like with like."""
        if self.funding is not None:
            return self.funding.rate_pct_at(now) * (FUNDING_EVERY_S / self.funding.interval_s_at(now))
        return self.funding_rate_pct * (FUNDING_EVERY_S / self.funding_every_s)

    def account_update(self, now: float) -> AccountUpdate | None:
        """The update the risk gate asked to hear (its watch) or trades closed since the last one;
        None when there is nothing to tell."""
        if not self.update_due and not self.closed:
            return None
        closed, self.closed = tuple(self.closed), []
        self.update_due = False
        low, self.path_low = self.path_low, math.inf
        return AccountUpdate(now, self.snapshot(now), closed, low if low < math.inf else None)


def _grid_bid_ask(price: float, scale: int) -> tuple[float, float]:
    """The bid and ask of a quote at `price` on a grid of `1 / scale`: the price itself on the grid,
    else the ticks below and above it (`PaperBroker._grid_quote`)."""
    units = price * scale
    # within 1e-6 of a whole tick: `-1e-6 < units - round(units) < 1e-6`, from the floor (both
    # differences are exact, the same doubles; `round` costs a generic call, compiled)
    below = math.floor(units)
    above_floor = units - below
    if above_floor < 1e-6 or above_floor - 1.0 > -1e-6:
        return price, price
    return below / scale, (below + 1) / scale


def _slippage_bps(side: str, reference: float, fill: float) -> float:
    """Positive when the fill is worse for us than the reference price."""
    if reference <= 0:
        return 0.0
    diff = fill - reference if side == "buy" else reference - fill
    return diff / reference * 10_000
