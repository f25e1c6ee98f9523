"""Follow a session from another terminal: `python -m tools.monitor [RUN]`.

RUN is a run folder (default `<run-dir>/latest`, resolved once at start; when a backtest or replay
has moved `latest` to its own folder while a live session of the run dir is still unfinished, that
session's folder, with a line on stderr saying so). The monitor only reads:
it tails `events.jsonl` (the recorder appends and flushes it about once a second) and never takes
the session's lock. About once a second (`--interval`) it shows the session's progress: elapsed
and planned time, equity, realized and unrealized PnL, fees, the open position of each symbol
(size and average entry), trades and fills so far, the process's health (CPU, memory, free disk:
the newest `metrics.csv` row), and the last notable events (fills, closed
trades, rejections, breaker, liquidations, errors, alerts, the feed's state changes). On a terminal
that is one rich panel updated in place; otherwise (a pipe, a file) plain lines: each new notable
event as it arrives and a progress line after each new heartbeat.

It exits 0 with the session's summary line when `session.stopped` appears (at once on a finished
run), and 1 when the session's process is gone without a `session.stopped` (killed: the next start
resumes it, see docs/START_HERE.md). A live process that has written no heartbeat row for
`STALL_S` is said to write nothing (stuck?). `--once` prints one snapshot and exits (0; 1 for a
dead session). Exit 2: RUN is not a run folder. Ctrl-C stops following (exit 0).

A torn last line (being written) waits for its end; `events.jsonl` rewritten in place (a resume
drops the events after its checkpoint) is read again from its start.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from actors.plan import BATCH_RUN_PREFIXES, is_unfinished, newest_live_run
from actors.recording.abandon import has_checkpoint
from protocols.instruments import table_instrument
from tools.runfolder import EVENTS, REPORT, NotARunFolder, owner_alive, resolve_run

METRICS = "metrics.csv"
RECENT = 8  # notable events kept for the display
REPORT_WAIT_S = 5.0  # after session.stopped, how long to wait for final_report.json
# a live process whose metrics.csv (a row per heartbeat, flushed about once a second) is older
# than this is said to write nothing (the healthcheck's measure; it fails it after --max-age)
STALL_S = 10.0
FEED_KINDS = {
    "feed.connected",
    "feed.disconnected",
    "feed.stale",
    "feed.fresh",
    "feed.failover",
    "feed.fallback",
    "feed.live",
    "feed.gap",
    "feed.klines",
    "feed.book",
}


def _ts(iso_ts: str) -> float:
    return datetime.fromisoformat(iso_ts.replace("Z", "+00:00")).timestamp()


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


def price_text(symbol: str, price: float | None) -> str:
    """A price to its symbol's tick (2 decimals for a symbol the instrument table does not know)."""
    if price is None:
        return "-"
    instrument = table_instrument(symbol)
    decimals = 2 if instrument is None else max(0, round(-math.log10(instrument.tick_size)))
    return f"{price:,.{decimals}f}"


def money(value: float, sign: bool = True) -> str:
    return f"{value:+,.2f}" if sign else f"{value:,.2f}"


class LineTail:
    """The complete lines appended to a file since the last read (a torn last line waits)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.inode: int | None = None
        self.partial = b""

    def read_lines(self) -> tuple[list[bytes], bool]:
        """The new lines, and whether the file was replaced or shrank (then they are all of it)."""
        restarted = False
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            return [], False
        with f:
            stat = os.fstat(f.fileno())
            if stat.st_ino != self.inode or stat.st_size < self.offset:
                restarted = self.inode is not None
                self.inode, self.offset, self.partial = stat.st_ino, 0, b""
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        return [line for line in lines if line.strip()], restarted


class EventTail(LineTail):
    """The event records appended to events.jsonl since the last read."""

    def read_new(self) -> tuple[list[dict[str, Any]], bool]:
        lines, restarted = self.read_lines()
        records = []
        for raw in lines:
            try:
                record = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(record, dict) and "kind" in record:
                records.append(record)
        return records, restarted


class MetricsTail(LineTail):
    """The newest row of metrics.csv (its columns named by its header), for the process's health."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.header: list[str] | None = None
        self.last: dict[str, str] = {}

    def read_last(self) -> dict[str, str]:
        lines, restarted = self.read_lines()
        if restarted:
            self.header = None
        for raw in lines:
            cells = raw.decode("utf-8", errors="replace").strip().split(",")
            if self.header is None:
                self.header = cells
            elif len(cells) == len(self.header):
                self.last = dict(zip(self.header, cells, strict=True))
        return self.last


