"""The session's one clock. Nothing else reads wall time.

Session time is `wall_start + (trio.current_time() - trio_start)`: wall time in a live session, and
virtual time under a test's `autojump_clock` (a 10-minute session passes in milliseconds).
"""

from __future__ import annotations

import time

import trio
import trio.testing

# Virtual time jumps straight to a target only when no timer falls due this close to it or before.
JUMP_MARGIN_S = 1e-6


class SessionClock:
    def __init__(self, wall_start: float | None = None) -> None:
        self._trio_start = trio.current_time()
        self.wall_start = time.time() if wall_start is None else wall_start
        self._mock: trio.testing.MockClock | None = None  # jump_to's, found on first use

    def now(self) -> float:
        """Seconds since the Unix epoch, on the session's clock."""
        return self.wall_start + (trio.current_time() - self._trio_start)

    def to_trio(self, ts: float) -> float:
        """The trio deadline that corresponds to session time `ts` (for `trio.sleep_until`)."""
        return self._trio_start + (ts - self.wall_start)

    async def sleep_until(self, ts: float) -> None:
        await trio.sleep_until(self.to_trio(ts))

    def virtual(self) -> bool:
        """Whether time is virtual and moves only when every task waits (trio's MockClock with
        autojump, as in every backtest and replay): then `jump_to` may move it."""
        clock = trio.lowlevel.current_clock()
        return isinstance(clock, trio.testing.MockClock) and clock.rate == 0 and clock.autojump_threshold == 0

    def next_timer(self) -> float:
        """The session time at which the next timer (any task's sleep or deadline) falls due;
        inf when there is none."""
        return self.now() + trio.lowlevel.current_statistics().seconds_to_next_deadline

    def jump_to(self, ts: float) -> float:
        """Virtual time only: move the clock forward to session time `ts` at once, by autojump's
        own arithmetic (jump by deadline - now until reached), so that time then reads exactly
        as it would after `sleep_until(ts)`. The caller makes sure that no timer falls due
        before `ts` and that nothing else needs to run in between. Never moves time back.
        Returns the session time now (what `now()` returns)."""
        clock = self._mock
        if clock is None:
            current = trio.lowlevel.current_clock()
            assert isinstance(current, trio.testing.MockClock), "jump_to needs virtual time"
            clock = self._mock = current
        target = self._trio_start + (ts - self.wall_start)
        now = clock.current_time()
        while now < target:
            clock.jump(target - now)
            now = clock.current_time()
        return self.wall_start + (now - self._trio_start)
