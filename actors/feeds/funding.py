"""Funding rates for sessions without a live feed: from a file of the exchange's history, or a constant.

The paper broker charges funding at 00:00, 08:00 and 16:00 UTC on the position open at that
instant (actors/broker/paper.py), or live at the instants the exchange gives the symbol (its
`price` channel's `nft`, every `nft - ft`: `next_instant`, `funding_interval_s`). Live Bitunix
sessions take the rate from the exchange's `price` channel (`Funding` market events) and replays
re-deliver those events; backtests and mock sessions have no such events, so without this module
their funding is zero. A `ts_ms,rate` file's rows are rates, not instants: a backtest keeps the
00/08/16 UTC schedule, each instant at the row in force; a `ts_ms,rate,interval_h` file's rows are
its contract's settlements (`next_instant`), each rate per its row's interval. A `FundingRates` hands the
broker the rate in force at each funding instant instead:

- `FundingRates.from_csv(path)`: a CSV file (optionally gzipped) with the header `ts_ms,rate`, one
  row per funding settlement, times in epoch milliseconds, strictly increasing. `rate` is a
  **fraction** of the position's value per 8 h interval, as exchanges publish their funding
  histories (`0.0001` = 0.01 %), not a percent. The rate in force at a funding instant is the row
  with the greatest `ts_ms` at or before it (a row stamped exactly at the instant applies to that
  instant: stamp rows at the settlement time). Before the first row the rate is 0: funding is not
  charged for instants the file does not cover. A bad file is refused whole (`DataError`, naming
  the file and the line).
- With the header `ts_ms,rate,interval_h` (a contract settled every 1, 2, 4 or 8 h): each row a
  settlement, `rate` a fraction per its `interval_h`; the instants are the rows' times and every
  interval after a row until the next (00:00, 08:00, 16:00 UTC before the first row).
- `FundingRates.constant(rate_pct)`: the same rate, in **percent** per 8 h interval, at every
  instant (config `broker.funding = "constant"`, `broker.funding_rate_pct`).

`source` says where the rates came from, for the report's `funding_source`: `"file:<file name>"`
or `"constant"`; a backtest of several symbols with rates for some (`--funding SYMBOL=FILE`) reports
each symbol's (`per_symbol_source`). No trio here: the kernel and the actors both use it through the
broker.
"""

from __future__ import annotations

import bisect
import gzip
import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from actors.feeds.history import READ_ERRORS, DataError, read_error

FUNDING_CSV_HEADER = ["ts_ms", "rate"]
# a file that says its contract's schedule: each row's settlement interval, in hours
FUNDING_CSV_SCHEDULE_HEADER = ["ts_ms", "rate", "interval_h"]
FUNDING_HOURS = (1, 2, 4, 8)
# the funding schedule when the exchange has said nothing else: every 8 h from 00:00 UTC
# (00:00, 08:00, 16:00); backtests, the mock and a live symbol before its first `price` frame
FUNDING_EVERY_S = 8 * 3600
# a funding interval the exchange gives (`nft - ft`) shorter than an hour or longer than a day is
# taken for a mistake (a garbled frame; one whose `ft` has not caught up with its `nft`), and the
# interval known before is kept: exchanges settle every 1, 2, 4 or 8 h (an interval of seconds
# would charge a position every few seconds)
MIN_INTERVAL_S = 3600
MAX_INTERVAL_S = 24 * 3600


def funding_interval_s(settled_ms: int | None, next_ms: int | None) -> float | None:
    """A symbol's funding interval from a `price` frame: its next funding instant (`nft`) less
    the last (`ft`), in seconds; None when either is missing or the difference is not in
    [1 h, 24 h]."""
    if settled_ms is None or next_ms is None:
        return None
    interval = (next_ms - settled_ms) / 1000
    return interval if MIN_INTERVAL_S <= interval <= MAX_INTERVAL_S else None


def next_instant(ts: float, anchor: float = 0.0, every: float = FUNDING_EVERY_S) -> float:
    """The first funding instant after `ts` (epoch seconds) of the schedule `anchor + k * every`
    (the default: 00:00, 08:00, 16:00 UTC)."""
    return anchor + (math.floor((ts - anchor) / every) + 1) * every


# A rate (fraction per interval) beyond this is taken for a mistake (percent given as a fraction,
# a column mixed up), never a funding rate: exchanges cap BTC funding far below 10 % per interval.
MAX_ABS_RATE = 0.1