class Position:
    """A symbol's net position and average entry, from its fills (average cost, netting)."""

    def __init__(self) -> None:
        self.qty = 0.0
        self.entry = 0.0

    def fill(self, signed_qty: float, price: float) -> None:
        new = self.qty + signed_qty
        if abs(new) < 1e-12:
            self.qty, self.entry = 0.0, 0.0
        elif self.qty == 0 or (self.qty > 0) != (new > 0):  # opened, or flipped through flat
            self.qty, self.entry = new, price
        elif abs(new) > abs(self.qty):  # added to
            self.entry = (self.entry * abs(self.qty) + price * abs(signed_qty)) / abs(new)
            self.qty = new
        else:  # reduced: the entry stays
            self.qty = new


class SessionView:
    """What the monitor knows of the session, folded from its events."""

    def __init__(self, run_path: Path) -> None:
        self.run_path = run_path
        self.reset()

    def reset(self) -> None:
        self.started: dict[str, Any] | None = None
        self.stopped: dict[str, Any] | None = None
        self.heartbeat: dict[str, Any] | None = None
        self.positions: dict[str, Position] = {}
        self.fills = 0
        self.trades = 0
        self.wins = 0
        self.rejections = 0
        self.resumes = 0
        self.feed_state = "-"
        self.recent: deque[str] = deque(maxlen=RECENT)
        self.metrics: dict[str, str] = {}  # the newest metrics.csv row
        self.stalled_s: float | None = None  # alive, but metrics.csv this old (over STALL_S)

    @property
    def run_id(self) -> str:
        return self.started["run_id"] if self.started else self.run_path.name

    @property
    def symbols(self) -> list[str]:
        if self.started is None:
            return []
        return list(self.started.get("symbols") or [self.started["symbol"]])

    def fold(self, record: dict[str, Any]) -> str | None:
        """Take one event; return its display line when it is a notable one (a record missing a
        field, or with one of the wrong type, is shown as such: `tools.validate_session` says
        more)."""
        kind = record.get("kind")
        if not isinstance(kind, str):
            return "a malformed record (no kind): see python -m tools.validate_session"
        if kind == "session.started":
            self.started = record
            for symbol in self.symbols:
                self.positions.setdefault(symbol, Position())
            return None
        if kind == "heartbeat":
            self.heartbeat = record
            return None
        if kind == "session.stopped":
            self.stopped = record
        try:
            line = self.describe(record)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            line = f"a malformed {kind} record ({type(exc).__name__}: {exc}): see python -m tools.validate_session"
        if line is not None:
            self.recent.append(f"{str(record.get('ts', ''))[11:19]}  {line}")
        return line

    def describe(self, r: dict[str, Any]) -> str | None:
        kind = r["kind"]
        symbol = r.get("symbol") or (self.symbols[0] if self.symbols else "")
        if kind == "order.filled":
            self.fills += 1
            signed = r["qty"] if r["side"] == "buy" else -r["qty"]
            self.positions.setdefault(symbol, Position()).fill(signed, r["fill_price"])
            return (
                f"fill {r['side']} {r['qty']:g} {symbol} @ {price_text(symbol, r['fill_price'])} "
                f"({r.get('liquidity', '?')}, fee {r['fee']:.2f}, {r.get('reason') or r.get('strategy_id', '')})"
            )
        if kind == "position.closed":
            self.trades += 1
            self.wins += r["net_pnl"] > 0
            return (
                f"closed {r['side']} {r['qty']:g} {symbol} {price_text(symbol, r['entry_price'])} -> "
                f"{price_text(symbol, r['exit_price'])}  net {money(r['net_pnl'])}  "
                f"({r.get('exit_reason', '?')}, held {_clock(r.get('held_s', 0))})"
            )
        if kind == "position.crossed":  # the strategies' opposite positions, net flat: no trade
            each = ", ".join(f"{sid or '-'} {qty:+g}" for sid, qty, *_ in r["allocations"])
            return f"crossed {symbol} {each} @ {price_text(symbol, r['price'])} (no trade, no fee; {r.get('reason', '')})"
        if kind == "order.rejected":
            self.rejections += 1
            return f"rejected {r.get('side', '')} {r.get('qty', '')} {symbol}: {r.get('reason', '?')}"
        if kind.startswith("breaker."):
            return f"{kind} {r.get('reason', '')} {r.get('action', '')}".rstrip()
        if kind == "liquidation":
            # (found by an audit: it read fields the event does not have, and showed none)
            return (
                f"LIQUIDATION {symbol} {r.get('position_qty', '')} at mark {price_text(symbol, r.get('mark_price'))} "
                f"(bankruptcy {price_text(symbol, r.get('bankruptcy_price'))})"
            )
        if kind == "alert":
            return f"ALERT {r.get('rule', '?')} [{r.get('severity', '?')}]: {r.get('message', '')}"
        if kind == "error":
            return f"error: {r.get('message') or r.get('detail') or ''}"
        if kind == "session.resumed":
            self.resumes += 1
            return f"resumed after {r.get('downtime_s', 0):.0f} s down"
        if kind in FEED_KINDS:
            self.feed_state = kind.removeprefix("feed.")
            if kind in ("feed.stale", "feed.fresh") and isinstance(r.get("symbols"), list):
                return f"{kind} {', '.join(map(str, r['symbols']))} ({r.get('reason', '')})"
            detail = r.get("reason") or r.get("data_source") or r.get("symbols") or r.get("symbol") or ""
            return f"{kind} {detail}".rstrip()
        if kind == "session.stopped":
            return f"stopped: {r['stop_reason']} ({r.get('detail', '')})"
        return None

    # --- what is shown -------------------------------------------------------------------------

    def progress_line(self) -> str:
        if self.started is None:
            return f"{self.run_id}: waiting for session.started"
        hb = self.heartbeat or {}
        elapsed = hb.get("elapsed_s", 0.0)
        planned = self.started.get("planned_duration_s") or 0
        equity = hb.get("equity", self.started["starting_equity"])
        return (
            f"{self.run_id}  elapsed {_clock(elapsed)}/{_clock(planned)}  equity {money(equity, sign=False)}  "
            f"realized (before fees) {money(hb.get('realized_pnl', 0.0))}  unrealized {money(hb.get('unrealized_pnl', 0.0))}  "
            f"fees {money(hb.get('fees_paid', 0.0), sign=False)}  funding {money(hb.get('funding_paid', 0.0))}  "
            f"{self.position_text()}  "
            f"trades {self.trades}  fills {self.fills}{self.health_text()}{self.stall_text()}"
        )

    def stall_text(self) -> str:
        """Said when the process is alive but has written no heartbeat for `STALL_S` (found by
        the cockpit audit: a stuck session was shown as running, its figures of then, no word)."""
        if self.stalled_s is None:
            return ""
        return f"  NO HEARTBEAT for {self.stalled_s:.0f} s: its process is alive but writes nothing (stuck?)"

    def health_text(self) -> str:
        """The process's health from the newest metrics row (sessions that sample it: psutil)."""
        row = self.metrics
        if not row.get("rss_mb"):
            return ""
        return f"  cpu {row.get('cpu_pct') or '-'}%  rss {row['rss_mb']} MB  disk free {row.get('disk_free_mb') or '-'} MB"

    def open_positions(self) -> list[tuple[str, float, float]]:
        """(symbol, qty, average entry) per symbol, both from the fills (a liquidation's included;
        found by the cockpit audit: the size was the last heartbeat's, older than the fills after
        it, and a flip showed the old side at the new entry)."""
        return [
            (symbol, position.qty, position.entry if position.qty else 0.0)
            for symbol, position in self.positions.items()
        ]

    def position_text(self) -> str:
        parts = [
            f"{symbol} {qty:+g} @ {price_text(symbol, entry)}" if qty else f"{symbol} flat"
            for symbol, qty, entry in self.open_positions()
        ]
        return ", ".join(parts) or "flat"

    def summary_line(self) -> str:
        """The session's end, from final_report.json when it is there, else from the events."""
        stopped = self.stopped
        assert stopped is not None and self.started is not None
        report_path = self.run_path / REPORT
        report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else None
        if report is not None:
            net, trades, wins = report["net_pnl"], report["trade_count"], report["wins"]
            equity, where = report["ending_equity"], f"report={report_path}"
        else:
            equity = stopped["ending_equity"]
            net, trades, wins = equity - self.started["starting_equity"], self.trades, self.wins
            where = f"(no {REPORT} yet)"
        detail = f" ({stopped['detail']})" if stopped.get("detail") else ""  # as the session's line
        return (
            f"session {self.run_id} {stopped['status']}: stop_reason={stopped['stop_reason']}{detail} "
            f"elapsed {_clock(stopped.get('elapsed_s', 0))}  net_pnl {money(net)} USDT  "
            f"ending_equity {money(equity, sign=False)}  trades {trades} ({wins} won)  "
            f"fills {self.fills}  {where}"
        )

    def dead_line(self) -> str:
        gone = (
            f"session {self.run_id}: its process is gone and it never stopped (no session.stopped in "
            f"{EVENTS}): it died (killed?). "
        )
        if self.run_id.startswith(BATCH_RUN_PREFIXES):  # a backtest or replay keeps no checkpoint
            return gone + "It cannot be resumed: the next start closes it as abandoned; run it again"
        if not has_checkpoint(self.run_path):  # (found by a docs audit: said to resume, it was closed)
            return gone + (
                "It died before its first checkpoint, so it cannot be resumed: the next start closes it as "
                "abandoned and starts a new session (docs/START_HERE.md)"
            )
        return (
            gone + "Starting the same command again resumes it (docs/START_HERE.md); --fresh starts a new one"
        )


