"""SIGINT and SIGTERM (and SIGHUP, the terminal closed, unless `nohup` ignores it): the
session's for its whole life, on either runtime (no trio here). A SIGINT (or SIGHUP) the process
started with ignored stays ignored: a background job of a non-interactive shell (`cmd &` in a
script) starts with SIGINT ignored so that a Ctrl-C meant for the foreground leaves it running,
as Python itself leaves it (no KeyboardInterrupt then). SIGTERM is always the session's.

The first signal stops the session (`stop_reason = "signal"`, its name the detail), with its
flatten and its report; every later one is logged once ("already stopping, flattening") and
otherwise ignored, so any number of signals give one stop, one flatten and one report. Only
SIGKILL can prevent them.

- The CLI holds the signals (`hold_signals`) from just before its session starts until the
  process exits: one that comes while no session listens is noted, and the session takes it as
  it starts (it stops at once, flat, with its report); one that comes after the report is
  written is a repeat (`late_signals`).
- A session on the actors runtime listens with `actors.watchdog.SessionSignals` (the signal goes
  to trio, which stops the session's cancel scope).
- A session on the kernel (backtests, replays: a plain loop) listens with `KernelSignals`: the
  handler only notes the signal; the session looks between two chunks of its inputs
  (`actors.session.STORAGE_CHECK_EVERY`) and stops there.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, Protocol, Self

from loguru import logger

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# The terminal closed (an ssh connection lost, its window shut): SIGHUP, whose default action ended
# the process like a SIGKILL, holding its position, no report (found by an audit). It stops the
# session as SIGINT and SIGTERM do, unless the process started with it ignored (`nohup`: it is
# meant to outlive its terminal, and does).
HANGUP = signal.SIGHUP


def _ours() -> tuple[int, ...]:
    """The signals a session listens to: SIGTERM, and SIGINT and SIGHUP unless the process has them
    ignored (found by an audit: a session started as `... &` by a script, SIGINT ignored, was
    stopped by the Ctrl-C meant for the script's foreground command; `nohup` and SIGHUP alike)."""
    return tuple(
        signum
        for signum in (*SIGNALS, HANGUP)
        if signum == signal.SIGTERM or signal.getsignal(signum) is not signal.SIG_IGN
    )


class Repeats(Protocol):
    def repeated(self, name: str) -> None: ...


# Signals that came while no session listened; a session that starts listening takes them.
_held: list[int] = []
# The listener of the session that listened last (the CLI's, once its report is written): the
# signals held after it are its repeated ones (`late_signals`).
_ended: list[Repeats] = []


def _hold(signum: int, _frame: FrameType | None) -> None:
    _held.append(signum)


# Start-up (before the session listens): the CLI's SIGINT and SIGTERM end the process at once
# (`exit_on_signal`), but not inside a `shielded` block (taking or handing over the run dir's start
# lock, actors/lock.py): one that comes there is taken as the block ends, its state whole (found by
# the stop audit: a SIGTERM as a start took its lock left `.start.lock` and the run dir it made).
_shield_depth = 0
_shielded_signal: list[int] = []


def exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    """The CLI's handler of SIGINT and SIGTERM during start-up: exit 128 + the signal's number
    (130, 143), at once or as the `shielded` block it came in ends."""
    if _shield_depth:
        _shielded_signal.append(signum)
        return
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """A block `exit_on_signal` does not cut (in the main thread, where handlers run): a signal
    that comes in it ends the process as the outermost block ends. Other handlers (a session's,
    `hold_signals`') are not concerned."""
    global _shield_depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _shield_depth += 1
    try:
        yield
    finally:
        _shield_depth -= 1
        if not _shield_depth and _shielded_signal:
            signum = _shielded_signal[0]
            _shielded_signal.clear()
            raise SystemExit(128 + signum)


@contextlib.contextmanager
def unshielded() -> Iterator[None]:
    """Inside a `shielded` block, a wait a signal may end (another start's lock waited for): one
    that came meanwhile, or comes now, ends the process here."""
    global _shield_depth
    if threading.current_thread() is not threading.main_thread() or not _shield_depth:
        yield
        return
    depth, _shield_depth = _shield_depth, 0
    try:
        if _shielded_signal:
            signum = _shielded_signal[0]
            _shielded_signal.clear()
            raise SystemExit(128 + signum)
        yield
    finally:
        _shield_depth = depth


def hold_signals() -> None:
    """The CLI, just before it runs a session: from now until the process exits, SIGINT and
    SIGTERM are held (noted, nothing else) while no session listens to them. A session starting
    takes those that came before it; those that come after its report is written are ignored (it
    is stopping already), so the process always ends with the exit code of the first reason."""
    for signum in _ours():
        signal.signal(signum, _hold)


def late_signals() -> None:
    """The CLI, as it ends: from now on SIGINT and SIGTERM are ignored by the OS (Python's exit
    would give them their default action back: a signal in the last milliseconds would still kill
    the process, 130 or 143), and those held since its session's report was written are logged as
    repeated ones (once per session, with those the session saw itself). Nothing when the
    signals are not held (`hold_signals` was not called: a test calling the CLI's `main`)."""
    if signal.getsignal(signal.SIGTERM) is not _hold:
        return
    for signum in _ours():
        signal.signal(signum, signal.SIG_IGN)
    if _held and _ended:
        _ended[-1].repeated(signal.Signals(_held[0]).name)


def listen(handler: Callable[[int, FrameType | None], None]) -> tuple[dict[int, Any], list[int]]:
    """A session starts listening: `handler` for SIGINT and SIGTERM; returns the handlers found
    (for `release`) and the signals held before it listened, which it takes (it stops at once)."""
    previous: dict[int, Any] = {int(signum): signal.signal(signum, handler) for signum in _ours()}
    taken = _held[:]
    _held.clear()
    return previous, taken


def release(previous: dict[int, Any], listener: Repeats) -> None:
    """A session stops listening, its report written: the handlers found at `listen` come back;
    under the CLI (`hold_signals`') those held from now on are `listener`'s repeats."""
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    if previous.get(signal.SIGTERM) is _hold:
        _held.clear()
        _ended.append(listener)


class OnceRepeated:
    """A signal after the stop is logged once, nothing else (`Stopper`, `KernelSignals`)."""

    _logged_repeat = False

    def repeated(self, name: str) -> None:
        if not self._logged_repeat:
            self._logged_repeat = True
            logger.warning(
                "{} again: already stopping, flattening (further signals are ignored; the report "
                "is written within session.flatten_timeout_s)",
                name or "signal",
            )


class KernelSignals(OnceRepeated):
    """SIGINT and SIGTERM for a session on the kernel (a context manager, entered in the main
    thread before the run folder is opened, left once the report is written). The handler only
    notes the signal (nothing in a signal handler may take a lock, as logging does); the session
    asks `stop_requested` between two chunks of its inputs and stops there (`stop_reason =
    "signal"`, the first signal's name the detail). A later signal is logged once, at the stop
    or on leaving. On exit the handlers found at entry come back (`hold_signals`' under the
    CLI)."""

    def __init__(self) -> None:
        self.first: str | None = None  # the first signal's name
        self.again: str | None = None  # the second's
        self.stopping = False  # the session has taken the stop
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        self._previous, taken = listen(self._handler)
        for signum in taken:  # came before the session listened: it stops at its first look
            self._note(signum)
        return self

    def _handler(self, signum: int, _frame: FrameType | None) -> None:
        self._note(signum)

    def _note(self, signum: int) -> None:
        if self.first is None:
            self.first = signal.Signals(signum).name
        elif self.again is None:
            self.again = signal.Signals(signum).name

    def stop_requested(self) -> str | None:
        """The first signal's name once one has come (logged the first time it is asked)."""
        if self.first is None:
            return None
        if not self.stopping:
            self.stopping = True
            logger.info("stopping: signal {}", self.first)
        if self.again is not None:
            self.repeated(self.again)
        return self.first

    def __exit__(self, *exc: object) -> None:
        release(self._previous, self)
        if self.again is not None:
            self.repeated(self.again)
        elif self.first is not None and not self.stopping:  # came as it ended
            self.repeated(self.first)