# the most characters of a line or value an error quotes (found by an audit: a 3 MB line was quoted
# whole, 3 MB of stderr)
QUOTED_MAX = 60


def _quoted(text: str) -> str:
    """`text` quoted for an error message; a long one cut short, its length said."""
    if len(text) <= QUOTED_MAX:
        return repr(text)
    return f"{text[:QUOTED_MAX]!r}... ({len(text):,} characters)"


class FundingRates:
    """The funding rate, in percent per funding interval, in force at each funding instant."""

    def __init__(
        self,
        times_ms: Sequence[float],
        rates_pct: Sequence[float],
        source: str,
        path: Path | None = None,
        intervals_s: Sequence[float] | None = None,
    ) -> None:
        if len(times_ms) != len(rates_pct) or (intervals_s is not None and len(intervals_s) != len(times_ms)):
            raise ValueError("one rate (and interval) per time")
        if any(b <= a for a, b in itertools.pairwise(times_ms)):
            raise ValueError("funding times must be strictly increasing")
        self._times_ms = list(times_ms)
        self._rates_pct = list(rates_pct)
        # each row's settlement interval (a file with `interval_h`): its rows are the settlements,
        # the instants; None: the rows are rates in force at 00:00, 08:00 and 16:00 UTC, per 8 h
        self._intervals_s = list(intervals_s) if intervals_s is not None else None
        self.source = source
        # the file read (`from_csv`): a backtest's session.started records it, for the validator
        self.path = path

    @classmethod
    def constant(cls, rate_pct: float) -> FundingRates:
        """`rate_pct` percent per 8 h interval at every instant (`source` "constant")."""
        if not math.isfinite(rate_pct):
            raise ValueError(f"funding rate must be a finite number, got {rate_pct!r}")
        return cls([-math.inf], [rate_pct], "constant")

    @classmethod
    def from_csv(cls, path: str | Path) -> FundingRates:
        """Read a `ts_ms,rate` CSV (optionally .gz; `rate` a fraction per 8 h interval); raises
        `DataError` naming the file and the line of the first problem."""
        path = Path(path)
        try:
            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            text = raw.decode("utf-8-sig")
        except READ_ERRORS as exc:  # not found, a directory, no permission, a .gz cut short or damaged
            raise DataError(f"cannot read funding file {path}: {read_error(exc)}") from exc
        except UnicodeDecodeError as exc:
            raise DataError(f"funding file {path} is not UTF-8 text ({exc.reason})") from exc
        lines = text.splitlines()
        header = [c.strip() for c in lines[0].split(",")] if lines else []
        if header not in (FUNDING_CSV_HEADER, FUNDING_CSV_SCHEDULE_HEADER):
            raise DataError(
                f"funding file {path}, line 1: expected the header {','.join(FUNDING_CSV_HEADER)} "
                f"(or {','.join(FUNDING_CSV_SCHEDULE_HEADER)}), got {_quoted(lines[0]) if lines else repr('an empty file')}"
            )
        scheduled = header == FUNDING_CSV_SCHEDULE_HEADER
        per = "interval" if scheduled else "8 h interval"
        times_ms: list[int] = []
        rates_pct: list[float] = []
        intervals_s: list[float] = []
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            where = f"funding file {path}, line {number}"
            fields = [f.strip() for f in line.split(",")]
            if len(fields) != len(header):
                raise DataError(
                    f"{where}: expected {len(header)} fields ({','.join(header)}), got {len(fields)}: {_quoted(line)}"
                )
            if scheduled:
                hours = fields[2]
                if hours not in {str(h) for h in FUNDING_HOURS}:
                    raise DataError(
                        f"{where}: interval_h {_quoted(hours)} is not allowed; expected one of "
                        f"{', '.join(map(str, FUNDING_HOURS))} (hours between settlements)"
                    )
                intervals_s.append(int(hours) * 3600.0)
            try:
                ts_ms = int(fields[0])
            except ValueError:
                raise DataError(
                    f"{where}: ts_ms {_quoted(fields[0])} is not an integer (epoch milliseconds)"
                ) from None
            try:
                rate = float(fields[1])
            except ValueError:
                raise DataError(f"{where}: rate {_quoted(fields[1])} is not a number") from None
            if not math.isfinite(rate) or abs(rate) > MAX_ABS_RATE:
                raise DataError(
                    f"{where}: rate {_quoted(fields[1])} is not allowed; expected a fraction per {per} "
                    f"between -{MAX_ABS_RATE:g} and {MAX_ABS_RATE:g} (0.0001 = 0.01 %)"
                )
            if times_ms and ts_ms <= times_ms[-1]:
                raise DataError(
                    f"{where}: ts_ms {ts_ms} is not after the previous row's {times_ms[-1]}; "
                    "rows must be in increasing time order, each time once"
                )
            times_ms.append(ts_ms)
            rates_pct.append(rate * 100)
        if not times_ms:
            raise DataError(f"funding file {path} has a header but no rows")
        return cls(times_ms, rates_pct, f"file:{path.name}", path, intervals_s if scheduled else None)

    def rate_pct_at(self, instant: float) -> float:
        """The rate (percent per interval) in force at the funding instant `instant` (epoch
        seconds): the last row at or before it; 0 before the first row."""
        i = bisect.bisect_right(self._times_ms, instant * 1000) - 1
        return self._rates_pct[i] if i >= 0 else 0.0

    @property
    def scheduled(self) -> bool:
        """Its rows are the settlements, each with its interval (a file with `interval_h`)."""
        return self._intervals_s is not None

    def interval_s_at(self, instant: float) -> float:
        """The settlement interval in force at `instant` (seconds): the row at or before it's in a
        file with `interval_h`; else (and before the first row) 8 h."""
        if self._intervals_s is None:
            return float(FUNDING_EVERY_S)
        i = bisect.bisect_right(self._times_ms, instant * 1000) - 1
        return self._intervals_s[i] if i >= 0 else float(FUNDING_EVERY_S)

    def next_instant(self, ts: float) -> float:
        """The first funding instant after `ts`: 00:00, 08:00, 16:00 UTC; in a file with
        `interval_h`, from its first row on, each row's time and every interval after it until the
        next row (a row is a settlement, one where the interval has it or not)."""
        if self._intervals_s is None:
            return next_instant(ts)
        i = bisect.bisect_right(self._times_ms, ts * 1000) - 1
        following = self._times_ms[i + 1] / 1000 if i + 1 < len(self._times_ms) else math.inf
        if i < 0:
            return min(next_instant(ts), following)
        return min(next_instant(ts, self._times_ms[i] / 1000, self._intervals_s[i]), following)

    @property
    def first_ms(self) -> float:
        """The time of the first row (epoch ms; -inf for a constant)."""
        return self._times_ms[0]

    def __len__(self) -> int:
        return len(self._times_ms)

    def __repr__(self) -> str:
        return f"FundingRates(source={self.source!r}, rows={len(self)})"


