"""What a person reads on the console, from the recorder's stream of records: one line per fill and
per closed trade, one when an entry starts to work at the market (a strategy's limit or stop
waiting for its price) and one when such an entry is cancelled unfilled, the figures the live
progress panel shows beside the account (the working entry, stop and target, trades so far), and
the summary table at the end (rich on a terminal; elsewhere the same table drawn without it,
`plain_table`).

The recorder hands every record it writes to `ConsoleSink.observe` (the records of a resumed
session too, unprinted, so the figures cover the whole session). Numbers are rounded for people:
prices to the symbol's tick, money to the cent; `events.jsonl` keeps full precision.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Final

import attrs

from protocols.instruments import price_decimals
from protocols.records import FLAT_EPS, PROTECTIVE_REASONS, TWO_DIGITS, is_resting_entry, resting_price

BATCH_LINES = 256


# A backtest prints a line per fill and per trade, tens of thousands: the format specs made once,
# a quantity's text looked up once made (a strategy's sizes repeat), and without the thousands'
# separator where the text shows there is none to put (below 1,000, the shorter format's own text)
_PRICE_SPECS = tuple(f",.{d}f" for d in range(16))
_QTY_TEXT: dict[float, str] = {}


def fmt_price(price: float | None, decimals: int) -> str:
    if price is None:
        return "-"
    return format(price, _PRICE_SPECS[decimals] if 0 <= decimals < len(_PRICE_SPECS) else f",.{decimals}f")


def fmt_qty(qty: float) -> str:
    text = _QTY_TEXT.get(qty)
    if text is None:
        text = f"{qty:.8f}".rstrip("0").rstrip(".") or "0"
        if qty and len(_QTY_TEXT) < 4096:  # not 0.0: -0.0 is the same key, another text
            _QTY_TEXT[qty] = text
    return text


def fmt_cents(amount: float) -> str:
    """`1,234.50` (`f"{amount:,.2f}"`)."""
    text = f"{amount:.2f}"
    return text if len(text) <= 6 else format(amount, ",.2f")  # "999.99" needs no separator


def fmt_money(amount: float) -> str:
    """`+1,234.50`; an amount that rounds to zero is `+0.00`, never `-0.00`."""
    # the format rounds to the cent as `round` does (correctly, half to even); below 1,000 (its
    # text says) there is no separator to put, and only the sign of a zero to mend
    text = f"{amount:+.2f}"
    if len(text) <= 7:
        return "+0.00" if text == "-0.00" else text
    return format(round(amount, 2) + 0.0, "+,.2f")


def fmt_held(seconds: float) -> str:
    seconds = max(0, round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{TWO_DIGITS[hours]}h{TWO_DIGITS[minutes]}m"
    if hours:
        return f"{hours}h{TWO_DIGITS[minutes]}m{TWO_DIGITS[secs]}s"
    return f"{minutes}m{TWO_DIGITS[secs]}s"


def _when(iso_ts: str) -> str:
    return f"{iso_ts[:10]} {iso_ts[11:19]} UTC"  # "2024-01-02T03:04:05.678Z" -> "2024-01-02 03:04:05 UTC"


_DECIMALS: dict[str, int] = {}  # a symbol's price decimals, looked up once


def _price_decimals(symbol: str) -> int:
    decimals = _DECIMALS.get(symbol)
    if decimals is None:
        decimals = _DECIMALS[symbol] = price_decimals(symbol)
    return decimals


def fill_line(record: dict[str, Any]) -> str:
    symbol = record.get("symbol", "")
    decimals = _price_decimals(symbol)
    return (
        f"FILL   {_when(record['ts'])}  {symbol} {record.get('strategy_id') or '-'}  "
        f"{record['side'].upper()} {fmt_qty(record['qty'])} @ {fmt_price(record['fill_price'], decimals)}  "
        f"fee {fmt_cents(record['fee'])}  slippage {record.get('slippage_bps', 0.0):.1f} bps"
    )


def closed_line(record: dict[str, Any]) -> str:
    symbol = record.get("symbol", "")
    decimals = _price_decimals(symbol)
    return (
        f"CLOSED {_when(record['ts'])}  {symbol}  {record['side'].upper()} {fmt_qty(record['qty'])}  "
        f"{fmt_price(record['entry_price'], decimals)} -> {fmt_price(record['exit_price'], decimals)}  "
        f"net {fmt_money(record['net_pnl'])}  held {fmt_held(record['held_s'])}  "
        f"exit {record['exit_reason']}"
    )


def crossed_line(record: dict[str, Any]) -> str:
    """`position.crossed`: the strategies' opposite positions (the net flat) closed against each
    other at the mark: no trade, no fee."""
    symbol = record.get("symbol", "")
    each = ", ".join(
        f"{sid or '-'} {'BUY' if qty > 0 else 'SELL'} {fmt_qty(abs(qty))} (realized {fmt_money(realized)})"
        for sid, qty, realized, _ in record["allocations"]
    )
    return (
        f"CROSSED {_when(record['ts'])}  {symbol}  {each}  @ "
        f"{fmt_price(record['price'], _price_decimals(symbol))}  (net flat: no trade, no fee; {record['reason']})"
    )


def _entry_text(record: dict[str, Any]) -> str:
    """A working entry as the console names it: side, type, quantity and price."""
    order_type = str(record.get("type", "")).upper().replace("_", "-")
    return (
        f"{record['side'].upper()} {order_type} {fmt_qty(record['qty'])} @ "
        f"{fmt_price(resting_price(record), _price_decimals(record.get('symbol', '')))}"
    )


def order_line(record: dict[str, Any]) -> str:
    """An entry that rests at the market (its `order.working` record)."""
    return (
        f"ORDER  {_when(record['ts'])}  {record.get('symbol', '')}  {_entry_text(record)}  "
        f"working ({record['reason']})"
    )


def cancel_line(record: dict[str, Any], symbol: str, entry: str) -> str:
    """A working entry of `symbol` cancelled unfilled (its `order.cancelled` record; `entry`: the
    console's text of it)."""
    return f"CANCEL {_when(record['ts'])}  {symbol}  {entry}  ({record['reason']})"


def discarded_line(record: dict[str, Any]) -> str:
    """A fill a resume discarded (one of `session.resumed`'s `discarded_fills`): printed before the
    crash, written after the checkpoint the session resumed from, so not in its record."""
    symbol = record.get("symbol") or ""
    return (
        f"UNDONE {_when(record['ts'])}  {symbol} {record.get('strategy_id') or '-'}  "
        f"{str(record.get('side', '')).upper()} {fmt_qty(record.get('qty') or 0.0)} @ "
        f"{fmt_price(record.get('fill_price') or 0.0, _price_decimals(symbol))}  (fill {record.get('fill_id')} "
        "was written after the last checkpoint: the resumed session does not have it)"
    )


def discarded_cross_line(record: dict[str, Any]) -> str:
    """A cross a resume discarded (one of `session.resumed`'s `discarded_crosses`), as
    `discarded_line` says a fill."""
    symbol = record.get("symbol") or ""
    each = ", ".join(str(a[0] or "-") for a in record.get("allocations") or ())
    return (
        f"UNDONE {_when(record['ts'])}  {symbol}  cross of {each} @ "
        f"{fmt_price(record.get('price') or 0.0, _price_decimals(symbol))}  (written after the last "
        "checkpoint: the resumed session does not have it)"
    )


# what a line printed after a storage fault says (found by an audit: the flatten's FILL lines were
# printed as any other, though in no record when the disk stayed full, and the next start's
# flatten gave the same ids at other prices)
UNRECORDED: Final = "[in memory only: storage fault]"


@attrs.define
class Protection:
    """The working protective orders of a symbol: their trigger prices, by order id."""

    stops: dict[str, float] = attrs.field(factory=dict)
    targets: dict[str, float] = attrs.field(factory=dict)


@attrs.define
class ConsoleSink:
    """Folds the records the recorder writes; `echo` prints the fill and closed-trade lines."""

    echo: bool = False
    # the kernel's runs (backtests, replays) print many lines fast: written `BATCH_LINES` at a
    # time and at each `flush` (the progress display, the end), one write for them all
    batched: bool = False
    trades: int = 0
    wins: int = 0
    gross_win: float = 0.0
    gross_loss: float = 0.0
    protection: dict[str, Protection] = attrs.field(factory=dict)
    _protective_ids: dict[str, str] = attrs.field(factory=dict)  # order id -> symbol
    # the working entries (not stops or targets): order id -> (symbol, the console's text, the
    # quantity still working)
    _entries: dict[str, tuple[str, str, float]] = attrs.field(factory=dict)
    _pending: list[str] = attrs.field(factory=list)  # batched lines not yet written
    # after a storage fault: the lines' events are in memory only (written at the end if the disk
    # has room again; else the folder stays as its last checkpoint and the next start redoes them)
    unrecorded: bool = False
    # the live feed in this run (a resumed session's past not counted): whether its first data came
    # (`feed.live`, or the mock source a fallback gave), the last reason a connection failed or
    # ended, and the symbols whose history seed came short (symbol -> (candles handed out, short by))
    live_data: bool = False
    feed_failure: str = ""
    seed_short: dict[str, tuple[int, int]] = attrs.field(factory=dict)

    def observe(self, record: dict[str, Any], *, new: bool = True) -> None:
        """`new` False: a record of a resumed session's past (counted, not printed)."""
        kind = record["kind"]
        if kind.startswith("feed.") and new:
            self._feed(record)
        if kind == "order.filled":
            self._done(record["order_id"])
            if self._entries:
                self._filled_entry(record)
            if self.echo and new:
                self._print(fill_line(record))
        elif kind == "position.closed":
            self.trades += 1
            net = record["net_pnl"]
            if net > 0:
                self.wins += 1
                self.gross_win += net
            else:
                self.gross_loss -= net
            if self.echo and new:
                self._print(closed_line(record))
        elif kind == "position.crossed" and self.echo and new:
            self._print(crossed_line(record))
        elif kind == "order.working":
            self._working(record, new)
        elif kind == "session.resumed" and self.echo and new:
            for fill in record.get("discarded_fills") or ():
                self._print(discarded_line(fill))
            for cross in record.get("discarded_crosses") or ():
                self._print(discarded_cross_line(cross))
        elif kind in ("order.cancelled", "order.rejected"):
            order_id = record.get("order_id")
            self._done(order_id)
            entry = self._entries.pop(order_id, None) if order_id is not None else None
            if entry is not None and self.echo and new and kind == "order.cancelled":
                self._print(cancel_line(record, entry[0], entry[1]))

    def _feed(self, record: dict[str, Any]) -> None:
        kind = record["kind"]
        if kind in ("feed.live", "feed.fallback"):
            self.live_data = True
        elif kind == "feed.reconnecting" and isinstance(record.get("reason"), str):
            self.feed_failure = record["reason"]
        elif kind == "feed.seeded" and (record.get("short_by") or 0) > 0:
            self.seed_short[str(record.get("symbol"))] = (record.get("candles") or 0, record["short_by"])

    def _print(self, line: str) -> None:
        if self.unrecorded:
            line += f"  {UNRECORDED}"
        if not self.batched:
            _print(line)
            return
        self._pending.append(line)
        if len(self._pending) >= BATCH_LINES:
            self.flush()

    def flush(self) -> None:
        """The batched lines, written at once."""
        if self._pending:
            _print("\n".join(self._pending))
            self._pending.clear()

    def _working(self, record: dict[str, Any], new: bool) -> None:
        if is_resting_entry(record):
            self._entries[record["order_id"]] = (record.get("symbol", ""), _entry_text(record), record["qty"])
            if self.echo and new:
                self._print(order_line(record))
            return
        # a stop is a stop-market (its trigger), a target a limit (its limit price)
        price = resting_price(record)
        reason = record.get("reason")
        if price is None or reason not in PROTECTIVE_REASONS:
            return
        symbol = record.get("symbol", "")
        protection = self.protection.setdefault(symbol, Protection())
        (protection.stops if reason == "stop_loss" else protection.targets)[record["order_id"]] = price
        self._protective_ids[record["order_id"]] = symbol

    def _done(self, order_id: str | None) -> None:
        symbol = self._protective_ids.pop(order_id, None) if order_id is not None else None
        if symbol is not None and order_id is not None:
            protection = self.protection[symbol]
            protection.stops.pop(order_id, None)
            protection.targets.pop(order_id, None)

    def _filled_entry(self, record: dict[str, Any]) -> None:
        """A fill of a working entry: what is left of it works on; all of it filled, it is done."""
        order_id = record["order_id"]
        entry = self._entries.get(order_id)
        if entry is None:
            return
        left = entry[2] - record["qty"]
        if left > FLAT_EPS:
            self._entries[order_id] = (entry[0], entry[1], left)
        else:
            del self._entries[order_id]

    def working_entry(self, symbol: str) -> str | None:
        """The newest working entry of `symbol`, as the console names it (None: none working)."""
        for entry_symbol, text, _left in reversed(self._entries.values()):
            if entry_symbol == symbol:
                return text
        return None

    def stop_and_target(self, symbol: str) -> tuple[float | None, float | None]:
        """The newest working stop and target of `symbol` (None: none working)."""
        protection = self.protection.get(symbol) or self.protection.get("")
        if protection is None:
            return None, None
        stop = next(reversed(protection.stops.values()), None)
        target = next(reversed(protection.targets.values()), None)
        return stop, target

    @property
    def win_rate_pct(self) -> float | None:
        return self.wins / self.trades * 100 if self.trades else None

    @property
    def profit_factor(self) -> float | None:
        """Gross profit of the winning trades over the gross loss of the losing ones (net of fees);
        None without a loss (as the report page defines it)."""
        return self.gross_win / self.gross_loss if self.gross_loss > 0 else None


def _print(line: str) -> None:
    stream = sys.stderr  # looked up each time: a rich display redirects it while it is on
    stream.write(line + "\n")
    stream.flush()


def summary_rows(report: dict[str, Any], sink: ConsoleSink, run_path: Path) -> list[tuple[str, str]]:
    """The end-of-session summary, label and value, rounded for people."""
    win_rate = sink.win_rate_pct
    factor = sink.profit_factor
    rejections = sum((report.get("orders_rejected") or {}).values())
    html = run_path / "report.html"
    rows = [
        ("status", f"{report['status']} (stop reason: {report['stop_reason']})"),
        # the stop in its own words, as the report page has it (found by an audit: `max_loss` here,
        # `session loss 2.00 % >= 2 %` only on the page)
        ("stop detail", report.get("stop_detail") or "-"),
        *_feed_rows(report, sink),
        ("net PnL", f"{fmt_money(report['net_pnl'])} USDT"),
        # from the net PnL (the report's return_pct is rounded already: rounding twice told -0.03
        # for -0.02499974); never "-0.00"
        ("return", f"{round(report['net_pnl'] / report['starting_equity'] * 100, 2) + 0.0:+.2f} %"),
        ("trades", str(report["trade_count"])),
        ("win rate", "-" if win_rate is None else f"{win_rate:.1f} %"),
        # none without a loss (the report page's definition: it showed "inf" here, "-" there)
        ("profit factor", "-" if factor is None else f"{factor:.2f}"),
        ("max drawdown", f"{report['max_drawdown_pct']:.2f} %"),
        ("fees paid", f"{report['fees_paid']:,.2f} USDT"),
        # paid when positive; a negative figure was received (found by an audit: "-2.26" beside
        # the fees' "2,103.46" read as a cost)
        ("funding paid", _funding(report["funding_paid"])),
        ("orders", str(report["orders_submitted"])),
        ("fills", str(report["fills"])),
        ("rejections", str(rejections)),
        ("report", _report_path(html, run_path)),
    ]
    return rows


def _feed_rows(report: dict[str, Any], sink: ConsoleSink) -> list[tuple[str, str]]:
    """What kept a live session from trading, said where its outcome is read (found by a start-up
    audit: a session on Bitunix that never got live data, `feed.fallback = "none"`, ended with
    `trades 0` and no word of why; one whose history seed failed under a rate limit sat cold,
    its strategies waiting for their warm-up on live candles, said only in a warning at the start)."""
    if report.get("data_source") != "bitunix":
        return []
    rows = []
    if not sink.live_data:
        why = f" (last: {sink.feed_failure})" if sink.feed_failure else ""
        rows.append(("market data", f"NONE: no live data came from the exchange{why}; nothing could trade"))
    if sink.seed_short:
        each = ", ".join(f"{s} {got} of {got + short}" for s, (got, short) in sink.seed_short.items())
        rows.append(
            ("history seed", f"short: {each} candles; strategies needing more warmed up on live candles")
        )
    return rows


def _funding(paid: float) -> str:
    cents = round(paid, 2)
    if cents < 0:
        return f"{paid:,.2f} USDT (received {-paid:,.2f})"
    return f"{cents + 0.0:,.2f} USDT"  # never "-0.00"


def _report_path(html: Path, run_path: Path) -> str:
    """Where the report is (not written: a storage fault left no room for it)."""
    if html.exists():
        return str(html)
    final = run_path / "final_report.json"
    return str(final) if final.exists() else "not written (storage fault)"


def print_summary(report: dict[str, Any], sink: ConsoleSink, run_path: Path) -> None:
    """The summary table on stderr (rich; plain text when stderr is not a terminal)."""
    title = f"session {report['run_id']}"
    rows = summary_rows(report, sink, run_path)
    stream = sys.stderr
    if not stream.isatty():
        table = plain_table(title, rows, stream.encoding)
        if table is not None:
            stream.write(table)
            stream.flush()
            return
    from rich.console import Console
    from rich.table import Table

    rich_table = Table(title=title, show_header=False, title_justify="left")
    rich_table.add_column("figure", style="bold")
    rich_table.add_column("value")
    for label, value in rows:
        rich_table.add_row(label, value)
    Console(file=stream, width=None if stream.isatty() else PLAIN_WIDTH).print(rich_table)


PLAIN_WIDTH = 100  # the summary's width when stderr is not a terminal (a file, a pipe)


def plain_table(title: str, rows: list[tuple[str, str]], encoding: str | None) -> str | None:
    """The summary as rich draws it on a stream that is not a terminal (no styles; box lines),
    without importing rich (tens of milliseconds at the end of every run): None when rich
    would draw it otherwise (wider than `PLAIN_WIDTH`, text it would measure as wider than its
    characters or read as markup or emoji codes, box lines the stream cannot encode), for rich to
    draw."""
    text = title + "".join(label + value for label, value in rows)
    if not text.isascii() or not text.isprintable() or "[" in text:  # rich reads "[...]" as markup
        return None
    if any(cell.count(":") > 1 for cell in (title, *(cell for row in rows for cell in row))):
        return None  # and ":name:" in a cell as an emoji code (found by Hypothesis: ":A:")
    try:
        "┌─┬┐│└┴┘".encode(encoding or "ascii")
    except (LookupError, UnicodeEncodeError):
        return None
    left = max(len(label) for label, _ in rows)
    right = max(len(value) for _, value in rows)
    width = left + right + 7  # three borders, a space each side of each cell
    if width > PLAIN_WIDTH or len(title) > width:
        return None
    lines = [title.ljust(width)]
    lines.append(f"┌{'─' * (left + 2)}┬{'─' * (right + 2)}┐")
    lines += [f"│ {label.ljust(left)} │ {value.ljust(right)} │" for label, value in rows]
    lines.append(f"└{'─' * (left + 2)}┴{'─' * (right + 2)}┘")
    return "\n".join(lines) + "\n"
