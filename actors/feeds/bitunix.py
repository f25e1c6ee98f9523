"""Feed actor for live Bitunix market data: WebSocket first, REST for history, gaps and outages.

- **Symbols**: every symbol the session trades (`Config.symbols`), on ONE WebSocket connection.
  Each has its own state: candle building, price-jump checks, history seed, instrument, book,
  staleness and REST failover; every market event carries its `symbol`. Frames for a symbol not
  subscribed are dropped as `wrong_symbol`.
- **WebSocket** (trio-websocket) on `feed.ws_url`: one subscribe frame with, for each symbol, the
  kline channel of `session.interval`, `depth_book15` (the book, 15 levels a side) and `price`
  (mark, funding): 3 subscriptions a symbol, at most 300 a socket (the config allows 100 symbols);
  sends the exchange's JSON ping every `feed.ping_interval_s`; a send-side limiter keeps every
  socket under 5 client messages in any second (the exchange disconnects above it). Kline pushes
  carry the current candle only: a candle is closed when the first frame of the next bucket
  arrives, confirmed over REST (the exchange's record of it, whole: `_confirmed`,
  `feed.confirm_candle_s`), and emitted exactly once, in order. Each book push becomes two market
  events, at the same time: the `Book` (bids descending, asks ascending, up to 15 levels; the
  broker walks it) and then the best bid/ask `Tick` (`last_qty` 0: no trade said); each kline
  push whose volume grew, a trade `Tick` (`_traded`: the only quotes that fill resting limits).
- **Instrument** at start: `GET trading_pairs?symbols=A,B,..` (one call for every symbol; bounded: `INSTRUMENT_ATTEMPTS`
  tries within half of `feed.connect_timeout_s`, a rate-limit reply waited out, not counted as one), parsed by `from_trading_pair` over the shipped
  table's instrument, sent as an `Instrument` market event before the first quote, book or candle,
  one per symbol: the data frames read before they are in are not handed out (counted in
  `feed.live`), so the first quote is the first frame after them, not one that waited. When the call fails or a row is
  unusable: the table's instrument, with a warning and the reason in that symbol's
  `feed.instrument` (`source: "table"`). When the exchange says it does not trade a symbol (code
  20015: then each symbol is asked alone to name it; or no row for it): `UnknownSymbol`, and the
  session ends at once with an error (nothing to trade; no mock fallback either).
- **Reconnect** with exponential backoff and full jitter (`feed.backoff_initial_s` ..
  `feed.backoff_max_s`; `Backoff`): the delay before attempt n+1 is uniform in
  [0, min(max, initial * 2**n)]. A connection that delivered data for `HEALTHY_S` (2 s, from its
  first data frame to its last) resets n to 0, so a server that drops every connection after a few
  seconds costs a short delay each time, not a delay grown to the cap; one that closes before
  that (refused, no data, or data for less than 2 s) keeps n growing: a server that accepts and
  closes at once is retried ever more slowly, never in a storm, and a reset needs 2 s of data, so
  quick reconnects come at most one per 2 s. Silence (no data frame of any symbol for
  `feed.stale_after_s`) counts as a failure. Each socket sends at most 5 messages in any second
  (`SendLimiter`, its own per socket). The candles being built when the socket dropped are
  thrown away; REST fills the gaps instead, so each series has no gap and no duplicate.
- **REST** (httpx) on `feed.rest_url`: seeds `strategy.history` candles of each symbol at start
  (with several strategies, the largest `history` of them; a live candle that closes before its
  symbol's seed is handed out is held and goes out after it, the socket read on meanwhile:
  `_release_held`), backfills gaps, and polls a symbol's
  candles and book once it has had no WebSocket data for `feed.failover_after_s` and is out: every
  symbol while the socket is down; one symbol gone stale alone while the others flow. Polling
  stops when its WebSocket data comes back. A symbol whose other data flows for `feed.stale_after_s`
  past its last kline push has its candles polled (`feed.klines`), past its last book push its
  book (`feed.book`), until those pushes come back.
  A token bucket keeps calls under `feed.rest_rate_limit` per second; rate-limit codes
  (10005/10006), HTTP 429/5xx and network errors are retried with capped backoff and jitter (a
  reply's `Retry-After` waited at least, at most 30 s).
- **Validation** is `protocols.bitunix.FrameValidator`: rejected frames are dropped, counted by
  reason (`feed.malformed` events, aggregated) and logged at most once per reason per 10 s; so
  are REST kline rows that are not a sane candle (`REST_ROW`, `_klines`).
- **Staleness** is per symbol, told by `FeedStatus(symbol=..)` market events (each symbol stale
  at start with "no data yet", fresh at its first data): a connection that fails (drop, refused,
  no data of any symbol for `feed.stale_after_s`) makes every symbol stale; a symbol with no data
  for `feed.stale_after_s` while others flow (socket waiting time only) becomes stale on its own,
  with no reconnect, and fresh when its data comes back. A `feed.stale` event names the symbols
  that went stale together, a `feed.fresh` event each that is fresh again (its WebSocket data or
  its REST polling: the `reason`), so the record says when each stale period ended. `FeedHealth`
  is the session's summary: `health.stale` while ANY symbol is stale. History candles (seed and
  backfill) are marked `backfill=True` so the strategy warms up on them but never trades on them.
- **Fallback**: `run_live_feed` switches to the mock source (`symbols=config.symbols`), loudly,
  when the WebSocket delivers no data within `feed.connect_timeout_s` at start and
  `feed.fallback = "mock"`.

Nothing here closes the subscribers' channels: `run_live_feed` owns them.
"""

from __future__ import annotations

import math
import random
import socket
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import attrs
import httpx
import trio
import trio_websocket
from loguru import logger

from actors.clock import SessionClock
from actors.config import Config
from actors.feeds.funding import funding_interval_s
from actors.feeds.mock import FeedHealth, MarketWalk, RandomWalk, fan_out, run_mock_feed
from protocols import bitunix
from protocols.instruments import Instrument, from_trading_pair, table_instrument
from protocols.messages import (
    FALLBACK_REASON,
    Book,
    Candle,
    Event,
    EventSender,
    FeedStatus,
    Funding,
    MarketEvent,
    Tick,
)
from protocols.records import iso

HEALTHY_S = 2.0  # a connection that delivered data for this long resets the reconnect backoff
MALFORMED_REPORT_S = 5.0  # feed.malformed events aggregate the drops of this period
STATS_EVERY = 6  # a feed.stats event every 6 such periods (30 s)
WARN_EVERY_S = 10.0  # at most one warning per rejection reason in this period
WS_MAX_MSGS = 5  # client messages per second per socket (the exchange's limit)
WS_WINDOW_S = 1.1  # the limiter's window: a margin over one second for network jitter
REST_ATTEMPTS = 8
REST_BACKOFF_S = 0.5
REST_BACKOFF_MAX_S = 8.0
FAILOVER_POLL_S = 1.0
WS_CLOSE_TIMEOUT_S = 1.0
INSTRUMENT_ATTEMPTS = 3  # the table is a good fallback: do not hold the start up for long
TOP_FRESH_S = 1.0  # a trade quote goes at a book's top at most this old (`_trade_quote`)
CONFIRM_RETRY_S = 0.25  # a closed candle's REST confirm asks again after this (`_confirmed`)
RATE_LIMITED_WAIT_S = 1.0  # a patient call's wait after a rate-limit reply (`rest_get`)
REST_ROW = "rest_kline_row"  # the reason a malformed REST kline row is counted under
SILENCE_EPS_S = 1e-6  # float slack when a receive deadline is compared with stale_after_s
# A receive deadline can pass while this process is held up (a loaded machine, a long GC pause, a
# laptop waking from sleep) with frames already waiting in the socket: when a silence reaches
# stale_after_s, the socket is read on for this long before it is called stale, so that those
# frames count.
STALL_GRACE_S = 0.5


class UnknownSymbol(Exception):
    """The exchange does not trade the session's symbol (trading_pairs: code 20015, or no row):
    a start-up error, the session ends with it."""


class SendLimiter:
    """At most `max_msgs` sends in any `window_s` (sliding window): `await acquire()` before each."""

    def __init__(self, max_msgs: int = WS_MAX_MSGS, window_s: float = WS_WINDOW_S) -> None:
        self.max_msgs = max_msgs
        self.window_s = window_s
        self.sent: list[float] = []
        self.lock = trio.Lock()

    async def acquire(self) -> None:
        async with self.lock:
            if len(self.sent) >= self.max_msgs:
                await trio.sleep_until(self.sent[-self.max_msgs] + self.window_s)
            self.sent.append(trio.current_time())
            del self.sent[: -self.max_msgs]


