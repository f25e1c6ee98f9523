"""Market data from the past: candle files for backtests, and a run's recorded market log for replay.

Both run on the data's own clock: the session runs under a virtual clock (trio's MockClock with
autojump), each event is delivered at its recorded time, and the next one is sent only when every
actor has finished with the last (`wait_all_tasks_blocked`), so the result never depends on how the
scheduler orders tasks. That is what makes a replay reproduce its original and a backtest repeatable.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import trio
import trio.testing
from loguru import logger

from actors.clock import JUMP_MARGIN_S, SessionClock
from protocols.messages import Candle, CandleRun, FeedMessage, MarketEvent, Tick, checked_candle, quote
from protocols.records import market_from_record

CSV_HEADER = ["open_time_ms", "open", "high", "low", "close", "volume"]
# The close tick of a candle is delivered this long before the candle's end, so it is never at the
# same instant as the next candle's open.
CLOSE_TICK_LEAD_S = 0.001
_INF = math.inf


class DataError(Exception):
    """A data file that cannot be used; the message says which file and why."""


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def read_candles_csv(path: Path, interval_s: float, stats: dict[str, int] | None = None) -> Iterator[Candle]:
    """Stream candles from a CSV (optionally gzipped) with header `open_time_ms,open,high,low,close,volume`.

    Rows that are malformed, out of order or repeated are skipped and counted in `stats`, never
    passed on; the file is read lazily, so memory does not grow with its length.
    """
    stats = stats if stats is not None else {}
    try:
        f = _open_text(path)
    except OSError as exc:
        raise DataError(f"--data: cannot read {path}: {exc.strerror or exc}") from exc
    with f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != CSV_HEADER:
            raise DataError(f"--data: {path} must start with the header {','.join(CSV_HEADER)}, got {header}")
        last_open = -math.inf
        for row in reader:
            candle = _candle(row, interval_s)
            if candle is None or candle.open_ts <= last_open:
                stats["skipped"] = stats.get("skipped", 0) + 1
                continue
            last_open = candle.open_ts
            stats["candles"] = stats.get("candles", 0) + 1
            yield candle


def _candle(row: list[str], interval_s: float) -> Candle | None:
    """The row as a candle; None when it is malformed: a field missing or not a number, a price not
    finite and positive, a volume not finite and non-negative, a high or low the others exceed."""
    if len(row) != 6:
        return None
    try:
        o, h, lo, c, v = float(row[1]), float(row[2]), float(row[3]), float(row[4]), float(row[5])
        open_ts = int(row[0]) / 1000.0
    except ValueError:
        return None
    # chained comparisons are False for NaN
    if not (0 < o < _INF and 0 < h < _INF and 0 < lo < _INF and 0 < c < _INF and 0 <= v < _INF):
        return None
    if h < o or h < c or h < lo or lo > o or lo > c:
        return None
    return checked_candle(open_ts, interval_s, o, h, lo, c, v)  # checked just above


def candle_ticks(candle: Candle) -> tuple[Tick, Tick]:
    """The two quotes a candle proves the market offered: its open (at the start), its close (at the end)."""
    # a candle's prices are > 0 (its own validators), so the quotes need no checking again
    return quote(candle.open_ts, candle.open), quote(candle.close_ts - CLOSE_TICK_LEAD_S, candle.close)


async def _send(subscribers: Sequence[trio.MemorySendChannel[FeedMessage]], event: FeedMessage) -> None:
    for tx in subscribers:
        try:
            tx.send_nowait(event)  # room in a buffered channel: no task switch
        except trio.WouldBlock:
            await tx.send(event)


async def _deliver(
    clock: SessionClock,
    subscribers: Sequence[trio.MemorySendChannel[FeedMessage]],
    ts: float,
    event: MarketEvent,
) -> None:
    """At `ts`, hand `event` to every subscriber and wait until every actor has done with it."""
    await clock.sleep_until(ts)
    await _send(subscribers, event)
    await trio.testing.wait_all_tasks_blocked()


# The most candles handed over in one run (0: none, every candle goes alone).
MAX_RUN = 512

# How many of the coming closes certainly give the strategy no signal (`EmaCross.lookahead`).
Lookahead = Callable[[Iterable[float]], int]


async def _advance(clock: SessionClock, ts: float) -> None:
    """Move the session clock to `ts` exactly as `clock.sleep_until(ts)` would; called only when
    every other task is blocked (right after `wait_all_tasks_blocked`).

    Under trio's MockClock with autojump (every backtest), a sleep is a deadline, an idle round in
    which the clock jumps to it, and a wake-up by cancellation: about a fifth of a candle's cost.
    When every other task is blocked and no other deadline falls before the target or at it,
    nothing can run in between, so the feed jumps the clock itself (the same jumps autojump would
    make, to the same virtual time) and carries on. Otherwise, or under any other clock, it sleeps."""
    if clock.virtual():
        seconds_to_target = clock.to_trio(ts) - trio.current_time()
        if trio.lowlevel.current_statistics().seconds_to_next_deadline > seconds_to_target + JUMP_MARGIN_S:
            clock.jump_to(ts)
            return
    await clock.sleep_until(ts)


async def run_candle_feed(
    candles: Iterable[Candle],
    clock: SessionClock,
    subscribers: Sequence[trio.MemorySendChannel[FeedMessage]],
    *,
    lookahead: Lookahead | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Actor (backtests): per candle, its open quote at its start; at its end its close quote and
    the closed candle.

    The first subscriber works the market (the broker): it gets the quotes and the candle. The
    others decide on closed candles (the strategy): they get only the candle, once the first has
    finished with it, so they see the account as the candle left it (a stop or target the candle
    reached has filled). Each step waits until every actor has finished with the last
    (`wait_all_tasks_blocked`), so an order decided on a candle is worked before the next open,
    and the result never depends on how the scheduler orders tasks.

    Most candles need none of that: the strategy decides nothing on them. With the strategy's
    `lookahead` (under virtual time), the candles up to the next one it could signal on go as
    one `CandleRun`, which the broker works candle by candle exactly as above (timers that fall
    due in between, a heartbeat or an order reaching the market, run at their time) while the
    strategy updates on their closes; the signal candle ends the broker's run and is handed to
    the strategy once the run is worked. The feed waits once per run, not three times per
    candle, and the result is the same, event for event (tests/test_backtest_runs.py).
    """
    market, deciders = subscribers[:1], subscribers[1:]
    barrier = trio.testing.wait_all_tasks_blocked
    source = iter(candles)
    ahead: deque[Candle] = deque()
    runs = lookahead is not None and MAX_RUN > 0 and clock.virtual()
    read_ahead = max(MAX_RUN, 1)  # candles read ahead of the actors
    with ExitStack() as stack:
        for tx in subscribers:
            stack.enter_context(tx)
        task_status.started()
        count = 0
        while True:
            if len(ahead) < read_ahead:
                ahead.extend(itertools.islice(source, read_ahead - len(ahead)))
            if not ahead:
                break
            if runs:
                assert lookahead is not None
                quiet = lookahead(candle.close for candle in ahead)
                run = [ahead.popleft() for _ in range(min(quiet + 1, len(ahead)))]
                quotes = tuple(candle_ticks(candle) for candle in run)
                market_run = CandleRun(tuple(run), quotes)
                await _send(market, market_run)
                if quiet:
                    await _send(deciders, CandleRun(tuple(run[:quiet]), quotes[:quiet]))
                await market_run.worked.wait()
                if len(run) > quiet:  # the signal candle, decided on as the broker left it (the
                    await _send(deciders, run[-1])  # strategy takes it after its own run)
                await barrier()
                count += len(run)
                continue
            candle = ahead.popleft()
            open_tick, close_tick = candle_ticks(candle)
            if clock.now() < open_tick.ts:  # a gap in the data (every actor is idle here)
                await _advance(clock, open_tick.ts)
            await _send(market, open_tick)
            await barrier()
            await _advance(clock, candle.close_ts)
            await _send(market, close_tick)
            await _send(market, candle)
            await barrier()
            await _send(deciders, candle)
            await barrier()
            count += 1
        logger.info("backtest data exhausted after {} candles", count)


def read_market_log(path: Path) -> Iterator[tuple[float, MarketEvent]]:
    """(arrival time, event) pairs from a run's `market.jsonl`."""
    import json

    with path.open(encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            yield record["arrival_ts"], market_from_record(record)


async def run_replay_feed(
    records: Iterable[tuple[float, MarketEvent]],
    clock: SessionClock,
    subscribers: Sequence[trio.MemorySendChannel[FeedMessage]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Actor (replay): each recorded market event at its original arrival time; then silence."""
    with ExitStack() as stack:
        for tx in subscribers:
            stack.enter_context(tx)
        task_status.started()
        for arrival_ts, event in records:
            await _deliver(clock, subscribers, arrival_ts, event)
        await trio.sleep_forever()
