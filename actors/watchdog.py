"""Watchdog actor: owns the reasons a session stops.

It cancels the session scope (with the first reason anyone gave) when the duration is reached,
when the kill-switch file appears, or when a stop command arrives on its stop channel (the risk
gate's `StopSession`, forwarded by the broker; a backtest's `data_end`, asked by the broker once
it has worked every input; the recorder's `storage` stop). It shows live progress every second from the account snapshot the broker last
published.

SIGINT and SIGTERM are the session's for its whole life, not only the watchdog's
(`SessionSignals`, around the whole session: from before its run folder is opened until its
report is written; actors/signals.py has the rules, shared with the kernel's sessions).
"""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, Self

import trio
from loguru import logger

from actors.clock import SessionClock
from actors.console import ConsoleSink
from actors.progress import Position, Progress, panel_lines
from actors.signals import OnceRepeated, listen, release
from protocols.messages import AccountSnapshot, StopSession

KILL_SWITCH_POLL_S = 0.25
PROGRESS_EVERY_S = 1.0


class Stopper(OnceRepeated):
    """The session cancel scope and the first reason anyone gave for cancelling it.

    Stopping is idempotent: the first `stop` wins (its reason, detail and time are the session's);
    later ones change nothing. `wind_down` is the scope of every actor: at the first stop its
    deadline is set `wind_down_s` ahead (`session.flatten_timeout_s`), so actors that have not
    finished by then are cancelled and the flatten and the report go ahead without them."""

    def __init__(self, wind_down_s: float = math.inf) -> None:
        self.scope = trio.CancelScope()
        self.wind_down = trio.CancelScope()
        self.wind_down_s = wind_down_s
        self.reason: str | None = None
        self.detail = ""
        self.ts: float | None = None  # the session time of the first stop

    def stop(self, reason: str, detail: str = "", ts: float | None = None) -> None:
        if self.reason is not None:
            if reason == "signal":
                self.repeated(detail)
            return
        self.reason = reason
        self.detail = detail
        self.ts = ts
        logger.info("stopping: {} {}", reason, detail)
        self.scope.cancel(reason=f"{reason}: {detail}" if detail else reason)
        if math.isfinite(self.wind_down_s):
            self.wind_down.deadline = trio.current_time() + self.wind_down_s