class TokenBucket:
    """`rate` tokens per second, at most `capacity` saved: calls come no faster than the rate."""

    def __init__(self, rate: float, capacity: float = 1.0) -> None:
        self.rate = rate
        self.max_rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated: float | None = None
        self.lock = trio.Lock()

    async def acquire(self) -> None:
        async with self.lock:
            now = trio.current_time()
            if self.updated is not None:
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens < 1.0:
                wait = (1.0 - self.tokens) / self.rate
                await trio.sleep(wait)
                self.updated = trio.current_time()
                self.tokens = 1.0
            self.tokens -= 1.0

    def slow_down(self) -> None:
        """The exchange said "too many requests": halve the rate (down to one call in 2 s)."""
        self.rate = max(0.5, self.rate / 2)

    def recover(self) -> None:
        """A call went through: creep back toward the configured rate."""
        self.rate = min(self.max_rate, self.rate + 0.25)


class _Stale(Exception):
    pass


def _names(markets: Sequence[_Market]) -> str:
    return ", ".join(m.symbol for m in markets)


def backoff_delay(attempt: int, initial: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, initial * 2**attempt)]."""
    return rng.uniform(0.0, min(cap, initial * 2.0 ** min(attempt, 30)))


class Backoff:
    """The WebSocket reconnect policy (see the module docstring): `next_delay(data_s)` after each
    connection ends, with how long it delivered data (its first data frame to its last; 0 when it
    delivered none). `attempt`: the connections that failed since the last healthy one."""

    def __init__(self, initial: float, cap: float, rng: random.Random, healthy_s: float = HEALTHY_S) -> None:
        self.initial = initial
        self.cap = cap
        self.rng = rng
        self.healthy_s = healthy_s
        self.attempt = 0

    def next_delay(self, data_s: float) -> float:
        if data_s >= self.healthy_s:
            self.attempt = 0  # a healthy connection: start again from the shortest delay
        delay = backoff_delay(self.attempt, self.initial, self.cap, self.rng)
        self.attempt += 1
        return delay


@attrs.define
class _Link:
    """One WebSocket connection's data, for the backoff: when its first and last accepted data
    frames arrived, trio time."""

    first_data_at: float | None = None
    last_data_at: float | None = None

    def heard(self, now: float) -> None:
        if self.first_data_at is None:
            self.first_data_at = now
        self.last_data_at = now

    @property
    def data_s(self) -> float:
        if self.first_data_at is None or self.last_data_at is None:
            return 0.0
        return self.last_data_at - self.first_data_at


def _why(exc: BaseException) -> str:
    """An exception's message, or its type's name when it has none (httpx's timeouts: a REST
    failure recorded with an empty reason said nothing)."""
    return str(exc) or type(exc).__name__


def _network_reason(exc: BaseException) -> str | None:
    """A one-line reason when `exc` (or every leaf of a group) is a network failure, else None."""
    if isinstance(exc, BaseExceptionGroup):
        reasons = [_network_reason(e) for e in exc.exceptions]
        return None if any(r is None for r in reasons) else "; ".join(r for r in reasons if r)
    if isinstance(exc, _Stale):
        return str(exc)
    if isinstance(exc, trio_websocket.ConnectionClosed):
        code = getattr(exc.reason, "code", None)
        return f"connection closed (code {code})"
    if isinstance(exc, trio_websocket.HandshakeError):  # its cause says why (DNS, refused, TLS)
        return f"handshake failed: {_root_cause(exc)}"[:200]
    if isinstance(exc, trio.TooSlowError):
        return "connect timed out"
    if isinstance(exc, OSError | trio.BrokenResourceError | trio.ClosedResourceError):
        return f"network error: {exc!r}"[:200]
    return None


def _root_cause(exc: BaseException) -> str:
    """The innermost cause of `exc`, for people: a name that does not resolve says so."""
    root = exc
    while (inner := root.__cause__ or root.__context__) is not None and inner is not root:
        root = inner
    if isinstance(root, socket.gaierror):
        return f"could not resolve the host name (name resolution: {root.strerror or root})"
    if root is exc:
        return repr(exc)
    return f"{type(root).__name__}: {root}"


@attrs.define
class _Malformed:
    """Drops counted by reason, reported in aggregate, warned about at most once per period."""

    unreported: Counter[str] = attrs.field(factory=Counter)
    warned_at: dict[str, float] = attrs.field(factory=dict)
    suppressed: Counter[str] = attrs.field(factory=Counter)

    def add(self, reason: str, detail: str) -> None:
        self.unreported[reason] += 1
        now = time.monotonic()
        if now - self.warned_at.get(reason, -math.inf) >= WARN_EVERY_S:
            more = self.suppressed.pop(reason, 0)
            extra = f" (+{more} more since the last warning)" if more else ""
            what = "REST row" if reason == REST_ROW else "frame"
            logger.warning("feed: dropped a {} {}: {}{}", reason, what, detail, extra)
            self.warned_at[reason] = now
        else:
            self.suppressed[reason] += 1

    def take(self) -> dict[str, int]:
        out = dict(sorted(self.unreported.items()))
        self.unreported.clear()
        return out


@attrs.define(eq=False)
class _Market:
    """One symbol's part of the feed: its candle being built, its staleness, its REST failover."""

    symbol: str
    last_emitted_ms: int | None = None  # open time of the last candle handed out
    current: bitunix.KlinePush | None = None  # the latest push of the open bucket
    current_bucket: int | None = None
    last_price: float | None = None
    # its last book's best bid, ask and their sizes (a trade's `Tick` carries them), and when
    # (trio time) it came
    top: tuple[float, float, float, float] | None = None
    top_at: float = -math.inf
    # its REST klines' newest row as last polled (a failover, silent klines): (open ms, volume)
    rest_row: tuple[int, float] | None = None
    last_data_at: float = -math.inf  # trio time of its last accepted WebSocket data frame
    heard_at: float = 0.0  # the connection's time spent waiting on the socket, at its last data frame
    stale: bool = False  # what its last FeedStatus said (`run` starts it stale: no data yet)
    said_stale: bool = False  # a `feed.stale` event named it, and no `feed.fresh` since
    failover: bool = False  # polled over REST (no WebSocket data for it for failover_after_s)
    # trio time of its last kline push (or of the connection's start); its candles close on them
    last_kline_at: float = -math.inf
    klines_silent: bool = False  # its klines polled over REST while its other data flows
    # trio time of its last book push (or of the connection's start); its quotes come from them
    last_book_at: float = -math.inf
    book_silent: bool = False  # its book polled over REST while its other data flows
    seeded: trio.Event = attrs.field(factory=trio.Event)  # its history has been handed out
    # live candles closed before its history was handed out, in order (`_release_held`)
    held: deque[Candle] = attrs.field(factory=deque)
    emit_lock: trio.Lock = attrs.field(factory=trio.Lock)  # candles go out in order, once
    instrument: Instrument | None = None  # what was sent


