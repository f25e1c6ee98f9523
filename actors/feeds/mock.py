"""Feed actor: market data in, fanned out to every subscriber (strategy, broker).

Here: the deterministic mock source (`RandomWalk`, `run_mock_feed`): best bid/ask/last ticks every
`feed.tick_interval_s`, closed candles assembled from the ticks by time bucket (a candle is emitted
once, when the first tick of the next bucket arrives), and, before the first tick, a seeded history
of closed candles (marked `backfill`, as the live feed's REST seed is) so that strategies start warm.

The market model, in the log of the mid price, one step per tick (`dt` = `feed.tick_interval_s`):

    d ln(mid) = drift dt - sigma^2 / 2 dt + sigma dW

- `sigma`: `feed.mock_volatility_pct` (annualised; 60 % is about 0.08 % a minute), in every regime.
- Regimes, each `feed.mock_regime_min` minutes of the walk's time (30), alternate **trending** and
  **ranging**. Trending: `drift` = +/- `feed.mock_trend_pct_per_hour` (1.5 % an hour; up or down,
  drawn 50/50 at the start of each trending regime). Ranging: `drift` = -kappa ln(mid / centre),
  a pull back to the range's centre (the mid when the regime began) with a half-life of
  `feed.mock_range_half_life_min` (5 minutes: kappa = ln 2 / half-life; the range's spread is then
  about sigma / sqrt(2 kappa), 0.16 % at the defaults). The first regime (trending or ranging,
  50/50) and how much of it is left (uniform over its length) are drawn at the walk's first step,
  so a session can start anywhere in a regime. `feed.mock_regime_min = 0`: no regimes, the plain
  random walk (drift 0).
- The spread is `feed.mock_spread_ticks` ticks of 0.1 around the mid; the last trade is at the bid
  or the ask (50/50); the volume of a tick is lognormal (mu -3, sigma 1, BTC).
- History: `feed.mock_history_candles` (200) closed candles ending where the source starts, built by
  the same walk (the same regimes, a step per tick; coarser steps only beyond
  `MAX_HISTORY_STEPS` in all), then scaled as a whole so that it ends at `feed.mock_start_price`,
  where the live ticks begin.

Everything is drawn from the generator handed in (the session's `feed` stream, `session.seed`), in
a fixed order, so a seed gives the same history, regimes, ticks and candles whenever the session
starts. Nothing here is fitted to any strategy; the parameters are meant to look like BTC on a
quiet-to-ordinary day (trends of a percent or two an hour, ranges of a few tenths of a percent).
A check of that (README, Mock market data): warm on 200 one-minute candles, then ten, `ema_cross`
9/21 trades in 28 % of such windows of the mock and in 34 % of real BTCUSDT perpetual ones; an EMA
9/21 cross comes once in about 25 one-minute candles here, 22 in the real ones.
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any, Literal

import attrs
import trio

from actors.clock import SessionClock
from actors.config import FeedConfig
from protocols.messages import DEFAULT_SYMBOL, Candle, MarketEvent, Tick

TICK_SIZE = 0.1


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


def round_tick(price: float) -> float:
    return round(round(price / TICK_SIZE) * TICK_SIZE, 1)


Regime = Literal["up", "down", "range", "walk"]
# the most walk steps the history is built with: beyond it, fewer (longer) steps per candle
MAX_HISTORY_STEPS = 100_000


class RandomWalk:
    """Pure price path (the model: the module's docstring): each `step(ts, dt)` moves the mid and
    returns a tick; `history(...)` builds the seeded history once, for the feed to hand out."""

    def __init__(self, config: FeedConfig, rng: random.Random, symbol: str = DEFAULT_SYMBOL) -> None:
        self.rng = rng
        self.symbol = symbol.upper()
        self.start_price = config.mock_start_price
        self.mid = config.mock_start_price
        self.sigma_per_sqrt_s = config.mock_volatility_pct / 100.0 / math.sqrt(SECONDS_PER_YEAR)
        self.spread = config.mock_spread_ticks * TICK_SIZE
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

    def _move(self, dt: float) -> tuple[bool, float]:
        """One step of `dt` seconds: moves the mid; whether the last trade was at the ask (else
        the bid), and its volume."""
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
            drift = -self.kappa * dt * math.log(self.mid / self.centre)
        else:
            drift = 0.0
        sigma = self.sigma_per_sqrt_s * math.sqrt(dt)
        self.mid *= math.exp(drift + self.rng.gauss(-0.5 * sigma * sigma, sigma))
        at_ask = self.rng.random() < 0.5
        return at_ask, self.rng.lognormvariate(-3.0, 1.0)

    def step(self, ts: float, dt: float, symbol: str | None = None) -> tuple[Tick, float]:
        """The next tick at `ts`, for `symbol` (default: the walk's own), and its traded volume."""
        at_ask, volume = self._move(dt)
        bid = round_tick(self.mid - self.spread / 2)
        ask = round(bid + self.spread, 1)
        last = ask if at_ask else bid
        return Tick(ts=ts, bid=bid, ask=ask, last=last, symbol=symbol or self.symbol), round(volume, 4)

    def history(
        self, end_ts: float, interval_s: float, tick_s: float, symbol: str | None = None
    ) -> deque[Candle]:
        """The history candles still to hand out: built on the first call (`history_candles` of
        them, the last closing at `end_ts`), one walk step per `tick_s` (or fewer, longer steps
        when that would take more than `MAX_HISTORY_STEPS`), then scaled so that it ends at the
        start price. Later calls (a resumed session) give what is left of it."""
        if self.seeded:
            return self.backlog
        self.seeded = True
        n = self.history_candles
        if n <= 0:
            return self.backlog
        steps = max(1, min(round(interval_s / tick_s), MAX_HISTORY_STEPS // n))
        dt = interval_s / steps
        volume_scale = dt / tick_s  # a step's volume stands for the ticks it replaces
        half_spread = self.spread / 2
        symbol = (symbol or self.symbol).upper()
        rows: list[tuple[float, float, float, float, float, float]] = []
        for k in range(n):
            open_ts = end_ts - (n - k) * interval_s
            o = h = lo = c = 0.0
            v = 0.0
            for j in range(steps):
                at_ask, volume = self._move(dt)
                last = self.mid + half_spread if at_ask else self.mid - half_spread  # on the grid later
                if j == 0:
                    o = h = lo = last
                elif last > h:
                    h = last
                elif last < lo:
                    lo = last
                c = last
                v += volume
            rows.append((open_ts, o, h, lo, c, v * volume_scale))
        scale = self.start_price / self.mid
        self.mid, self.centre = self.start_price, self.centre * scale
        for open_ts, o, h, lo, c, v in rows:
            self.backlog.append(
                Candle(
                    open_ts=open_ts,
                    interval_s=interval_s,
                    open=round_tick(o * scale),
                    high=round_tick(h * scale),
                    low=round_tick(lo * scale),
                    close=round_tick(c * scale),
                    volume=round(v, 8),
                    backfill=True,
                    symbol=symbol,
                )
            )
        return self.backlog


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
    walk: RandomWalk,
    subscribers: Sequence[trio.MemorySendChannel[MarketEvent]],
    *,
    symbol: str | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Actor: the seeded history candles (`backfill`) at once, then ticks on a fixed schedule (no
    drift) and candles when their bucket ends, all for `symbol` (the session's; default: the
    walk's)."""
    dt = config.tick_interval_s
    symbol = (symbol or walk.symbol).upper()
    with ExitStack() as stack:
        for tx in subscribers:
            stack.enter_context(tx)
        task_status.started()
        start = clock.now()
        # the seeded history first (strategies warm up on it); a candle leaves the backlog once
        # handed over, so a checkpoint taken meanwhile holds exactly what is still to come
        backlog = walk.history(start, interval_s, dt, symbol)
        while backlog:
            await fan_out(subscribers, backlog[0])
            backlog.popleft()
        candles = CandleBuilder(interval_s, origin=start, symbol=symbol)
        # ticks fall half a period off the session's whole-period marks, so a tick never shares an
        # instant with the duration deadline or a heartbeat, whose relative order would be up to the
        # scheduler: the same seed then always gives the same fills
        next_ts = start + dt / 2
        await clock.sleep_until(next_ts)
        while True:
            tick, volume = walk.step(next_ts, dt, symbol)
            closed = candles.add(tick.ts, tick.last, volume)
            await fan_out(subscribers, tick)
            if closed is not None:
                await fan_out(subscribers, closed)
            next_ts += dt
            await clock.sleep_until(next_ts)
