"""Watchdog actor: owns the reasons a session stops.

It cancels the session scope (with the first reason anyone gave) when the duration is reached,
when the kill-switch file appears, on SIGINT/SIGTERM, or when a stop command arrives on its stop
channel (the risk gate's `StopSession`, forwarded by the broker; a backtest feed's `data_end`). It
shows live progress every second from the account snapshot the broker last published.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable
from pathlib import Path

import trio
from loguru import logger

from actors.clock import SessionClock
from actors.console import ConsoleSink
from actors.progress import Position, Progress, panel_lines
from protocols.messages import AccountSnapshot, StopSession

KILL_SWITCH_POLL_S = 0.25
PROGRESS_EVERY_S = 1.0


class Stopper:
    """The session cancel scope and the first reason anyone gave for cancelling it."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.reason: str | None = None
        self.detail = ""
        self.ts: float | None = None  # the session time of the first stop

    def stop(self, reason: str, detail: str = "", ts: float | None = None) -> None:
        if self.reason is None:
            self.reason = reason
            self.detail = detail
            self.ts = ts
            logger.info("stopping: {} {}", reason, detail)
        self.scope.cancel(reason=f"{reason}: {detail}" if detail else reason)


async def run_watchdog(
    *,
    clock: SessionClock,
    started_ts: float,
    duration_s: float,
    kill_switch: str | None,
    stopper: Stopper,
    stops_rx: trio.MemoryReceiveChannel[StopSession],
    latest: Callable[[], AccountSnapshot | None],
    progress: Progress,
    console: ConsoleSink | None = None,
    handle_signals: bool = True,
    end_reason: str = "duration",
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`kill_switch` None: no kill-switch polling (backtests on the data's clock, which the
    operator stops with a signal); `duration_s` may be infinite. `console`: the recorder's
    figures for the progress panel (the working stop and target, trades so far)."""
    end_ts = started_ts + duration_s

    async def duration() -> None:
        if math.isfinite(end_ts):
            await clock.sleep_until(end_ts)
            stopper.stop(end_reason, f"{duration_s:g} s reached", end_ts)

    async def kill_switch_poll(path: Path) -> None:
        while True:
            # a stat() is microseconds: checked inline, since a worker thread would let a test's
            # autojump clock run ahead while it waits
            if path.exists():  # noqa: ASYNC240
                stopper.stop("kill_switch", f"file {path} present", clock.now())
                return
            await trio.sleep(KILL_SWITCH_POLL_S)

    async def signals(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
            task_status.started()
            async for signum in received:
                stopper.stop("signal", signal.Signals(signum).name, clock.now())

    async def stop_commands() -> None:
        with stops_rx:
            async for command in stops_rx:
                stopper.stop(command.reason, command.detail, command.ts)

    async def show() -> None:
        ts = started_ts + PROGRESS_EVERY_S * (math.floor((clock.now() - started_ts) / PROGRESS_EVERY_S) + 1)
        while ts < end_ts:
            await clock.sleep_until(ts)
            account = latest()
            if account is not None:
                progress.show(panel_lines(ts - started_ts, end_ts - ts, account, _position(account, console)))
            ts += PROGRESS_EVERY_S

    async with trio.open_nursery() as nursery:
        if handle_signals:
            await nursery.start(signals)
        nursery.start_soon(duration)
        nursery.start_soon(stop_commands)
        if kill_switch is not None:
            nursery.start_soon(kill_switch_poll, Path(kill_switch))
        if progress.mode != "off":
            nursery.start_soon(show)
        task_status.started()


def _position(account: AccountSnapshot, console: ConsoleSink | None) -> Position:
    """The session symbol's open position as the panel shows it."""
    held = account.position(account.symbol)
    stop, target = console.stop_and_target(account.symbol) if console is not None else (None, None)
    return Position(
        account.symbol,
        held.qty,
        held.avg_price if held.qty else None,
        stop,
        target,
        console.trades if console is not None else 0,
    )
