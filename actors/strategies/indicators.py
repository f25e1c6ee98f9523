"""Incremental indicators for strategies: each takes one closed candle's values at a time, keeps
O(period) state, and can be checkpointed (`state()` / `restore()`). No trio, no numpy.

- `Ema(period)`: seeded with the simple mean of the first `period` values (as the original system's
  `indicators.ema`), then `e += (v - e) * 2 / (period + 1)`; `value` is None until seeded.
- `Atr(period)`: the simple mean of the last `period` true ranges (the original's `indicators.atr`,
  not Wilder's smoothing); None until `period` true ranges (period + 1 candles).
- `Window(n)`: the last n values, with their max, min and mean.
- `DailyVwap()`: the volume-weighted mean of the typical price (high + low + close) / 3 since the
  start of the candle's UTC day (the session VWAP); the close when no volume yet.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final

DAY_S: Final = 86400.0


class Ema:
    def __init__(self, period: int) -> None:
        self.period = period
        self.alpha = 2.0 / (period + 1)
        self.value: float | None = None
        self._seed: list[float] = []

    def update(self, v: float) -> float | None:
        if self.value is None:
            self._seed.append(v)
            if len(self._seed) == self.period:
                self.value = sum(self._seed) / self.period
                self._seed = []
            return self.value
        self.value += (v - self.value) * self.alpha
        return self.value

    def state(self) -> dict[str, Any]:
        return {"value": self.value, "seed": list(self._seed)}

    def restore(self, state: dict[str, Any]) -> None:
        self.value = state["value"]
        self._seed = list(state["seed"])


class Atr:
    def __init__(self, period: int) -> None:
        self.period = period
        self.prev_close: float | None = None
        self.ranges: deque[float] = deque(maxlen=period)
        self._sum = 0.0

    @property
    def value(self) -> float | None:
        return self._sum / self.period if len(self.ranges) == self.period else None

    def update(self, high: float, low: float, close: float) -> float | None:
        if self.prev_close is not None:
            tr = max(high - low, abs(high - self.prev_close), abs(low - self.prev_close))
            if len(self.ranges) == self.period:
                self._sum -= self.ranges[0]
            self.ranges.append(tr)
            self._sum += tr
        self.prev_close = close
        return self.value

    def state(self) -> dict[str, Any]:
        # the running sum too: summed afresh it differs in the last bits from the one carried
        # along, and a resumed session would decide on another ATR than an uninterrupted one
        return {"prev_close": self.prev_close, "ranges": list(self.ranges), "sum": self._sum}

    def restore(self, state: dict[str, Any]) -> None:
        self.prev_close = state["prev_close"]
        self.ranges = deque(state["ranges"], maxlen=self.period)
        self._sum = state.get("sum", sum(self.ranges))  # (a checkpoint from before the key)


class Window:
    def __init__(self, n: int) -> None:
        self.n = n
        self.values: deque[float] = deque(maxlen=n)

    def update(self, v: float) -> None:
        self.values.append(v)

    @property
    def full(self) -> bool:
        return len(self.values) == self.n

    def max(self) -> float:
        return max(self.values)

    def min(self) -> float:
        return min(self.values)

    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    def state(self) -> dict[str, Any]:
        return {"values": list(self.values)}

    def restore(self, state: dict[str, Any]) -> None:
        self.values = deque(state["values"], maxlen=self.n)


class DailyVwap:
    def __init__(self) -> None:
        self.day: int | None = None
        self.pv = 0.0
        self.volume = 0.0
        self.value: float | None = None

    def update(self, open_ts: float, high: float, low: float, close: float, volume: float) -> float:
        day = int(open_ts // DAY_S)
        if day != self.day:
            self.day, self.pv, self.volume = day, 0.0, 0.0
        self.pv += (high + low + close) / 3.0 * volume
        self.volume += volume
        self.value = self.pv / self.volume if self.volume > 0 else close
        return self.value

    def state(self) -> dict[str, Any]:
        return {"day": self.day, "pv": self.pv, "volume": self.volume, "value": self.value}

    def restore(self, state: dict[str, Any]) -> None:
        self.day, self.pv, self.volume, self.value = (
            state["day"],
            state["pv"],
            state["volume"],
            state["value"],
        )