class Display:
    """Plain lines (not a terminal) or one rich panel updated in place (a terminal)."""

    def __init__(self, stream: TextIO, rich_mode: bool, live: bool) -> None:
        self.stream = stream
        self.rich_mode = rich_mode
        self.live = live
        self._live: Any = None
        self._last_heartbeat: dict[str, Any] | None = None
        self._shown = False  # a progress line was printed (plain lines: one per new heartbeat)
        self._stall_said = False  # the line saying no heartbeat came was printed

    def __enter__(self) -> Display:
        if self.rich_mode and self.live:
            from rich.console import Console
            from rich.live import Live
            from rich.text import Text

            self._live = Live(Text(""), console=Console(file=self.stream), auto_refresh=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def line(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text, markup=False, highlight=False)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def update(self, view: SessionView, new_lines: list[str]) -> None:
        if self._live is not None:
            self._live.update(panel(view), refresh=True)
            return
        for text in new_lines:
            self.line(f"  {text}")
        stalled = view.stalled_s is not None
        if view.heartbeat is not self._last_heartbeat or not self._shown or stalled > self._stall_said:
            self._last_heartbeat, self._shown = view.heartbeat, True
            self.line(view.progress_line())
        self._stall_said = stalled  # said once when it stalls (the line says so), again after

    def snapshot(self, view: SessionView) -> None:
        """One complete picture (--once, a dead session): the panel, or the progress line and the
        last events."""
        if self._live is not None:
            self._live.update(panel(view), refresh=True)
            return
        if self.rich_mode:
            from rich.console import Console

            Console(file=self.stream).print(panel(view))
            return
        self.line(view.progress_line())
        for text in view.recent:
            self.line(f"  {text}")


def panel(view: SessionView) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    figures = Table.grid(padding=(0, 2))
    figures.add_column(style="dim")
    figures.add_column(justify="right")
    hb = view.heartbeat or {}
    started = view.started or {}
    figures.add_row(
        "elapsed", f"{_clock(hb.get('elapsed_s', 0))} / {_clock(started.get('planned_duration_s') or 0)}"
    )
    figures.add_row("equity", money(hb.get("equity", started.get("starting_equity", 0.0)), sign=False))
    figures.add_row("realized (before fees)", money(hb.get("realized_pnl", 0.0)))
    figures.add_row("unrealized", money(hb.get("unrealized_pnl", 0.0)))
    figures.add_row("fees", money(hb.get("fees_paid", 0.0), sign=False))
    figures.add_row("funding paid", money(hb.get("funding_paid", 0.0)))
    figures.add_row(
        "trades", f"{view.trades} ({view.wins} won), {view.fills} fills, {view.rejections} rejected"
    )
    figures.add_row("feed", f"{started.get('data_source', '-')}, last: {view.feed_state}")
    if view.health_text():
        figures.add_row("process", view.health_text().strip())
    if view.stall_text():
        figures.add_row("heartbeat", view.stall_text().strip())
    positions = Table("symbol", "position", "entry", box=None, padding=(0, 2))
    for symbol, qty, entry in view.open_positions():
        positions.add_row(symbol, f"{qty:+g}" if qty else "flat", price_text(symbol, entry) if qty else "-")
    recent = Text("\n".join(view.recent) or "no fills, trades or alerts yet", style="dim")
    return Panel(Group(figures, Text(""), positions, Text(""), recent), title=f"monitor {view.run_id}")


def follow(run_path: Path, display: Display, interval: float, once: bool) -> int:
    tail = EventTail(run_path / EVENTS)
    metrics = MetricsTail(run_path / METRICS)
    view = SessionView(run_path)
    first = True
    while True:
        alive = owner_alive(run_path)  # before reading: a session.stopped written meanwhile is then seen
        records, restarted = tail.read_new()
        if restarted:
            view.reset()
        view.metrics = metrics.read_last()
        new_lines = [line for line in map(view.fold, records) if line is not None]
        if first:  # the history so far: only its last few events
            new_lines = new_lines[-RECENT:]
        if view.stopped is not None:
            if not first:  # a finished run: only its summary
                display.update(view, new_lines)
            deadline = time.monotonic() + REPORT_WAIT_S
            while not (run_path / REPORT).is_file() and owner_alive(run_path) and time.monotonic() < deadline:
                time.sleep(0.1)
            display.line(view.summary_line())
            return 0
        if not alive:
            display.snapshot(view)
            display.line(view.dead_line())
            return 1
        view.stalled_s = _stalled_s(run_path)
        if once:
            display.snapshot(view)
            return 0
        display.update(view, new_lines)
        first = False
        time.sleep(interval)


def _stalled_s(run_path: Path) -> float | None:
    """How long ago metrics.csv was written, when over `STALL_S` (None: under, or no file yet)."""
    try:
        age = time.time() - (run_path / METRICS).stat().st_mtime
    except OSError:
        return None
    return age if age > STALL_S else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.monitor", description=__doc__.split("\n")[0].removesuffix(":")
    )
    parser.add_argument("run", nargs="?", type=Path, help="run folder to follow (default: RUN_DIR/latest)")
    parser.add_argument(
        "--run-dir", type=Path, default=Path("runs"), help="folder of the run folders (default: runs)"
    )
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default: 1)")
    return parser


