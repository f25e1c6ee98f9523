"""The process's health, sampled with psutil where the run folder is written (no trio).

The recorder samples at each heartbeat row it writes (actors/recording/recorder.py) and adds the
sample to that `metrics.csv` row: CPU %, resident memory, open file descriptors and free disk
space of the run folder. The broker, which makes the heartbeats, does no I/O; the samples never
reach `events.jsonl` (they differ between two runs of the same data), only the metrics files and
the health alerts (actors/recording/alerts.py).

A backtest writes heartbeat rows much faster than once a second: a sample is taken at most every
`SAMPLE_EVERY_S` of wall time, and the rows between repeat the latest one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from protocols.records import NO_HEALTH

SAMPLE_EVERY_S = 0.5
MB = 1024 * 1024


class HealthSampler:
    """Samples this process and the disk holding `path`; `wall` is a monotonic clock (seconds)."""

    def __init__(self, path: Path, wall: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._wall = wall
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call starts the measurement and returns 0
        self._at = -math.inf
        self.last: dict[str, Any] = NO_HEALTH

    def sample(self) -> tuple[dict[str, Any], bool]:
        """The latest sample and whether it was taken now (False: reused, taken under
        `SAMPLE_EVERY_S` ago). A figure psutil cannot read is None."""
        now = self._wall()
        if now - self._at < SAMPLE_EVERY_S:
            return self.last, False
        self._at = now
        self.last = {
            "cpu_pct": _read(lambda: round(self._process.cpu_percent(None), 1)),
            "rss_mb": _read(lambda: round(self._process.memory_info().rss / MB, 1)),
            "open_files": _read(self._open_files),
            "disk_free_mb": _read(lambda: round(psutil.disk_usage(str(self.path)).free / MB, 1)),
        }
        return self.last, True

    def _open_files(self) -> int:
        """Open file descriptors (files, sockets, pipes): cheaper than listing the open files."""
        if hasattr(self._process, "num_fds"):
            return int(self._process.num_fds())
        return int(self._process.num_handles())  # Windows


def _read(get: Callable[[], Any]) -> Any:
    try:
        return get()
    except (psutil.Error, OSError):
        return None
