"""The on-disk formats: event lines, metrics rows and the final report derived from the events.

`ReportBuilder` folds events one at a time, so the recorder derives the final report from exactly
what it wrote to `events.jsonl`, and a validator can fold the file again and compare.
"""

from __future__ import annotations

import functools
import math
import time
from collections import Counter
from typing import Any, Final

import cattrs
import orjson

from protocols.instruments import Instrument, table_instrument
from protocols.messages import Book, Candle, Event, FeedStatus, Funding, MarketEvent, Tick

METRIC_FIELDS = (
    "ts",
    "elapsed_s",
    "price",
    "mark_source",
    "equity",
    "realized_pnl",
    "unrealized_pnl",
    "fees_paid",
    "funding_paid",
    "position_qty",
    "drawdown_pct",
)
# The process's health at the heartbeat row (actors/recording/health.py): metrics files only,
# never events.jsonl (it differs between two runs of the same data).
HEALTH_FIELDS: Final = ("cpu_pct", "rss_mb", "open_files", "disk_free_mb")
METRIC_COLUMNS = METRIC_FIELDS + HEALTH_FIELDS
NO_HEALTH: dict[str, Any] = dict.fromkeys(HEALTH_FIELDS)
# metrics.json's `columns`: what each column holds and how metrics.csv rounds it (metrics.json's
# rows, like events.jsonl, keep the full precision).
METRIC_COLUMN_DOCS = {
    "ts": "the heartbeat's time, ISO-8601 UTC",
    "elapsed_s": "seconds since the session started (csv: 0.001)",
    "price": "the session symbol's mark, USDT (csv: to the symbol's price tick)",
    "mark_source": (
        "where that mark came from: ws (WebSocket), rest (REST polling in a failover), "
        "mock, candles (a backtest), empty before the first price"
    ),
    "equity": "account equity, USDT (csv: to the cent)",
    "realized_pnl": "realized PnL so far, USDT (csv: to the cent)",
    "unrealized_pnl": "unrealized PnL of the open positions, USDT (csv: to the cent)",
    "fees_paid": "fees paid so far, USDT (csv: to the cent)",
    "funding_paid": (
        "funding paid so far, USDT, received when negative (csv: to the cent); "
        "equity = starting equity + realized_pnl - fees_paid - funding_paid + unrealized_pnl"
    ),
    "position_qty": "the session symbol's net position, base units (csv: to the symbol's lot)",
    "drawdown_pct": "drawdown from the equity peak, percent (csv: 0.01)",
    "cpu_pct": "process CPU since the previous sample, percent of one core (psutil; 0.1)",
    "rss_mb": "process resident memory, MB (psutil; 0.1)",
    "open_files": "open file descriptors of the process: files, sockets, pipes (psutil)",
    "disk_free_mb": "free space of the run folder's disk, MB (psutil; 0.1)",
}
_MONEY_COLUMNS: Final = ("equity", "realized_pnl", "unrealized_pnl", "fees_paid", "funding_paid")
# An instrument the shipped table does not know: enough decimals to lose nothing but float noise.
_UNKNOWN_DECIMALS: Final = 8

REPORT_FIELDS = (
    "run_id",
    "status",
    "stop_reason",
    "stop_detail",
    "started_at",
    "ended_at",
    "planned_duration_s",
    "elapsed_s",
    "symbol",
    "interval",
    "data_source",
    "seed",
    "starting_equity",
    "ending_equity",
    "realized_pnl",
    "unrealized_pnl",
    "fees_paid",
    "fees_maker",
    "fees_taker",
    "funding_paid",
    "funding_source",
    "net_pnl",
    "return_pct",
    "max_drawdown_pct",
    "trade_count",
    "wins",
    "losses",
    "fills",
    "avg_slippage_bps",
    "liquidations",
    "breaker_trips",
    "orders_submitted",
    "orders_rejected",
    "errors",
    "error_messages",
    "storage_faults",
    "resumes",
    "downtime_s",
    "reconnects",
    "feed_downtime_s",
    "malformed_dropped",
    "rest_retries",
    "open_positions",
    "data_gaps",
    "config",
    "version",
    "strategies",
    "symbols",
)