class SessionSignals:
    """SIGINT and SIGTERM for the session's whole life (a context manager, entered in trio's
    main thread): the first stops the session (`stop_reason = "signal"`), a later one is logged
    once by the `Stopper` and ignored. The handlers only hand the signal to trio
    (`TrioToken.run_sync_soon`, safe in a signal handler), which calls the `Stopper` between two
    tasks' steps. On exit the handlers found at entry come back (`hold_signals`' under the CLI)."""

    def __init__(self, stopper: Stopper, now: Callable[[], float]) -> None:
        self.stopper = stopper
        self.now = now
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        token = trio.lowlevel.current_trio_token()

        def handler(signum: int, _frame: FrameType | None) -> None:
            # trio has returned (RunFinishedError): the report is written, the signal ignored
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._received, signum)

        self._previous, taken = listen(handler)
        for signum in taken:  # came before the session listened: it stops at once
            self._received(signum)
        return self

    def _received(self, signum: int) -> None:
        try:
            self.stopper.stop("signal", signal.Signals(signum).name, self.now())
        except Exception as exc:  # called by trio's run loop: must not raise
            logger.error("signal {} not handled: {!r}", signum, exc)

    def __exit__(self, *exc: object) -> None:
        release(self._previous, self.stopper)


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
    end_reason: str = "duration",
    hold_end: trio.Event | None = None,
    hold_s: float = 0.0,
    stop_at_once: StopSession | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`kill_switch` None: no kill-switch polling (backtests on the data's clock, which the
    operator stops with a signal); `duration_s` may be infinite. `console`: the recorder's
    figures for the progress panel (the working stop and target, trades so far). `hold_end`: the
    end waits for it, at most `hold_s` (a session resumed past its end, waiting for the market's
    next quote to close its position at), and is then at that instant. `stop_at_once`: a stop
    given at the start (a resumed session that had stopped), held for `hold_end` the same way."""
    end_ts = started_ts + duration_s

    async def duration() -> None:
        if math.isfinite(end_ts):
            await clock.sleep_until(end_ts)
            if hold_end is None:
                stopper.stop(end_reason, f"{duration_s:g} s reached", end_ts)
                return
            with trio.move_on_after(hold_s):
                await hold_end.wait()
            stopper.stop(end_reason, f"{duration_s:g} s reached", max(end_ts, clock.now()))

    async def kill_switch_poll(path: Path) -> None:
        at_start = True
        unseen: str | None = None  # why the path cannot be looked at (said once until it can)
        while True:
            # a stat() is microseconds: checked inline, since a worker thread would let a test's
            # autojump clock run ahead while it waits
            try:
                present = path.exists()  # noqa: ASYNC240
            except OSError as exc:
                # found by an audit: Path.exists raises for EACCES, EIO, ESTALE, ... and the poll's
                # exception ended the session in an error with a traceback, at its start when the
                # path could not be looked at then (the start lets such a path run)
                present = False
                why = exc.strerror or type(exc).__name__
                if unseen != why:
                    logger.warning(
                        "kill switch {} cannot be looked at ({}): a file there is not seen until it can "
                        "be (looked for again {:g} times a second; SIGTERM or Ctrl-C stop the session)",
                        path,
                        why,
                        1 / KILL_SWITCH_POLL_S,
                    )
                unseen = why
            else:
                if unseen is not None:
                    logger.info("kill switch {} can be looked at again", path)
                    unseen = None
            if present:
                if at_start:  # found by an audit: a file left from an earlier stop ended every start at once
                    logger.warning(
                        "kill switch {} was already there at the start: the session stopped at once "
                        "(delete the file to run a session)",
                        path,
                    )
                stopper.stop("kill_switch", f"file {path} present", clock.now())
                return
            at_start = False
            await trio.sleep(KILL_SWITCH_POLL_S)

    async def again(command: StopSession) -> None:
        if hold_end is not None:
            with trio.move_on_after(hold_s):
                await hold_end.wait()
        stopper.stop(command.reason, command.detail, max(command.ts, clock.now()))

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
                progress.show(
                    panel_lines(ts - started_ts, end_ts - ts, account, _positions(account, console))
                )
            ts += PROGRESS_EVERY_S

    async with trio.open_nursery() as nursery:
        # a stop given at the start is the session's end: the duration's, past already in a
        # session resumed after its planned end, would race it for the reason (found by an audit)
        nursery.start_soon(duration if stop_at_once is None else partial(again, stop_at_once))
        nursery.start_soon(stop_commands)
        if kill_switch is not None:
            nursery.start_soon(kill_switch_poll, Path(kill_switch))
        if progress.mode != "off":
            nursery.start_soon(show)
        task_status.started()


def _positions(account: AccountSnapshot, console: ConsoleSink | None) -> list[Position]:
    """Each symbol's open position (and its newest working entry) as the panel shows it: the
    account's net positions, the session symbol's first."""
    marks = dict(account.marks)
    nets = [p for p in account.positions if not p.strategy_id] or [account.position(account.symbol)]
    shown = []
    for held in nets:
        symbol = held.symbol
        stop, target = console.stop_and_target(symbol) if console is not None else (None, None)
        shown.append(
            Position(
                symbol,
                held.qty,
                held.avg_price if held.qty else None,
                stop,
                target,
                console.trades if console is not None else 0,
                console.working_entry(symbol) if console is not None else None,
                marks.get(symbol, account.mark_price if symbol == account.symbol else None),
            )
        )
    return shown