class BitunixFeed:
    """The live feed's state and tasks; `run` is the actor."""

    def __init__(
        self,
        config: Config,
        clock: SessionClock,
        health: FeedHealth,
        subscribers: Sequence[trio.MemorySendChannel[MarketEvent]],
        events: EventSender,
        *,
        first_data: trio.Event | None = None,
        rng: random.Random | None = None,
        handed_out: Mapping[str, float] | None = None,
    ) -> None:
        """`handed_out`: a resumed session's last candle open time of each symbol (its checkpoint's):
        only the candles after it are handed out (found by an audit: a resume handed out the whole
        history seed again, and the restored strategies took it on top of their state)."""
        self.cfg = config.feed
        self.symbols = config.symbols  # every symbol the session trades, in order
        self.markets = {symbol: _Market(symbol) for symbol in self.symbols}
        for symbol, open_ts in (handed_out or {}).items():
            if symbol in self.markets:
                self.markets[symbol].last_emitted_ms = round(open_ts * 1000)
        self.interval = config.session.interval
        self.interval_s = config.interval_s
        self.interval_ms = self.interval_s * 1000
        self.history = config.strategy_history  # the largest of the strategies' `history`
        self.clock = clock
        self.health = health
        self.subscribers = subscribers
        self.events = events
        self.first_data = first_data if first_data is not None else trio.Event()
        self.rng = rng or random.Random(config.session.seed)
        self.kline_channel = bitunix.kline_channel(self.interval)
        self.channels = [self.kline_channel, bitunix.BOOK_CHANNEL, "price"]
        self.validator = bitunix.FrameValidator(
            symbol=self.symbols[0],
            symbols=self.symbols,
            kline_channel=self.kline_channel,
            max_jump_pct=self.cfg.max_jump_pct,
        )
        self.malformed = _Malformed()
        self.bucket = TokenBucket(self.cfg.rest_rate_limit)
        self.last_data_at = -math.inf  # trio time of the last accepted data frame, any symbol
        self.ws_up = False
        self.seed_done = trio.Event()  # every symbol's history has been handed out (or given up)
        self.instrument_done = trio.Event()  # the Instrument events have been sent (or given up)
        self.last_error = ""  # why the last WebSocket attempt failed, for the fallback message
        # what the WebSocket is doing: "connect" (its handshake), "open" (connected), "" (between)
        self.ws_phase = ""
        self.ever_up = False
        self.frames = 0  # WebSocket frames received since the last feed.stats
        self.before_instrument = 0  # data frames read before the instruments were in: not handed out
        self.lags_ms: list[float] = []
        self.http = httpx.AsyncClient(base_url=self.cfg.rest_url, timeout=self.cfg.rest_timeout_s)
        self.reply_date_s: float | None = None  # the last REST answer's `Date` (the exchange's clock)
        # live candles' REST confirms since the last feed.stats: confirmed, corrected, unconfirmed
        # (one of them for each candle closed from the pushes and handed out: `_close_confirmed`)
        self.confirms: Counter[str] = Counter()
        self.tasks: trio.Nursery | None = None  # `run`'s nursery: the confirms run in it
        self.asked_listed: set[str] = set()  # the symbols answered with empty levels, asked about
        self.last_rest_error = ""  # why the last REST call that failed did, for a call given up on

    # --- output ----------------------------------------------------------------------------------

    async def _event(self, kind: str, **fields: Any) -> None:
        await self.events.send(Event(self.clock.now(), kind, fields))

    async def _emit_candle(self, m: _Market, candle: Candle, *, backfill: bool) -> None:
        """Hand out a closed candle of `m`, in order, once; fill any gap before it from REST."""
        open_ms = round(candle.open_ts * 1000)
        if m.last_emitted_ms is not None:
            if open_ms <= m.last_emitted_ms:
                return  # already handed out
            if open_ms > m.last_emitted_ms + self.interval_ms:
                await self._backfill(m, m.last_emitted_ms + self.interval_ms, open_ms - self.interval_ms)
        await self._hand_out(m, candle, backfill=backfill)

    async def _close_confirmed(
        self, m: _Market, pushed: Candle, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Hand out a live candle closed from its bucket's last push as the exchange's REST klines
        show it (`_confirmed`). One handed out already (by REST polling while the symbol's klines
        were silent, or its history seed) is not confirmed again, nor counted: found by an audit,
        it was counted unconfirmed (its REST row long gone) and said to go out as pushed, though
        it was then skipped as handed out."""
        async with m.emit_lock:
            task_status.started()
            if m.last_emitted_ms is not None and round(pushed.open_ts * 1000) <= m.last_emitted_ms:
                return  # (every hand-out holds the lock: none can come while it is confirmed)
            candle = await self._confirmed(m, pushed)
            await self._emit_candle(m, candle, backfill=False)

    async def _release_held(self, m: _Market) -> None:
        """The live candles of `m` that closed before its history seed was handed out, handed out
        after it, in order (each confirmed as any live close); one that closes meanwhile joins
        them."""
        await m.seeded.wait()
        while m.held:
            candle = m.held[0]
            if self.cfg.confirm_candle_s > 0:
                await self._close_confirmed(m, candle)
            else:
                async with m.emit_lock:
                    await self._emit_candle(m, candle, backfill=False)
            m.held.popleft()

    async def _confirmed(self, m: _Market, pushed: Candle) -> Candle:
        """The exchange's own record of a candle closed from its bucket's last WebSocket push.

        The exchange pushes the open candle about every 500 ms, so the last push of a bucket may
        miss the trades of its last half second (found by an audit: on the fake exchange's path
        without its end-of-bucket push, 159 of 300 closes differed, by up to 21.5 bp). The REST
        klines (newest two) are asked until they show the candle closed there (a newer candle
        after it, or their `Date` a second past its end), for at most `feed.confirm_candle_s`;
        that row goes out, with the pushes' symbol. A row with less volume than the pushes showed
        is an older snapshot (asked again); one narrower than their range is not the later record:
        then, or not in time, the pushed candle goes out, counted and logged."""
        open_ms = round(pushed.open_ts * 1000)
        end_ms = open_ms + self.interval_ms
        why = f"the REST klines did not show it closed within {self.cfg.confirm_candle_s:g} s"
        with trio.move_on_after(self.cfg.confirm_candle_s):
            while True:
                try:
                    rows = await self.rest_get(
                        bitunix.KLINE_PATH, bitunix.kline_params(m.symbol, self.interval, limit=2), attempts=2
                    )
                    page = self._klines(rows)
                except (bitunix.RestError, httpx.HTTPError) as exc:
                    why = f"REST klines failed: {_why(exc)}"
                    break
                date = self.reply_date_s
                closed = any(round(c.open_ts * 1000) >= end_ms for c in page) or (
                    date is not None and date * 1000 >= end_ms + 1000
                )
                row = next((c for c in page if round(c.open_ts * 1000) == open_ms), None)
                if closed and row is not None and row.volume < pushed.volume:
                    # an older snapshot than the pushes showed (the REST store behind the
                    # WebSocket: found by an audit): asked again
                    await trio.sleep(CONFIRM_RETRY_S)
                    continue
                if closed and row is not None:
                    if row.high < pushed.high or row.low > pushed.low:
                        why = (
                            f"its REST row (high {row.high:g}, low {row.low:g}) is narrower than the pushes "
                            f"(high {pushed.high:g}, low {pushed.low:g})"
                        )
                        break
                    same = row[2:7] == pushed[2:7]  # open, high, low, close, volume
                    self.confirms["confirmed" if same else "corrected"] += 1
                    return pushed if same else row
                if closed:  # closed there and not in the newest two: nothing later to wait for
                    why = "the REST klines no longer hold it"
                    break
                await trio.sleep(CONFIRM_RETRY_S)
        self.confirms["unconfirmed"] += 1
        logger.warning("feed: {} candle {} goes out as pushed: {}", m.symbol, iso(pushed.open_ts), why)
        return pushed

    def _klines(self, rows: Any) -> list[Candle]:
        """REST kline rows as candles, oldest first; each row skipped as malformed is counted and
        logged as a dropped frame is, under `REST_ROW` (found by an audit: they were skipped
        unsaid, and a candle went missing with no word of why)."""
        problems: list[str] = []
        candles = bitunix.parse_rest_klines(rows, self.interval_s, problems)
        for problem in problems:
            self.malformed.add(REST_ROW, problem)
            self.health.malformed[REST_ROW] += 1
        return candles

    async def _backfill(self, m: _Market, first_ms: int, last_ms: int) -> None:
        """Candles of `m` opening in [first_ms, last_ms] from REST, marked as history."""
        got, error = await self._fetch_klines(m.symbol, first_ms, last_ms)
        if error is not None:
            wanted = (last_ms - first_ms) // self.interval_ms + 1
            logger.warning("feed: backfill of {} {} candles failed: {}", wanted, m.symbol, error)
            await self._event(
                "feed.gap", symbol=m.symbol, first_open_ms=first_ms, last_open_ms=last_ms, reason=error
            )
            return
        missing = (last_ms - first_ms) // self.interval_ms + 1 - len(got)
        await self._event(
            "feed.backfill", symbol=m.symbol, candles=len(got), missing=missing, first_open_ms=first_ms
        )
        if missing:
            logger.warning("feed: backfill found {} of {} {} candles", len(got), len(got) + missing, m.symbol)
        for candle in got:
            await self._hand_out(m, candle, backfill=True)

    async def _backfill_missed(self, m: _Market, last_ms: int) -> None:
        """The candles of `m` after the last handed out, up to the one opening at `last_ms`, from
        REST (`_backfill`), under its lock (none when they have gone out meanwhile)."""
        async with m.emit_lock:
            if m.last_emitted_ms is not None and last_ms > m.last_emitted_ms:
                await self._backfill(m, m.last_emitted_ms + self.interval_ms, last_ms)

    async def _hand_out(self, m: _Market, candle: Candle, *, backfill: bool) -> None:
        """Fan a candle out unless it is not newer than the last one of `m` handed out."""
        open_ms = round(candle.open_ts * 1000)
        if m.last_emitted_ms is not None and open_ms <= m.last_emitted_ms:
            return
        m.last_emitted_ms = open_ms
        if backfill or candle.symbol != m.symbol:
            candle = candle._replace(backfill=backfill or candle.backfill, symbol=m.symbol)
        await fan_out(self.subscribers, candle)

    async def _fetch_klines(
        self, symbol: str, first_ms: int, last_ms: int, *, closed_only: bool = False
    ) -> tuple[list[Candle], str | None]:
        """Closed candles of `symbol` opening in [first_ms, last_ms], oldest first, paging backwards
        from the newest (the exchange's order); stops early where its history ends. On a REST
        failure: what was fetched so far and the error. `closed_only`: without the candles that
        had not closed by the exchange's clock (the first page's `Date`) when it answered: the
        range, taken from this machine's clock, may reach a candle still open there."""
        got: list[Candle] = []
        end = last_ms
        while end >= first_ms:
            limit = min(bitunix.MAX_KLINE_LIMIT, (end - first_ms) // self.interval_ms + 1)
            # `endTime` one ms before the next candle's open: the candle opening at `end` is in the
            # page whether the exchange takes endTime inclusively or not (the docs' `oldest - 1`)
            params = bitunix.kline_params(
                symbol, self.interval, limit=int(limit), end_time_ms=end + self.interval_ms - 1
            )
            try:
                page = self._klines(await self.rest_get(bitunix.KLINE_PATH, params))
            except (bitunix.RestError, httpx.HTTPError) as exc:
                return got, _why(exc)
            page = [c for c in page if first_ms <= round(c.open_ts * 1000) <= end]
            if closed_only and not got and self.reply_date_s is not None:
                # found by an audit: with this machine's clock ahead of the exchange's, the seed's
                # last candle was the one the exchange still had open (part of its minute), and
                # the live close of it was then skipped as handed out. `Date` has whole seconds,
                # never ahead of the exchange's time: a candle it shows closed is closed (one
                # closed within that second is left out, and filled from REST before the next)
                date_ms = self.reply_date_s * 1000
                page = [c for c in page if round(c.open_ts * 1000) + self.interval_ms <= date_ms]
            if not page:
                break
            got = page + got
            end = round(page[0].open_ts * 1000) - self.interval_ms
        return got, None

    async def _book(
        self,
        m: _Market,
        bids: tuple[tuple[float, float], ...],
        asks: tuple[tuple[float, float], ...],
        source: str = "ws",
    ) -> None:
        """A book push (or a REST-polled book, `source="rest"`): the `Book` (at most BOOK_LEVELS a
        side), then its best bid/ask `Tick`, both stamped with the same time."""
        now = self.clock.now()
        levels = bitunix.BOOK_LEVELS
        book = Book(now, bids[:levels], asks[:levels], m.symbol)  # a 15-tuple's [:15] is itself
        await fan_out(self.subscribers, book)
        (bid, bid_qty), (ask, ask_qty) = bids[0], asks[0]
        m.top, m.top_at = (bid, ask, bid_qty, ask_qty), trio.current_time()
        # once the Book is out its Tick goes too (found by an audit: a connection dropped meanwhile,
        # the pinger's failure cancelling this frame's handling, handed out the Book alone);
        # subscribers read until they close, as `fan_out` asks
        with trio.CancelScope(shield=True):
            await self._tick(m, bid, ask, bid_qty, ask_qty, now, source)

    async def _tick(
        self,
        m: _Market,
        bid: float,
        ask: float,
        bid_qty: float,
        ask_qty: float,
        ts: float | None = None,
        source: str = "ws",
        last_qty: float = 0.0,
    ) -> None:
        """A quote: the best bid/ask, and the last trade's price (`last`). `last_qty` > 0: a trade
        quote (`_trade_quote`), that much traded since the last one said; 0: no trade since (a
        book's quote carries the last price as it was)."""
        last = m.last_price if m.last_price is not None else (bid + ask) / 2
        tick = Tick(
            ts=self.clock.now() if ts is None else ts,
            bid=bid,
            ask=ask,
            last=last,
            bid_qty=bid_qty,
            ask_qty=ask_qty,
            last_qty=last_qty,
            symbol=m.symbol,
            source=source,
        )
        await fan_out(self.subscribers, tick)

    async def _traded(self, m: _Market, push: bitunix.KlinePush, bucket: int) -> None:
        """A kline push that shows trades since the last one (its bucket's base volume grew; a new
        bucket's first push: all of its volume): a trade `Tick` at the book's last top, its `last`
        the push's close and its `last_qty` what traded. Only such a tick can fill a resting limit
        (the broker, for the exchange's quotes): the book's quotes repeat the last price, and a
        limit that arrived after a trade was filled by that old print on the next book quote
        (found by an audit: 370 of 580 quotes of a session had their last outside the bid/ask)."""
        before = m.current
        if before is None:
            return  # the first push after a (re)connect: what traded when is not known
        traded = push.base_volume - before.base_volume if bucket == m.current_bucket else push.base_volume
        if traded > 0:
            m.last_price = push.close
            await self._trade_quote(m, traded, "ws")

    async def _trade_quote(self, m: _Market, traded: float, source: str) -> None:
        """The trade `Tick` of `traded` at the last price, at the book's top when that is fresh
        (`TOP_FRESH_S`); with no fresh book none is sent (found by an audit: after a stall the
        quote carried a top 7 s old, its last outside it): a trade not said fills nothing."""
        if m.top is not None and trio.current_time() - m.top_at <= TOP_FRESH_S:
            await self._tick(m, *m.top, source=source, last_qty=traded)

    def _rest_traded(self, m: _Market, newest: Candle) -> float:
        """What traded since the last poll, by the growth of the REST klines' newest row (its
        candle still open): its volume less the last poll's, all of it in a newer candle; 0 on a
        first poll (what traded when is not known). Found by an audit: polled quotes never said a
        trade, so resting limits stopped filling for the whole of a failover."""
        open_ms, volume = round(newest.open_ts * 1000), newest.volume
        last, m.rest_row = m.rest_row, (open_ms, volume)
        if last is None or open_ms < last[0]:
            return 0.0
        return volume - last[1] if open_ms == last[0] else volume

    async def _set_stale(
        self, stale: bool, reason: str, markets: Sequence[_Market] | None = None
    ) -> list[str]:
        """Flip the staleness of these symbols (default: all) and tell the subscribers (a
        `FeedStatus` per symbol flipped, fanned out like ticks), so that they learn it from the
        stream; a symbol already so sends nothing. `health.stale` is the session's summary: stale
        while any symbol is; those a `feed.stale` event named, fresh again, are named by one
        `feed.fresh` event. Returns the symbols flipped."""
        flipped = [m for m in (self.markets.values() if markets is None else markets) if m.stale != stale]
        for m in flipped:
            m.stale = stale
        self.health.stale = any(m.stale for m in self.markets.values())
        for m in flipped:
            await self._send_status(m, reason)
        again = [m for m in flipped if not stale and m.said_stale]
        for m in again:
            m.said_stale = False
        if again:  # (found by an audit: nothing recorded the end of a stale period)
            await self._event("feed.fresh", reason=reason, symbols=[m.symbol for m in again])
        return [m.symbol for m in flipped]

    async def _send_status(self, m: _Market, reason: str) -> None:
        status = FeedStatus(ts=self.clock.now(), stale=m.stale, reason=reason, symbol=m.symbol)
        await fan_out(self.subscribers, status)

    async def _went_stale(self, reason: str, markets: Sequence[_Market] | None = None) -> None:
        """Mark these symbols (default: all) stale; one `feed.stale` event names those that were not
        (and `_set_stale` a `feed.fresh` each once it is fresh again)."""
        symbols = await self._set_stale(True, reason, markets)
        for symbol in symbols:
            self.markets[symbol].said_stale = True
        if symbols:
            await self._event("feed.stale", reason=reason, symbols=symbols)

    # --- REST --------------------------------------------------------------------------------------

    async def rest_get(
        self, path: str, params: dict[str, str], attempts: int = REST_ATTEMPTS, patient: bool = False
    ) -> Any:
        """One REST call within the rate limit, retried on rate limits, 429/5xx and network errors.
        A failed reply's `Retry-After` is waited at least (`bitunix.retry_after_s`: at most 30 s;
        the exchange was never seen sending one). `patient`: a rate-limit reply (10005/10006, HTTP
        429) is not one of the `attempts` but a wait of at least `RATE_LIMITED_WAIT_S`, the
        caller's deadline the bound (found by an audit: one second of 429s at start spent the
        instrument's three tries in 0.8 s, and the session traded on the shipped table's caps
        instead of the exchange's)."""
        attempt = 0
        while True:
            await self.bucket.acquire()
            retry_after: float | None = None  # what the reply's Retry-After asks for (bounded)
            try:
                reply = await self.http.get(path, params=params)
                self.reply_date_s = bitunix.http_date_s(reply.headers.get("date"))
                retry_after = bitunix.retry_after_s(
                    reply.headers.get("retry-after"), self.reply_date_s, self.clock.now()
                )
                data = bitunix.rest_data(reply.status_code, reply.content)
                self.bucket.recover()
                return data
            except (bitunix.RestError, httpx.HTTPError) as exc:
                self.last_rest_error = _why(exc)[:200]
                retryable = not isinstance(exc, bitunix.RestError) or exc.retryable
                code = exc.code if isinstance(exc, bitunix.RestError) else None
                status = exc.http_status if isinstance(exc, bitunix.RestError) else 0
                if code in bitunix.RETRYABLE_CODES or status == 429:
                    self.bucket.slow_down()
                limited = patient and (code in (10005, 10006) or status == 429)  # not 10001, a network error
                if not retryable or (attempt == attempts - 1 and not limited):
                    raise
                delay = backoff_delay(attempt, REST_BACKOFF_S, REST_BACKOFF_MAX_S, self.rng)
                if limited:
                    delay = max(delay, RATE_LIMITED_WAIT_S)
                if retry_after is not None:  # the server's word, at most RETRY_AFTER_MAX_S
                    delay = max(delay, retry_after)
                self.health.rest_retries += 1
                logger.warning(
                    "feed: REST {} failed ({}); retry {} in {:.2f} s", path, _why(exc), attempt + 1, delay
                )
                await self._event(
                    "feed.rest_retry",
                    path=path,
                    reason=_why(exc)[:200],
                    attempt=attempt + 1,
                    delay_s=round(delay, 3),
                )
                await trio.sleep(delay)
                attempt += not limited

    async def _send_instrument(self) -> None:
        """Each symbol's `Instrument` to the subscribers, once, at start (see the module docstring)."""
        found = await self._fetch_instruments()
        for m in self.markets.values():
            await self._send_one_instrument(m, *found[m.symbol])
        self.instrument_done.set()

    async def _send_one_instrument(self, m: _Market, instrument: Instrument | None, reason: str) -> None:
        fields: dict[str, Any] = {"symbol": m.symbol}
        if instrument is None:
            # no exchange figures and no table entry: the broker keeps what it was built with
            fields.update(source="none", reason=reason)
            logger.warning("feed: no instrument for {}: {}; the broker keeps its own", m.symbol, reason)
        else:
            if instrument.source != "exchange":
                fields["reason"] = reason
                logger.warning("feed: instrument of {} from the shipped table: {}", m.symbol, reason)
            else:
                logger.info("feed: instrument of {} from the exchange", m.symbol)
            if instrument.status != "OPEN":
                logger.warning(
                    "feed: Bitunix lists {} as {}: it takes no new orders, and neither does the broker",
                    m.symbol,
                    instrument.status,
                )
            fields.update(
                source=instrument.source,
                status=instrument.status,
                tick_size=instrument.tick_size,
                lot_size=instrument.lot_size,
                min_qty=instrument.min_qty,
                max_market_qty=instrument.max_market_qty,
                max_limit_qty=instrument.max_limit_qty,
                max_leverage=instrument.max_leverage,
            )
            await fan_out(self.subscribers, instrument)
            m.instrument = instrument
        await self._event("feed.instrument", **fields)

    async def _fetch_instruments(self) -> dict[str, tuple[Instrument | None, str]]:
        """Per symbol: (the exchange's instrument, "") or (the table's or None, why not the
        exchange's), from one `trading_pairs` call for every symbol. UnknownSymbol when the
        exchange says it does not trade one of them."""
        tables = {s: table_instrument(s) for s in self.symbols}
        limit_s = self.cfg.connect_timeout_s / 2
        with trio.move_on_after(limit_s):
            try:
                data = await self.rest_get(
                    bitunix.TRADING_PAIRS_PATH,
                    bitunix.trading_pairs_params(self.symbols),
                    attempts=INSTRUMENT_ATTEMPTS,
                    patient=True,
                )
                rows = {s: bitunix.trading_pair_row(data, s) for s in self.symbols}
            except (bitunix.RestError, httpx.HTTPError) as exc:
                if isinstance(exc, bitunix.RestError) and exc.code == bitunix.UNKNOWN_SYMBOL_CODE:
                    raise await self._unknown_symbol(exc) from None
                return {s: (tables[s], f"trading_pairs failed: {_why(exc)}"[:200]) for s in self.symbols}
            missing = [s for s, row in rows.items() if row is None]
            if missing:
                raise UnknownSymbol(
                    f"Bitunix does not trade {', '.join(missing)}: trading_pairs has no row for it"
                )
            found: dict[str, tuple[Instrument | None, str]] = {}
            for s, row in rows.items():
                assert row is not None
                try:
                    found[s] = (from_trading_pair(row, fallback=tables[s]), "")
                except ValueError as exc:
                    found[s] = (tables[s], f"unusable trading_pairs row: {_why(exc)}"[:200])
            return found
        return {s: (tables[s], f"trading_pairs gave no answer within {limit_s:g} s") for s in self.symbols}

    async def _unknown_symbol(self, exc: bitunix.RestError) -> UnknownSymbol:
        """The exchange refused the symbols (code 20015): with several, ask for each alone to name
        the one it does not trade."""
        if len(self.symbols) > 1:
            for s in self.symbols:
                try:
                    data = await self.rest_get(
                        bitunix.TRADING_PAIRS_PATH,
                        bitunix.trading_pairs_params(s),
                        attempts=INSTRUMENT_ATTEMPTS,
                    )
                except (bitunix.RestError, httpx.HTTPError) as one:
                    if isinstance(one, bitunix.RestError) and one.code == bitunix.UNKNOWN_SYMBOL_CODE:
                        return UnknownSymbol(f"Bitunix does not trade {s}: {one}")
                    continue
                if bitunix.trading_pair_row(data, s) is None:
                    return UnknownSymbol(f"Bitunix does not trade {s}: trading_pairs has no row for it")
        return UnknownSymbol(f"Bitunix does not trade {', '.join(self.symbols)}: {_why(exc)}")

    async def _check_listed(self, symbol: str) -> None:
        """The exchange answered `symbol`'s subscription with empty levels, its answer to a symbol
        it does not trade (then nothing more comes): once the start's instruments are done, ask
        `trading_pairs`; not traded there, `UnknownSymbol` ends the session with an error naming it,
        as at start (found by an audit: with `trading_pairs` failing at start, the symbol just
        went stale, the session waiting on it). Traded there, or no answer: a warning. Rate-limit
        replies are waited out for `feed.connect_timeout_s` at most (found by an audit: with no
        deadline, a rate limit that did not lift had it ask every second or two for the whole
        session, each call a warning, an event and a token the seed and the confirms needed)."""
        await self.instrument_done.wait()
        limit_s = self.cfg.connect_timeout_s
        why: str | None = None
        with trio.move_on_after(limit_s):
            try:
                data = await self.rest_get(
                    bitunix.TRADING_PAIRS_PATH, bitunix.trading_pairs_params(symbol), patient=True
                )
            except bitunix.RestError as exc:
                if exc.code == bitunix.UNKNOWN_SYMBOL_CODE:
                    raise UnknownSymbol(f"Bitunix does not trade {symbol}: {exc}") from None
                why = _why(exc)
            except httpx.HTTPError as exc:
                why = _why(exc)
            else:
                if bitunix.trading_pair_row(data, symbol) is None:
                    raise UnknownSymbol(
                        f"Bitunix does not trade {symbol}: it answered its subscription with empty levels, "
                        "and trading_pairs has no row for it"
                    )
                why = "trading_pairs lists it"
        if why is None:
            why = f"trading_pairs gave no answer within {limit_s:g} s (last: {self.last_rest_error or 'no reply'})"
        logger.warning(
            "feed: {} subscription answered with empty levels ({}): its data may never come", symbol, why
        )

    async def _seed_history(self) -> None:
        """Each symbol's last `strategy.history` (`Config.strategy_history`) closed candles, oldest
        first (pages of 200, newest first), one symbol after the other."""
        await self.instrument_done.wait()  # its REST call first: it holds up the first data frame
        for m in self.markets.values():
            now_ms = int(self.clock.now() * 1000)
            end = (now_ms // self.interval_ms) * self.interval_ms - self.interval_ms  # last closed open
            first = end - (self.history - 1) * self.interval_ms
            seed, error = await self._fetch_klines(m.symbol, first, end, closed_only=True)
            # the candles wanted before the oldest the exchange gave: its history is shallower than
            # strategy.history (the doc leaves its depth open; found by an audit: a strategy promised
            # warm at the start sat cold, unsaid)
            oldest = round(seed[0].open_ts * 1000) if seed else end + self.interval_ms
            short_by = max(0, (oldest - first) // self.interval_ms)
            if error is not None:
                logger.warning("feed: could not seed all of the {} candle history: {}", m.symbol, error)
            elif short_by:
                logger.warning(
                    "feed: the exchange's {} klines go back {} candles only, {} short of the {} wanted "
                    "(strategy.history): a strategy that needs more warms up on the live candles",
                    m.symbol,
                    len(seed),
                    short_by,
                    self.history,
                )
            logger.info("feed: {} {} history candles from REST", len(seed), m.symbol)
            # handed out only once the WebSocket delivers: after a fallback they would be the wrong market
            await self.first_data.wait()
            async with m.emit_lock:
                before = m.last_emitted_ms  # a resumed session's: only the candles after it go out
                seed = [c for c in seed if before is None or round(c.open_ts * 1000) > before]
                for candle in seed:
                    await self._emit_candle(m, candle, backfill=True)
            await self._event("feed.seeded", symbol=m.symbol, candles=len(seed), short_by=short_by)
            m.seeded.set()
        self.seed_done.set()

    # --- WebSocket -------------------------------------------------------------------------------

    async def _on_data(self, msg: bitunix.DataMessage) -> None:
        m = self.markets[msg.symbol]
        had_data = math.isfinite(m.last_data_at)  # its first data is not "fresh again"
        m.last_data_at = self.last_data_at = trio.current_time()
        if not self.first_data.is_set():
            await self.instrument_done.wait()  # the instruments come before any quote
            self.first_data.set()
            for other in self.markets.values():  # the failover clock of each symbol starts now
                other.last_data_at = max(other.last_data_at, self.last_data_at)
            await self._event(
                "feed.live", source="websocket", frames_before_instrument=self.before_instrument
            )
        if m.stale:
            if had_data:
                logger.info("feed: {} data is fresh again", m.symbol)
            await self._set_stale(False, "websocket data", [m])
        if isinstance(msg, bitunix.KlinePush):
            m.last_kline_at = m.last_data_at
            m.rest_row = None  # its trades are told by the pushes again (`_traded`)
            if m.klines_silent:
                m.klines_silent = False
                logger.info("feed: {} klines back on the WebSocket: REST kline polling stopped", m.symbol)
                await self._event("feed.klines", symbol=m.symbol, silent=False)
            bucket = msg.ts_ms // self.interval_ms
            if m.current is not None and m.current_bucket is not None and bucket > m.current_bucket:
                c = m.current
                closed = Candle(
                    open_ts=m.current_bucket * self.interval_ms / 1000,
                    interval_s=self.interval_s,
                    open=c.open,
                    high=c.high,
                    low=c.low,
                    close=c.close,
                    volume=c.base_volume,
                    symbol=m.symbol,
                )
                if (not m.seeded.is_set() or m.held) and self.tasks is not None:
                    # history first, and the socket read on meanwhile (found by an audit: the
                    # reader waited here for the seed, 13 s with the REST API failing, and no
                    # quote, book or staleness came in that time): held, handed out after it
                    m.held.append(closed)
                    if len(m.held) == 1:
                        self.tasks.start_soon(self._release_held, m)
                elif self.cfg.confirm_candle_s > 0 and self.tasks is not None:
                    # confirmed over REST beside the socket's reading (its lock taken first: in
                    # order, once, before any later candle of the symbol)
                    await self.tasks.start(self._close_confirmed, m, closed)
                else:
                    async with m.emit_lock:
                        await self._emit_candle(m, closed, backfill=False)
            elif m.current is None and m.last_emitted_ms is not None:
                # the first push after a (re)connect (or a resume): fill the candles missed
                # meanwhile at once, beside the socket's reading (a later candle that goes out
                # first fills the gap before it itself: `_emit_candle`). Found by an audit: done
                # here, the reader waited for the REST calls (3 s on a resume, rate-limited), and
                # the books queued meanwhile then went out as current quotes
                missed_to = (bucket - 1) * self.interval_ms
                if missed_to > m.last_emitted_ms:
                    if self.tasks is not None:
                        self.tasks.start_soon(self._backfill_missed, m, missed_to)
                    else:
                        await self._backfill_missed(m, missed_to)
            if m.current_bucket is None or bucket >= m.current_bucket:
                await self._traded(m, msg, bucket)
                m.current, m.current_bucket = msg, bucket
                m.last_price = msg.close
        elif isinstance(msg, bitunix.BookTop):
            if msg.bids:  # depth_book*: the book and its top
                m.last_book_at = m.last_data_at
                if m.book_silent:
                    m.book_silent = False
                    logger.info("feed: {} book back on the WebSocket: REST book polling stopped", m.symbol)
                    await self._event("feed.book", symbol=m.symbol, silent=False)
                await self._book(m, msg.bids, msg.asks)
            else:  # tickers: the top only
                await self._tick(m, msg.bid, msg.ask, msg.bid_qty, msg.ask_qty)
        elif isinstance(msg, bitunix.PricePush):
            await fan_out(
                self.subscribers,
                Funding(
                    ts=self.clock.now(),
                    mark_price=msg.mark,
                    rate_pct=msg.funding_rate_pct,
                    symbol=m.symbol,
                    source="ws",
                    settled_ts=None if msg.settled_ms is None else msg.settled_ms / 1000,
                    next_ts=None if msg.next_ms is None else msg.next_ms / 1000,
                    interval_s=funding_interval_s(msg.settled_ms, msg.next_ms),
                ),
            )
        elif isinstance(msg, bitunix.TradePush):
            m.last_price = msg.price
        elif isinstance(msg, bitunix.TickerPush):
            m.last_price = msg.last

    async def _session(
        self, ws: trio_websocket.WebSocketConnection, limiter: SendLimiter, link: _Link
    ) -> None:
        """One connection: subscribe (every symbol's channels in one frame), ping, read until it
        fails; its data frames are timed in `link`."""

        async def pinger() -> None:
            while True:
                await trio.sleep(self.cfg.ping_interval_s)
                await limiter.acquire()
                await ws.send_message(bitunix.ping_frame(self.clock.now()))

        await limiter.acquire()
        pairs = [(symbol, ch) for symbol in self.symbols for ch in self.channels]
        await ws.send_message(bitunix.subscribe_pairs_frame(pairs))
        self.validator.reset_sequence()
        for m in self.markets.values():
            m.current = m.current_bucket = None  # a partial candle from before is not trusted
            m.heard_at = 0.0
            m.last_kline_at = trio.current_time()  # the kline silence clock starts with the connection
            m.last_book_at = m.last_kline_at  # and the book's
        # Stale means silence on the socket: only the time spent waiting in get_message counts
        # (`waited`), from the connection's start or a symbol's last data frame; the work done on a
        # frame (a REST backfill, subscribers slow to take a candle) does not, and frames that
        # arrived meanwhile are read before any deadline is checked. A silence that reaches
        # stale_after_s is read on for `STALL_GRACE_S` more of waiting (frames that came in while
        # the process was held up count). No data frame at all for stale_after_s: the connection
        # has failed. No data for one symbol while others flow: that symbol alone is stale (until
        # its data comes back), the connection goes on.
        stale_after = self.cfg.stale_after_s
        waited = last_any = 0.0
        grace_end: float | None = None  # `waited` at which a silence's grace ends
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pinger)
            while True:
                watched = [m for m in self.markets.values() if not m.stale and not m.failover]
                silent_since = min([last_any, *(m.heard_at for m in watched)])
                waiting_since = trio.current_time()
                if waited - silent_since < stale_after - SILENCE_EPS_S:
                    grace_end = None
                    deadline = waiting_since + silent_since + stale_after - waited
                elif grace_end is None:
                    grace_end = waited + STALL_GRACE_S
                    deadline = waiting_since + STALL_GRACE_S
                elif waited < grace_end - SILENCE_EPS_S:
                    deadline = waiting_since + grace_end - waited
                else:  # silent for stale_after, and nothing from that silence in the grace either
                    grace_end = None
                    if waited - last_any >= stale_after - SILENCE_EPS_S:
                        raise _Stale(f"no data for {stale_after:g} s")
                    silent = [m for m in watched if waited - m.heard_at >= stale_after - SILENCE_EPS_S]
                    for m in silent:
                        logger.warning("feed: no {} data for {:g} s", m.symbol, stale_after)
                    await self._went_stale(f"no data for {stale_after:g} s", silent)
                    continue
                raw: str | bytes | None = None
                with trio.move_on_at(deadline):
                    raw = await ws.get_message()
                waited += trio.current_time() - waiting_since
                if raw is None:
                    continue
                self.frames += 1
                parsed = self.validator.parse(raw, trio.current_time())
                if isinstance(parsed, bitunix.Rejected):
                    self.malformed.add(parsed.reason, parsed.detail)
                    self.health.malformed[parsed.reason] += 1
                    if parsed.symbol and parsed.symbol not in self.asked_listed and self.tasks is not None:
                        self.asked_listed.add(parsed.symbol)  # (`unknown_symbol`: once a symbol)
                        self.tasks.start_soon(self._check_listed, parsed.symbol)
                elif isinstance(parsed, bitunix.Control):
                    if (
                        parsed.op == "subscribe"
                        and isinstance(parsed.data, dict)
                        and parsed.data.get("result") is False
                    ):
                        logger.error("feed: subscription refused: {}", parsed.data)
                else:
                    last_any = self.markets[parsed.symbol].heard_at = waited
                    link.heard(trio.current_time())
                    self.lags_ms.append(self.clock.now() * 1000 - parsed.ts_ms)
                    if not self.ws_up:
                        await self._up()
                    if not self.instrument_done.is_set():
                        # the instruments come before any quote: until they are in, data frames are
                        # read (the socket is not silent) and not handed out (found by an audit: the
                        # first one waited for them, up to half of connect_timeout_s with the REST API
                        # rate-limited, and the frames queued meanwhile then went out as current
                        # quotes, 7 s old; a resumed position's stop filled on one)
                        self.before_instrument += 1
                        continue
                    await self._on_data(parsed)

    async def _up(self) -> None:
        """The first data frame of a connection: the feed is up (again)."""
        self.ws_up = True
        self.health.connected = True
        downtime = None
        if self.health.down_since is not None:
            downtime = round(self.clock.now() - self.health.down_since, 3)
            self.health.downtime_s += downtime
            self.health.down_since = None
        if self.ever_up:
            self.health.reconnects += 1
        await self._event("feed.connected", url=self.cfg.ws_url, reconnect=self.ever_up, downtime_s=downtime)
        logger.info("feed: {} {}", "reconnected to" if self.ever_up else "connected to", self.cfg.ws_url)
        self.ever_up = True

    async def _down(self, reason: str) -> None:
        """The connection failed: every symbol is stale (but those REST polling keeps fresh)."""
        if self.ws_up:
            self.ws_up = False
            self.health.connected = False
            self.health.down_since = self.clock.now()
            await self._event("feed.disconnected", reason=reason)
            logger.warning("feed: disconnected: {}", reason)
        if self.first_data.is_set():
            await self._went_stale(reason, [m for m in self.markets.values() if not m.failover])

    async def _ws_loop(self) -> None:
        backoff = Backoff(self.cfg.backoff_initial_s, self.cfg.backoff_max_s, self.rng)
        while True:
            started = trio.current_time()
            link = _Link()
            # trio-websocket 0.12 can hang past its own connect/disconnect timeouts when the peer
            # stops answering mid-handshake (its reader task is never cancelled): this scope bounds
            # the connect and the close, and is lifted while the connection is in use
            phase = self.ws_phase = "connect"
            reason = "connection ended"
            with trio.CancelScope(deadline=started + self.cfg.connect_timeout_s + 1.0) as bound:
                try:
                    async with trio_websocket.open_websocket_url(
                        self.cfg.ws_url,
                        connect_timeout=self.cfg.connect_timeout_s,
                        disconnect_timeout=WS_CLOSE_TIMEOUT_S,
                        message_queue_size=64,
                    ) as ws:
                        bound.deadline, phase = math.inf, "open"
                        self.ws_phase = phase
                        try:
                            await self._session(ws, SendLimiter(), link)
                        finally:
                            bound.deadline, phase = trio.current_time() + WS_CLOSE_TIMEOUT_S + 1.0, "close"
                except Exception as exc:  # network failures are classified, anything else re-raised
                    found = _network_reason(exc)
                    if found is None:
                        raise
                    reason = found
            if bound.cancelled_caught:
                reason = f"{phase} timed out"
            self.ws_phase = ""
            self.last_error = reason
            await self._down(reason)
            delay = backoff.next_delay(link.data_s)
            await self._event(
                "feed.reconnecting",
                attempt=backoff.attempt,
                delay_s=round(delay, 3),
                reason=reason,
                data_s=round(link.data_s, 3),
            )
            logger.info("feed: reconnecting in {:.2f} s (attempt {})", delay, backoff.attempt)
            await trio.sleep(delay)

    # --- failover ---------------------------------------------------------------------------------

    async def _failover_loop(self) -> None:
        """Once the feed has started: poll REST for each symbol with no WebSocket data for
        `failover_after_s` that is out (the socket down: every symbol; or the symbol stale alone),
        until its WebSocket data comes back."""
        while True:
            await trio.sleep(FAILOVER_POLL_S)
            if not self.first_data.is_set():
                continue
            now = trio.current_time()
            due = [
                m
                for m in self.markets.values()
                if now - m.last_data_at >= self.cfg.failover_after_s
                and (m.failover or m.stale or not self.ws_up)
            ]
            back = [m for m in self.markets.values() if m.failover and m not in due]
            for m in back:
                m.failover = False
            if back:
                await self._event("feed.failover", active=False, symbols=[m.symbol for m in back])
                logger.info("feed: WebSocket data back: REST polling stopped for {}", _names(back))
            started = [m for m in due if not m.failover]
            for m in started:
                m.failover = True
            if started:
                await self._event("feed.failover", active=True, symbols=[m.symbol for m in started])
                logger.warning(
                    "feed: no WebSocket data for {:g} s: polling REST for {}",
                    self.cfg.failover_after_s,
                    _names(started),
                )
            for m in due:
                await self._poll_once(m)
            await self._poll_silent_klines(now, due)
            await self._poll_silent_books(due)

    async def _poll_silent_klines(self, now: float, due: list[_Market]) -> None:
        """A symbol whose other data flows (so it is not stale) for `stale_after_s` past its last
        kline: its candles would never close (found by an audit: a strategy blind all
        session, nothing said). Its closed candles are polled over REST meanwhile, loudly."""
        if not self.ws_up:
            return
        for m in self.markets.values():
            # its other data went on for stale_after_s past its last kline (a symbol with no data
            # at all, the socket silent, is the stale and failover paths': `due`, `stale`)
            if m in due or m.stale or m.last_data_at - m.last_kline_at < self.cfg.stale_after_s:
                continue
            if not m.klines_silent:
                m.klines_silent = True
                await self._went_silent(
                    m, "feed.klines", "kline", "candles", m.last_data_at - m.last_kline_at
                )
            await self._poll_klines(m)

    async def _poll_silent_books(self, due: list[_Market]) -> None:
        """A symbol whose other data flows (so it is not stale) for `stale_after_s` past its last
        book push: no quote of it would go out (a trade quote goes only at a fresh book's top), so
        its stops and resting limits could not fill (found by an audit of the stale watchdog: its
        klines and marks kept it fresh, nothing was said). Its book is polled over REST meanwhile,
        loudly, as a failover polls it."""
        if not self.ws_up:
            return
        for m in self.markets.values():
            if m in due or m.stale or m.last_data_at - m.last_book_at < self.cfg.stale_after_s:
                continue
            if not m.book_silent:
                m.book_silent = True
                await self._went_silent(m, "feed.book", "book", "book", m.last_data_at - m.last_book_at)
            await self._poll_book(m)

    async def _went_silent(self, m: _Market, kind: str, push: str, polled: str, silent: float) -> None:
        """Said once as one of `m`'s push streams goes silent while its other data flows."""
        logger.warning(
            "feed: no {} {} for {:.0f} s while its other data flows: polling its {} over REST",
            m.symbol,
            push,
            silent,
            polled,
        )
        await self._event(kind, symbol=m.symbol, silent=True, silent_s=round(silent, 3))

    async def _poll_book(self, m: _Market) -> None:
        """`m`'s REST book and its quote, handed out unless its pushes came back meanwhile."""
        try:
            data = await self.rest_get(
                bitunix.DEPTH_PATH, bitunix.depth_params(m.symbol, bitunix.BOOK_LEVELS), attempts=2
            )
            book = bitunix.parse_rest_depth(data, self.clock.now())
        except (bitunix.RestError, httpx.HTTPError) as exc:
            logger.warning("feed: REST book poll of {} failed: {}", m.symbol, _why(exc))
            return
        if m.book_silent:  # (a push that came meanwhile is newer)
            await self._book(m, book.bids, book.asks, "rest")

    async def _poll_klines(self, m: _Market) -> None:
        """The closed candles of `m`'s newest two REST klines, handed out (in order, once)."""
        try:
            rows = await self.rest_get(
                bitunix.KLINE_PATH, bitunix.kline_params(m.symbol, self.interval, limit=2), attempts=2
            )
        except (bitunix.RestError, httpx.HTTPError) as exc:
            logger.warning("feed: REST kline poll of {} failed: {}", m.symbol, _why(exc))
            return
        candles, traded = self._closed_polled(m, rows)
        if traded > 0:
            await self._trade_quote(m, traded, "rest")
        await self._emit_polled(m, candles)

    def _closed_polled(self, m: _Market, rows: Any) -> tuple[list[Candle], float]:
        """The closed candles of a REST poll's newest klines (its newest row is the candle still
        open, and our clock may lag the exchange's), and what traded since the last poll
        (`_rest_traded`); the last price is the newest row's close."""
        candles = self._klines(rows)
        if not candles:
            return candles, 0.0
        traded = self._rest_traded(m, candles[-1])
        m.last_price = candles[-1].close
        now_ms = int(self.clock.now() * 1000)
        if round(candles[-1].open_ts * 1000) + self.interval_ms > now_ms or len(candles) > 1:
            return candles[:-1], traded
        return candles, traded

    async def _emit_polled(self, m: _Market, candles: list[Candle]) -> None:
        async with m.emit_lock:
            for candle in candles:
                await self._emit_candle(m, candle, backfill=False)

    async def _poll_once(self, m: _Market) -> None:
        try:
            rows = await self.rest_get(
                bitunix.KLINE_PATH, bitunix.kline_params(m.symbol, self.interval, limit=2), attempts=2
            )
            book = bitunix.parse_rest_depth(
                await self.rest_get(
                    bitunix.DEPTH_PATH, bitunix.depth_params(m.symbol, bitunix.BOOK_LEVELS), attempts=2
                ),
                self.clock.now(),
            )
        except (bitunix.RestError, httpx.HTTPError) as exc:
            logger.warning("feed: REST poll of {} failed: {}", m.symbol, _why(exc))
            await self._went_stale(f"REST poll failed: {_why(exc)}"[:200], [m])
            return
        candles, traded = self._closed_polled(m, rows)
        # fresh again before anything is handed out: the candles this poll closes are decided on
        # with the symbol tradable (found by an audit: the first candle after an outage came while
        # the symbol was still stale, and its entry was refused `stale_data`), and on this book
        if m.stale:
            logger.info("feed: {} data is fresh again (REST polling)", m.symbol)
            await self._set_stale(False, "REST polling", [m])
        await self._book(m, book.bids, book.asks, "rest")
        if traded > 0:  # at this book's top
            await self._trade_quote(m, traded, "rest")
        await self._emit_polled(m, candles)

    async def _report_malformed(self) -> None:
        periods = 0
        while True:
            await trio.sleep(MALFORMED_REPORT_S)
            await self._flush_malformed()
            periods += 1
            if periods % STATS_EVERY == 0:
                await self._report_stats(MALFORMED_REPORT_S * STATS_EVERY)

    async def _report_stats(self, period_s: float) -> None:
        """`feed.stats`: frames received and how late data frames arrived (receipt time minus the
        frame's `ts`, so it includes any clock difference with the exchange), and the live candles
        closed from the WebSocket's pushes and handed out since the last, each counted once by its
        REST confirm: `candles_confirmed` (the REST row the same as the pushes), `candles_corrected`
        (the REST row went out), `candles_unconfirmed` (no REST row in time, or a narrower one: the
        pushes' candle went out). A close of a candle handed out already (by REST polling, or the
        history seed) is skipped and counted in none of them."""
        lags, self.lags_ms = sorted(self.lags_ms), []
        frames, self.frames = self.frames, 0
        confirms, self.confirms = self.confirms, Counter()
        if not frames:
            return
        pick = lambda q: round(lags[min(len(lags) - 1, int(q * len(lags)))], 1) if lags else None  # noqa: E731
        await self._event(
            "feed.stats",
            frames=frames,
            frames_per_s=round(frames / period_s, 1),
            lag_ms_p50=pick(0.5),
            lag_ms_p99=pick(0.99),
            lag_ms_max=round(lags[-1], 1) if lags else None,
            candles_confirmed=confirms["confirmed"],
            candles_corrected=confirms["corrected"],
            candles_unconfirmed=confirms["unconfirmed"],
        )

    async def _flush_malformed(self) -> None:
        counts = self.malformed.take()
        if counts:
            await self._event("feed.malformed", counts=counts, total=sum(counts.values()))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # every symbol stale and down until its first data frame; the subscribers are told once it
        # has started
        self.health.stale = True
        self.health.down_since = self.clock.now()
        async with self.http:
            try:
                async with trio.open_nursery() as nursery:
                    self.tasks = nursery
                    task_status.started()
                    for m in self.markets.values():
                        m.stale = True
                        await self._send_status(m, "no data yet")
                    nursery.start_soon(self._report_malformed)
                    nursery.start_soon(self._send_instrument)
                    nursery.start_soon(self._seed_history)
                    nursery.start_soon(self._ws_loop)
                    nursery.start_soon(self._failover_loop)
            finally:
                with trio.CancelScope(shield=True):
                    await self._flush_malformed()


async def run_live_feed(
    config: Config,
    clock: SessionClock,
    health: FeedHealth,
    walk: RandomWalk | MarketWalk,
    subscribers: Sequence[trio.MemorySendChannel[MarketEvent]],
    events: EventSender,
    *,
    handed_out: Mapping[str, float] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Actor: the configured live source; Bitunix falls back to the mock source when it delivers no
    data within `feed.connect_timeout_s` at start and `feed.fallback = "mock"`. `handed_out`: a
    resumed session's last candle of each symbol (`BitunixFeed`; the mock's walk keeps its own)."""
    if config.feed.source == "mock":
        with events:  # unused: the mock feed has no network to report on
            health.stale = False
            await run_mock_feed(
                config.feed,
                config.interval_s,
                clock,
                walk,
                subscribers,
                symbols=config.symbols,
                task_status=task_status,
            )
        return
    with ExitStack() as stack:
        for tx in subscribers:
            stack.enter_context(tx)
        stack.enter_context(events)
        first_data = trio.Event()
        feed = BitunixFeed(
            config, clock, health, subscribers, events, first_data=first_data, handed_out=handed_out
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(feed.run)
            task_status.started()
            if config.feed.fallback == "none":
                return  # keep retrying for as long as the session lasts
            with trio.move_on_after(config.feed.connect_timeout_s):
                await first_data.wait()
            if first_data.is_set():
                return
            nursery.cancel_scope.cancel()
        reason = f"no live data within {config.feed.connect_timeout_s:g} s from {config.feed.ws_url}"
        if feed.last_error:
            reason += f" ({feed.last_error})"
        elif feed.ws_phase:  # no attempt has failed yet: what the first is doing (found by an audit)
            doing = "the WebSocket handshake got no answer" if feed.ws_phase == "connect" else ""
            reason += f" ({doing or 'connected, but no valid data frame came'})"
        health.data_source = f"mock (fallback: {reason})"
        health.down_since = None
        await feed._set_stale(False, FALLBACK_REASON)
        logger.warning("FEED FALLBACK: {} - trading on the MOCK source for the rest of this session", reason)
        await events.send(
            Event(clock.now(), "feed.fallback", {"reason": reason, "data_source": health.data_source})
        )
        # the mock feed closes what it is given: it gets clones, the originals stay with this actor
        await run_mock_feed(
            config.feed,
            config.interval_s,
            clock,
            walk,
            [tx.clone() for tx in subscribers],
            symbols=config.symbols,
        )
