"""The session's one clock. Nothing else reads wall time.

Session time is `wall_start + (trio.current_time() - trio_start)`: wall time in a live session, and
the data's time when the actors run a backtest or replay under a virtual clock (`VirtualClock`
here, or a test's `autojump_clock`; a 10-minute session then passes in milliseconds).
"""

from __future__ import annotations

import time

import trio


class SessionClock:
    def __init__(self, wall_start: float | None = None) -> None:
        self._trio_start = trio.current_time()
        self.wall_start = time.time() if wall_start is None else wall_start

    def now(self) -> float:
        """Seconds since the Unix epoch, on the session's clock."""
        return self.wall_start + (trio.current_time() - self._trio_start)

    def to_trio(self, ts: float) -> float:
        """The trio deadline that corresponds to session time `ts` (for `trio.sleep_until`)."""
        return self._trio_start + (ts - self.wall_start)

    async def sleep_until(self, ts: float) -> None:
        await trio.sleep_until(self.to_trio(ts))


class VirtualClock(trio.abc.Clock):
    """A trio clock on which time moves only when every task waits: then straight to the next
    deadline. For the actors runtime over recorded data (`--runtime actors`): the same work as in
    real time, without the waiting."""

    def __init__(self) -> None:
        self._now = 0.0

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return self._now

    def deadline_to_sleep_time(self, deadline: float) -> float:
        # trio asks only when no task can run: jump to the deadline and do not sleep
        if deadline > self._now and deadline != float("inf"):
            self._now = deadline
        return 0.0 if deadline != float("inf") else 86400.0
