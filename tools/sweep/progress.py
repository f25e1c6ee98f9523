"""The sweep's progress on the console: trials done of the total, in Ray (running or queued),
failed, trials per second and the time left (rich on a terminal; a plain line per finished trial otherwise)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tools.sweep.runner import Counts, Progress


def _line(counts: Counts) -> str:
    rate = counts.rate()
    left = counts.total - counts.done
    eta = f"{left / rate:,.0f} s" if rate > 0 else "-"
    # `running`: the trials submitted to Ray and not back yet, queued for a CPU or running (found by
    # a docs audit: with --workers 1 the line said "11 running")
    return (
        f"trials {counts.done}/{counts.total} done, {counts.running} running or queued, {counts.failed} failed, "
        f"{counts.skipped} from the log; {rate:.2f} trials/s, ETA {eta}"
    )


@contextmanager
def console_progress(mode: str) -> Iterator[Progress | None]:
    """`mode`: rich, plain, off, or auto (rich when stderr is a terminal, else plain)."""
    if mode == "auto":
        mode = "rich" if sys.stderr.isatty() else "plain"
    if mode == "off":
        yield None
        return
    if mode == "plain":
        yield lambda counts: print(_line(counts), file=sys.stderr, flush=True)
        return
    from rich.console import Console
    from rich.live import Live

    with Live(console=Console(stderr=True), refresh_per_second=4, transient=False) as live:
        yield lambda counts: live.update(_line(counts))
