"""Strategy actor: closed candles -> order intents.

The baseline is an EMA fast/slow crossover on candle closes (alpha = 2 / (n + 1), seeded with the
first close). Its state is built once at start-up and updated incrementally; the candle history is
bounded by `strategy.history`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol

import trio

from actors.config import StrategyConfig
from protocols.messages import Candle, CandleRun, Event, EventSender, FeedMessage, OrderIntent

Cross = Literal["up", "down"]


class EmaCross:
    """Pure indicator state: feed closes, get a crossover signal or None."""

    def __init__(self, fast: int, slow: int, history: int) -> None:
        self.fast_alpha = 2.0 / (fast + 1)
        self.slow_alpha = 2.0 / (slow + 1)
        self.slow_period = slow
        self.closes: deque[float] = deque(maxlen=history)
        self.fast: float | None = None
        self.slow: float | None = None
        self.seen = 0
        self.prev_diff: float | None = None

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
        self.fast, self.slow, self.seen, self.prev_diff = (
            state["fast"],
            state["slow"],
            state["seen"],
            state["prev_diff"],
        )

    def update(self, close: float) -> Cross | None:
        self.closes.append(close)
        self.seen += 1
        if self.fast is None or self.slow is None:
            self.fast = self.slow = close
        else:
            self.fast += self.fast_alpha * (close - self.fast)
            self.slow += self.slow_alpha * (close - self.slow)
        if self.seen < self.slow_period:
            return None
        diff = self.fast - self.slow
        prev, self.prev_diff = self.prev_diff, diff
        if prev is None:
            return None
        if prev < 0.0 < diff:
            return "up"
        if prev > 0.0 > diff:
            return "down"
        return None

    def lookahead(self, closes: Iterable[float]) -> int:
        """How many of the coming `closes` certainly give no signal, from the state as it is now:
        the number before the first one that would cross. The arithmetic of `update`, on copies
        (the state is not changed); a backtest feed hands that many candles over in one run."""
        fast_alpha, slow_alpha, period = self.fast_alpha, self.slow_alpha, self.slow_period
        fast, slow, seen, prev = self.fast, self.slow, self.seen, self.prev_diff
        n = 0
        for close in closes:
            seen += 1
            if fast is None or slow is None:
                fast = slow = close
            else:
                fast += fast_alpha * (close - fast)
                slow += slow_alpha * (close - slow)
            if seen >= period:
                diff = fast - slow
                if prev is not None and (prev < 0.0 < diff or prev > 0.0 > diff):
                    return n
                prev = diff
            n += 1
        return n


class PositionView(Protocol):
    @property
    def position_qty(self) -> float: ...


def intents_for(
    cross: Cross, position: float, config: StrategyConfig, price: float, ts: float
) -> list[OrderIntent]:
    """Always in the market: on a cross, close the opposite position, then enter the new side with
    a protective stop (and target) at the configured distances."""
    side: Literal["buy", "sell"] = "buy" if cross == "up" else "sell"
    sign = 1 if side == "buy" else -1
    opposite = position < 0 if side == "buy" else position > 0
    intents = []
    if opposite:
        intents.append(
            OrderIntent(ts, side, abs(position), price, reason=f"exit_on_cross_{cross}", reduce_only=True)
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
                reason=f"entry_on_cross_{cross}",
                stop_price=stop,
                target_price=target,
            )
        )
    return intents


async def run_strategy(
    config: StrategyConfig,
    view: PositionView,
    market_rx: trio.MemoryReceiveChannel[FeedMessage],
    intents_tx: trio.MemorySendChannel[OrderIntent],
    events_tx: EventSender,
    now: Callable[[], float],
    ema: EmaCross | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Actor: one signal event and zero or more intents per crossover. `ema` is the session's
    (restored on resume); built here when not given."""
    ema = ema or EmaCross(config.fast_period, config.slow_period, config.history)
    with market_rx, intents_tx, events_tx:
        task_status.started()
        async for event in market_rx:
            if isinstance(event, CandleRun):  # a backtest's candles on which nothing is decided
                update = ema.update
                for candle in event.candles:
                    if update(candle.close) is not None and not candle.backfill:
                        raise RuntimeError(f"a signal inside a run of candles, at {candle.open_ts}")
                continue
            if not isinstance(event, Candle):
                continue
            cross = ema.update(event.close)
            if cross is None or event.backfill:  # history warms the EMAs up; only live candles trade
                continue
            ts = now()
            await events_tx.send(
                Event(
                    ts,
                    "signal",
                    {
                        "strategy": config.name,
                        "direction": cross,
                        "price": event.close,
                        "candle_open_ts": event.open_ts,
                        "fast_ema": ema.fast,
                        "slow_ema": ema.slow,
                    },
                )
            )
            for intent in intents_for(cross, view.position_qty, config, event.close, ts):
                await intents_tx.send(intent)
