"""Market data from the past: candle files for backtests, and a run's recorded market log for replay.

Plain iterators (no trio): the kernel (actors/kernel.py) steps through them on the data's own clock;
`actors.feeds.candles` hands the same steps to the live actors (a differential test, `--runtime
actors`).
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Final

import orjson
from loguru import logger

from protocols.messages import DEFAULT_SYMBOL, MAX_MARKET_VALUE, Candle, MarketEvent, Tick, _new_tuple, quote
from protocols.records import market_from_record

CSV_HEADER = ["open_time_ms", "open", "high", "low", "close", "volume"]
# A backtest candle's close quote carries this time, just before the candle's end (at which it is
# delivered, with the candle), so it is never confused with the next candle's open quote.
CLOSE_TICK_LEAD_S: Final = 0.001
_INF: Final = math.inf
# open times a candle may have, ms: above 0 (0: a placeholder row) and before 2100-01-01 UTC (found by
# an audit: a typo's extra digit, year 2505, was taken, and the run wrote a heartbeat for every hour
# up to it; a placeholder row at 0, for every hour from 1970 on)
MIN_OPEN_MS: Final = 1.0
MAX_OPEN_MS: Final = 4_102_444_800_000.0
# prices and volumes a candle may have: below this (found by an audit: a row of prices 1e308, finite,
# was a candle, and the broker's price grid overflowed, 1e308 x 10 ticks: the backtest ended in
# error); where the mock's walk stops too (actors/feeds/mock.py MAX_MID); the live frames' bound too
MAX_CSV_VALUE: Final = MAX_MARKET_VALUE
# what reading a file can raise besides OSError: a gzip stream cut short, or damaged
READ_ERRORS: Final = (OSError, EOFError, zlib.error)


class DataError(Exception):
    """A data file that cannot be used; the message says which file and why."""


def _open_binary(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def read_candles_csv(
    path: Path,
    interval_s: float,
    stats: dict[str, int] | None = None,
    symbol: str = DEFAULT_SYMBOL,
    gaps: list[tuple[float, float]] | None = None,
    skipped_by: dict[str, int] | None = None,
    first_skipped: list[tuple[int, str]] | None = None,
) -> Iterator[Candle]:
    """Stream candles from a CSV (optionally gzipped) with header `open_time_ms,open,high,low,close,volume`.

    Rows that are malformed, out of order or repeated are skipped and counted in `stats`, never
    passed on; the file is read lazily, so memory does not grow with its length. Plain numbers are
    expected (no quoting), read a chunk of lines at a time, as bytes (`_parse_lines`).
    The gaps (two candles more than `interval_s` apart) are appended to `gaps`, as (open time
    before, open time after), as they are read. `skipped_by`: the skipped rows counted by reason
    (`skip_reason`); `first_skipped`: the first skipped row's line number (the header is line 1)
    and reason is appended to it.
    """
    stats = stats if stats is not None else {}
    try:
        f = _open_binary(path)
        header = f.readline()
    except READ_ERRORS as exc:
        raise DataError(f"--data: cannot read {path}: {read_error(exc)}") from exc
    with f:
        # past a byte order mark (an audit); its own name: compiled (mypyc), a name has one type,
        # and `first` below is a float (a str here failed every compiled read)
        heading = header.decode("utf-8-sig", "replace").strip()
        columns = heading.split(",")
        if columns != CSV_HEADER:
            # a long first line cut short (found by an audit: a 20 MB one was quoted whole)
            got = str(columns) if len(heading) <= 60 else f"{heading[:60]!r}... ({len(heading):,} characters)"
            raise DataError(f"--data: {path} must start with the header {','.join(CSV_HEADER)}, got {got}")
        last_open = -math.inf
        candles = skipped = 0
        gaps = gaps if gaps is not None else []
        gap_after = interval_s + 1e-6
        # the next candle opens an interval after the last at the earliest: a row closer to it
        # overlaps it (found by an audit: off-grid rows past the first ones went in, the clock ran
        # back, and with several symbols fills came at prices of a time already passed)
        spacing = interval_s - 1e-6 if interval_s > 0 else 1e-9  # (0: any later row)
        # bound once: compiled, a module's imported name is a dictionary lookup at each use
        new_tuple, candle_type = _new_tuple, Candle
        top = MAX_CSV_VALUE
        try:
            for values in _rows(f):
                # six values a row, one after the other (`_parse_lines`)
                end = len(values)
                i = 0
                while i < end:
                    first = values[i]
                    if first is None:  # `_NO_ROW`: a field missing, extra or not a number
                        i += 6
                        skipped += 1
                        if skipped_by is not None:
                            skipped_by["csv_not_six_numbers"] = skipped_by.get("csv_not_six_numbers", 0) + 1
                        if first_skipped is not None and not first_skipped:
                            first_skipped.append((1 + candles + skipped, "csv_not_six_numbers"))
                        continue
                    # six floats, named as such: compiled (setup.py), the checks below compare
                    # plain doubles rather than objects (measured: a fifth of the reader's work)
                    t: float = first
                    o: float = values[i + 1]
                    h: float = values[i + 2]
                    lo: float = values[i + 3]
                    c: float = values[i + 4]
                    v: float = values[i + 5]
                    i += 6
                    open_ts = t / 1000.0
                    # chained comparisons are False for NaN
                    if (
                        0 < o < top
                        and 0 < h < top
                        and 0 < lo < top
                        and 0 < c < top
                        and 0 <= v < top
                        and lo <= o <= h
                        and lo <= c <= h
                        and MIN_OPEN_MS <= t < MAX_OPEN_MS
                        and _whole(t)
                        and open_ts >= last_open + spacing
                    ):
                        if open_ts - last_open > gap_after and candles:
                            gaps.append((last_open, open_ts))
                        last_open = open_ts
                        candles += 1
                        # `checked_candle`, inlined: its prices were checked just above; `float()`
                        # because a field may be an int (`_parse_lines`): compiled, the doubles boxed
                        yield new_tuple(
                            candle_type,
                            (
                                open_ts,
                                interval_s,
                                float(o),
                                float(h),
                                float(lo),
                                float(c),
                                float(v),
                                False,
                                symbol,
                            ),
                        )
                    else:
                        skipped += 1
                        if skipped_by is not None or first_skipped is not None:
                            reason = skip_reason(t, o, h, lo, c, v, last_open, interval_s)
                            if skipped_by is not None:
                                skipped_by[reason] = skipped_by.get(reason, 0) + 1
                            if first_skipped is not None and not first_skipped:
                                first_skipped.append((1 + candles + skipped, reason))
        except READ_ERRORS as exc:  # (found by an audit: a gzip file cut short gave a traceback)
            raise DataError(
                f"--data: cannot read {path} past its candle {candles}: {read_error(exc)}"
            ) from exc
        finally:
            stats["candles"] = stats.get("candles", 0) + candles
            if skipped:
                stats["skipped"] = stats.get("skipped", 0) + skipped


def _whole(t: float) -> bool:
    """`t` a finite whole number (`t % 1.0 == 0.0` is fmod: a loop over the exponent)."""
    return -_INF < t < _INF and t == math.floor(t)


def skip_reason(
    t: float, o: float, h: float, lo: float, c: float, v: float, last_open: float, interval_s: float = 0.0
) -> str:
    """Why a row of six numbers is not a candle (`read_candles_csv`): its prices (not above 0, not
    below MAX_CSV_VALUE, open or close outside [low, high]), its volume (negative or not below
    MAX_CSV_VALUE), or its time (not whole ms,
    not above 0 or from 2100 on, the same as the row before, earlier, or less than `interval_s`
    after it: overlapping it)."""
    if not all(0 < x < MAX_CSV_VALUE for x in (o, h, lo, c)) or not (lo <= o <= h and lo <= c <= h):
        return "csv_bad_prices"
    if not 0 <= v < MAX_CSV_VALUE:
        return "csv_bad_volume"
    if not _whole(t) or not MIN_OPEN_MS <= t < MAX_OPEN_MS:
        return "csv_bad_time"
    open_ts = t / 1000.0
    if open_ts == last_open:
        return "csv_repeated_time"
    return "csv_time_backwards" if open_ts < last_open else "csv_overlapping"


# Each `skip_reason` in words (a data file none of whose rows is a candle says its first's)
SKIP_REASONS: Final = {
    "csv_not_six_numbers": "not six plain numbers",
    "csv_bad_prices": "a price not above 0 or not below 1e15, or the open or close outside the low-high range",
    "csv_bad_volume": "a volume negative or not below 1e15",
    "csv_bad_time": "an open time that is not whole milliseconds above 0 and before 2100",
    "csv_repeated_time": "the open time of the row before it",
    "csv_time_backwards": "an open time before the row before it",
    "csv_overlapping": "an open time less than session.interval after the row before it",
}


def read_error(exc: BaseException) -> str:
    """One of `READ_ERRORS` in words."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, EOFError):
        return "the gzip stream ends before its end marker (a file cut short?)"
    return f"{type(exc).__name__}: {exc}"