MONEY_DP: Final = 6
# A row of the report's `strategies` and `symbols` tables.
ATTRIBUTION_FIELDS: Final = (
    "fills",
    "trades",
    "wins",
    "losses",
    "realized_pnl",
    "fees",
    "funding",
    "net_pnl",
)
FLAT_EPS: Final = 1e-9
# The reasons of the protective orders the broker attaches to a position: its stop and its target.
PROTECTIVE_REASONS: Final = ("stop_loss", "take_profit")


def resting_price(record: dict[str, Any]) -> float | None:
    """The price an `order.working` record waits for: a stop's trigger, else its limit (None: a
    market order's rest, which waits for no price)."""
    price = record.get("trigger_price")
    return record.get("limit_price") if price is None else price


def is_resting_entry(record: dict[str, Any]) -> bool:
    """Whether an `order.working` record is an entry waiting for its price (a strategy's limit or
    stop: not a protective stop or target, not a market order's rest)."""
    return record.get("reason") not in PROTECTIVE_REASONS and resting_price(record) is not None


_strftime, _gmtime = time.strftime, time.gmtime


class _Last:
    """The last time `iso` wrote and its text, as one pair (read and replaced whole: a thread
    never sees one's time with another's text). The events of one step share their time: a
    plain comparison, where a `functools.lru_cache` hashed and looked up every call."""

    def __init__(self) -> None:
        self.pair: tuple[float, str] = (math.nan, "")


_LAST_ISO: Final = _Last()


def iso(ts: float) -> str:
    """ISO-8601 UTC with milliseconds, e.g. `2026-11-24T02:21:50.123Z`: what
    `datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")` writes (microseconds
    rounded half to even, then cut to milliseconds), at a fraction of the cost: the date once
    per day, the time of day in integer arithmetic (tests/test_records.py)."""
    last = _LAST_ISO.pair
    if ts == last[0]:
        return last[1]
    text = _iso(ts)
    _LAST_ISO.pair = (ts, text)
    return text


def _iso(ts: float) -> str:
    secs = math.floor(ts)
    us = round((ts - secs) * 1e6)
    if us >= 1_000_000:
        secs += 1
        us -= 1_000_000
    return f"{_clock(secs, 'T')}.{_THREE[us // 1000]}Z"


def utc_clock(secs: int) -> str:
    """`time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(secs))`, `iso`'s way: the report page
    writes one for every point and trade it draws."""
    return _clock(secs, " ")


def _clock(secs: int, sep: str) -> str:
    """`YYYY-MM-DD{sep}HH:MM:SS` of whole seconds since the epoch: the date made once per day
    (`_date`), the time of day in integer arithmetic."""
    day, second = divmod(secs, 86_400)
    hour, second = divmod(second, 3600)
    minute, second = divmod(second, 60)
    return f"{_date(day)}{sep}{TWO_DIGITS[hour]}:{TWO_DIGITS[minute]}:{TWO_DIGITS[second]}"


def utc_millis(ts: float) -> str:
    """`utc_clock` of the whole seconds, then `.mmm`: the milliseconds cut, not rounded (as plotly
    reads a time)."""
    secs = math.floor(ts)
    millis = int((ts - secs) * 1000)  # 1000 for a tiny negative time: its fraction rounds to 1.0
    return f"{utc_clock(secs)}.{_THREE[millis] if millis < 1000 else millis}"


# `f"{n:02d}"` and `f"{n:03d}"` looked up (a format call each costs more than the rest of `iso`)
TWO_DIGITS: Final = tuple(f"{n:02d}" for n in range(60))
_THREE: Final = tuple(f"{n:03d}" for n in range(1000))


_DATES: Final[dict[int, str]] = {}


def _date(day: int) -> str:
    """`YYYY-MM-DD` of the day `day` days after 1970-01-01 (each made once: a dictionary, not a
    `functools.lru_cache`, whose call costs more than the lookup it saves)."""
    text = _DATES.get(day)
    if text is None:
        if len(_DATES) >= 4096:  # bounded: a long run's days, many times over
            _DATES.clear()
        text = _DATES[day] = _strftime("%Y-%m-%d", _gmtime(day * 86_400))
    return text


def event_line(seq: int, event: Event) -> tuple[dict[str, Any], str]:
    """One line of events.jsonl (`seq`, `ts` as ISO-8601 UTC, `kind`, then the fields; compact,
    `dumps_line`) and its record: the record is what the line says, so the report folded from
    records is the one a reader folds from the file. JSON has no NaN or infinity: orjson writes
    them as null, so a line whose fields hold a NaN or an infinity is read back for its record
    (they become None, as a reader sees them); any other line's record is its dict."""
    fields = event.fields
    record = {"seq": seq, "ts": iso(event.ts), "kind": event.kind, **fields}
    line = dumps_line(record)
    if "null" in line and not _finite(fields):  # a None reads back as None: only NaN and inf differ
        record = orjson.loads(line)
    return record, line


