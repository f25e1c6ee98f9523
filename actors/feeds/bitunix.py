"""Feed actor for live Bitunix market data: WebSocket first, REST for history, gaps and outages.

- **WebSocket** (trio-websocket) on `feed.ws_url`: subscribes to the kline channel of
  `session.interval`, `depth_book15` (the book, 15 levels a side) and `price` (mark, funding);
  sends the exchange's JSON ping every `feed.ping_interval_s`; a send-side limiter keeps every
  socket under 5 client messages in any second (the exchange disconnects above it). Kline pushes
  carry the current candle only: a candle is closed when the first frame of the next bucket
  arrives, and emitted exactly once, in order. Each book push becomes two market events, at the
  same time: the `Book` (bids descending, asks ascending, up to 15 levels; the broker walks it)
  and then the best bid/ask `Tick`.
- **Instrument** at start: `GET trading_pairs?symbols=SYMBOL` (bounded: `INSTRUMENT_ATTEMPTS`
  tries within half of `feed.connect_timeout_s`), parsed by `from_trading_pair` over the shipped
  table's instrument, sent as an `Instrument` market event before the first quote, book or candle
  (the first data frame waits for it). When the call fails or the row is unusable: the table's
  instrument, with a warning and the reason in `feed.instrument` (`source: "table"`). When the
  exchange says it does not trade the symbol (code 20015, or no row for it): `UnknownSymbol`, and
  the session ends at once with an error (nothing to trade; no mock fallback either).
- **Reconnect** with exponential backoff and full jitter (`feed.backoff_initial_s` ..
  `feed.backoff_max_s`), reset after a healthy minute; silence (no data frame for
  `feed.stale_after_s`) counts as a failure. The candle being built when the socket dropped is
  thrown away; REST fills the gap instead, so the series has no gap and no duplicate.
- **REST** (httpx) on `feed.rest_url`: seeds `strategy.history` candles at start (with several
  strategies, the largest `history` of them), backfills gaps, and polls candles and best bid/ask
  while the WebSocket has been down for `feed.failover_after_s`.
  A token bucket keeps calls under `feed.rest_rate_limit` per second; rate-limit codes
  (10005/10006), HTTP 429/5xx and network errors are retried with capped backoff and jitter.
- **Validation** is `protocols.bitunix.FrameValidator`: rejected frames are dropped, counted by
  reason (`feed.malformed` events, aggregated) and logged at most once per reason per 10 s.
- **Health** (`FeedHealth`) tells the risk gate when data is stale; history candles (seed and
  backfill) are marked `backfill=True` so the strategy warms up on them but never trades on them.
- **Fallback**: `run_live_feed` switches to the mock source, loudly, when the WebSocket delivers no
  data within `feed.connect_timeout_s` at start and `feed.fallback = "mock"`.

Nothing here closes the subscribers' channels: `run_live_feed` owns them.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import attrs
import httpx
import trio
import trio_websocket
from loguru import logger

from actors.clock import SessionClock
from actors.config import Config
from actors.feeds.mock import FeedHealth, RandomWalk, fan_out, run_mock_feed
from protocols import bitunix
from protocols.instruments import Instrument, from_trading_pair, table_instrument
from protocols.messages import Book, Candle, Event, EventSender, FeedStatus, Funding, MarketEvent, Tick

HEALTHY_S = 60.0  # a connection that lasted this long resets the reconnect backoff
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


def backoff_delay(attempt: int, initial: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, initial * 2**attempt)]."""
    return rng.uniform(0.0, min(cap, initial * 2.0 ** min(attempt, 30)))


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
    if isinstance(exc, trio_websocket.HandshakeError):
        return f"handshake failed: {exc!r}"[:200]
    if isinstance(exc, trio.TooSlowError):
        return "connect timed out"
    if isinstance(exc, OSError | trio.BrokenResourceError | trio.ClosedResourceError):
        return f"network error: {exc!r}"[:200]
    return None


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
            logger.warning("feed: dropped a {} frame: {}{}", reason, detail, extra)
            self.warned_at[reason] = now
        else:
            self.suppressed[reason] += 1

    def take(self) -> dict[str, int]:
        out = dict(sorted(self.unreported.items()))
        self.unreported.clear()
        return out


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
    ) -> None:
        self.cfg = config.feed
        self.symbol = config.session.symbol.upper()
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
            symbol=self.symbol, kline_channel=self.kline_channel, max_jump_pct=self.cfg.max_jump_pct
        )
        self.malformed = _Malformed()
        self.bucket = TokenBucket(self.cfg.rest_rate_limit)
        self.last_emitted_ms: int | None = None  # open time of the last candle handed out
        self.current: bitunix.KlinePush | None = None  # the latest push of the open bucket
        self.current_bucket: int | None = None
        self.last_price: float | None = None
        self.last_data_at = -math.inf  # trio time of the last accepted data frame
        self.ws_up = False
        self.seed_done = trio.Event()  # the history seed has been handed out (or given up)
        self.instrument_done = trio.Event()  # the Instrument event has been sent (or given up)
        self.instrument: Instrument | None = None  # what was sent
        self.last_error = ""  # why the last WebSocket attempt failed, for the fallback message
        self.emit_lock = trio.Lock()
        self.ever_up = False
        self.failover_active = False
        self.frames = 0  # WebSocket frames received since the last feed.stats
        self.lags_ms: list[float] = []
        self.http = httpx.AsyncClient(base_url=self.cfg.rest_url, timeout=self.cfg.rest_timeout_s)

    # --- output ----------------------------------------------------------------------------------

    async def _event(self, kind: str, **fields: Any) -> None:
        await self.events.send(Event(self.clock.now(), kind, fields))

    async def _emit_candle(self, candle: Candle, *, backfill: bool) -> None:
        """Hand out a closed candle, in order, once; fill any gap before it from REST."""
        open_ms = round(candle.open_ts * 1000)
        if self.last_emitted_ms is not None:
            if open_ms <= self.last_emitted_ms:
                return  # already handed out
            if open_ms > self.last_emitted_ms + self.interval_ms:
                await self._backfill(self.last_emitted_ms + self.interval_ms, open_ms - self.interval_ms)
        await self._hand_out(candle, backfill=backfill)

    async def _backfill(self, first_ms: int, last_ms: int) -> None:
        """Candles opening in [first_ms, last_ms] from REST, marked as history."""
        got, error = await self._fetch_klines(first_ms, last_ms)
        if error is not None:
            wanted = (last_ms - first_ms) // self.interval_ms + 1
            logger.warning("feed: backfill of {} candles failed: {}", wanted, error)
            await self._event("feed.gap", first_open_ms=first_ms, last_open_ms=last_ms, reason=error)
            return
        missing = (last_ms - first_ms) // self.interval_ms + 1 - len(got)
        await self._event("feed.backfill", candles=len(got), missing=missing, first_open_ms=first_ms)
        if missing:
            logger.warning("feed: backfill found {} of {} candles", len(got), len(got) + missing)
        for candle in got:
            await self._hand_out(candle, backfill=True)

    async def _hand_out(self, candle: Candle, *, backfill: bool) -> None:
        """Fan a candle out unless it is not newer than the last one handed out."""
        open_ms = round(candle.open_ts * 1000)
        if self.last_emitted_ms is not None and open_ms <= self.last_emitted_ms:
            return
        self.last_emitted_ms = open_ms
        if backfill or candle.symbol != self.symbol:
            candle = candle._replace(backfill=backfill or candle.backfill, symbol=self.symbol)
        await fan_out(self.subscribers, candle)

    async def _fetch_klines(self, first_ms: int, last_ms: int) -> tuple[list[Candle], str | None]:
        """Closed candles opening in [first_ms, last_ms], oldest first, paging backwards from the
        newest (the exchange's order); stops early where its history ends. On a REST failure: what
        was fetched so far and the error."""
        got: list[Candle] = []
        end = last_ms
        while end >= first_ms:
            limit = min(bitunix.MAX_KLINE_LIMIT, (end - first_ms) // self.interval_ms + 1)
            params = bitunix.kline_params(self.symbol, self.interval, limit=int(limit), end_time_ms=end)
            try:
                page = bitunix.parse_rest_klines(
                    await self.rest_get(bitunix.KLINE_PATH, params), self.interval_s
                )
            except (bitunix.RestError, httpx.HTTPError) as exc:
                return got, str(exc)
            page = [c for c in page if first_ms <= round(c.open_ts * 1000) <= end]
            if not page:
                break
            got = page + got
            end = round(page[0].open_ts * 1000) - self.interval_ms
        return got, None

    async def _book(
        self, bids: tuple[tuple[float, float], ...], asks: tuple[tuple[float, float], ...]
    ) -> None:
        """A book push: the `Book` (at most BOOK_LEVELS a side), then its best bid/ask `Tick`,
        both stamped with the same time."""
        now = self.clock.now()
        levels = bitunix.BOOK_LEVELS
        book = Book(now, bids[:levels], asks[:levels], self.symbol)  # a 15-tuple's [:15] is itself
        await fan_out(self.subscribers, book)
        (bid, bid_qty), (ask, ask_qty) = bids[0], asks[0]
        await self._tick(bid, ask, bid_qty, ask_qty, now)

    async def _tick(
        self, bid: float, ask: float, bid_qty: float, ask_qty: float, ts: float | None = None
    ) -> None:
        last = self.last_price if self.last_price is not None else (bid + ask) / 2
        tick = Tick(
            ts=self.clock.now() if ts is None else ts,
            bid=bid,
            ask=ask,
            last=last,
            bid_qty=bid_qty,
            ask_qty=ask_qty,
            symbol=self.symbol,
        )
        await fan_out(self.subscribers, tick)

    async def _set_stale(self, stale: bool, reason: str) -> None:
        """Flip `health.stale` and tell the subscribers (a `FeedStatus`, fanned out like ticks), so
        that they learn it from the stream; a call that flips nothing sends nothing."""
        if self.health.stale != stale:
            self.health.stale = stale
            await self._send_status(reason)

    async def _send_status(self, reason: str) -> None:
        status = FeedStatus(ts=self.clock.now(), stale=self.health.stale, reason=reason, symbol=self.symbol)
        await fan_out(self.subscribers, status)

    # --- REST --------------------------------------------------------------------------------------

    async def rest_get(self, path: str, params: dict[str, str], attempts: int = REST_ATTEMPTS) -> Any:
        """One REST call within the rate limit, retried on rate limits, 429/5xx and network errors."""
        for attempt in range(attempts):
            await self.bucket.acquire()
            try:
                reply = await self.http.get(path, params=params)
                data = bitunix.rest_data(reply.status_code, reply.content)
                self.bucket.recover()
                return data
            except (bitunix.RestError, httpx.HTTPError) as exc:
                retryable = not isinstance(exc, bitunix.RestError) or exc.retryable
                if isinstance(exc, bitunix.RestError) and (
                    exc.code in bitunix.RETRYABLE_CODES or exc.http_status == 429
                ):
                    self.bucket.slow_down()
                if not retryable or attempt == attempts - 1:
                    raise
                delay = backoff_delay(attempt, REST_BACKOFF_S, REST_BACKOFF_MAX_S, self.rng)
                self.health.rest_retries += 1
                logger.warning(
                    "feed: REST {} failed ({}); retry {} in {:.2f} s", path, exc, attempt + 1, delay
                )
                await self._event(
                    "feed.rest_retry",
                    path=path,
                    reason=str(exc)[:200],
                    attempt=attempt + 1,
                    delay_s=round(delay, 3),
                )
                await trio.sleep(delay)
        raise AssertionError("unreachable")

    async def _send_instrument(self) -> None:
        """The symbol's `Instrument` to the subscribers, once, at start (see the module docstring)."""
        table = table_instrument(self.symbol)
        instrument, reason = await self._fetch_instrument(table)
        fields: dict[str, Any] = {"symbol": self.symbol}
        if instrument is None:
            # no exchange figures and no table entry: the broker keeps what it was built with
            fields.update(source="none", reason=reason)
            logger.warning("feed: no instrument for {}: {}; the broker keeps its own", self.symbol, reason)
        else:
            if instrument.source != "exchange":
                fields["reason"] = reason
                logger.warning("feed: instrument of {} from the shipped table: {}", self.symbol, reason)
            else:
                logger.info("feed: instrument of {} from the exchange", self.symbol)
            if instrument.status != "OPEN":
                logger.warning(
                    "feed: Bitunix lists {} as {}: it takes no new orders, and neither does the broker",
                    self.symbol,
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
            self.instrument = instrument
        await self._event("feed.instrument", **fields)
        self.instrument_done.set()

    async def _fetch_instrument(self, table: Instrument | None) -> tuple[Instrument | None, str]:
        """(the exchange's instrument, "") or (the table's or None, why not the exchange's).
        UnknownSymbol when the exchange says it does not trade the symbol."""
        limit_s = self.cfg.connect_timeout_s / 2
        with trio.move_on_after(limit_s):
            try:
                data = await self.rest_get(
                    bitunix.TRADING_PAIRS_PATH,
                    bitunix.trading_pairs_params(self.symbol),
                    attempts=INSTRUMENT_ATTEMPTS,
                )
                row = bitunix.trading_pair_row(data, self.symbol)
            except (bitunix.RestError, httpx.HTTPError) as exc:
                if isinstance(exc, bitunix.RestError) and exc.code == bitunix.UNKNOWN_SYMBOL_CODE:
                    raise UnknownSymbol(f"Bitunix does not trade {self.symbol}: {exc}") from None
                return table, f"trading_pairs failed: {exc}"[:200]
            if row is None:
                raise UnknownSymbol(f"Bitunix does not trade {self.symbol}: trading_pairs has no row for it")
            try:
                return from_trading_pair(row, fallback=table), ""
            except ValueError as exc:
                return table, f"unusable trading_pairs row: {exc}"[:200]
        return table, f"trading_pairs gave no answer within {limit_s:g} s"

    async def _seed_history(self) -> None:
        """The last `strategy.history` (`Config.strategy_history`) closed candles, oldest first (pages of 200, newest first)."""
        await self.instrument_done.wait()  # its REST call first: it holds up the first data frame
        now_ms = int(self.clock.now() * 1000)
        end = (now_ms // self.interval_ms) * self.interval_ms - self.interval_ms  # last closed open
        candles, error = await self._fetch_klines(end - (self.history - 1) * self.interval_ms, end)
        if error is not None:
            logger.warning("feed: could not seed all of the candle history: {}", error)
        seed = candles
        logger.info("feed: {} history candles from REST", len(seed))
        # handed out only once the WebSocket delivers: after a fallback they would be the wrong market
        await self.first_data.wait()
        async with self.emit_lock:
            for candle in seed:
                await self._emit_candle(candle, backfill=True)
        await self._event("feed.seeded", candles=len(seed))
        self.seed_done.set()

    # --- WebSocket -------------------------------------------------------------------------------

    async def _on_data(self, msg: bitunix.DataMessage) -> None:
        self.last_data_at = trio.current_time()
        if not self.first_data.is_set():
            await self.instrument_done.wait()  # the instrument comes before any quote
            self.first_data.set()
            await self._event("feed.live", source="websocket")
        if self.health.stale:
            logger.info("feed: data is fresh again")
            await self._set_stale(False, "websocket data")
        if isinstance(msg, bitunix.KlinePush):
            bucket = msg.ts_ms // self.interval_ms
            if self.current is not None and self.current_bucket is not None and bucket > self.current_bucket:
                c = self.current
                closed = Candle(
                    open_ts=self.current_bucket * self.interval_ms / 1000,
                    interval_s=self.interval_s,
                    open=c.open,
                    high=c.high,
                    low=c.low,
                    close=c.close,
                    volume=c.base_volume,
                    symbol=self.symbol,
                )
                await self.seed_done.wait()  # history first (only ever waits at start-up)
                async with self.emit_lock:
                    await self._emit_candle(closed, backfill=False)
            elif self.current is None and self.last_emitted_ms is not None:
                # the first push after a (re)connect: fill the candles missed meanwhile at once
                missed_to = (bucket - 1) * self.interval_ms
                if missed_to > self.last_emitted_ms:
                    async with self.emit_lock:
                        await self._backfill(self.last_emitted_ms + self.interval_ms, missed_to)
            if self.current_bucket is None or bucket >= self.current_bucket:
                self.current, self.current_bucket = msg, bucket
                self.last_price = msg.close
        elif isinstance(msg, bitunix.BookTop):
            if msg.bids:  # depth_book*: the book and its top
                await self._book(msg.bids, msg.asks)
            else:  # tickers: the top only
                await self._tick(msg.bid, msg.ask, msg.bid_qty, msg.ask_qty)
        elif isinstance(msg, bitunix.PricePush):
            await fan_out(
                self.subscribers,
                Funding(
                    ts=self.clock.now(),
                    mark_price=msg.mark,
                    rate_pct=msg.funding_rate_pct,
                    symbol=self.symbol,
                ),
            )
        elif isinstance(msg, bitunix.TradePush):
            self.last_price = msg.price
        elif isinstance(msg, bitunix.TickerPush):
            self.last_price = msg.last

    async def _session(self, ws: trio_websocket.WebSocketConnection, limiter: SendLimiter) -> None:
        """One connection: subscribe, ping, read until it fails."""

        async def pinger() -> None:
            while True:
                await trio.sleep(self.cfg.ping_interval_s)
                await limiter.acquire()
                await ws.send_message(bitunix.ping_frame(self.clock.now()))

        await limiter.acquire()
        await ws.send_message(bitunix.subscribe_frame(self.symbol, self.channels))
        self.validator.reset_sequence()
        self.current = self.current_bucket = None  # a partial candle from before is not trusted
        # Stale means silence on the socket: only the time spent waiting in get_message counts,
        # from the connection's start or its last data frame; the work done on a frame (a REST
        # backfill, subscribers slow to take a candle) does not, and frames that arrived meanwhile
        # are read before any deadline is checked.
        silent_s = 0.0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pinger)
            while True:
                waiting_since = trio.current_time()
                raw: str | bytes | None = None
                with trio.move_on_at(waiting_since + self.cfg.stale_after_s - silent_s):
                    raw = await ws.get_message()
                silent_s += trio.current_time() - waiting_since
                if raw is None:
                    raise _Stale(f"no data for {self.cfg.stale_after_s:g} s")
                self.frames += 1
                parsed = self.validator.parse(raw)
                if isinstance(parsed, bitunix.Rejected):
                    self.malformed.add(parsed.reason, parsed.detail)
                    self.health.malformed[parsed.reason] += 1
                elif isinstance(parsed, bitunix.Control):
                    if (
                        parsed.op == "subscribe"
                        and isinstance(parsed.data, dict)
                        and parsed.data.get("result") is False
                    ):
                        logger.error("feed: subscription refused: {}", parsed.data)
                else:
                    silent_s = 0.0
                    self.lags_ms.append(self.clock.now() * 1000 - parsed.ts_ms)
                    if not self.ws_up:
                        await self._up()
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
        if self.ws_up:
            self.ws_up = False
            self.health.connected = False
            self.health.down_since = self.clock.now()
            await self._event("feed.disconnected", reason=reason)
            logger.warning("feed: disconnected: {}", reason)
        if not self.health.stale and self.first_data.is_set() and not self.failover_active:
            await self._set_stale(True, reason)
            await self._event("feed.stale", reason=reason)

    async def _ws_loop(self) -> None:
        attempt = 0
        while True:
            started = trio.current_time()
            # trio-websocket 0.12 can hang past its own connect/disconnect timeouts when the peer
            # stops answering mid-handshake (its reader task is never cancelled): this scope bounds
            # the connect and the close, and is lifted while the connection is in use
            phase = "connect"
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
                        try:
                            await self._session(ws, SendLimiter())
                        finally:
                            bound.deadline, phase = trio.current_time() + WS_CLOSE_TIMEOUT_S + 1.0, "close"
                except Exception as exc:  # network failures are classified, anything else re-raised
                    found = _network_reason(exc)
                    if found is None:
                        raise
                    reason = found
            if bound.cancelled_caught:
                reason = f"{phase} timed out"
            self.last_error = reason
            await self._down(reason)
            if trio.current_time() - started >= HEALTHY_S:
                attempt = 0
            delay = backoff_delay(attempt, self.cfg.backoff_initial_s, self.cfg.backoff_max_s, self.rng)
            attempt += 1
            await self._event("feed.reconnecting", attempt=attempt, delay_s=round(delay, 3), reason=reason)
            logger.info("feed: reconnecting in {:.2f} s (attempt {})", delay, attempt)
            await trio.sleep(delay)

    # --- failover ---------------------------------------------------------------------------------

    async def _failover_loop(self) -> None:
        """While the WebSocket has been down for `failover_after_s` (after it once worked): poll REST."""
        while True:
            await trio.sleep(FAILOVER_POLL_S)
            if self.ws_up or not self.first_data.is_set():
                continue
            if trio.current_time() - self.last_data_at < self.cfg.failover_after_s:
                continue
            await self._event("feed.failover", active=True)
            logger.warning("feed: WebSocket down for {:g} s: polling REST", self.cfg.failover_after_s)
            self.failover_active = True
            while not self.ws_up:
                await self._poll_once()
                await trio.sleep(FAILOVER_POLL_S)
            self.failover_active = False
            await self._event("feed.failover", active=False)
            logger.info("feed: WebSocket back: REST polling stopped")

    async def _poll_once(self) -> None:
        try:
            rows = await self.rest_get(
                bitunix.KLINE_PATH, bitunix.kline_params(self.symbol, self.interval, limit=2), attempts=2
            )
            book = bitunix.parse_rest_depth(
                await self.rest_get(
                    bitunix.DEPTH_PATH, bitunix.depth_params(self.symbol, bitunix.BOOK_LEVELS), attempts=2
                ),
                self.clock.now(),
            )
        except (bitunix.RestError, httpx.HTTPError) as exc:
            logger.warning("feed: REST poll failed: {}", exc)
            if not self.health.stale:
                reason = f"REST poll failed: {exc}"[:200]
                await self._set_stale(True, reason)
                await self._event("feed.stale", reason=reason)
            return
        candles = bitunix.parse_rest_klines(rows, self.interval_s)
        now_ms = int(self.clock.now() * 1000)
        if candles:
            self.last_price = candles[-1].close
            # the newest row is the candle still open (and our clock may lag the exchange's)
            if round(candles[-1].open_ts * 1000) + self.interval_ms > now_ms or len(candles) > 1:
                candles = candles[:-1]
        async with self.emit_lock:
            for candle in candles:
                await self._emit_candle(candle, backfill=False)
        if self.health.stale:
            logger.info("feed: data is fresh again (REST polling)")
            await self._set_stale(False, "REST polling")
        await self._book(book.bids, book.asks)

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
        frame's `ts`, so it includes any clock difference with the exchange)."""
        lags, self.lags_ms = sorted(self.lags_ms), []
        frames, self.frames = self.frames, 0
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
        )

    async def _flush_malformed(self) -> None:
        counts = self.malformed.take()
        if counts:
            await self._event("feed.malformed", counts=counts, total=sum(counts.values()))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # stale and down until the first data frame; the subscribers are told once it has started
        self.health.stale = True
        self.health.down_since = self.clock.now()
        async with self.http:
            try:
                async with trio.open_nursery() as nursery:
                    task_status.started()
                    await self._send_status("no data yet")
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
    walk: RandomWalk,
    subscribers: Sequence[trio.MemorySendChannel[MarketEvent]],
    events: EventSender,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Actor: the configured live source; Bitunix falls back to the mock source when it delivers no
    data within `feed.connect_timeout_s` at start and `feed.fallback = "mock"`."""
    symbol = config.session.symbol.upper()
    if config.feed.source == "mock":
        with events:  # unused: the mock feed has no network to report on
            health.stale = False
            await run_mock_feed(
                config.feed,
                config.interval_s,
                clock,
                walk,
                subscribers,
                symbol=symbol,
                task_status=task_status,
            )
        return
    with ExitStack() as stack:
        for tx in subscribers:
            stack.enter_context(tx)
        stack.enter_context(events)
        first_data = trio.Event()
        feed = BitunixFeed(config, clock, health, subscribers, events, first_data=first_data)
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
        health.data_source = f"mock (fallback: {reason})"
        health.down_since = None
        await feed._set_stale(False, "fallback to the mock source")
        logger.warning("FEED FALLBACK: {} - trading on the MOCK source for the rest of this session", reason)
        await events.send(
            Event(clock.now(), "feed.fallback", {"reason": reason, "data_source": health.data_source})
        )
        # the mock feed closes what it is given: it gets clones, the originals stay with this actor
        await run_mock_feed(
            config.feed, config.interval_s, clock, walk, [tx.clone() for tx in subscribers], symbol=symbol
        )
