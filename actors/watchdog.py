"""Watchdog actor: owns the reasons a session stops, and its pulse.

It cancels the session scope (with the reason) when the duration is reached, when the kill-switch
file appears, or on SIGINT/SIGTERM. It emits a heartbeat event (one metrics row) every
`observability.heartbeat_s` and shows live progress every second.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import trio
from loguru import logger

from actors.clock import SessionClock
from actors.progress import Progress, status_line
from protocols.messages import Event, EventSender

KILL_SWITCH_POLL_S = 0.25
PROGRESS_EVERY_S = 1.0


class Stopper:
    """The session cancel scope and the first reason anyone gave for cancelling it."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.reason: str | None = None
        self.detail = ""

    def stop(self, reason: str, detail: str = "") -> None:
        if self.reason is None:
            self.reason = reason
            self.detail = detail
            logger.info("stopping: {} {}", reason, detail)
        self.scope.cancel(reason=f"{reason}: {detail}" if detail else reason)


class AccountView(Protocol):
    @property
    def position_qty(self) -> float: ...
    @property
    def mark_price(self) -> float | None: ...
    @property
    def equity(self) -> float: ...
    @property
    def realized_pnl(self) -> float: ...
    @property
    def unrealized_pnl(self) -> float: ...
    @property
    def fees_paid(self) -> float: ...
    @property
    def drawdown_pct(self) -> float: ...
    @property
    def starting_equity(self) -> float: ...


def heartbeat_fields(view: AccountView, elapsed_s: float) -> dict[str, float | None]:
    return {
        "elapsed_s": round(elapsed_s, 3),
        "price": view.mark_price,
        "equity": round(view.equity, 6),
        "realized_pnl": round(view.realized_pnl, 6),
        "unrealized_pnl": round(view.unrealized_pnl, 6),
        "fees_paid": round(view.fees_paid, 6),
        "position_qty": round(view.position_qty, 8),
        "drawdown_pct": round(view.drawdown_pct, 4),
    }


async def run_watchdog(
    *,
    clock: SessionClock,
    started_ts: float,
    duration_s: float,
    kill_switch: str,
    heartbeat_s: float,
    stopper: Stopper,
    view: AccountView,
    events_tx: EventSender,
    progress: Progress,
    handle_signals: bool = True,
    virtual_time: bool = False,
    end_reason: str = "duration",
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`virtual_time` (replay, backtest): the clock is the data's, so no kill-switch polling or
    progress on it (the operator stops such a run with a signal); `duration_s` may be infinite."""
    end_ts = started_ts + duration_s

    async def duration() -> None:
        await clock.sleep_until(end_ts)
        stopper.stop(end_reason, f"{duration_s:g} s reached")

    async def kill_switch_poll() -> None:
        path = Path(kill_switch)
        while True:
            # a stat() is microseconds: checked inline, since a worker thread would let a test's
            # autojump clock run ahead while it waits
            if path.exists():  # noqa: ASYNC240
                stopper.stop("kill_switch", f"file {kill_switch} present")
                return
            await trio.sleep(KILL_SWITCH_POLL_S)

    async def signals(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
            task_status.started()
            async for signum in received:
                stopper.stop("signal", signal.Signals(signum).name)

    async def every(period: float, action: Callable[[float], object]) -> None:
        # on whole periods from the start, beginning with the next one (a resumed session does
        # not make up the rows of its downtime)
        ts = started_ts + period * (math.floor((clock.now() - started_ts) / period) + 1)
        while ts < end_ts:  # the session writes the last row itself, after flattening
            await clock.sleep_until(ts)
            result = action(ts)
            if isinstance(result, Event):
                await events_tx.send(result)
            ts += period

    def heartbeat(ts: float) -> Event:
        return Event(ts, "heartbeat", heartbeat_fields(view, ts - started_ts))

    def show(ts: float) -> None:
        progress.show(
            status_line(
                ts - started_ts,
                end_ts - ts,
                view.mark_price,
                view.position_qty,
                view.equity,
                view.equity - view.starting_equity,
            )
        )

    with events_tx:
        async with trio.open_nursery() as nursery:
            if handle_signals:
                await nursery.start(signals)
            nursery.start_soon(duration)
            nursery.start_soon(every, heartbeat_s, heartbeat)
            if not virtual_time:
                nursery.start_soon(kill_switch_poll)
                nursery.start_soon(every, PROGRESS_EVERY_S, show)
            task_status.started()
