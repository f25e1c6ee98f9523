"""Feed actor: market data in, fanned out to every subscriber (strategy, broker).

Here: the deterministic mock source, a seeded geometric random walk with realistic BTC volatility,
best bid/ask/last ticks every `feed.tick_interval_s`, and closed candles assembled from the ticks by
time bucket (a candle is emitted once, when the first tick of the next bucket arrives).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

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


class RandomWalk:
    """Pure price path: each `step(dt)` moves the mid by a lognormal return and returns a tick."""

    def __init__(self, config: FeedConfig, rng: random.Random, symbol: str = DEFAULT_SYMBOL) -> None:
        self.rng = rng
        self.symbol = symbol.upper()
        self.mid = config.mock_start_price
        self.sigma_per_sqrt_s = config.mock_volatility_pct / 100.0 / math.sqrt(SECONDS_PER_YEAR)
        self.spread = config.mock_spread_ticks * TICK_SIZE

    def snapshot(self) -> dict[str, Any]:
        return {"mid": self.mid}

    def restore(self, state: dict[str, Any]) -> None:
        self.mid = state["mid"]

    def step(self, ts: float, dt: float, symbol: str | None = None) -> tuple[Tick, float]:
        """The next tick at `ts`, for `symbol` (default: the walk's own), and its traded volume."""
        sigma = self.sigma_per_sqrt_s * math.sqrt(dt)
        self.mid *= math.exp(self.rng.gauss(-0.5 * sigma * sigma, sigma))
        bid = round_tick(self.mid - self.spread / 2)
        ask = round(bid + self.spread, 1)
        last = ask if self.rng.random() < 0.5 else bid
        volume = round(self.rng.lognormvariate(-3.0, 1.0), 4)
        return Tick(ts=ts, bid=bid, ask=ask, last=last, symbol=symbol or self.symbol), volume


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
    """Actor: ticks on a fixed schedule (no drift), candles when their bucket ends, both for
    `symbol` (the session's; default: the walk's)."""
    dt = config.tick_interval_s
    symbol = (symbol or walk.symbol).upper()
    with ExitStack() as stack:
        for tx in subscribers:
            stack.enter_context(tx)
        task_status.started()
        start = clock.now()
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