_CHUNK_BYTES: Final = 1 << 18
# the longest line a row may be (a candle's is under 200 bytes): a longer one is one malformed row,
# dropped as it is read (`_rows`), and what stands for it
MAX_LINE_BYTES: Final = 1 << 16
_LONG_LINE: Final = b"(a line too long)"
_NO_ROW: Final = (None,) * 6
# What a line of six plain numbers holds besides its five commas: digits, a point, an exponent,
# signs, and the blanks JSON allows around a number (a CRLF file's carriage return)
_NUMBER_BYTES: Final = b"0123456789.eE+- \t\r"
_SIX_FIELDS: Final = b",,,,,\n"


def _rows(f: IO[bytes]) -> Iterator[list[Any]]:
    """The data rows of a CSV, a chunk of lines at a time, as one list of six values a row
    (`_parse_lines`: about twice as fast as a `split` and six `float` calls per line). A line
    longer than MAX_LINE_BYTES is dropped as it is read, one row that is not six numbers (found by
    an audit: a 60 MB line took 7 s and 220 MB, its start copied with each chunk read)."""
    rest = b""
    dropping = False  # within a line too long: dropped up to its end
    while True:
        block = f.read(_CHUNK_BYTES)
        if not block:
            break
        if dropping:
            end = block.find(b"\n")
            if end < 0:
                continue
            dropping = False
            yield _parse_lines(_LONG_LINE)
            block = block[end + 1 :]
        else:
            block = rest + block
        cut = block.rfind(b"\n") + 1
        if not cut:  # no whole line yet
            rest = block
            if len(rest) > MAX_LINE_BYTES:
                rest, dropping = b"", True
            continue
        rest = block[cut:]
        lines = block[: cut - 1]
        yield _parse_lines(lines)
    if dropping:
        yield _parse_lines(_LONG_LINE)
    elif rest:
        yield _parse_lines(rest)


