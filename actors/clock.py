"""The session's one clock. Nothing else reads wall time.

Session time is `wall_start + (trio.current_time() - trio_start)`: wall time in a live session, and
virtual time under a test's `autojump_clock` (a 10-minute session passes in milliseconds).
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
