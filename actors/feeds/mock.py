"""Feed actor: market data in, fanned out to its subscribers (in a session: the broker only; the
broker hands each event to the strategies that take it, with the account).

Here: the deterministic mock source (`build_walk`, `MarketWalk`, `RandomWalk`, `run_mock_feed`) for
every symbol the session trades (`Config.symbols`): best bid/ask/last ticks every
`feed.tick_interval_s`, closed candles assembled from the ticks by time bucket (a candle is emitted
once, when the first tick of the next bucket arrives), and, before the first tick, a seeded history
of closed candles (marked `backfill`, as the live feed's REST seed is) so that strategies start warm.
Every event carries its symbol.

The market model, per symbol, in the log of the mid price, one step per tick (`dt` =
`feed.tick_interval_s`):

    d ln(mid) = drift dt - sigma^2 / 2 dt + sigma dW

- `sigma`: `feed.mock_volatility_pct` (annualised; 60 % is about 0.08 % a minute), in every regime
  and for every symbol.
- Regimes, each `feed.mock_regime_min` minutes of the walk's time (30), alternate **trending** and
  **ranging**. Trending: `drift` = +/- `feed.mock_trend_pct_per_hour` (1.5 % an hour; up or down,
  drawn 50/50 at the start of each trending regime). Ranging: `drift` = -kappa ln(mid / centre),
  a pull back to the range's centre (the mid when the regime began) with a half-life of
  `feed.mock_range_half_life_min` (5 minutes: kappa = ln 2 / half-life; the range's spread is then
  about sigma / sqrt(2 kappa), 0.16 % at the defaults). The first regime (trending or ranging,
  50/50) and how much of it is left (uniform over its length) are drawn at the walk's first step,
  so a session can start anywhere in a regime. `feed.mock_regime_min = 0`: no regimes, the plain
  random walk (drift 0). Each symbol has its own regime sequence, drawn independently: one symbol
  may range while another trends.
- Several symbols: their shocks are correlated. With more than one symbol, each step draws a
  market shock `m` first, then each symbol its own `e`; a symbol's `dW` is
  `sqrt(rho) m + sqrt(1 - rho) e` (standard normals scaled to the step), so any two symbols'
  shocks have the correlation `rho` = `MARKET_CORRELATION` (0.7; the regimes' drifts lower the
  correlation of their returns a little). With one symbol there is no market shock: the walk is
  the single-symbol `RandomWalk`, draw for draw.
- Levels: the first symbol (`session.symbol` when no strategy names another first) starts at
  `feed.mock_start_price`; any other at `MOCK_LEVELS` (BTCUSDT 60,000, ETHUSDT 3,000, SOLUSDT 150
  USDT) or, for a symbol not there, `MOCK_OTHER_LEVEL` (1,000 USDT), both in actors/feeds/levels.py.
- Prices are on each symbol's tick grid (`protocols/instruments.py` `table_instrument`; a symbol
  the table does not know: BTCUSDT's 0.1). The spread is `feed.mock_spread_ticks` ticks of that
  grid around the mid; the last trade is at the bid or the ask (50/50); the volume of a tick is
  lognormal (mu -3, sigma 1, in the symbol's base unit, whatever it is).
- History: `feed.mock_history_candles` (200) closed candles per symbol ending where the source
  starts, built by the same walk (the same regimes and correlated shocks, a step per tick; coarser
  steps only beyond `MAX_HISTORY_STEPS` in all, over all symbols), then each symbol's scaled as a
  whole so that it ends at its start level, where its live ticks begin. The feed hands it out in
  time order, the symbols in their order within each candle's time.

Everything is drawn from the one generator handed in (the session's `feed` stream, `session.seed`),
in a fixed order (per step: the market shock, then each symbol in order: its regime draws, its own
shock, its side, its volume), so a seed gives the same history, regimes, ticks and candles whenever
the session starts. Nothing here is fitted to any strategy; the parameters are meant to look like
BTC on a quiet-to-ordinary day (trends of a percent or two an hour, ranges of a few tenths of a
percent). A check of that (README, Mock market data): warm on 200 one-minute candles, then ten,
`ema_cross` 9/21 trades in 28 % of such windows of the mock and in 34 % of real BTCUSDT perpetual
ones; an EMA 9/21 cross comes once in about 25 one-minute candles here, 22 in the real ones.
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any, Literal, TypeVar

import attrs
import trio

from actors.clock import SessionClock
from actors.config import FeedConfig
from actors.feeds.levels import mock_level
from protocols.instruments import price_decimals
from protocols.messages import DEFAULT_SYMBOL, Candle, MarketEvent, Tick

# The correlation of any two symbols' shocks (the module's docstring).
MARKET_CORRELATION = 0.7
_MARKET_LOAD = math.sqrt(MARKET_CORRELATION)
_OWN_LOAD = math.sqrt(1.0 - MARKET_CORRELATION)


@attrs.define
class FeedHealth:
    """What the feed says about itself, read by the risk gate (stale-data gate) and the report."""

    data_source: str
    stale: bool = False
    connected: bool = False
    reconnects: int = 0
    downtime_s: float = 0.0
    malformed: Counter[str] = attrs.field(factory=Counter)
    rest_retries: int = 0
    down_since: float | None = None  # session time the live feed went down (None: up, or mock)

    def down_s(self, now: float) -> float:
        """How long the current outage has lasted (0 when the feed is up)."""
        return 0.0 if self.down_since is None else max(0.0, now - self.down_since)


SECONDS_PER_YEAR = 365.0 * 86400.0


def round_tick(price: float, decimals: int = 1) -> float:
    """`price` on the grid of ticks of 10 ** -decimals (default: BTCUSDT's 0.1)."""
    tick = 10.0**-decimals
    return round(round(price / tick) * tick, decimals)


Regime = Literal["up", "down", "range", "walk"]
# the highest mid price a walk reaches (a trend of 100 % an hour over years of history would
# overflow): far above any start price allowed (actors/config.py MAX_MOCK_PRICE)
MAX_MID = 1e15
# the most walk steps the history is built with, over all symbols: beyond it, fewer (longer) steps
# per candle
MAX_HISTORY_STEPS = 100_000


class RandomWalk:
    """One symbol's price path (the model: the module's docstring): each `step(ts, dt)` moves the
    mid and returns a tick; `history(...)` builds the seeded history once, for the feed to hand
    out. On its own, it is the whole mock market of a one-symbol session; `MarketWalk` moves
    several of them with correlated shocks."""

    def __init__(
        self,
        config: FeedConfig,
        rng: random.Random,
        symbol: str = DEFAULT_SYMBOL,
        *,
        start_price: float | None = None,
    ) -> None:
        self.rng = rng
        self.symbol = symbol.upper()
        self.price_decimals = price_decimals(self.symbol)
        self.tick_size = 10.0**-self.price_decimals
        self.start_price = config.mock_start_price if start_price is None else start_price
        self.mid = self.start_price
        self.sigma_per_sqrt_s = config.mock_volatility_pct / 100.0 / math.sqrt(SECONDS_PER_YEAR)
        self.spread = config.mock_spread_ticks * self.tick_size
        self.regime_s = config.mock_regime_min * 60.0
        self.trend_per_s = config.mock_trend_pct_per_hour / 100.0 / 3600.0
        self.kappa = math.log(2.0) / (config.mock_range_half_life_min * 60.0)
        self.history_candles = config.mock_history_candles
        self.regime: Regime | None = None if self.regime_s > 0 else "walk"  # None: not drawn yet
        self.regime_left_s = math.inf
        self.centre = self.mid  # a ranging regime's centre
        self.seeded = False  # the history has been built (it is handed out from `backlog`)
        self.backlog: deque[Candle] = deque()  # history candles not handed out yet

    def snapshot(self) -> dict[str, Any]:
        """The walk's state (not its generator's: the session checkpoints its streams itself)."""
        return {
            "mid": self.mid,
            "regime": self.regime,
            "regime_left_s": self.regime_left_s if math.isfinite(self.regime_left_s) else None,
            "centre": self.centre,
            "seeded": self.seeded,
            "backlog": [list(c) for c in self.backlog],
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.mid = state["mid"]
        if "regime" not in state:  # an older checkpoint: a plain walk that never seeded history
            self.seeded = True
            return
        self.regime = state["regime"]
        left = state["regime_left_s"]
        self.regime_left_s = math.inf if left is None else left
        self.centre = state["centre"]
        self.seeded = state["seeded"]
        self.backlog = deque(Candle(*fields) for fields in state["backlog"])

    # --- the model ---------------------------------------------------------------------------------

    def _next_regime(self) -> None:
        """Trending follows ranging and ranging trending; a trend's direction is drawn 50/50."""
        if self.regime in ("up", "down"):
            self.regime, self.centre = "range", self.mid
        else:
            self.regime = "up" if self.rng.random() < 0.5 else "down"

    def _move(self, dt: float, market: float | None = None) -> tuple[bool, float]:
        """One step of `dt` seconds: moves the mid; whether the last trade was at the ask (else
        the bid), and its volume. `market`: the step's market shock (a standard normal) when the
        walk is one of several; None (one symbol): the shock is the walk's own alone."""
        if self.regime is None:  # the first step: where in which regime the walk begins
            if self.rng.random() < 0.5:
                self.regime, self.centre = "range", self.mid
            else:
                self.regime = "up" if self.rng.random() < 0.5 else "down"
            self.regime_left_s = self.rng.random() * self.regime_s
        self.regime_left_s -= dt
        while self.regime_left_s <= 0.0:
            self._next_regime()
            self.regime_left_s += self.regime_s
        if self.regime == "up":
            drift = self.trend_per_s * dt
        elif self.regime == "down":
            drift = -self.trend_per_s * dt
        elif self.regime == "range":
            # at most the whole way back to the centre in a step (a half-life short beside a long
            # history step would overshoot further each step, to an overflow)
            drift = -min(self.kappa * dt, 1.0) * math.log(self.mid / self.centre)
        else:
            drift = 0.0
        sigma = self.sigma_per_sqrt_s * math.sqrt(dt)
        if market is None:
            self.mid *= math.exp(drift + self.rng.gauss(-0.5 * sigma * sigma, sigma))
        else:
            shock = _MARKET_LOAD * market + _OWN_LOAD * self.rng.gauss(0.0, 1.0)
            self.mid *= math.exp(drift - 0.5 * sigma * sigma + sigma * shock)
        # within the grid's range: never under a tick (nor 0: log above), never to an overflow.
        # Found by an audit: a year of history at 1000 % volatility walked to 0 ("Candle.low must be
        # > 0"); at the validated keys' ordinary values the walk never comes near either bound.
        self.mid = min(max(self.mid, self.tick_size), MAX_MID)
        at_ask = self.rng.random() < 0.5
        return at_ask, self.rng.lognormvariate(-3.0, 1.0)

    def step(
        self, ts: float, dt: float, symbol: str | None = None, market: float | None = None
    ) -> tuple[Tick, float]:
        """The next tick at `ts`, for `symbol` (default: the walk's own), and its traded volume;
        `market`: the step's market shock (`_move`)."""
        at_ask, volume = self._move(dt, market)
        decimals = self.price_decimals
        bid = max(round_tick(self.mid - self.spread / 2, decimals), self.tick_size)
        ask = round(bid + self.spread, decimals)
        last = ask if at_ask else bid
        tick = Tick(ts=ts, bid=bid, ask=ask, last=last, symbol=symbol or self.symbol, source="mock")
        return tick, round(volume, 4)

    def history(
        self, end_ts: float, interval_s: float, tick_s: float, symbol: str | None = None
    ) -> deque[Candle]:
        """The history candles still to hand out: built on the first call (`history_candles` of
        them, the last closing at `end_ts`), one walk step per `tick_s` (or fewer, longer steps
        when that would take more than `MAX_HISTORY_STEPS`), then scaled so that it ends at the
        start price. Later calls (a resumed session) give what is left of it."""
        if not self.seeded:
            _seed_history([self], end_ts, interval_s, tick_s, [(symbol or self.symbol).upper()])
        return self.backlog


def _seed_history(
    walks: Sequence[RandomWalk], end_ts: float, interval_s: float, tick_s: float, symbols: Sequence[str]
) -> None:
    """Builds the history of `walks` together (their shocks correlated when there are several:
    each step draws the market shock, then moves each walk in order) into their backlogs, each
    candle with its walk's symbol in `symbols`; each walk's history is then scaled to end at its
    start price."""
    for walk in walks:
        walk.seeded = True
    n = walks[0].history_candles
    if n <= 0:
        return
    steps = max(1, min(round(interval_s / tick_s), MAX_HISTORY_STEPS // (n * len(walks))))
    dt = interval_s / steps
    volume_scale = dt / tick_s  # a step's volume stands for the ticks it replaces
    rng = walks[0].rng
    correlated = len(walks) > 1
    rows: list[list[tuple[float, float, float, float, float, float]]] = [[] for _ in walks]
    bars = [[0.0] * 5 for _ in walks]  # open, high, low, close, volume of the candle being built
    for k in range(n):
        open_ts = end_ts - (n - k) * interval_s
        for j in range(steps):
            market = rng.gauss(0.0, 1.0) if correlated else None
            for walk, bar in zip(walks, bars, strict=True):
                at_ask, volume = walk._move(dt, market)
                half_spread = walk.spread / 2
                last = walk.mid + half_spread if at_ask else walk.mid - half_spread  # on the grid later
                if j == 0:
                    bar[:] = [last, last, last, last, 0.0]
                elif last > bar[1]:
                    bar[1] = last
                elif last < bar[2]:
                    bar[2] = last
                bar[3] = last
                bar[4] += volume
        for walk_rows, bar in zip(rows, bars, strict=True):
            walk_rows.append((open_ts, bar[0], bar[1], bar[2], bar[3], bar[4] * volume_scale))
    for walk, walk_rows, symbol in zip(walks, rows, symbols, strict=True):
        scale = walk.start_price / walk.mid
        walk.mid, walk.centre = walk.start_price, walk.centre * scale
        decimals = walk.price_decimals

        def price(x: float, decimals: int = decimals, tick: float = walk.tick_size) -> float:
            return max(round_tick(x, decimals), tick)  # never under a tick (the walk's bounds)

        for open_ts, o, h, lo, c, v in walk_rows:
            walk.backlog.append(
                Candle(
                    open_ts=open_ts,
                    interval_s=interval_s,
                    open=price(o * scale),
                    high=price(h * scale),
                    low=price(lo * scale),
                    close=price(c * scale),
                    volume=round(v, 8),
                    backfill=True,
                    symbol=symbol,
                )
            )


class MarketWalk:
    """The mock market: one `RandomWalk` per symbol, in the session's symbol order, all drawing from
    the one generator; with several, their shocks are correlated (the module's docstring). With one,
    it is that walk, draw for draw. `build_walk` makes it; `run_mock_feed` serves it."""

    def __init__(self, walks: Sequence[RandomWalk]) -> None:
        if not walks:
            raise ValueError("MarketWalk: no symbols")
        symbols = [walk.symbol for walk in walks]
        if len(set(symbols)) < len(symbols):
            raise ValueError(f"MarketWalk: a symbol twice in {', '.join(symbols)}")
        self.walks = list(walks)
        self.rng = walks[0].rng

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(walk.symbol for walk in self.walks)

    def walk(self, symbol: str) -> RandomWalk:
        """The price path of `symbol` (KeyError when the market has none)."""
        for walk in self.walks:
            if walk.symbol == symbol.upper():
                return walk
        raise KeyError(symbol)

    def step(self, ts: float, dt: float) -> list[tuple[Tick, float]]:
        """Every symbol's next tick at `ts` and its traded volume, in symbol order."""
        market = self.rng.gauss(0.0, 1.0) if len(self.walks) > 1 else None
        return [walk.step(ts, dt, market=market) for walk in self.walks]

    def history(self, end_ts: float, interval_s: float, tick_s: float) -> list[deque[Candle]]:
        """Every symbol's history candles still to hand out, in symbol order: built together on the
        first call (`RandomWalk.history`); later calls (a resumed session) give what is left."""
        fresh = [walk for walk in self.walks if not walk.seeded]
        if fresh:
            _seed_history(fresh, end_ts, interval_s, tick_s, [walk.symbol for walk in fresh])
        return [walk.backlog for walk in self.walks]

    def snapshot(self) -> dict[str, Any]:
        """Every symbol's walk state, by symbol (JSON-able; the generator is the session's to save)."""
        return {"walks": {walk.symbol: walk.snapshot() for walk in self.walks}}

    def restore(self, state: dict[str, Any]) -> None:
        """From `snapshot()`, or from a single `RandomWalk`'s (a one-symbol session's checkpoint
        from before several symbols): that is the first symbol's. A symbol the checkpoint does not
        hold keeps its fresh walk (its history is then built when the feed starts)."""
        if "walks" not in state:
            self.walks[0].restore(state)
            return
        for walk in self.walks:
            saved = state["walks"].get(walk.symbol)
            if saved is not None:
                walk.restore(saved)


def build_walk(
    config: FeedConfig, rng: random.Random, symbols: Sequence[str], *, min_history: int = 0
) -> MarketWalk:
    """The session's mock market for `symbols` (`Config.symbols`, in order), drawing from `rng`:
    the first symbol starts at `feed.mock_start_price`, the others at `mock_level`. Each seeds
    `feed.mock_history_candles` of history, or `min_history` when that is more (the strategies'
    longest warm-up); none when `feed.mock_history_candles` is 0."""
    if not symbols:
        raise ValueError("build_walk: no symbols")
    walks = [
        RandomWalk(config, rng, symbol, start_price=None if k == 0 else mock_level(symbol))
        for k, symbol in enumerate(symbols)
    ]
    for walk in walks:
        if walk.history_candles > 0:
            walk.history_candles = max(walk.history_candles, min_history)
    return MarketWalk(walks)


class CandleBuilder:
    """Assembles candles by time bucket; `add` returns the candle it closed, if any.

    Buckets are `[origin + k * interval_s, origin + (k + 1) * interval_s)`: origin 0 gives the
    exchange's wall-aligned candles; the mock source uses its start time, so that the same seed gives
    the same candles whenever the session starts.
    """

    def __init__(self, interval_s: float, origin: float = 0.0, symbol: str = DEFAULT_SYMBOL) -> None:
        self.interval_s = interval_s
        self.origin = origin
        self.symbol = symbol
        self.bucket: int | None = None
        self.o = self.h = self.lo = self.c = 0.0
        self.v = 0.0

    def add(self, ts: float, price: float, volume: float) -> Candle | None:
        bucket = math.floor((ts - self.origin) / self.interval_s)
        closed = None
        if self.bucket is not None and bucket < self.bucket:
            return None  # late data never reopens a closed candle
        if self.bucket is not None and bucket > self.bucket:
            closed = Candle(
                open_ts=self.origin + self.bucket * self.interval_s,
                interval_s=self.interval_s,
                open=self.o,
                high=self.h,
                low=self.lo,
                close=self.c,
                volume=round(self.v, 8),
                symbol=self.symbol,
            )
            self.bucket = None
        if self.bucket is None:
            self.bucket = bucket
            self.o = self.h = self.lo = self.c = price
            self.v = volume
        else:
            self.h = max(self.h, price)
            self.lo = min(self.lo, price)
            self.c = price
            self.v += volume
        return closed


async def fan_out(subscribers: Sequence[trio.MemorySendChannel[MarketEvent]], event: MarketEvent) -> None:
    """Hand `event` to every subscriber, in order, all or nothing.

    A cancel while the first subscriber has not taken it hands it to none (a cancelled send of a
    memory channel delivers nothing); once the first has it, the others get it under a shield, so
    that a cancel never leaves one subscriber with a candle another never sees. Subscribers must
    therefore keep reading until they close their receiving end. One that has closed it meanwhile
    is skipped, and its `BrokenResourceError` raised afterwards unless the caller was cancelled
    (then `Cancelled` is: the subscribers were shut down with the feed).
    """
    if not subscribers:
        return
    await subscribers[0].send(event)
    if len(subscribers) == 1:
        return
    broken: trio.BrokenResourceError | None = None
    with trio.CancelScope(shield=True):
        for tx in subscribers[1:]:
            try:
                await tx.send(event)
            except trio.BrokenResourceError as exc:
                broken = broken or exc
    if broken is not None:
        await trio.lowlevel.checkpoint_if_cancelled()
        raise broken


async def run_mock_feed(
    config: FeedConfig,
    interval_s: float,
    clock: SessionClock,
    walk: RandomWalk | MarketWalk,
    subscribers: Sequence[trio.MemorySendChannel[MarketEvent]],
    *,
    symbols: Sequence[str] | None = None,
    symbol: str | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Actor: every symbol's seeded history candles (`backfill`) at once, in time order, then ticks
    on a fixed schedule (no drift; at each instant one per symbol, in symbol order) and each
    symbol's candles when their bucket ends (right after that symbol's tick that closed it).

    `symbols` (or `symbol`, one): what the events are labelled with, default the walk's own. A
    single walk may be labelled with any symbol (its tick grid stays the walk's); several must be
    asked for by their own symbols, in order (ValueError otherwise)."""
    dt = config.tick_interval_s
    market = walk if isinstance(walk, MarketWalk) else MarketWalk([walk])
    with ExitStack() as stack:
        for tx in subscribers:
            stack.enter_context(tx)
        labels = _labels(market, symbols, symbol)  # refused: the subscribers' ends close all the same
        task_status.started()
        start = clock.now()
        # the seeded history first (strategies warm up on it); a candle leaves its backlog once
        # handed over, so a checkpoint taken meanwhile holds exactly what is still to come
        backlogs = market.history(start, interval_s, dt)
        while due := [(backlog[0].open_ts, k) for k, backlog in enumerate(backlogs) if backlog]:
            _, k = min(due)
            await fan_out(subscribers, _labelled(backlogs[k][0], labels[k]))
            backlogs[k].popleft()
        builders = [CandleBuilder(interval_s, origin=start, symbol=label) for label in labels]
        # ticks fall half a period off the session's whole-period marks, so a tick never shares an
        # instant with the duration deadline or a heartbeat, whose relative order would be up to the
        # scheduler: the same seed then always gives the same fills
        next_ts = start + dt / 2
        await clock.sleep_until(next_ts)
        while True:
            for (tick, volume), candles, label in zip(
                market.step(next_ts, dt), builders, labels, strict=True
            ):
                tick = _labelled(tick, label)
                closed = candles.add(tick.ts, tick.last, volume)
                await fan_out(subscribers, tick)
                if closed is not None:
                    await fan_out(subscribers, closed)
            next_ts += dt
            await clock.sleep_until(next_ts)


def _labels(market: MarketWalk, symbols: Sequence[str] | None, symbol: str | None) -> tuple[str, ...]:
    """The symbol each of `market`'s walks' events carry (`run_mock_feed`)."""
    if symbols is not None and symbol is not None:
        raise TypeError("run_mock_feed: symbols or symbol, not both")
    asked = (
        tuple(s.upper() for s in symbols) if symbols is not None else (symbol.upper(),) if symbol else None
    )
    if asked is None:
        return market.symbols
    if len(asked) != len(market.walks) or (len(asked) > 1 and asked != market.symbols):
        raise ValueError(
            f"run_mock_feed: the mock walk serves {', '.join(market.symbols)}, not "
            f"{', '.join(asked)}: build it with build_walk(config.feed, rng, config.symbols)"
        )
    return asked


_Event = TypeVar("_Event", Tick, Candle)


def _labelled(event: _Event, symbol: str) -> _Event:
    return event if event.symbol == symbol else event._replace(symbol=symbol)
