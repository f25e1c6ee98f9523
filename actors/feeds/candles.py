"""A feed actor over timed inputs (a candle file's steps, a recorded market log): each input is
sent to the broker at its time on the session clock, stamped with that time. The kernel steps
through the same inputs without trio; this is how the live actors take them (the differential
test, `--runtime actors`). When a backtest's inputs end it closes the broker's channel (the
broker, once it has worked them all, asks the watchdog to stop the session: `data_end`); a
replay's feed goes quiet instead, and the session ends when its original did."""

from __future__ import annotations

from collections.abc import Iterable

import trio
from loguru import logger

from actors.clock import SessionClock
from actors.feeds.stamp import Stamped
from protocols.messages import MarketEvent, StopSession


async def run_timed_feed(
    inputs: Iterable[tuple[float, MarketEvent]],
    clock: SessionClock,
    market_tx: trio.MemorySendChannel[Stamped],
    stops_tx: trio.MemorySendChannel[StopSession],
    *,
    end_reason: str | None = "data_end",
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`end_reason` None: a replay's feed (quiet at its end); else the inputs end the session, by
    the broker's `input_end` (actors/broker/actor.py) once it has worked them all: sending the
    stop from here raced the broker's last step (found by an audit: a risk stop on a backtest's
    last candle became `data_end` and an error)."""
    count = 0
    with market_tx, stops_tx:
        task_status.started()
        for ts, event in inputs:
            await clock.sleep_until(ts)
            await market_tx.send((ts, event))
            count += 1
        logger.info("data exhausted after {} market events", count)
        if end_reason is None:  # a replay: the session ends when its original did (the watchdog)
            await trio.sleep_forever()
        # closed on leaving: the broker finishes its last step, then sees the end
