"""`ema_cross`: the baseline strategy, an EMA fast/slow crossover on closed candles.

Rules: EMAs of the closes (alpha = 2 / (n + 1), seeded with the first close); once the slow EMA has
seen `slow_period` closes, a cross of fast above slow (`prev fast-slow < 0 < now`) is "up", below
is "down". It enters only on a cross (never before the first one): on a cross it closes the
opposite position (reduce-only) and enters the new side with a protective stop (`stop_loss_pct`) and target (`take_profit_pct`) from
the signal candle's close. History candles (`backfill`) warm the EMAs up; only live candles trade.
Its state is built once and updated incrementally; the candle history is bounded by
`strategy.history`.
"""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar, Literal

from actors.config import StrategyConfig
from actors.strategies.base import StrategyOutput, register
from protocols.messages import DEFAULT_SYMBOL, AccountSnapshot, Candle, Event, OrderIntent, Tick

Cross = Literal["up", "down"]


class EmaCross:
    """Pure indicator state: feed closes, get a crossover signal or None."""

    def __init__(self, fast: int, slow: int, history: int) -> None:
        self.fast_alpha = 2.0 / (fast + 1)
        self.slow_alpha = 2.0 / (slow + 1)
        self.slow_period = slow
        self.closes: deque[float] = deque(maxlen=history)
        # the EMAs and the last difference as plain floats, each with whether it is there yet
        # (compiled: a `float | None` is an object, made anew at every close)
        self._fast = self._slow = self._prev_diff = 0.0
        self._started = self._has_prev = False
        self.seen = 0

    @property
    def fast(self) -> float | None:
        return self._fast if self._started else None

    @property
    def slow(self) -> float | None:
        return self._slow if self._started else None

    @property
    def prev_diff(self) -> float | None:
        return self._prev_diff if self._has_prev else None

    def snapshot(self) -> dict[str, Any]:
        return {
            "closes": list(self.closes),
            "fast": self.fast,
            "slow": self.slow,
            "seen": self.seen,
            "prev_diff": self.prev_diff,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.closes.clear()
        self.closes.extend(state["closes"])
        fast, slow, prev = state["fast"], state["slow"], state["prev_diff"]
        self._started = fast is not None and slow is not None
        self._fast = fast if fast is not None else 0.0
        self._slow = slow if slow is not None else 0.0
        self._has_prev = prev is not None
        self._prev_diff = prev if prev is not None else 0.0
        self.seen = state["seen"]

    def update(self, close: float) -> Cross | None:
        self.closes.append(close)
        self.seen += 1
        if self._started:
            self._fast += self.fast_alpha * (close - self._fast)
            self._slow += self.slow_alpha * (close - self._slow)
        else:
            self._fast = self._slow = close
            self._started = True
        if self.seen < self.slow_period:
            return None
        diff = self._fast - self._slow
        prev, had_prev = self._prev_diff, self._has_prev
        self._prev_diff, self._has_prev = diff, True
        if not had_prev:
            return None
        if prev < 0.0 < diff:
            return "up"
        if prev > 0.0 > diff:
            return "down"
        return None


def intents_for(
    cross: Cross,
    position: float,
    config: StrategyConfig,
    price: float,
    ts: float,
    strategy_id: str = "",
    symbol: str = DEFAULT_SYMBOL,
) -> list[OrderIntent]:
    """Always in the market: on a cross, close the opposite position, then enter the new side with
    a protective stop (and target) at the configured distances."""
    side: Literal["buy", "sell"] = "buy" if cross == "up" else "sell"
    sign = 1 if side == "buy" else -1
    opposite = position < 0 if side == "buy" else position > 0
    intents = []
    # by position, in OrderIntent's field order (ts, side, qty, decision_price, reason,
    # reduce_only, order_type, limit_price, trigger_price, post_only, stop_price, target_price,
    # strategy_id, symbol): attrs' `__init__` takes keywords at several times the cost, and a
    # backtest builds two of these at every cross
    if opposite:
        intents.append(
            OrderIntent(
                ts,
                side,
                abs(position),
                price,
                f"exit_on_cross_{cross}",
                True,
                "market",
                None,
                None,
                False,
                None,
                None,
                strategy_id,
                symbol,
            )
        )
    if opposite or abs(position) < 1e-12:
        stop = price * (1 - sign * config.stop_loss_pct / 100) if config.stop_loss_pct else None
        target = price * (1 + sign * config.take_profit_pct / 100) if config.take_profit_pct else None
        intents.append(
            OrderIntent(
                ts,
                side,
                config.order_qty,
                price,
                f"entry_on_cross_{cross}",
                False,
                "market",
                None,
                None,
                False,
                stop,
                target,
                strategy_id,
                symbol,
            )
        )
    return intents


class EmaCrossStrategy:
    """The strategy component: candles in, a `signal` event and intents out on a cross."""

    subscribes: ClassVar[tuple[type, ...]] = (Candle,)

    def __init__(self, config: StrategyConfig, strategy_id: str, symbol: str) -> None:
        self.config = config
        self.id = strategy_id
        self.symbol = symbol
        self.ema = EmaCross(config.fast_period, config.slow_period, config.history)
        self.cross: Cross | None = None  # the last update's, for its decide (within one step)

    @property
    def warmup(self) -> int:
        return self.config.slow_period + 1

    def state(self) -> dict[str, Any]:
        return self.ema.snapshot()

    def restore(self, state: dict[str, Any]) -> None:
        self.ema.restore(state)

    def on_quote(self, tick: Tick, account: AccountSnapshot, now: float) -> list[StrategyOutput]:
        return []

    def update(self, candle: Candle) -> bool:
        # the close by position (Candle's sixth field: compiled, a named tuple's field by name is a
        # generic lookup, and a backtest reads it at every candle); the rest only on a cross
        cross = self.cross = self.ema.update(candle[5])
        return cross is not None and not candle.backfill  # history warms up; it never trades

    def decide(self, candle: Candle, account: AccountSnapshot, now: float) -> list[StrategyOutput]:
        cross = self.cross
        if cross is None:
            return []
        ema = self.ema
        signal = Event(
            now,
            "signal",
            {
                "strategy": self.config.name,
                "strategy_id": self.id,
                "symbol": self.symbol,
                "direction": cross,
                "price": candle.close,
                "candle_open_ts": candle.open_ts,
                "fast_ema": ema.fast,
                "slow_ema": ema.slow,
            },
        )
        position = account.position(self.symbol, self.id).qty
        return [signal, *intents_for(cross, position, self.config, candle.close, now, self.id, self.symbol)]

    def on_candle(self, candle: Candle, account: AccountSnapshot, now: float) -> list[StrategyOutput]:
        return self.decide(candle, account, now) if self.update(candle) else []


# registered after the class, not by a class decorator: compiled (setup.py), a decorated class is
# not a native class, and its attributes would be dictionary lookups
register("ema_cross")(EmaCrossStrategy)