PER_SYMBOL = "per symbol: "
# a live session's feed that never gave a rate (no `Funding` came: it never connected, say)
FEED_NO_RATES = "feed (no rates)"


def feed_source(came: Mapping[str, bool]) -> str:
    """A live feed's `funding_source` from whether each symbol's rates came: `feed` when every
    symbol's did, `FEED_NO_RATES` when none did, else each symbol's (`per_symbol_source`)."""
    if all(came.values()):
        return "feed"
    if not any(came.values()):
        return FEED_NO_RATES
    return per_symbol_source({symbol: "feed" if got else FEED_NO_RATES for symbol, got in came.items()})


def per_symbol_source(sources: dict[str, str]) -> str:
    """Each symbol's funding source in one `funding_source`: `per symbol: BTCUSDT=file:btc.csv,
    ETHUSDT=none`."""
    return PER_SYMBOL + ", ".join(f"{symbol}={source}" for symbol, source in sources.items())


def describe(source: str) -> str:
    """A plain sentence on where a session's funding came from (the report's `funding_source`)."""
    if source.startswith(PER_SYMBOL):
        parts = (part.partition("=") for part in source[len(PER_SYMBOL) :].split(", "))
        return "; ".join(f"{symbol}: {describe(one)}" for symbol, _, one in parts)
    if source == "feed":
        return "funding from the exchange's price channel (live rates)"
    if source == FEED_NO_RATES:
        return "funding from the exchange's price channel, but no rate came from it: nothing charged"
    if source == "constant":
        return "funding at the constant broker.funding_rate_pct"
    if source.startswith("file:"):
        return f"funding from the rates in {source[len('file:') :]}"
    if source == "none":
        return "funding NOT modelled: no --funding FILE, no broker.funding = 'constant', no live rates"
    return f"funding: {source}"