def _parse_lines(lines: bytes) -> list[Any]:
    """The values of whole lines, six a row: a row that is not six numbers is six Nones
    (`_NO_ROW`). When every line is five commas between numbers' characters (`_NUMBER_BYTES`:
    what is left of the lines without those is five commas a line), all of them are parsed at
    once as one JSON array by orjson: its numbers are a subset of what `float` reads, parsed to
    the same doubles (a number without a point or an exponent is an int, which the reader takes
    as the float `float` makes of it), and with nothing but those characters between the commas
    every value is a number, or orjson refuses the chunk. Else, or when it refuses, line by line.
    (An array per line, `[[...],[...]]`, tried: orjson's lists and their generic indexing cost
    more; a count of each line's commas, used before, cost more than this one pass over the
    bytes.)"""
    rows = lines.count(b"\n") + 1
    if lines.translate(None, _NUMBER_BYTES) + b"\n" == _SIX_FIELDS * rows:
        try:
            values: list[Any] = orjson.loads(b"[" + lines.replace(b"\n", b",") + b"]")
        except orjson.JSONDecodeError:
            pass
        else:
            return values
    values = []
    for line in lines.split(b"\n"):
        values.extend(_parse_line(line))
    return values


def _parse_line(line: bytes) -> tuple[Any, ...]:
    try:
        t, o, h, lo, c, v = map(float, line.split(b","))
    except ValueError:
        return _NO_ROW
    return t, o, h, lo, c, v


def candle_ticks(candle: Candle) -> tuple[Tick, Tick]:
    """The two quotes a candle proves the market offered: its open (at the start), its close (at the end)."""
    # a candle's prices are > 0 (its own validators), so the quotes need no checking again
    return (
        quote(candle.open_ts, candle.open, candle.symbol),
        quote(candle.close_ts - CLOSE_TICK_LEAD_S, candle.close, candle.symbol),
    )


def candle_steps(candles: Iterable[Candle]) -> Iterator[tuple[float, MarketEvent]]:
    """A backtest's inputs, `(arrival time, event)`, per candle: its open quote at its start; at
    its end the candle itself (the broker works resting orders along its path and takes its close
    as the quote, then strategies decide on it). The next candle's open quote arrives at the same
    instant, after it."""
    for candle in candles:
        open_ts = candle.open_ts
        yield open_ts, quote(open_ts, candle.open, candle.symbol)
        yield open_ts + candle.interval_s, candle


def read_market_log(
    path: Path, skipped_by: dict[str, int] | None = None
) -> Iterator[tuple[float, MarketEvent]]:
    """(arrival time, event) pairs from a run's `market.jsonl`. A line that is not a market record
    (not JSON, a field missing or of the wrong type, a price not above 0), or arrives before the
    one before it, is skipped, logged and counted in `skipped_by` (`replay_bad_record`,
    `replay_time_backwards`): malformed market data, as live (found by an audit: one damaged line
    ended the replay with a traceback)."""
    skipped_by = skipped_by if skipped_by is not None else {}
    last = -math.inf
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            try:
                record = json.loads(line)
                arrival = float(record["arrival_ts"])
                event = market_from_record(record)
            except Exception as exc:  # any shape of damage: JSON, keys, types, values
                _skip(skipped_by, "replay_bad_record", f"{path} line {n}: not a market record ({exc!r:.120})")
                continue
            if not arrival >= last:  # (NaN too)
                _skip(
                    skipped_by, "replay_time_backwards", f"{path} line {n}: arrives before the line before it"
                )
                continue
            last = arrival
            yield arrival, event


def _skip(skipped_by: dict[str, int], reason: str, detail: str) -> None:
    if reason not in skipped_by:
        logger.warning("replay: skipped {} (more of the kind are counted only)", detail)
    skipped_by[reason] = skipped_by.get(reason, 0) + 1