def _finite(value: object) -> bool:
    """No NaN or infinity in `value`, a float or the lists, tuples and dicts holding one."""
    # loops, not `all(...)`, and a tuple of types, not `list | tuple`: compiled, a generator and
    # a union built at every call cost more than the read-back they spare
    if isinstance(value, float):
        return value - value == 0.0  # NaN for NaN and the infinities
    if isinstance(value, dict):
        for item in value.values():
            if not _finite(item):
                return False
    elif isinstance(value, (list, tuple)):
        for item in value:
            if not _finite(item):
                return False
    return True


def metric_decimals(symbol: str) -> tuple[int, int]:
    """The decimals of `symbol`'s price tick and lot (the shipped table's), for metrics.csv."""
    instrument = table_instrument(symbol) if symbol else None
    if instrument is None:
        return _UNKNOWN_DECIMALS, _UNKNOWN_DECIMALS
    return instrument.price_decimals, instrument.qty_decimals


def _formatted(value: Any, spec: str) -> Any:
    """`value` written with the format spec `spec` (`.2f`: two decimals; no float noise, no
    `-0.00`); None stays empty."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):  # a tuple: see `_finite`
        return value
    # the format rounds as `round(value, decimals)` does (correctly, half to even); a value that
    # rounds to zero is written without its sign
    text = format(value, spec)
    if text[0] == "-" and not text.strip("-0."):
        return text[1:]
    return text


def metrics_csv_row(row: dict[str, Any], price_dp: int, qty_dp: int) -> dict[str, Any]:
    """A metrics row rounded for people (metrics.csv): prices to the tick, quantities to the lot,
    money to the cent, percentages to 0.01 (METRIC_COLUMN_DOCS)."""
    out = dict(row)
    for name, spec in zip(METRIC_COLUMNS, _csv_formats(price_dp, qty_dp), strict=True):
        if spec:
            out[name] = _formatted(row.get(name), spec)
    return out


def metrics_csv_values(row: dict[str, Any], price_dp: int, qty_dp: int) -> list[Any]:
    """`metrics_csv_row`'s values in METRIC_COLUMNS' order (a missing one: ""), for `csv.writer`:
    what `csv.DictWriter` writes of the row, without its checks on every row."""
    return [
        ("" if name not in row else _formatted(row[name], spec) if spec else row[name])
        for name, spec in zip(METRIC_COLUMNS, _csv_formats(price_dp, qty_dp), strict=True)
    ]


@functools.lru_cache(maxsize=8)
def _csv_formats(price_dp: int, qty_dp: int) -> tuple[str, ...]:
    """The format spec of each of METRIC_COLUMNS in metrics.csv (`.2f`; empty: written as it is)."""
    decimals = {"elapsed_s": 3, "price": price_dp, "position_qty": qty_dp, "drawdown_pct": 2}
    decimals.update(dict.fromkeys(_MONEY_COLUMNS, 2))
    return tuple(f".{decimals[name]}f" if name in decimals else "" for name in METRIC_COLUMNS)


def metrics_document(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """metrics.json: the columns, what each holds, and the rows at full precision."""
    return {"fields": list(METRIC_COLUMNS), "columns": METRIC_COLUMN_DOCS, "rows": rows}


def dumps_line(record: dict[str, Any]) -> str:
    """One JSON line, compact. orjson: several times faster than the json module (a backtest
    writes tens of thousands of events), and it writes NaN and infinities as null, as
    `event_record` does."""
    return orjson.dumps(record).decode()


class _VirtualBook:
    """One strategy's virtual position in one symbol, replayed from its allocations: its totals
    and the trade it has open (a round trip of its virtual position from flat back to flat)."""

    __slots__ = ("fees", "fills", "funding", "losses", "qty", "realized", "trade_net", "trades", "wins")

    def __init__(self) -> None:
        self.qty = 0.0
        self.fills = self.trades = self.wins = self.losses = 0
        self.realized = self.fees = self.funding = 0.0
        self.trade_net = 0.0  # the open trade's realized PnL less its fees and funding so far

    def fill(self, signed: float, realized: float, fee: float, *, counted: bool = True) -> None:
        """A fill's share (`counted=False`: a cross, no fill of its own)."""
        self.fills += counted
        self.realized += realized
        self.fees += fee
        pos, new = self.qty, self.qty + signed
        self.qty = 0.0 if -FLAT_EPS < new < FLAT_EPS else new
        if -FLAT_EPS < pos < FLAT_EPS:  # flat: a fill opens a trade
            if self.qty:
                self.trade_net = realized - fee
            return
        if self.qty and (self.qty > 0) != (pos > 0):  # a flip: closes the trade and opens the next
            closing = abs(pos) / abs(signed)  # the closing part's share of the fee
            self.trade_net += realized - fee * closing
            self._close()
            self.trade_net = -fee * (1 - closing)
            return
        self.trade_net += realized - fee
        if not self.qty:
            self._close()

    def fund(self, amount: float) -> None:
        self.funding += amount
        if self.qty:
            self.trade_net -= amount  # a flat strategy's funding is in its totals, in no trade

    def _close(self) -> None:
        self.trades += 1
        self.wins += self.trade_net > 0
        self.losses += self.trade_net < 0
        self.trade_net = 0.0


