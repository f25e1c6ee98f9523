"""Longer candles built from the session's candles, once per (symbol, interval) a strategy asks
for: a strategy on 5m, 15m or 1h candles of a session on 1m gets them from here, in both runtimes
and live alike (the feed delivers the session's interval only; the broker works only those).

A longer candle's bucket is `[k * interval_s, (k + 1) * interval_s)` on the epoch (as the
exchange's klines are): it takes the first open, the highest high, the lowest low, the last close
and the summed volume of the session's candles that open in it, and it is given when the candle
that closes its bucket arrives, at that candle's time. A bucket the data skips the end of (a gap)
is given, partial, when the first candle of a later bucket arrives. A longer candle is history
(`backfill`) when the candle that completed it was. A plain synchronous component; its state
(the buckets being built) goes into checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from protocols.messages import Candle


class Bucket:
    """One (symbol, interval): the longer candle being built."""

    __slots__ = ("close", "high", "interval_s", "low", "open", "open_ts", "symbol", "volume")

    def __init__(self, symbol: str, interval_s: float) -> None:
        self.symbol = symbol
        self.interval_s = interval_s
        self.open_ts: float | None = None
        self.open = self.high = self.low = self.close = self.volume = 0.0

    def candle(self, backfill: bool) -> Candle:
        assert self.open_ts is not None
        return Candle(
            self.open_ts,
            self.interval_s,
            self.open,
            self.high,
            self.low,
            self.close,
            round(self.volume, 8),
            backfill,
            self.symbol,
        )

    def add(self, candle: Candle) -> list[Candle]:
        """Take one session candle; the longer candles it completes (a skipped bucket's first)."""
        out: list[Candle] = []
        start = (candle.open_ts // self.interval_s) * self.interval_s
        if self.open_ts is not None and start != self.open_ts:  # a gap: the last bucket ends here
            out.append(self.candle(candle.backfill))
            self.open_ts = None
        if self.open_ts is None:
            self.open_ts = start
            self.open, self.high, self.low = candle.open, candle.high, candle.low
            self.volume = 0.0
        else:
            if candle.high > self.high:
                self.high = candle.high
            if candle.low < self.low:
                self.low = candle.low
        self.close = candle.close
        self.volume += candle.volume
        if candle.open_ts + candle.interval_s >= start + self.interval_s:
            out.append(self.candle(candle.backfill))
            self.open_ts = None
        return out

    def state(self) -> list[Any] | None:
        if self.open_ts is None:
            return None
        return [self.open_ts, self.open, self.high, self.low, self.close, self.volume]

    def restore(self, state: list[Any] | None) -> None:
        if state is None:
            self.open_ts = None
            return
        self.open_ts, self.open, self.high, self.low, self.close, self.volume = state


class Intervals:
    """Every longer interval the strategies ask for, per symbol. `wanted`: (symbol, interval_s)
    pairs longer than the session's interval (each built once, however many strategies take it)."""

    def __init__(self, base_s: float, wanted: Iterable[tuple[str, float]]) -> None:
        self.base_s = base_s
        self.buckets: dict[str, list[Bucket]] = {}
        for symbol, interval_s in sorted(set(wanted), key=lambda w: (w[0], w[1])):
            if interval_s <= base_s:
                continue
            if interval_s % base_s:
                raise ValueError(f"{interval_s:g} s is not a whole number of {base_s:g} s candles")
            self.buckets.setdefault(symbol, []).append(Bucket(symbol, interval_s))

    def __bool__(self) -> bool:
        return bool(self.buckets)

    def add(self, candle: Candle) -> list[Candle]:
        """The longer candles a session candle completes (shortest interval first)."""
        buckets = self.buckets.get(candle.symbol)
        if not buckets or candle.interval_s != self.base_s:
            return []
        out: list[Candle] = []
        for bucket in buckets:
            out += bucket.add(candle)
        return out

    def state(self) -> dict[str, Any]:
        return {
            f"{symbol}/{bucket.interval_s:g}": bucket.state()
            for symbol, buckets in self.buckets.items()
            for bucket in buckets
        }

    def restore(self, state: dict[str, Any]) -> None:
        for symbol, buckets in self.buckets.items():
            for bucket in buckets:
                bucket.restore(state.get(f"{symbol}/{bucket.interval_s:g}"))
