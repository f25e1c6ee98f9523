"""A fake Bitunix futures exchange on 127.0.0.1: public WebSocket and REST market data, with faults,
and one signed private REST endpoint (the account, for the key preflight).

`python -m tools.fake_bitunix --port 0` (see `--help`), or in a test:
`await nursery.start(FakeBitunix(seed=1).run)`, then `fake.ws_url` / `fake.rest_url`.

It imitates the wire format of ../shared/docs/bitunix-protocol.md, quirks included: the connect
frame, no subscribe ack, data 100-600 ms after a subscribe, JSON ping/pong (the reply's server
seconds are the second the socket opened, as observed), prices as strings,
REST klines newest first with the volume names swapped, errors as HTTP 200 with a code.

Price path. Exchange time is wall time (`time.time()` when the fake was made, then the monotonic
clock's time since, as a session's clock: a step or slew of the system clock in a test moves
neither; plus `time_offset_s`). A seeded bar source
gives one 1-minute bar per minute, in order, from `history_candles` minutes before the minute in
which the object was made: a random walk (Brownian-bridge high/low, lognormal volume), or with
`candles_csv` the real candles replayed. Every minute from that one on is expanded into 240
trades, one every 250 ms, whose running open/high/low/close/volume is what the WebSocket pushes;
the bar is exactly the aggregate of its trades. So WS pushes, REST klines and `truth_candles()`
agree to the last digit. Prices are kept in ticks (0.1 USDT) and sizes in 0.0001 BTC as integers.

Several symbols (`symbols=("BTCUSDT", "ETHUSDT")`, CLI `--symbol` repeated or `--symbols A,B`):
each has its own price path, seeded by (seed, symbol) (the first by the seed alone: its path is the
one it has when served alone), at its own level and on its own grid (`SYMBOL_SPECS`, as the
project's instrument table: ETHUSDT ~3,000 in 0.01 ticks and 0.001 lots, SOLUSDT ~150 in 0.001
and 0.01; others 0.1 and 0.0001), and its own books (one coin at the touch); every WS channel and
REST endpoint serves each of them. `Faults.stall_symbol` stops one symbol's pushes while the
others go on; `klines_silent_symbol` and `book_silent_symbol` stop one symbol's kline or book
pushes alone.

CSV replay: minute k after the history start takes CSV row `(r0 + k) mod n` (r0 drawn from the
seed) and keeps its shape, not its level: high/open, low/open and close/open of the row are
applied to an open chained from the previous close (the first open is `start_price`), so the
path has no jumps at CSV gaps or at the wrap-around; volume is the row's.

Book (depth channels, REST depth, the tickers' best bid/ask): one per 250 ms step, seeded by
(seed, step), `BOOK_LEVELS` strictly ordered levels a side around the step's trade: the first 5
one tick apart, then 1-3 ticks. Sizes are lognormal around a median that grows with depth (1 BTC at
the touch, +25 % a level), held within [median / 5, 3 x median]: so the touch shows at most
`BOOK_TOUCH_MAX` BTC and the first 15 levels of a side at least `BOOK15_MIN` BTC, and any market
order in between walks at least two levels and fits in a depth_book15 window.

Kline pushes: every `push_interval_s`, plus one extra push in the last 125 ms of each bucket
(after the bucket's last trade), so the last push of a bucket carries the final candle; that push
is never replaced by a malformed frame. `final_push=False` (CLI `--no-final-push`) leaves that push
out, as the exchange does: a bucket's last push then misses the trades after it. History bars (before the start minute) are aggregates
only: their quote volume is base volume x (o+h+l+c)/4, not a sum over trades.

Faults (`Faults`, switchable at runtime; see faults.py): drops, stalls, malformed frames, refused
handshakes, REST errors and rate limits, latency; and the protocol doc's uncertain readings (a
subscribe acknowledged, a rate-limit reply as HTTP 429 or 503), for a client to be tested under
both. The count-based schedules (a drop after the N-th
data frame of a connection, a stall after every N data frames, malformed frames by their index in
their channel's stream, the first N handshakes refused) hit the same frames in every run; the
time-based ones (`drop_every_s`, ...) depend on timing. `stats.faults_log` lists what happened.

Deviations, each for a reason: the WebSocket is served with trio-websocket's `wrap_server_stream`
on our own `trio.serve_listeners` (what `serve_websocket` does inside) so that the fake owns the
TCP stream: a drop closes it with no close frame (the client sees 1006), a stall holds even the
library's automatic pongs, and the first frame's opcode can be seen (a protocol-level ping first
kills the socket). `1month` candles are 30-day buckets and `1week` buckets follow
floor(ts / interval), i.e. they start on Thursdays. `mark_kline_*` and REST `type=MARK_PRICE`
serve the last-price candles. REST kline with `startTime` and no `endTime` returns the `limit`
candles from startTime on (still newest first); otherwise the newest `limit` up to endTime/now.
The extra kline push at each bucket's end (above) is this fake's too: the protocol doc promises
pushes about every 500 ms only, so a live candle closed from its bucket's last push may miss the
trades of its last half second (found by an audit). The client confirms each closed candle over
REST (`feed.confirm_candle_s`); `final_push=False` is the exchange's timing, to test that.

Private REST: `GET /api/v1/futures/account?marginCoin=USDT` checks the signature of
../shared/docs/bitunix-private-api.md §1.4 over the query values as received and the raw body
(`_RestApp.authenticate` lists the checks and their codes) against the `api_keys` it is given, and
answers the USDT account (an object, or a list with `account_as_list`). Every REST answer carries
a `Date` header of the fake's clock (its exchange clock, skewed by `clock_offset_s`, which also
skews the auth clock that checks the timestamps).
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime as dt
import email.utils
import gzip
import hashlib
import hmac
import io
import json
import logging
import math
import os
import random
import re
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs

import attrs
import hypercorn.config
import hypercorn.trio
import trio
import trio_websocket

from tools.fake_bitunix.faults import (
    MALFORMED_KINDS,
    FakeStats,
    Faults,
    MalformedStream,
    RestErrors,
    WsRecord,
)

__all__ = ["MALFORMED_KINDS", "FakeBitunix", "FakeStats", "Faults", "main"]

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
STEP_MS = 250
STEPS_PER_MIN = MINUTE_MS // STEP_MS
FINAL_LEAD_MS = STEP_MS // 2  # the extra kline push falls this long before the bucket ends
PRICE_PLACES = 1  # BTCUSDT (and symbols the fake does not know): prices in ticks of 0.1
QTY_PLACES = 4  # ... and sizes in units of 0.0001
MINUTES_PER_YEAR = 365 * 24 * 60
BOOK_LEVELS = 200  # REST depth limit=max
BOOK_MEDIAN_UNITS = 10_000  # the touch's median size, in units of 0.0001 (1 BTC); +25 % a level deeper
#                            (every symbol: one coin, 10 ** qty places units)
BOOK_SIZE_SIGMA = 0.7  # lognormal spread of the sizes around the level's median
MAX_SUBSCRIPTIONS = 300
HANDSHAKE_TIMEOUT_S = 10.0
FUNDING_MS = 8 * 3600 * 1000
# the funding intervals a symbol may be given (`funding_hours`), in hours: each divides a day
FUNDING_HOURS = (1, 2, 4, 8)

KLINE_INTERVALS_MS = {
    "1min": MINUTE_MS,
    "3min": 3 * MINUTE_MS,
    "5min": 5 * MINUTE_MS,
    "15min": 15 * MINUTE_MS,
    "30min": 30 * MINUTE_MS,
    "60min": 60 * MINUTE_MS,
    "2h": 120 * MINUTE_MS,
    "4h": 240 * MINUTE_MS,
    "6h": 360 * MINUTE_MS,
    "8h": 480 * MINUTE_MS,
    "12h": 720 * MINUTE_MS,
    "1day": 1440 * MINUTE_MS,
    "3day": 3 * 1440 * MINUTE_MS,
    "1week": 7 * 1440 * MINUTE_MS,
    "1month": 30 * 1440 * MINUTE_MS,
}
REST_INTERVALS_MS = {
    "1m": MINUTE_MS,  # no 3m: the REST endpoint does not serve it
    "5m": 5 * MINUTE_MS,
    "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS,
    "1h": 60 * MINUTE_MS,
    "2h": 120 * MINUTE_MS,
    "4h": 240 * MINUTE_MS,
    "6h": 360 * MINUTE_MS,
    "8h": 480 * MINUTE_MS,
    "12h": 720 * MINUTE_MS,
    "1d": 1440 * MINUTE_MS,
    "3d": 3 * 1440 * MINUTE_MS,
    "1w": 7 * 1440 * MINUTE_MS,
    "1M": 30 * 1440 * MINUTE_MS,
}
WRONG_SYMBOLS = ("ETHUSDT", "XRPUSDT", "DOGEUSDT", "ZZZZUSDT")  # a malformed frame's: the first not served
DEPTH_CHANNELS = {"depth_book1": 1, "depth_book5": 5, "depth_book15": 15}
DEPTH_LIMITS = {"1": 1, "5": 5, "15": 15, "50": 50, "max": BOOK_LEVELS}
# GET /api/v1/futures/account (private): the doc's example account, every field a string (§2.9)
ACCOUNT = {
    "marginCoin": "USDT",
    "available": "1000",
    "frozen": "0",
    "margin": "10",
    "transfer": "1000",
    "positionMode": "HEDGE",
    "crossUnrealizedPNL": "2",
    "isolationUnrealizedPNL": "0",
    "bonus": "0",
}

Candle6 = tuple[int, int, int, int, int, int]  # o, h, l, c (ticks), base volume (units), quote (ticks*units)


def book_size_bounds(level: int, touch_median: int = BOOK_MEDIAN_UNITS) -> tuple[int, int]:
    """(least, most) size in units of a book level (0 = the touch): a fifth to three times its median."""
    median = touch_median * (4 + level) // 4
    return median // 5, median * 3


@attrs.frozen
class SymbolSpec:
    """What the fake serves for a symbol: its grid (as `trading_pairs` gives it: price and size
    decimals, the minimum size is one lot), a plausible opening price and the maximum leverage.
    The grids agree with the project's shipped table (protocols/instruments.py TABLE)."""

    price_places: int
    qty_places: int
    start_price: float
    max_leverage: int