class Attribution:
    """Per-strategy and per-symbol figures from the fills' and funding events' `allocations`
    (how the broker split each among the strategies' virtual positions). A fill without
    allocations (a run from before them) counts wholly to its `strategy_id` ("" when it has none);
    a funding event without them goes to the strategies holding virtual positions in proportion
    to them, as the broker splits it ("" when none holds one)."""

    def __init__(self) -> None:
        self.symbol = ""
        self.books: dict[tuple[str, str], _VirtualBook] = {}
        self.symbol_fills: Counter[str] = Counter()
        # the session's strategies and symbols (`session.started`): a row each, traded or not
        self.configured: tuple[list[str], list[str]] = ([], [])

    def _book(self, symbol: str, strategy_id: str) -> _VirtualBook:
        book = self.books.get((symbol, strategy_id))
        if book is None:
            book = self.books[(symbol, strategy_id)] = _VirtualBook()
        return book

    def fill(self, record: dict[str, Any]) -> None:
        symbol = record.get("symbol") or self.symbol
        self.symbol_fills[symbol] += 1
        allocations = record.get("allocations")
        if allocations is None:
            signed = record["qty"] if record["side"] == "buy" else -record["qty"]
            allocations = [[record.get("strategy_id", ""), signed, record["realized_pnl"], record["fee"]]]
        for strategy_id, signed, realized, fee in allocations:
            self._book(symbol, strategy_id).fill(signed, realized, fee)

    def cross(self, record: dict[str, Any]) -> None:
        """`position.crossed`: opposite virtual positions closed against each other at a price,
        no fill (the net was flat), no fee."""
        symbol = record.get("symbol") or self.symbol
        for strategy_id, signed, realized, fee in record["allocations"]:
            self._book(symbol, strategy_id).fill(signed, realized, fee, counted=False)

    def funding(self, record: dict[str, Any]) -> None:
        symbol = record.get("symbol") or self.symbol
        allocations = record.get("allocations")
        if allocations is None:
            amount = record["amount"]
            holders = [(sid, b.qty) for (sym, sid), b in self.books.items() if sym == symbol and b.qty]
            total = sum(q for _, q in holders)
            allocations = (
                [[sid, amount * q / total] for sid, q in holders]
                if holders and abs(total) > FLAT_EPS
                else [["", amount]]
            )
        for strategy_id, amount in allocations:
            self._book(symbol, strategy_id).fund(amount)

    def tables(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """`strategies` (by strategy id) and `symbols` (each symbol's fills counted once, the rest
        summed over its strategies): a row for each the session configured, traded or not (a
        zero row says "did nothing", not "not there"), and for any other that traded."""
        strategy_ids, symbol_names = self.configured
        by_strategy: dict[str, list[_VirtualBook]] = {sid: [] for sid in strategy_ids}
        by_symbol: dict[str, list[_VirtualBook]] = {self.symbol: [], **{sym: [] for sym in symbol_names}}
        for (symbol, strategy_id), book in self.books.items():
            by_strategy.setdefault(strategy_id, []).append(book)
            by_symbol.setdefault(symbol, []).append(book)
        strategies = {
            sid: _row(books, sum(b.fills for b in books)) for sid, books in sorted(by_strategy.items())
        }
        symbols = {sym: _row(books, self.symbol_fills[sym]) for sym, books in sorted(by_symbol.items())}
        return strategies, symbols


def _row(books: list[_VirtualBook], fills: int) -> dict[str, Any]:
    realized = sum((b.realized for b in books), 0.0)
    fees = sum((b.fees for b in books), 0.0)
    funding = sum((b.funding for b in books), 0.0)
    r = MONEY_DP
    row = {
        "fills": fills,
        "trades": sum(b.trades for b in books),
        "wins": sum(b.wins for b in books),
        "losses": sum(b.losses for b in books),
        "realized_pnl": round(realized, r),
        "fees": round(fees, r),
        "funding": round(funding, r),
        "net_pnl": round(realized - fees - funding, r),
    }
    assert tuple(row) == ATTRIBUTION_FIELDS
    return row


class ReportBuilder:
    """Folds event records (dicts as written to events.jsonl) into the final report."""

    def __init__(self) -> None:
        self.started: dict[str, Any] = {}
        self.stopped: dict[str, Any] = {}
        self.realized_pnl = 0.0
        self.fees = {"maker": 0.0, "taker": 0.0}
        self.funding_paid = 0.0
        self.slippage_bps_sum = 0.0
        self.liquidations = 0
        self.breaker_trips = 0
        self.fills = 0
        self.trade_count = 0
        self.wins = 0
        self.losses = 0
        self.orders_submitted = 0
        self.orders_rejected: Counter[str] = Counter()
        self.errors = 0
        self.error_messages: list[str] = []
        self.storage_faults = 0
        self.max_drawdown_pct = 0.0
        self.resumes = 0
        self.downtime_s = 0.0
        self.reconnects = 0
        self.feed_downtime_s = 0.0
        self.malformed: Counter[str] = Counter()
        self.rest_retries = 0
        self.attribution = Attribution()

    def add(self, record: dict[str, Any]) -> None:
        kind = record["kind"]
        if kind == "order.filled":
            self.fills += 1
            self.fees[record.get("liquidity", "taker")] += record["fee"]
            self.realized_pnl += record["realized_pnl"]
            self.slippage_bps_sum += record.get("slippage_bps") or 0.0
            self.attribution.fill(record)
        elif kind == "funding":
            self.funding_paid += record["amount"]
            self.attribution.funding(record)
        elif kind == "position.crossed":
            self.attribution.cross(record)
        elif kind == "liquidation":
            self.liquidations += 1
        elif kind == "breaker.tripped":
            self.breaker_trips += 1
        elif kind == "position.closed":
            self.trade_count += 1
            if record["net_pnl"] > 0:
                self.wins += 1
            elif record["net_pnl"] < 0:
                self.losses += 1
        elif kind == "order.submitted":
            self.orders_submitted += 1
        elif kind == "order.rejected":
            self.orders_rejected[record["reason"]] += 1
        elif kind == "error":
            self.errors += 1
            self.storage_faults += record.get("where") == "storage"
            if len(self.error_messages) < 20:
                self.error_messages.append(record.get("message", ""))
        elif kind == "heartbeat":
            self.max_drawdown_pct = max(self.max_drawdown_pct, record["drawdown_pct"] or 0.0)
        elif kind == "session.resumed":
            self.resumes += 1
            self.downtime_s += record.get("downtime_s") or 0.0
        elif kind == "feed.connected":
            self.reconnects += bool(record.get("reconnect"))
            self.feed_downtime_s += record.get("downtime_s") or 0.0
        elif kind == "feed.malformed":
            self.malformed.update(record["counts"])
        elif kind == "feed.rest_retry":
            self.rest_retries += 1
        elif kind == "session.started":
            self.started = record
            self.attribution.symbol = record["symbol"]
            self.attribution.configured = (
                list(record.get("strategies", [])),
                list(record.get("symbols", [])),
            )
        elif kind == "session.stopped":
            self.stopped = record
            self.max_drawdown_pct = max(self.max_drawdown_pct, record.get("max_drawdown_pct") or 0.0)

    def report(self) -> dict[str, Any]:
        s, e = self.started, self.stopped
        starting = s["starting_equity"]
        unrealized = e.get("unrealized_pnl", 0.0)
        fees = self.fees["maker"] + self.fees["taker"]
        ending = starting + self.realized_pnl - fees - self.funding_paid + unrealized
        net = ending - starting
        r = MONEY_DP
        strategies, symbols = self.attribution.tables()
        report = {
            "run_id": s["run_id"],
            "status": e.get("status", "error"),
            "stop_reason": e.get("stop_reason", "error"),
            "stop_detail": e.get("detail", ""),  # the stop in its own words (`session.stopped`'s detail)
            "started_at": s["ts"],
            "ended_at": e.get("ts"),
            "planned_duration_s": s["planned_duration_s"],
            "elapsed_s": e.get("elapsed_s"),
            "symbol": s["symbol"],
            "interval": s["interval"],
            "data_source": e.get("data_source", s["data_source"]),
            "seed": s["seed"],
            "starting_equity": starting,
            "ending_equity": round(ending, r),
            "realized_pnl": round(self.realized_pnl, r),
            "unrealized_pnl": round(unrealized, r),
            "fees_paid": round(round(self.fees["maker"], r) + round(self.fees["taker"], r), r),  # = the two
            "fees_maker": round(self.fees["maker"], r),
            "fees_taker": round(self.fees["taker"], r),
            "funding_paid": round(self.funding_paid, r),
            # where the rates came from: "feed", "file:NAME", "constant", "none" (not modelled);
            # the stop's word (a live feed that fell back to mock had none), else the start's
            "funding_source": e.get("funding_source", s.get("funding_source")),
            "net_pnl": round(net, r),
            "return_pct": round(net / starting * 100, r),
            "max_drawdown_pct": round(self.max_drawdown_pct, 4),
            "trade_count": self.trade_count,
            "wins": self.wins,
            "losses": self.losses,
            "fills": self.fills,
            "avg_slippage_bps": round(self.slippage_bps_sum / self.fills, 4) if self.fills else 0.0,
            "liquidations": self.liquidations,
            "breaker_trips": self.breaker_trips,
            "orders_submitted": self.orders_submitted,
            "orders_rejected": dict(sorted(self.orders_rejected.items())),
            "errors": self.errors,
            "error_messages": self.error_messages,
            "storage_faults": self.storage_faults,
            "resumes": self.resumes,
            "downtime_s": round(self.downtime_s, 3),
            "reconnects": self.reconnects,
            "feed_downtime_s": round(self.feed_downtime_s + (e.get("feed_down_s") or 0.0), 3),
            "malformed_dropped": dict(sorted(self.malformed.items())),
            "rest_retries": self.rest_retries,
            "open_positions": e.get("open_positions", []),
            "data_gaps": e.get("data_gaps", {}),
            "config": s["config"],
            "version": s["version"],
            "strategies": strategies,
            "symbols": symbols,
        }
        assert tuple(report) == REPORT_FIELDS
        return report


# --- market.jsonl: every market event the session acted on, with its arrival time (for --replay) ---

MARKET_TYPES: dict[str, type] = {
    "tick": Tick,
    "candle": Candle,
    "funding": Funding,
    "book": Book,
    "feed_status": FeedStatus,
    "instrument": Instrument,
}
_market_converter = cattrs.Converter()
# ticks and candles are named tuples (actors build them by the million): recorded by field name
for _tuple_type in (Tick, Candle):
    _market_converter.register_unstructure_hook(_tuple_type, lambda event: event._asdict())
    _market_converter.register_structure_hook(_tuple_type, lambda fields, cls: cls(**fields))


# instruments: their own JSON form (an unbounded cap or last tier, infinity, as null)
_market_converter.register_unstructure_hook(Instrument, Instrument.to_dict)
_market_converter.register_structure_hook(Instrument, lambda fields, _cls: Instrument.from_dict(fields))


def register_market_type(name: str, cls: type) -> None:
    """Make a market message type recordable and replayable under `name`."""
    MARKET_TYPES[name] = cls


def market_record(arrival_ts: float, event: MarketEvent) -> dict[str, Any]:
    name = next(n for n, cls in MARKET_TYPES.items() if type(event) is cls)
    return {"arrival_ts": arrival_ts, "type": name, **_market_converter.unstructure(event)}


def market_from_record(record: dict[str, Any]) -> MarketEvent:
    cls = MARKET_TYPES[record["type"]]
    fields = {k: v for k, v in record.items() if k not in ("arrival_ts", "type")}
    return _market_converter.structure(fields, cls)