def default_target(run_dir: Path) -> Path:
    """`<run_dir>/latest`, or the unfinished live session's folder when a backtest or replay has
    moved `latest` to its own (found by an audit: the monitor started beside a running session
    showed a backtest's summary and exited)."""
    latest = run_dir / "latest"
    try:
        live = newest_live_run(run_dir)
        if live is None or live == latest.resolve() or not is_unfinished(live):
            return latest
    except OSError:
        return latest
    print(
        f"{latest} is {latest.resolve().name}'s folder (a backtest or replay): following the live "
        f"session {live.name} instead",
        file=sys.stderr,
    )
    return live


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.interval > 0 and math.isfinite(args.interval)):
        parser.error(f"--interval must be a positive number of seconds, not {args.interval}")
    if args.run is None and args.run_dir.exists() and not args.run_dir.is_dir():
        # found by a CLI audit: said "FILE/latest does not exist"
        print(
            f"error: --run-dir {args.run_dir} is a file; expected the folder of the run folders",
            file=sys.stderr,
        )
        return 2
    target = args.run if args.run is not None else default_target(args.run_dir)
    try:
        run_path = resolve_run(target)
    except NotARunFolder as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rich_mode = sys.stdout.isatty()
    try:
        with Display(sys.stdout, rich_mode, live=not args.once) as display:
            return follow(run_path, display, args.interval, args.once)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