SYMBOL_SPECS = {
    "BTCUSDT": SymbolSpec(1, 4, 60000.0, 125),
    "ETHUSDT": SymbolSpec(2, 3, 3000.0, 100),
    "SOLUSDT": SymbolSpec(3, 2, 150.0, 75),
}
OTHER_SYMBOL = SymbolSpec(PRICE_PLACES, QTY_PLACES, 100.0, 125)  # any other symbol served


BOOK_TOUCH_MAX = book_size_bounds(0)[1] / 10**QTY_PLACES  # BTC: the most the touch ever shows (3)
BOOK15_MIN = sum(book_size_bounds(i)[0] for i in range(15)) / 10**QTY_PLACES  # BTC (8.25)


def _dec(n: int, places: int) -> str:
    """Integer `n` scaled by 10**-places as the exchange writes it: no trailing zeros."""
    sign = "-" if n < 0 else ""
    whole, frac = divmod(abs(n), 10**places)
    digits = f"{frac:0{places}d}".rstrip("0") if places else ""
    return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"


def _iso(ms: int) -> str:
    """ISO-8601 UTC; like the real trade channel, sometimes with nanoseconds."""
    t = dt.datetime.fromtimestamp(ms // 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{t}Z" if ms % 1000 == 0 else f"{t}.{ms % 1000:03d}000000Z"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


# --- the price path ------------------------------------------------------------------------------


Bar = tuple[int, int, int, int, int]  # o, h, l, c (ticks), volume (units)


class _WalkBars:
    """Random-walk 1-minute bars: lognormal close, Brownian-bridge high/low, lognormal volume."""

    def __init__(self, seed: int | str, volatility_pct: float, qty_places: int = QTY_PLACES) -> None:
        self.rng = random.Random(seed)
        self.sigma = volatility_pct / 100.0 / math.sqrt(MINUTES_PER_YEAR)
        self.qty_places = qty_places

    def next_bar(self, o: int) -> Bar:
        s, rng = self.sigma, self.rng
        x = rng.gauss(-0.5 * s * s, s)
        up = (x + math.sqrt(x * x - 2 * s * s * math.log(1.0 - rng.random()))) / 2
        down = (x - math.sqrt(x * x - 2 * s * s * math.log(1.0 - rng.random()))) / 2
        c = max(1, round(o * math.exp(x)))
        h = max(round(o * math.exp(up)), o, c)
        lo = max(1, min(round(o * math.exp(down)), o, c))
        v = round(rng.lognormvariate(math.log(8 * 10**self.qty_places), 0.7))
        return o, h, lo, c, max(v, STEPS_PER_MIN)


class _ZigzagBars:
    """A scripted path for tests: each bar moves `pct` percent, alternately up and down (with a
    wick of a quarter of that either side), so a fast EMA crosses a slow one at every close."""

    def __init__(self, pct: float) -> None:
        self.move = pct / 100.0
        self.up = True

    def next_bar(self, o: int) -> Bar:
        step = max(1, round(o * self.move))
        c = o + step if self.up else max(1, o - step)
        self.up = not self.up
        wick = max(1, step // 4)
        return o, max(o, c) + wick, max(1, min(o, c) - wick), c, 10 * STEPS_PER_MIN


class _CsvBars:
    """Real candles' shapes, chained: see the module docstring."""

    def __init__(
        self,
        rows: list[tuple[float, float, float, float, float]],
        seed: int | str,
        qty_places: int = QTY_PLACES,
    ) -> None:
        self.rows = rows
        self.i = random.Random(seed).randrange(len(rows))
        self.qty_places = qty_places

    def next_bar(self, o: int) -> Bar:
        ro, rh, rl, rc, rv = self.rows[self.i % len(self.rows)]
        self.i += 1
        c = max(1, round(o * rc / ro))
        h = max(round(o * rh / ro), o, c)
        lo = max(1, min(round(o * rl / ro), o, c))
        return o, h, lo, c, max(round(rv * 10**self.qty_places), STEPS_PER_MIN)


def load_candles_csv(path: Path) -> list[tuple[float, float, float, float, float]]:
    """(open, high, low, close, volume) rows of a `open_time_ms,open,high,low,close,volume` file,
    plain or gzipped; rows that are not a sane candle are skipped. ValueError names the problem."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read candles file {path}: {e.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    reader = csv.reader(io.StringIO(raw.decode("utf-8", errors="replace")))
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:6]] != [
        "open_time_ms",
        "open",
        "high",
        "low",
        "close",
        "volume",
    ]:
        raise ValueError(f"{path}: must start with the header open_time_ms,open,high,low,close,volume")
    rows = []
    for rec in reader:
        try:
            o, h, lo, c, v = (float(x) for x in rec[1:6])
        except ValueError:
            continue
        if (
            all(math.isfinite(x) for x in (o, h, lo, c, v))
            and 0 < lo <= min(o, c) <= max(o, c) <= h
            and v >= 0
        ):
            rows.append((o, h, lo, c, v))
    if not rows:
        raise ValueError(f"{path}: no usable candle rows")
    return rows


@attrs.frozen
class _Minute:
    """One minute's trades (one per step) and their running aggregates."""

    prices: list[int]
    qtys: list[int]
    buys: list[bool]
    highs: list[int]
    lows: list[int]
    vols: list[int]
    quotes: list[int]

    def at(self, j: int) -> Candle6:
        return self.prices[0], self.highs[j], self.lows[j], self.prices[j], self.vols[j], self.quotes[j]


def _expand(bar: Bar, rng: random.Random) -> _Minute:
    """Trades that open at o, touch h and l, close at c and add up to the bar's volume exactly."""
    o, h, lo, c, v = bar
    n = STEPS_PER_MIN
    prices = [o] * n
    if h > lo:
        i1, i2 = sorted(rng.sample(range(1, n - 1), 2))
        a, b = (h, lo) if rng.random() < 0.5 else (lo, h)
        anchors = [(0, o), (i1, a), (i2, b), (n - 1, c)]
        for (ia, pa), (ib, pb) in pairwise(anchors):
            span = ib - ia
            sd = (h - lo) / 4 / math.sqrt(span)
            walk = [0.0]
            for _ in range(span):
                walk.append(walk[-1] + rng.gauss(0.0, sd))
            for k in range(1, span):
                x = pa + (pb - pa) * k / span + walk[k] - walk[span] * k / span
                prices[ia + k] = min(h, max(lo, round(x)))
            prices[ib] = pb
    weights = [rng.expovariate(1.0) for _ in range(n)]
    total = sum(weights)
    qtys = [1 + int(w / total * (v - n)) for w in weights]
    rest, i = v - sum(qtys), 0
    while rest:  # what the flooring (and float rounding) left over, one unit at a time
        if rest > 0 or qtys[i % n] > 1:
            qtys[i % n] += 1 if rest > 0 else -1
            rest += -1 if rest > 0 else 1
        i += 1
    buys = []
    side = rng.random() < 0.5
    prev = prices[0]
    for p in prices:
        side = side if p == prev else p > prev
        buys.append(side)
        prev = p
    highs, lows, vols, quotes = [], [], [], []
    hi = lw = prices[0]
    vol = quote = 0
    for p, q in zip(prices, qtys, strict=True):
        hi, lw, vol, quote = max(hi, p), min(lw, p), vol + q, quote + p * q
        highs.append(hi)
        lows.append(lw)
        vols.append(vol)
        quotes.append(quote)
    return _Minute(prices, qtys, buys, highs, lows, vols, quotes)


def _merge(a: Candle6 | None, b: Candle6) -> Candle6:
    if a is None:
        return b
    return a[0], max(a[1], b[1]), min(a[2], b[2]), b[3], a[4] + b[4], a[5] + b[5]


class _PricePath:
    """Bars from `m0` (history) on, expanded into trades from `m_live` on; lazily, by exchange time."""

    def __init__(
        self,
        seed: int | str,
        source: _WalkBars | _CsvBars | _ZigzagBars,
        start_ticks: int,
        m_live: int,
        history: int,
    ) -> None:
        self.seed = seed
        self.source = source
        self.m_live = m_live
        self.m0 = m_live - history
        self.bars: list[Bar] = []
        self.quotes: list[int] = []
        self.next_open = start_ticks
        self.minutes: dict[int, _Minute] = {}

    def _ensure(self, m: int) -> None:
        while self.m0 + len(self.bars) <= m:
            bar = self.source.next_bar(self.next_open)
            self.next_open = bar[3]
            k = self.m0 + len(self.bars)
            self.bars.append(bar)
            o, h, lo, c, v = bar
            self.quotes.append(self.minute(k).quotes[-1] if k >= self.m_live else v * ((o + h + lo + c) // 4))

    def minute(self, m: int) -> _Minute:
        """The trades of minute m (m >= m0), expanded on demand; a few recent minutes are kept."""
        got = self.minutes.get(m)
        if got is None:
            self._ensure(m)  # expands m itself when it is a live minute
            got = self.minutes.get(m)
        if got is None:
            got = _expand(self.bars[m - self.m0], random.Random(f"{self.seed}:trades:{m}"))
            if len(self.minutes) > 8:
                self.minutes.pop(min(self.minutes))
            self.minutes[m] = got
        return got

    def candle(self, m: int, t_ms: int) -> Candle6 | None:
        """Minute m as of exchange time t_ms (partial while t_ms is inside it), None before m0/m."""
        if m < self.m0 or t_ms < m * MINUTE_MS:
            return None
        self._ensure(m)
        if t_ms >= (m + 1) * MINUTE_MS:
            o, h, lo, c, v = self.bars[m - self.m0]
            return o, h, lo, c, v, self.quotes[m - self.m0]
        return self.minute(m).at((t_ms - m * MINUTE_MS) // STEP_MS)

    def span(self, start_ms: int, end_ms: int, t_ms: int) -> Candle6 | None:
        """Aggregate of the minutes with open time in [start_ms, end_ms), as of t_ms."""
        out = None
        for m in range(max(self.m0, start_ms // MINUTE_MS), min(end_ms - 1, t_ms) // MINUTE_MS + 1):
            got = self.candle(m, t_ms)
            if got is not None:
                out = _merge(out, got)
        return out

    def trade(self, t_ms: int) -> tuple[int, int, bool]:
        """The trade of the step at or before t_ms: price, size, buyer-initiated."""
        m = t_ms // MINUTE_MS
        j = (t_ms - m * MINUTE_MS) // STEP_MS
        mi = self.minute(m)
        return mi.prices[j], mi.qtys[j], mi.buys[j]

    def trades(self, after_ms: int, upto_ms: int) -> Iterator[tuple[int, int, int, bool]]:
        """(time, price, size, buy) of every trade with after_ms < time <= upto_ms."""
        first = max(after_ms // STEP_MS + 1, upto_ms // STEP_MS - 4 * STEPS_PER_MIN)
        for step in range(first, upto_ms // STEP_MS + 1):
            t = step * STEP_MS
            yield (t, *self.trade(t))


class _Market:
    """One symbol the fake serves: its price path, its books, and its data as the wire writes it
    (prices in its ticks, sizes in its lots). `seed` keys every random stream of the symbol."""

    def __init__(
        self, symbol: str, spec: SymbolSpec, seed: int | str, path: _PricePath, funding_ms: int = FUNDING_MS
    ) -> None:
        self.symbol = symbol
        self.spec = spec
        self.seed = seed
        self.path = path
        # its funding interval: settlements every `funding_ms` from 00:00 UTC (8 h by default)
        self.funding_ms = funding_ms
        self.touch_median = 10**spec.qty_places  # one coin
        self._books: dict[int, tuple[list[list[str]], list[list[str]]]] = {}

    def price(self, ticks: int) -> str:
        return _dec(ticks, self.spec.price_places)

    def qty(self, units: int) -> str:
        return _dec(units, self.spec.qty_places)

    def notional(self, q: int) -> str:
        return _dec(q, self.spec.price_places + self.spec.qty_places)

    def kline_data(self, candle: Candle6) -> dict[str, str]:
        o, h, lo, c, v, q = candle
        return {
            "o": self.price(o),
            "c": self.price(c),
            "h": self.price(h),
            "l": self.price(lo),
            "b": self.qty(v),
            "q": self.notional(q),
        }

    def trade_rows(self, after_ms: int, upto_ms: int) -> list[dict[str, str]]:
        return [
            {"t": _iso(t), "p": self.price(p), "v": self.qty(q), "s": "buy" if buy else "sell"}
            for t, p, q, buy in self.path.trades(after_ms, upto_ms)
        ]

    def truth_candles(self, now: int) -> list[tuple[int, float, float, float, float, float]]:
        scale, vscale = 10**self.spec.price_places, 10**self.spec.qty_places
        out = []
        for m in range(self.path.m0, now // MINUTE_MS):
            candle = self.path.candle(m, now)
            assert candle is not None
            o, h, lo, c, v, _ = candle
            out.append((m * MINUTE_MS, o / scale, h / scale, lo / scale, c / scale, v / vscale))
        return out

    def book(self, step: int) -> tuple[list[list[str]], list[list[str]]]:
        """BOOK_LEVELS levels a side around the trade of this step, strictly ordered; sizes within
        `book_size_bounds` (see the module docstring)."""
        got = self._books.get(step)
        if got is None:
            p, _, buy = self.path.trade(step * STEP_MS)
            bid, ask = (p - 1, p) if buy else (p, p + 1)
            rng = random.Random(f"{self.seed}:book:{step}")
            bids: list[list[str]] = []
            asks: list[list[str]] = []
            for i in range(BOOK_LEVELS):
                if i:
                    bid -= 1 if i < 5 else rng.choice((1, 1, 2, 3))
                    ask += 1 if i < 5 else rng.choice((1, 1, 2, 3))
                least, most = book_size_bounds(i, self.touch_median)
                mu = math.log(self.touch_median * (4 + i) / 4)
                size_b, size_a = (
                    min(most, max(least, round(rng.lognormvariate(mu, BOOK_SIZE_SIGMA)))) for _ in "ba"
                )
                if bid > 0:
                    bids.append([self.price(bid), self.qty(size_b)])
                asks.append([self.price(ask), self.qty(size_a)])
            got = (bids, asks)
            if len(self._books) > 16:
                self._books.pop(min(self._books))
            self._books[step] = got
        return got

    def depth_data(self, ts: int, levels: int) -> dict[str, Any]:
        bids, asks = self.book(ts // STEP_MS)
        return {"b": [list(x) for x in bids[:levels]], "a": [list(x) for x in asks[:levels]]}

    def ticker_data(self, ts: int) -> dict[str, str]:
        """24 h statistics: the last 1440 minutes, the current one as of ts."""
        m = ts // MINUTE_MS
        agg = self.path.span((m - 1439) * MINUTE_MS, (m + 1) * MINUTE_MS, ts)
        assert agg is not None
        o, h, lo, c, v, q = agg
        return {
            "s": self.symbol,
            "o": self.price(o),
            "la": self.price(c),
            "h": self.price(h),
            "l": self.price(lo),
            "b": self.qty(v),
            "q": self.notional(q),
            "r": f"{(c / o - 1) * 100:.10f}".rstrip("0").rstrip("."),
        }

    def tickers_row(self, ts: int) -> dict[str, str]:
        bids, asks = self.book(ts // STEP_MS)
        row = self.ticker_data(ts)
        row.update(bd=bids[0][0], ak=asks[0][0], bv=bids[0][1], av=asks[0][1])
        return row

    def price_data(self, ts: int) -> dict[str, str]:
        step = ts // STEP_MS
        p, _, _ = self.path.trade(step * STEP_MS)
        wobble = random.Random(f"{self.seed}:mark:{step // 4}")
        mark = p + wobble.randint(-3, 3)
        index = mark + wobble.randint(-5, 5)
        ft = ts // self.funding_ms * self.funding_ms
        rate = round(random.Random(f"{self.seed}:funding:{ft}").gauss(0.005, 0.004) * 10**6)
        return {
            "ip": self.price(index),
            "mp": self.price(mark),
            "fr": _dec(rate, 6),  # percent per the symbol's funding interval
            "ft": _iso(ft),
            "nft": _iso(ft + self.funding_ms),
        }

    def trading_pair(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "symbol": self.symbol,
            "base": self.symbol.removesuffix("USDT"),
            "quote": "USDT",
            "minTradeVolume": _dec(1, spec.qty_places),
            "basePrecision": spec.qty_places,
            "quotePrecision": spec.price_places,
            "minLeverage": 1,
            "maxLeverage": spec.max_leverage,
            "defaultLeverage": 20,
            "maxLimitOrderVolume": "500",
            "maxMarketOrderVolume": "100",
            "symbolStatus": "OPEN",
        }


# --- WebSocket ---------------------------------------------------------------------------------------


class _TapStream(trio.abc.Stream):
    """The TCP stream under trio-websocket: sees the first frame's opcode, times the last byte
    received, holds sends while the server stalls, and can be closed abruptly."""

    def __init__(self, inner: trio.SocketStream, server: FakeBitunix) -> None:
        self.inner = inner
        self.server = server
        self.upgraded = False
        self.first_frame_seen = False
        self.last_rx = trio.current_time()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not self.upgraded and bytes(data[:12]) == b"HTTP/1.1 101":
            self.upgraded = True
        until = self.server.stalled_until  # a stall holds even the library's own pongs
        if until > trio.current_time():
            await trio.sleep_until(until)
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self.last_rx = trio.current_time()
        if data and self.upgraded and not self.first_frame_seen:
            self.first_frame_seen = True
            if data[0] & 0x0F == 0x9:  # opcode 9: a protocol-level ping as the first frame
                self.server.stats.protocol_ping_kills += 1
                await self.inner.aclose()
                return b""
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


@attrs.frozen
class _Out:
    deliver_at: float
    text: str
    data: bool = False  # a data frame (malformed or not), not a control frame


class _Conn:
    """One accepted public WebSocket: a reader (client messages), a writer, subscription pushers."""

    def __init__(self, server: FakeBitunix, ws: trio_websocket.WebSocketConnection, tap: _TapStream) -> None:
        self.srv = server
        self.ws = ws
        self.tap = tap
        self.number = server.stats.connections  # 1 for the first connection accepted
        # the ping reply's server seconds: the second the socket opened, as observed on the public
        # socket (bitunix-private-api.md §3.3), not the time now
        self.opened_s = server.now_ms() // 1000
        self.record = WsRecord(self.number, trio.current_time())
        server.stats.ws_log.append(self.record)
        self.rng = random.Random(f"{server.seed}:conn:{server.stats.connections}")
        self.data_sent = 0  # data frames written to this socket
        self.malformed: dict[tuple[str, str], MalformedStream] = {}
        self.subs: dict[tuple[str, str], trio.CancelScope] = {}
        self.last_ts: dict[tuple[str, str], int] = {}  # of the last well-formed frame, by (symbol, channel)
        self.seen: set[tuple[str, str]] = set()  # (symbol, channel) streams that have sent any frame
        self.msg_times: deque[float] = deque()
        self.out_tx, self.out_rx = trio.open_memory_channel[_Out](256)
        self.scope = trio.CancelScope()
        self.nursery: trio.Nursery | None = None

    async def run(self) -> None:
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    nursery.start_soon(self._writer)
                    nursery.start_soon(self._idle_watch)
                    if self.srv.faults.drop_after_s > 0:
                        nursery.start_soon(self._drop_after, self.srv.faults.drop_after_s)
                    await self._control({"op": "connect", "data": {"result": True}})
                    await self._reader()
                    nursery.cancel_scope.cancel()
        finally:
            self.record.closed_at = trio.current_time()

    async def _drop_after(self, seconds: float) -> None:
        """The `drop_after_s` fault: this connection is closed abruptly `seconds` after it was
        accepted."""
        await trio.sleep_until(self.record.opened_at + seconds)
        self.srv.stats.drops += 1
        self.srv.stats.faults_log.append(("drop_after_s", self.number))
        await self.abort()

    async def abort(self) -> None:
        """Close the TCP stream with no close frame (the client sees 1006), stop every task."""
        try:
            await self.tap.aclose()
        finally:
            self.scope.cancel()

    async def _writer(self) -> None:
        with self.out_rx:
            async for item in self.out_rx:
                await trio.sleep_until(item.deliver_at)
                try:
                    await self.ws.send_message(item.text)
                except trio_websocket.ConnectionClosed:
                    self.scope.cancel()
                    return
                if item.data:
                    self.data_sent += 1
                    record = self.record
                    record.data_frames += 1
                    record.last_data_at = trio.current_time()
                    if record.first_data_at is None:
                        record.first_data_at = record.last_data_at
                    await self.srv.data_frame_sent(self)

    async def _idle_watch(self) -> None:
        while True:
            deadline = self.tap.last_rx + self.srv.idle_timeout_s
            if trio.current_time() >= deadline:
                self.srv.stats.idle_disconnects += 1
                await self.abort()
                return
            await trio.sleep_until(deadline)

    async def _reader(self) -> None:
        limit = self.srv.max_client_msgs_per_s
        while True:
            try:
                msg = await self.ws.get_message()
            except trio_websocket.ConnectionClosed:
                return
            now = trio.current_time()
            self.msg_times.append(now)
            while self.msg_times[0] <= now - 1.0:
                self.msg_times.popleft()
            stats = self.srv.stats
            stats.client_msgs_max_per_s = max(stats.client_msgs_max_per_s, len(self.msg_times))
            self.record.client_msgs += 1
            self.record.client_msgs_max_per_s = max(self.record.client_msgs_max_per_s, len(self.msg_times))
            if len(self.msg_times) > limit:
                stats.rate_disconnects += 1
                await self.abort()
                return
            await self._handle(msg)

    async def _handle(self, raw: str | bytes) -> None:
        try:
            msg = json.loads(raw)
        except ValueError:
            msg = None
        op = msg.get("op") if isinstance(msg, dict) else None
        args = msg.get("args") if isinstance(msg, dict) else None
        stats = self.srv.stats
        if isinstance(msg, dict) and op == "ping":
            stats.pings_received += 1
            stats.pongs_sent += 1
            await self._control({"op": "ping", "pong": msg.get("ping"), "ping": self.opened_s})
        elif op == "subscribe" and isinstance(args, list):
            stats.subscribe_msgs += 1
            await self._subscribe(args)
        elif op == "unsubscribe" and isinstance(args, list):
            for arg in args:
                if isinstance(arg, dict):
                    scope = self.subs.pop((str(arg.get("symbol", "")).upper(), str(arg.get("ch"))), None)
                    if scope is not None:
                        scope.cancel()
            await self._control({"op": "unsubscribe", "ts": self.srv.now_ms(), "data": "success"})
        else:
            stats.ignored_client_msgs += 1  # unknown op, not JSON: no reply, the socket stays open

    async def _subscribe(self, args: list[Any]) -> None:
        assert self.nursery is not None
        for arg in args:
            self.srv.stats.subscriptions.append(arg)
            if not isinstance(arg, dict) or not isinstance(arg.get("ch"), str):
                continue
            symbol, ch = str(arg.get("symbol", "")).upper(), arg["ch"]
            if (symbol, ch) in self.subs or _channel_kind(ch) is None:
                continue
            if len(self.subs) >= MAX_SUBSCRIPTIONS:
                msg = {"msg": f"subscribe channel > {MAX_SUBSCRIPTIONS}", "nonce": "", "result": False}
                await self._control({"op": "subscribe", "data": msg})
                return
            scope = trio.CancelScope()
            self.subs[symbol, ch] = scope
            if self.srv.faults.subscribe_ack:
                self.srv.stats.subscribe_acks += 1
                await self._control({"op": "subscribe", "ch": ch, "data": {"result": True}})
            self.nursery.start_soon(self._pusher, scope, symbol, ch, self.rng.uniform(0.1, 0.6))

    async def _control(self, frame: dict[str, Any]) -> None:
        await self.out_tx.send(_Out(trio.current_time() + self.srv.faults.latency_ms / 1000, _dumps(frame)))

    async def _emit(self, market: _Market | None, frame: dict[str, Any], *, protect: bool = False) -> None:
        """Queue a data frame of `market` (None: a symbol not served), or the malformed frame that
        replaces it."""
        ch = frame["ch"]
        key = (frame["symbol"] if market is None else market.symbol, ch)
        kind = None if protect or market is None else self._malformed_kind(key)
        self.seen.add(key)
        if kind is None:
            self.last_ts[key] = frame["ts"]
            self.srv.stats.frames_sent[ch] += 1
            text = _dumps(frame)
        else:
            assert market is not None
            self.srv.stats.malformed_sent[kind] += 1
            text = _malform(frame, kind, self.last_ts.get(key, frame["ts"]), market, self.srv.symbols)
        await self.out_tx.send(_Out(trio.current_time() + self.srv.faults.latency_ms / 1000, text, data=True))

    def _malformed_kind(self, key: tuple[str, str]) -> str | None:
        """The kind of malformed frame that replaces this frame of the (symbol, channel) stream, or
        None (by the frame's index in its stream, never by time: see faults.MalformedStream). The
        first symbol's streams are seeded as when it was the only one."""
        symbol, ch = key
        stream = self.malformed.get(key)
        if stream is None:
            name = ch if symbol == self.srv.symbol else f"{ch}:{symbol}"
            stream = self.malformed[key] = MalformedStream(self.srv.seed, self.number, name)
        has_prev = key in self.seen
        index, kind = stream.next(self.srv.faults.malformed_fraction, lambda k: _applicable(k, ch, has_prev))
        if kind is not None:
            self.srv.stats.faults_log.append(("malformed", self.number, ch, index, kind))
        return kind

    async def _pusher(self, scope: trio.CancelScope, symbol: str, ch: str, delay: float) -> None:
        with scope:
            await trio.sleep(delay)
            srv = self.srv
            market = srv.markets.get(symbol)
            if market is None:  # not served: one frame of empty levels, then nothing
                empty = {"b": [["", ""]], "a": [["", ""]]}
                frame = {"ch": ch, "symbol": symbol, "ts": srv.now_ms(), "data": empty}
                await self._emit(None, frame, protect=True)
                return
            kind = _channel_kind(ch)
            if kind == "kline":
                await self._push_kline(market, ch, KLINE_INTERVALS_MS[ch.rsplit("_", 1)[1]])
            elif kind == "trade":
                await self._push_trades(market)
            elif kind == "depth":
                levels = DEPTH_CHANNELS[ch]
                await self._push_every(
                    market, srv.depth_interval_s, ch, lambda ts: market.depth_data(ts, levels)
                )
            elif kind == "ticker":
                await self._push_every(market, srv.price_interval_s, ch, market.ticker_data)
            elif kind == "tickers":
                await self._push_every(market, srv.price_interval_s, ch, lambda ts: [market.tickers_row(ts)])
            elif kind == "price":
                await self._push_every(market, srv.price_interval_s, ch, market.price_data)

    async def _push_every(
        self, market: _Market, period_s: float, ch: str, build: Callable[[int], Any]
    ) -> None:
        srv = self.srv
        next_t = trio.current_time()
        silent_book = ch in DEPTH_CHANNELS
        while True:
            if not srv.stalled(market.symbol) and not (
                silent_book and market.symbol == srv.faults.book_silent_symbol
            ):
                ts = srv.now_ms()
                frame: dict[str, Any] = {"ch": ch, "ts": ts, "data": build(ts)}
                if ch != "tickers":
                    frame = {"ch": ch, "symbol": market.symbol, "ts": ts, "data": frame["data"]}
                await self._emit(market, frame)
            next_t = max(next_t + period_s, trio.current_time())
            await trio.sleep_until(next_t)

    async def _push_trades(self, market: _Market) -> None:
        srv = self.srv
        last = srv.now_ms()
        next_t = trio.current_time()
        while True:
            next_t = max(next_t + STEP_MS / 1000, trio.current_time())
            await trio.sleep_until(next_t)
            now = srv.now_ms()
            rows = market.trade_rows(last, now)
            last = now
            if rows and not srv.stalled(market.symbol):
                await self._emit(market, {"ch": "trade", "symbol": market.symbol, "ts": now, "data": rows})

    async def _push_kline(self, market: _Market, ch: str, interval: int) -> None:
        """Every push_interval_s, plus a push after the last trade of each bucket (see docstring)."""
        srv = self.srv
        push_ms = max(1, round(srv.push_interval_s * 1000))
        next_grid = srv.now_ms()
        finalized = -1
        while True:
            now = srv.now_ms()
            bucket = now // interval
            final_at = (bucket + 1) * interval - FINAL_LEAD_MS
            end_push = srv.final_push and bucket > finalized and final_at < next_grid
            target = final_at if end_push else next_grid
            if target > now:
                await trio.sleep((target - now) / 1000)
            tb = target // interval
            end = (tb + 1) * interval
            ts = min(max(srv.now_ms(), target), end - 1)
            final = srv.final_push and ts >= end - FINAL_LEAD_MS
            if final:
                finalized = tb
            if target == next_grid:
                while next_grid <= ts:
                    next_grid += push_ms
            candle = market.path.span(tb * interval, end, ts)
            silent = market.symbol == srv.faults.klines_silent_symbol
            if candle is not None and not srv.stalled(market.symbol) and not silent:
                frame = {"ch": ch, "symbol": market.symbol, "ts": ts, "data": market.kline_data(candle)}
                await self._emit(market, frame, protect=final)


def _channel_kind(ch: str) -> str | None:
    if ch.startswith(("market_kline_", "mark_kline_")):
        return "kline" if ch.rsplit("_", 1)[1] in KLINE_INTERVALS_MS else None
    if ch in DEPTH_CHANNELS:
        return "depth"
    return ch if ch in ("trade", "ticker", "tickers", "price") else None


def _applicable(kind: str, ch: str, has_prev: bool) -> bool:
    if kind == "crossed_book":
        return _channel_kind(ch) in ("kline", "depth", "tickers")
    if kind == "ts_backwards":
        return has_prev
    return True


def _refs(ch: str, d: Any) -> tuple[list[tuple[Any, Any]], list[tuple[Any, Any]], tuple[Any, Any]]:
    """Where a frame keeps its prices, its sizes, and one required field: (container, key) pairs."""
    kind = _channel_kind(ch)
    if kind == "kline":
        return [(d, "c"), (d, "h")], [(d, "b")], (d, "c")
    if kind == "depth":
        return [(lvl, 0) for lvl in d["b"] + d["a"]], [(d["b"][0], 1)], (d, "a")
    if kind == "trade":
        return [(row, "p") for row in reversed(d)], [(d[-1], "v")], (d[-1], "p")
    if kind == "ticker":
        return [(d, "la")], [], (d, "la")
    if kind == "tickers":
        return [(d[0], "bd"), (d[0], "ak"), (d[0], "la")], [(d[0], "bv")], (d[0], "bd")
    return [(d, "mp"), (d, "ip")], [], (d, "mp")


def _malform(frame: dict[str, Any], kind: str, last_ts: int, market: _Market, served: Sequence[str]) -> str:
    """The text that replaces `frame` (of `market`) for one malformed kind (see MALFORMED_KINDS);
    `wrong_symbol` names a symbol that is not `served`."""
    if kind == "not_json":
        return "<html><body><h1>502 Bad Gateway</h1></body></html>"
    if kind == "truncated":
        text = _dumps(frame)
        return text[: len(text) // 2]
    f = copy.deepcopy(frame)
    ch, d = f["ch"], f["data"]
    prices, sizes, (box, key) = _refs(ch, d)
    if kind == "missing_field":
        del box[key]
    elif kind == "wrong_type":
        prices[0][0][prices[0][1]] = [prices[0][0][prices[0][1]]]
    elif kind in ("nan", "inf", "zero_price"):
        prices[0][0][prices[0][1]] = {"nan": "NaN", "inf": "Infinity", "zero_price": "0"}[kind]
    elif kind == "huge":  # finite, and far beyond any market: a book's size, any other frame's prices
        for tgt, k in sizes[:1] if _channel_kind(ch) in ("depth", "tickers") else prices:
            tgt[k] = "1e308"
    elif kind == "negative_size":
        tgt, k = (sizes or prices)[0]
        tgt[k] = "-" + str(tgt[k])
    elif kind == "crossed_book":
        if _channel_kind(ch) == "kline":
            d["h"] = market.price(round(float(d["l"]) * 10**market.spec.price_places) - 10)
        elif _channel_kind(ch) == "depth":
            d["b"], d["a"] = d["a"], d["b"]
        else:
            d[0]["bd"], d[0]["ak"] = d[0]["ak"], d[0]["bd"]
    elif kind == "ts_backwards":
        f["ts"] = last_ts - 5000
    elif kind == "price_jump":
        for tgt, k in prices:
            tgt[k] = market.price(round(float(tgt[k]) * 10**market.spec.price_places * 1.5))
    elif kind == "unknown_channel":
        f["ch"] = "market_orderflow_1min"
    elif kind == "wrong_symbol":
        other = next(s for s in WRONG_SYMBOLS if s not in served)
        if ch == "tickers":
            d[0]["s"] = other
        else:
            f["symbol"] = other
    return _dumps(f)


# --- REST ------------------------------------------------------------------------------------------

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class _RestError(Exception):
    def __init__(self, code: int, msg: str) -> None:
        self.code = code
        self.msg = msg


def _bad_param() -> _RestError:
    return _RestError(10008, "Parameter error")


def _int_param(params: dict[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise _bad_param() from None


def _sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _RestApp:
    """The ASGI app behind hypercorn: GET /api/v1/futures/market/* (public) and GET
    /api/v1/futures/account (private: signed, see `authenticate`). Every answer carries a `Date`
    header of the fake's clock (`FakeBitunix.date_now`: its exchange clock plus `clock_offset_s`)."""

    def __init__(self, server: FakeBitunix) -> None:
        self.srv = server
        self.window: deque[float] = deque()
        self.limited = 0
        self.routes: dict[str, Callable[[dict[str, str], int], Any]] = {
            "/api/v1/futures/market/kline": self.kline,
            "/api/v1/futures/market/depth": self.depth,
            "/api/v1/futures/market/tickers": self.tickers,
            "/api/v1/futures/market/funding_rate": self.funding_rate,
            "/api/v1/futures/market/trading_pairs": self.trading_pairs,
        }
        # signed: authenticate(...) before the route runs
        self.private_routes: dict[str, Callable[[dict[str, str], int], Any]] = {
            "/api/v1/futures/account": self.account,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        request_body = b""
        while True:  # the raw body: a signed request's signature covers it
            message = await receive()
            if message["type"] != "http.request":
                return  # http.disconnect: the client went away
            request_body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        limited = self.limited
        status, ctype, body = self.reply(scope, request_body)
        limited = self.limited != limited  # (`reply` does not wait: no other request came meanwhile)
        await trio.sleep(self.srv.faults.latency_ms / 1000)
        headers = [
            (b"content-type", ctype),
            (b"content-length", str(len(body)).encode()),
            # hypercorn's own Date is switched off (run): this one is of the fake's (offset) clock
            (b"date", email.utils.formatdate(self.srv.date_now(), usegmt=True).encode("ascii")),
        ]
        if limited and self.srv.faults.rest_retry_after:
            headers.append((b"retry-after", self.srv.faults.rest_retry_after.encode("ascii")))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def reply(self, scope: Scope, body: bytes = b"") -> tuple[int, bytes, bytes]:
        srv, faults = self.srv, self.srv.faults
        srv.stats.rest_requests += 1
        now = trio.current_time()
        self.window.append(now)
        while self.window[0] <= now - 1.0:
            self.window.popleft()
        if srv.stats.rest_requests <= faults.rest_rate_limited_first or (
            faults.rest_rate_limit_per_s > 0 and len(self.window) > faults.rest_rate_limit_per_s
        ):
            srv.stats.rest_rate_limited += 1
            self.limited += 1
            code, msg = (
                (10006, "Request too frequently")
                if self.limited % 4 == 0
                else (10005, "Too many requests, please try again later")
            )
            _, ctype, body = self.envelope(code, None, msg)
            return faults.rest_rate_limit_status, ctype, body
        error = srv.next_rest_error()
        if error == "http_500":
            return 500, b"text/html", b"<html><body><h1>500 Internal Server Error</h1></body></html>"
        if error == "http_503":
            return (
                503,
                b"text/html",
                b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>",
            )
        if error == "network_error":  # the exchange's transient one (code 1 is its missing-symbol reply)
            return self.envelope(10001, None, "Network Error")
        private = self.private_routes.get(scope["path"])
        route = None
        if scope["method"] in ("GET", "HEAD"):
            route = self.routes.get(scope["path"]) or private
        if route is None:
            return self.envelope(404, None, "Not Found")
        query = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        params = {k: v[-1] for k, v in query.items()}
        srv.stats.rest_log.append((scope["path"], params))
        try:
            if private is not None:
                self.authenticate(scope, params, body)
            return self.envelope(0, route(params, srv.now_ms()), "Success")
        except _RestError as e:
            return self.envelope(e.code, None, e.msg)

    def authenticate(self, scope: Scope, params: dict[str, str], body: bytes) -> None:
        """The checks of a signed request (../shared/docs/bitunix-private-api.md §1.3, §1.4), in
        this order; _RestError on the first that fails:

        1. a missing or empty `api-key` header: 10003 "api-key can't be empty";
        2. a key the fake does not know: 10007 "Sign signature error" (the real exchange's code for
           it is undocumented; a key it does not know cannot make a valid signature);
        3. a client IP outside the key's `api_ip_whitelist` (when the key has one): 10004;
        4. a `timestamp` that is not an integer (ms), or farther than `timestamp_window_s` from the
           fake's auth clock: 10007. The real window and its error code are undocumented (§1.3,
           §9.8), so the fake answers as for a bad signature; a client diagnoses a skew from the
           `Date` header, which every answer carries;
        5. a `sign` that is not sha256_hex(sha256_hex(nonce + timestamp + apiKey + queryParams +
           body) + secret), queryParams being the query's keys sorted ascending, each followed by
           its value as received (percent-decoded), and body the raw bytes received: 10007;
        6. a key in `api_key_forbidden` (a key without the futures permission): 403 "This API key
           does not support this operation" (§6).
        """
        headers: dict[str, str] = {}
        for name, value in scope.get("headers", []):
            headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        api_key = headers.get("api-key", "")
        if not api_key:
            raise _RestError(10003, "api-key can't be empty")
        secret = self.srv.api_keys.get(api_key)
        if secret is None:
            raise _RestError(10007, "Sign signature error")
        allowed = self.srv.api_ip_whitelist.get(api_key)
        client = scope.get("client")
        if allowed is not None and (client is None or client[0] not in allowed):
            raise _RestError(10004, "The current ip is not in the apikey ip whitelist")
        timestamp = headers.get("timestamp", "")
        try:
            ts = int(timestamp)
        except ValueError:
            raise _RestError(10007, "Sign signature error") from None
        if abs(ts - self.srv.auth_now() * 1000) > self.srv.timestamp_window_s * 1000:
            raise _RestError(10007, "Sign signature error")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise _RestError(10007, "Sign signature error") from None
        query = "".join(k + params[k] for k in sorted(params))
        digest = _sha256_hex(headers.get("nonce", "") + timestamp + api_key + query + text)
        expected = _sha256_hex(digest + secret)
        if not hmac.compare_digest(expected.encode(), headers.get("sign", "").encode("latin-1")):
            raise _RestError(10007, "Sign signature error")
        if api_key in self.srv.api_key_forbidden:
            raise _RestError(403, "This API key does not support this operation")

    @staticmethod
    def envelope(code: int, data: Any, msg: str) -> tuple[int, bytes, bytes]:
        return 200, b"application/json", _dumps({"code": code, "data": data, "msg": msg}).encode()

    def market(self, params: dict[str, str]) -> _Market:
        """The market of the `symbol` parameter: code 1 when missing, 20015 when not served."""
        sym = params.get("symbol", "").upper()
        if not sym:
            raise _RestError(1, "Network Error")
        market = self.srv.markets.get(sym)
        if market is None:
            raise _RestError(20015, "this Futures is not allowed to trade.")
        return market

    def markets(self, params: dict[str, str]) -> list[_Market]:
        """The served markets among the `symbols` parameter (comma-separated), in its order (the
        others are left out); every served one when it is missing."""
        asked = [s.strip().upper() for s in params.get("symbols", "").split(",") if s.strip()]
        served = self.srv.markets
        return [served[s] for s in dict.fromkeys(asked) if s in served] if asked else list(served.values())

    def kline(self, params: dict[str, str], now: int) -> list[dict[str, str]]:
        market = self.market(params)
        interval = REST_INTERVALS_MS.get(params.get("interval", "1m"))
        kind = params.get("type") or "LAST_PRICE"
        limit = _int_param(params, "limit")
        limit = 100 if limit is None else limit
        start, end = _int_param(params, "startTime"), _int_param(params, "endTime")
        if interval is None or kind not in ("LAST_PRICE", "MARK_PRICE") or limit < 1:
            raise _bad_param()
        limit = min(limit, 200)
        path = market.path
        lo_b = path.m0 * MINUTE_MS // interval
        if start is not None:
            lo_b = max(lo_b, -(-start // interval))
        if end is not None and self.srv.faults.rest_kline_end_exclusive:
            end -= 1  # a candle opening at endTime is left out
        hi_b = now // interval if end is None else min(now // interval, end // interval)
        if start is not None and end is None:
            hi_b = min(hi_b, lo_b + limit - 1)
        rows = []
        for b in range(hi_b, max(lo_b, hi_b - limit + 1) - 1, -1):
            candle = path.span(b * interval, (b + 1) * interval, now)
            if candle is None:
                continue
            o, h, lo, c, v, q = candle
            stats = self.srv.stats
            if stats.rest_bad_kline_rows < self.srv.faults.rest_bad_kline_rows:
                stats.rest_bad_kline_rows += 1
                stats.faults_log.append(("bad_kline_row", stats.rest_requests, b * interval))
                h = lo - 1  # garbled: its high a tick under its low
            rows.append(
                {
                    "open": market.price(o),
                    "high": market.price(h),
                    "close": market.price(c),
                    "low": market.price(lo),
                    "time": str(b * interval),
                    "quoteVol": market.qty(v),  # swapped, as the real exchange does
                    "baseVol": market.notional(q),
                    "type": kind,
                }
            )
        return rows

    def depth(self, params: dict[str, str], now: int) -> dict[str, Any]:
        market = self.market(params)
        levels = DEPTH_LIMITS.get(params.get("limit") or "50")
        if levels is None:
            raise _bad_param()
        book = market.depth_data(now, levels)
        return {"asks": book["a"], "bids": book["b"]}

    def tickers(self, params: dict[str, str], now: int) -> list[dict[str, str]]:
        rows = []
        for market in self.markets(params):
            t = market.ticker_data(now)
            rows.append(
                {
                    "symbol": market.symbol,
                    "markPrice": market.price_data(now)["mp"],
                    "lastPrice": t["la"],
                    "open": t["o"],
                    "last": t["la"],
                    "quoteVol": t["q"],
                    "baseVol": t["b"],
                    "high": t["h"],
                    "low": t["l"],
                }
            )
        return rows

    def funding_rate(self, params: dict[str, str], now: int) -> dict[str, Any]:
        market = self.market(params)
        p = market.price_data(now)
        return {
            "symbol": market.symbol,
            "markPrice": p["mp"],
            "lastPrice": market.ticker_data(now)["la"],
            "indexPrice": p["ip"],
            "fundingRate": p["fr"],
            "fundingInterval": market.funding_ms // 3_600_000,
            "nextFundingTime": str((now // market.funding_ms + 1) * market.funding_ms),
        }

    def trading_pairs(self, params: dict[str, str], now: int) -> list[dict[str, Any]]:
        """The served symbols' rows; an unknown one asked for is left out, or with
        `Faults.rest_unknown_symbol_refused` refuses the whole call with code 20015 (the docs
        observed 20015 for an unknown or delisted symbol; which a list gets is not documented)."""
        asked = [s.strip().upper() for s in params.get("symbols", "").split(",") if s.strip()]
        if self.srv.faults.rest_unknown_symbol_refused and any(s not in self.srv.markets for s in asked):
            raise _RestError(20015, "this Futures is not allowed to trade.")
        return [{**market.trading_pair(), **self.srv.trading_pair} for market in self.markets(params)]

    def account(self, params: dict[str, str], now: int) -> dict[str, str] | list[dict[str, str]]:
        """The futures account of `marginCoin` (§2.9): required (else 10002); the fake holds USDT
        only (another coin: 10002 too). An object, or a one-element list with `account_as_list`."""
        coin = params.get("marginCoin", "")
        if coin.upper() != "USDT":
            raise _RestError(10002, "Parameter Error")
        row = {**ACCOUNT, **self.srv.account, "marginCoin": "USDT"}
        return [row] if self.srv.account_as_list else row


# --- the exchange ----------------------------------------------------------------------------------


class FakeBitunix:
    """The fake exchange. `await nursery.start(fake.run)`; then `ws_url`, `rest_url` are valid.

    `symbols` are the symbols served (default: `symbol` alone), each with its own seeded price path
    (the first keyed by `seed` itself, so it is the same path with or without the others; the
    others by seed and symbol), opening at `start_price` (the first symbol) or the symbol's usual
    level (`SYMBOL_SPECS`: BTCUSDT 60,000, ETHUSDT 3,000, SOLUSDT 150; any other symbol 100), on
    its own tick and lot grid. `symbol`, `path` and the market-data methods without a symbol are
    the first symbol's. `funding_hours` gives a symbol another funding interval than 8 h (1, 2 or 4
    h: a contract settled more often), its settlements every that many hours from 00:00 UTC: its
    `price` pushes' `ft`/`nft` and the REST `funding_rate`'s `fundingInterval`/`nextFundingTime`
    say so, and its `fr` is the rate per that interval.
    `time_offset_s` shifts the exchange clock (e.g. to put a candle close 2 s after the start);
    `ws_port`/`rest_port` 0 take free ports; `faults` and `stats` may be read and changed live;
    `trading_pair` replaces members of every symbol's `trading_pairs` row.

    Private REST (`GET /api/v1/futures/account`, signed: `_RestApp.authenticate`): `api_keys` maps
    each key the fake knows to its secret; `api_ip_whitelist` maps a key to the client IPs it
    accepts (a key not in it: any IP); `timestamp_window_s` is how far a request's timestamp may be
    from the fake's auth clock; `api_key_forbidden` lists keys that lack the futures permission
    (403 to a request signed right); `account_as_list` answers the account as a one-element list
    (the docs' form) instead of an object (the live API's, per TIQ); `account` replaces members of
    the account object. `clock_offset_s` shifts the auth clock (`auth_now`: wall time plus it), which
    checks timestamps, and the REST answers' `Date` header (`date_now`: the exchange clock plus
    it): a fake whose clock is off. `time_offset_s` shifts the market data and the `Date` header
    alike (a test's convenience: the exchange's one clock, which the feed seeds its history by).
    """

    def __init__(
        self,
        *,
        symbol: str = "BTCUSDT",
        symbols: Sequence[str] = (),
        seed: int = 0,
        candles_csv: Path | None = None,
        start_price: float | None = None,
        volatility_pct: float = 80.0,
        faults: Faults | None = None,
        push_interval_s: float = 0.5,
        final_push: bool = True,
        depth_interval_s: float = 0.31,
        price_interval_s: float = 1.0,
        idle_timeout_s: float = 60.0,
        max_client_msgs_per_s: int = 5,
        history_candles: int = 1000,
        time_offset_s: float = 0.0,
        zigzag_pct: float = 0.0,
        ws_port: int = 0,
        rest_port: int = 0,
        trading_pair: dict[str, Any] | None = None,
        api_keys: Mapping[str, str] | None = None,
        api_ip_whitelist: Mapping[str, tuple[str, ...]] | None = None,
        api_key_forbidden: Sequence[str] = (),
        clock_offset_s: float = 0.0,
        timestamp_window_s: float = 30.0,
        account_as_list: bool = False,
        account: dict[str, str] | None = None,
        funding_hours: Mapping[str, int] | None = None,
    ) -> None:
        names = [s.upper() for s in (symbols or (symbol,))]
        if len(set(names)) != len(names) or not all(names):
            raise ValueError(f"symbols must be distinct and non-empty: {', '.join(names)}")
        hours = {s.upper(): h for s, h in (funding_hours or {}).items()}
        for name, h in hours.items():
            if name not in names:
                raise ValueError(f"funding hours for {name}: not a symbol served ({', '.join(names)})")
            if h not in FUNDING_HOURS:
                raise ValueError(
                    f"funding hours for {name}: {h!r}; expected one of {', '.join(map(str, FUNDING_HOURS))}"
                )
        self.symbols = tuple(names)
        self.symbol = self.symbols[0]
        # members of every trading_pairs row to replace (a test's CANCEL_ONLY, a garbled row)
        self.trading_pair = dict(trading_pair or {})
        self.api_keys = dict(api_keys or {})  # key -> secret
        self.api_ip_whitelist = {k: tuple(v) for k, v in (api_ip_whitelist or {}).items()}
        self.api_key_forbidden = frozenset(api_key_forbidden)  # keys without the futures permission
        self.clock_offset_s = clock_offset_s
        self.timestamp_window_s = timestamp_window_s
        self.account_as_list = account_as_list
        self.account = dict(account or {})  # members of the account object to replace
        self.seed = seed
        self.faults = faults if faults is not None else Faults()
        self.push_interval_s = push_interval_s
        self.final_push = final_push
        self.depth_interval_s = depth_interval_s
        self.price_interval_s = price_interval_s
        self.idle_timeout_s = idle_timeout_s
        self.max_client_msgs_per_s = max_client_msgs_per_s
        self.time_offset_s = time_offset_s
        # exchange time: the wall time now, then monotonic (found in a test: with the system clock
        # slewed, the fake's books ran a 250 ms step ahead of a session clock started beside it)
        self._wall0, self._mono0 = time.time(), time.monotonic()
        self.ws_port = ws_port
        self.rest_port = rest_port
        self.stats = FakeStats()
        self.ws_url = ""
        self.rest_url = ""
        self.stalled_until = -math.inf  # every socket stalls (the TCP stream holds)
        self.symbol_stalled_until: dict[str, float] = {}  # one symbol's pushes stop (stall_symbol)
        rows = load_candles_csv(Path(candles_csv)) if candles_csv is not None else None
        now = self.now_ms()
        self.markets: dict[str, _Market] = {}
        for i, name in enumerate(self.symbols):
            spec = SYMBOL_SPECS.get(name, OTHER_SYMBOL)
            key: int | str = seed if i == 0 else f"{seed}:{name}"
            source: _WalkBars | _CsvBars | _ZigzagBars
            if zigzag_pct > 0:
                source = _ZigzagBars(zigzag_pct)
            elif rows is not None:
                source = _CsvBars(rows, key, spec.qty_places)
            else:
                source = _WalkBars(key, volatility_pct, spec.qty_places)
            opening = start_price if i == 0 and start_price is not None else spec.start_price
            start_ticks = max(1, round(opening * 10**spec.price_places))
            path = _PricePath(key, source, start_ticks, now // MINUTE_MS, history_candles)
            path.candle(path.m_live, now)
            self.markets[name] = _Market(name, spec, key, path, hours.get(name, 8) * 3_600_000)
        self.path = self.markets[self.symbol].path
        self._conns: set[_Conn] = set()
        self._started_at = math.inf
        self._stopped_ms: int | None = None
        self._rest_errors = RestErrors()
        self._stalls_once_by_frames = 0  # stall_once_after_frames stalls done (0 or 1)

    def now_ms(self) -> int:
        """Exchange time in ms (wall time plus time_offset_s)."""
        return int((self._wall0 + (time.monotonic() - self._mono0) + self.time_offset_s) * 1000)

    def date_now(self) -> float:
        """The clock of the `Date` headers, in s: the exchange clock (`now_ms`, which stamps the
        market data) plus clock_offset_s. Found by an audit: it read the system clock anew, so a
        step of it after the start (NTP, a laptop's resync) moved the headers away from the data's
        clock, and a client judging from them which candles had closed judged wrong."""
        return self.now_ms() / 1000 + self.clock_offset_s

    def auth_now(self) -> float:
        """The clock of the private API's timestamp check, in s: wall time plus clock_offset_s."""
        return time.time() + self.clock_offset_s

    def truth_candles(self, symbol: str | None = None) -> list[tuple[int, float, float, float, float, float]]:
        """Every closed 1-minute candle of `symbol` (default: the first), oldest first:
        (open_time_ms, o, h, l, c, base volume)."""
        now = self.now_ms() if self._stopped_ms is None else self._stopped_ms
        return self.market(symbol).truth_candles(now)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve on 127.0.0.1 until cancelled; `task_status.started()` once both ports listen."""
        self._started_at = trio.current_time()
        self._stopped_ms = None
        try:
            async with trio.open_nursery() as nursery:
                listeners = await trio.open_tcp_listeners(self.ws_port, host="127.0.0.1")
                ws_port = listeners[0].socket.getsockname()[1]
                await nursery.start(trio.serve_listeners, self._serve_tcp, listeners)
                config = hypercorn.config.Config()
                config.bind = [f"127.0.0.1:{self.rest_port}"]
                config.loglevel = "WARNING"
                config.include_date_header = False  # _RestApp sends its own, of the offset clock
                app = cast(Any, _RestApp(self))
                binds = await nursery.start(partial(hypercorn.trio.serve, app, config))
                nursery.start_soon(self._fault_loop)
                self.ws_url = f"ws://127.0.0.1:{ws_port}/public/"
                self.rest_url = binds[0]
                task_status.started()
        finally:
            self._stopped_ms = self.now_ms()

    def stalled(self, symbol: str | None = None) -> bool:
        """Whether pushes stop now: every socket's, or (with a symbol) that symbol's."""
        now = trio.current_time()
        if now < self.stalled_until:
            return True
        return symbol is not None and now < self.symbol_stalled_until.get(symbol, -math.inf)

    def next_rest_error(self) -> str | None:
        kind = self._rest_errors.next(self.faults.rest_error_fraction)
        if kind is not None:
            self.stats.rest_errors += 1
            self.stats.faults_log.append(("rest_error", self.stats.rest_requests, kind))
        return kind

    def _stall(self) -> None:
        """A stall of stall_for_s from now, of every socket or of the stall_symbol; logged."""
        now = trio.current_time()
        until = now + self.faults.stall_for_s
        symbol = self.faults.stall_symbol.upper()
        if symbol:
            self.symbol_stalled_until[symbol] = max(self.symbol_stalled_until.get(symbol, -math.inf), until)
        else:
            self.stalled_until = max(self.stalled_until, until)
        self.stats.stalls += 1
        n = self.stats.data_frames_sent
        self.stats.faults_log.append(("stall", n, symbol) if symbol else ("stall", n))

    async def data_frame_sent(self, conn: _Conn) -> None:
        """Count-based faults, after each data frame written to a socket: stalls by the server's
        count of data frames, drops by the connection's."""
        stats, f = self.stats, self.faults
        stats.data_frames_sent += 1
        n = stats.data_frames_sent
        if f.stall_for_s > 0:
            every = f.stall_every_frames > 0 and n % f.stall_every_frames == 0
            once = f.stall_once_after_frames > 0 and n >= f.stall_once_after_frames
            once = once and not self._stalls_once_by_frames
            if every or once:
                self._stalls_once_by_frames += once
                self._stall()
        if (
            f.drop_after_frames > 0
            and conn.data_sent >= f.drop_after_frames
            and (f.drop_connections <= 0 or conn.number <= f.drop_connections)
        ):
            stats.drops += 1
            stats.faults_log.append(("drop", conn.number, conn.data_sent))
            await conn.abort()

    async def _fault_loop(self) -> None:
        """Drops and stalls; polls, because tests switch faults on and off at runtime."""
        next_drop = next_stall = math.inf
        once_done = False
        while True:
            now, f = trio.current_time(), self.faults
            next_drop = min(next_drop, now + f.drop_every_s) if f.drop_every_s > 0 else math.inf
            if now >= next_drop:
                next_drop = now + f.drop_every_s
                for conn in list(self._conns):
                    self.stats.drops += 1
                    self.stats.faults_log.append(("drop", conn.number, conn.data_sent))
                    await conn.abort()
            next_stall = min(next_stall, now + f.stall_every_s) if f.stall_every_s > 0 else math.inf
            once = (
                not once_done and f.stall_once_after_s > 0 and now >= self._started_at + f.stall_once_after_s
            )
            if (now >= next_stall or once) and f.stall_for_s > 0:
                once_done = once_done or once
                next_stall = now + f.stall_every_s if f.stall_every_s > 0 else math.inf
                self._stall()
            await trio.sleep(0.02)

    async def _serve_tcp(self, stream: trio.SocketStream) -> None:
        tap = _TapStream(stream, self)
        try:
            async with trio.open_nursery() as nursery:
                request = None
                with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
                    request = await trio_websocket.wrap_server_stream(nursery, tap)
                if request is not None:
                    await self._serve_request(request, tap)
                nursery.cancel_scope.cancel()
        except* trio_websocket.ConnectionClosed:
            pass  # the client went away during the handshake
        except* Exception as group:  # one broken connection must not stop the server
            self.stats.internal_errors += 1
            log.error("fake_bitunix: connection handler failed", exc_info=group)
        finally:
            with trio.move_on_after(1, shield=True):
                await tap.aclose()

    async def _serve_request(self, request: trio_websocket.WebSocketRequest, tap: _TapStream) -> None:
        self.stats.handshakes += 1
        if (
            self.stats.handshakes <= self.faults.refuse_handshakes
            or trio.current_time() < self._started_at + self.faults.refuse_handshakes_for_s
        ):
            self.stats.handshakes_refused += 1
            self.stats.faults_log.append(("refuse", self.stats.handshakes))
            await request.reject(
                503, body=b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"
            )
            return
        if request.path.split("?")[0].rstrip("/") != "/public":
            await request.reject(404, body=b"Not Found")
            return
        ws = await request.accept()
        self.stats.connections += 1
        conn = _Conn(self, ws, tap)
        self._conns.add(conn)
        try:
            await conn.run()
        finally:
            self._conns.discard(conn)

    # --- market data at exchange time ts (ms), of the first symbol unless told ---

    def market(self, symbol: str | None = None) -> _Market:
        """The served symbol's market (KeyError for one not served)."""
        return self.markets[self.symbol if symbol is None else symbol.upper()]

    def depth_data(self, ts: int, levels: int, symbol: str | None = None) -> dict[str, Any]:
        return self.market(symbol).depth_data(ts, levels)

    def ticker_data(self, ts: int, symbol: str | None = None) -> dict[str, str]:
        return self.market(symbol).ticker_data(ts)

    def tickers_row(self, ts: int, symbol: str | None = None) -> dict[str, str]:
        return self.market(symbol).tickers_row(ts)

    def price_data(self, ts: int, symbol: str | None = None) -> dict[str, str]:
        return self.market(symbol).price_data(ts)


# --- command line ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.fake_bitunix", description="A fake Bitunix exchange on 127.0.0.1."
    )
    p.add_argument("--port", type=int, default=0, help="WebSocket port on 127.0.0.1 (0: any free port)")
    p.add_argument("--rest-port", type=int, default=0, help="REST port on 127.0.0.1 (0: any free port)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--symbol",
        action="append",
        default=[],
        help="a symbol to serve (repeatable; default BTCUSDT); the first takes --start-price",
    )
    p.add_argument("--symbols", default="", metavar="A,B", help="symbols to serve, comma-separated")
    p.add_argument(
        "--csv", type=Path, help="replay these 1-minute candles (open_time_ms,open,high,low,close,volume)"
    )
    p.add_argument(
        "--start-price",
        type=float,
        default=None,
        help="the first symbol's opening price (default: its usual level, BTCUSDT 60000)",
    )
    p.add_argument(
        "--zigzag",
        type=float,
        default=0,
        metavar="PCT",
        help="scripted path: each candle moves PCT %% up, then down",
    )
    p.add_argument("--history", type=int, default=1000, help="closed 1-minute candles before the start")
    p.add_argument(
        "--no-final-push",
        dest="final_push",
        action="store_false",
        help="kline pushes only every 500 ms, as the exchange's: no extra push at each bucket's end",
    )
    p.add_argument("--idle-timeout", type=float, default=60.0)
    p.add_argument(
        "--drop-every", type=float, default=0, metavar="S", help="drop every WS connection every S s"
    )
    p.add_argument(
        "--drop-after-frames",
        type=int,
        default=0,
        metavar="N",
        help="drop each WS connection once it has sent N data frames (deterministic)",
    )
    p.add_argument(
        "--drop-after",
        type=float,
        default=0,
        metavar="S",
        help="drop each WS connection S s after it was accepted (a flapping server)",
    )
    p.add_argument(
        "--drop-connections",
        type=int,
        default=0,
        metavar="N",
        help="--drop-after-frames drops the first N connections only (0: all)",
    )
    p.add_argument("--stall-every", type=float, default=0, metavar="S", help="a stall every S s")
    p.add_argument(
        "--stall-every-frames",
        type=int,
        default=0,
        metavar="N",
        help="a stall after every N data frames sent (deterministic)",
    )
    p.add_argument("--stall-for", type=float, default=0, metavar="S", help="how long a stall lasts")
    p.add_argument(
        "--stall-symbol",
        default="",
        metavar="SYMBOL",
        help="stalls stop only this symbol's pushes (the socket and the other symbols go on)",
    )
    p.add_argument(
        "--klines-silent-symbol",
        default="",
        metavar="SYMBOL",
        help="this symbol's kline pushes never come (its other pushes and its REST klines do)",
    )
    p.add_argument(
        "--book-silent-symbol",
        default="",
        metavar="SYMBOL",
        help="this symbol's book (depth) pushes never come (its other pushes and its REST depth do)",
    )
    p.add_argument(
        "--funding-hours",
        action="append",
        default=[],
        metavar="SYMBOL=H",
        help="this symbol settles funding every H hours (1, 2, 4 or 8; default 8) from 00:00 UTC "
        "(its price pushes' ft/nft and REST fundingInterval say so; repeatable)",
    )
    p.add_argument(
        "--malformed",
        type=float,
        default=0,
        metavar="F",
        help="fraction of WS data frames malformed (chosen by frame count and seed)",
    )
    p.add_argument("--refuse-for", type=float, default=0, metavar="S", help="refuse WS handshakes for S s")
    p.add_argument(
        "--refuse-first",
        type=int,
        default=0,
        metavar="N",
        help="refuse the first N WS handshakes (deterministic)",
    )
    p.add_argument(
        "--rest-errors", type=float, default=0, metavar="F", help="fraction of REST replies failed"
    )
    p.add_argument("--rest-rate-limit", type=float, default=10, metavar="N", help="REST requests/s (0: none)")
    p.add_argument(
        "--rate-limit-status",
        type=int,
        default=200,
        choices=(200, 429, 503),
        help="the HTTP status of a rate-limit reply (200: code 10005/10006 as the exchange's; the "
        "doc's uncertain 429/503)",
    )
    p.add_argument(
        "--retry-after",
        default="",
        metavar="VALUE",
        help="a rate-limit reply carries Retry-After: VALUE (whole seconds or an HTTP date; the "
        "exchange was never seen sending one)",
    )
    p.add_argument(
        "--subscribe-ack",
        action="store_true",
        help='acknowledge each channel subscribed with {"op":"subscribe","ch":..,"data":{"result":true}} '
        "(the doc's uncertain reading; the exchange sends none)",
    )
    p.add_argument("--latency-ms", type=float, default=0)
    p.add_argument("--port-file", type=Path, help="also write the URLs line to this file")
    p.add_argument(
        "--api-key",
        default="",
        metavar="KEY",
        help="a key the private REST accepts (with --api-secret; test keys only: a command line is visible)",
    )
    p.add_argument("--api-secret", default="", metavar="SECRET", help="the secret of --api-key")
    p.add_argument(
        "--clock-offset",
        type=float,
        default=0.0,
        metavar="S",
        help="the private API's clock (and every REST Date header) is S s ahead (negative: behind)",
    )
    p.add_argument(
        "--account-as-list",
        action="store_true",
        help="answer the account as a one-element list (the docs' form) instead of an object",
    )
    return p


# The flags' allowed values, checked before anything starts (found by an audit: `--port 99999`
# served on port 34463, `--malformed 2`, `--history -1` or `--start-price -5` were taken without a
# word, `--port -1` said "cannot listen", exit 1): one line each, exit 2.
_SYMBOL = re.compile(r"[A-Z0-9]{2,20}")
_DURATIONS = (
    "drop_every",
    "drop_after",
    "stall_every",
    "stall_for",
    "refuse_for",
    "latency_ms",
    "rest_rate_limit",
)
_COUNTS = ("history", "drop_after_frames", "drop_connections", "stall_every_frames", "refuse_first")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _problems(a: argparse.Namespace, symbols: list[str]) -> list[str]:
    """What the flags' values do not allow, one line each (empty: all good)."""
    problems = [
        f"{_flag(dest)} {getattr(a, dest)}: expected a port from 0 to 65535 (0: any free port)"
        for dest in ("port", "rest_port")
        if not 0 <= getattr(a, dest) <= 65535
    ]
    problems += [
        f"{_flag(dest)} {getattr(a, dest)}: expected 0 or more"
        for dest in (*_COUNTS, *_DURATIONS)
        if not (getattr(a, dest) >= 0 and math.isfinite(getattr(a, dest)))
    ]
    problems += [
        f"{_flag(dest)} {getattr(a, dest)}: expected a fraction from 0 to 1"
        for dest in ("malformed", "rest_errors")
        if not 0 <= getattr(a, dest) <= 1
    ]
    if not re.fullmatch(r"[\x20-\x7e]*", a.retry_after):
        problems.append(f"--retry-after {a.retry_after!r}: expected printable ASCII (an HTTP header's value)")
    if not (a.idle_timeout > 0 and math.isfinite(a.idle_timeout)):
        problems.append(f"--idle-timeout {a.idle_timeout}: expected a number of seconds > 0")
    if a.start_price is not None and not (a.start_price > 0 and math.isfinite(a.start_price)):
        problems.append(f"--start-price {a.start_price}: expected a price > 0")
    if not 0 <= a.zigzag < 100:
        problems.append(f"--zigzag {a.zigzag}: expected a percentage from 0 up to (not) 100")
    if not math.isfinite(a.clock_offset):
        problems.append(f"--clock-offset {a.clock_offset}: expected a number of seconds")
    problems += [
        f"symbol {symbol!r}: expected 2-20 of A-Z, 0-9 (e.g. BTCUSDT)"
        for symbol in symbols
        if not _SYMBOL.fullmatch(symbol)
    ]
    problems += [
        f"{_flag(dest)} {getattr(a, dest)}: not a symbol served here ({', '.join(symbols)})"
        for dest in ("stall_symbol", "klines_silent_symbol")
        if getattr(a, dest) and getattr(a, dest).upper() not in symbols
    ]
    for given in a.funding_hours:
        symbol, _, hours = given.partition("=")
        if symbol.upper() not in symbols or hours.strip() not in {str(h) for h in FUNDING_HOURS}:
            problems.append(
                f"--funding-hours {given}: expected SYMBOL=H, a symbol served here ({', '.join(symbols)}) "
                f"and H one of {', '.join(map(str, FUNDING_HOURS))}"
            )
    if a.port_file is not None:
        folder = a.port_file.parent
        if a.port_file.is_dir():
            problems.append(f"--port-file {a.port_file}: is a directory; expected the path of a file")
        elif not folder.is_dir():
            problems.append(f"--port-file {a.port_file}: its folder {folder} does not exist")
    return problems


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def _serve_cli(fake: FakeBitunix, port_file: Path | None) -> None:
    # SIGINT unless the process started with it ignored (a background job of a script, `... &`:
    # a Ctrl-C for the script's foreground leaves it running, as Python leaves it)
    ctrl_c = () if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else (signal.SIGINT,)
    with trio.open_signal_receiver(*ctrl_c, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.run)
            line = _dumps({"ws_url": fake.ws_url, "rest_url": fake.rest_url})
            if port_file is not None:
                _write_atomically(port_file, line + "\n")
            print(line, flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel(reason="signal")
                break


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    a = parser.parse_args(argv)
    faults = Faults(
        drop_every_s=a.drop_every,
        stall_every_s=a.stall_every,
        stall_for_s=a.stall_for,
        stall_symbol=a.stall_symbol.upper(),
        klines_silent_symbol=a.klines_silent_symbol.upper(),
        book_silent_symbol=a.book_silent_symbol.upper(),
        malformed_fraction=a.malformed,
        refuse_handshakes_for_s=a.refuse_for,
        drop_after_frames=a.drop_after_frames,
        drop_after_s=a.drop_after,
        drop_connections=a.drop_connections,
        stall_every_frames=a.stall_every_frames,
        refuse_handshakes=a.refuse_first,
        rest_error_fraction=a.rest_errors,
        rest_rate_limit_per_s=a.rest_rate_limit,
        rest_rate_limit_status=a.rate_limit_status,
        rest_retry_after=a.retry_after,
        subscribe_ack=a.subscribe_ack,
        latency_ms=a.latency_ms,
    )
    symbols = [*a.symbol, *(x.strip() for x in a.symbols.split(",") if x.strip())] or ["BTCUSDT"]
    symbols = [symbol.upper() for symbol in symbols]
    if bool(a.api_key) != bool(a.api_secret):
        parser.error("--api-key and --api-secret go together")
    if problems := _problems(a, symbols):
        parser.error("; ".join(problems))
    try:
        fake = FakeBitunix(
            symbols=symbols,
            seed=a.seed,
            candles_csv=a.csv,
            start_price=a.start_price,
            faults=faults,
            idle_timeout_s=a.idle_timeout,
            history_candles=a.history,
            final_push=a.final_push,
            zigzag_pct=a.zigzag,
            ws_port=a.port,
            rest_port=a.rest_port,
            api_keys={a.api_key: a.api_secret} if a.api_key else None,
            clock_offset_s=a.clock_offset,
            account_as_list=a.account_as_list,
            funding_hours={
                symbol.upper(): int(hours) for symbol, _, hours in (g.partition("=") for g in a.funding_hours)
            },
        )
    except ValueError as e:
        parser.error(str(e))
    status = 0
    try:
        trio.run(_serve_cli, fake, a.port_file)
    except* OSError as group:
        for err in _leaves(group):
            print(
                f"fake_bitunix: cannot listen: {err} (try another --port/--rest-port, or 0)", file=sys.stderr
            )
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
