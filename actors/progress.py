"""Progress on stderr. Live sessions, once a second: a single updating panel on a terminal (rich),
plain lines otherwise (pipes, files, containers without a TTY). Backtests on the kernel: a
progress bar with candles/s and ETA on a terminal, a line every few seconds otherwise
(`BacktestProgress`, called between chunks of candles: the kernel's loop itself is untouched).

Log lines and the console's fill lines go through `sys.stderr`, which a rich display redirects
while it is on: they are printed above it, never onto the progress line."""

from __future__ import annotations

import gzip
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import attrs

from actors.console import fmt_money, fmt_price, fmt_qty, price_decimals

if TYPE_CHECKING:
    from rich.live import Live
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID

    from protocols.messages import AccountSnapshot

PLAIN_EVERY_S = 5.0  # backtests without a terminal: a progress line this often


def _fmt_s(seconds: float) -> str:
    """MM:SS, H:MM:SS from an hour (as the monitor counts)."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    if hours:
        return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{rest // 60:02d}:{rest % 60:02d}"


def status_line(
    elapsed_s: float,
    remaining_s: float,
    price: float | None,
    position_qty: float,
    equity: float,
    pnl: float,
) -> str:
    price_text = f"{price:,.1f}" if price is not None else "-"
    return (
        f"elapsed {_fmt_s(elapsed_s)}  remaining {_fmt_s(remaining_s)}  price {price_text}  "
        f"pos {position_qty:+.4f}  equity {equity:,.2f}  pnl {pnl:+,.2f}"
    )


@attrs.frozen
class Position:
    """What the progress panel shows of a symbol's open position beside the account."""

    symbol: str
    qty: float = 0.0
    entry: float | None = None
    stop: float | None = None
    target: float | None = None
    trades: int = 0
    working: str | None = None  # the newest entry working at the market (the console's text)
    mark: float | None = None  # the symbol's mark (shown with several symbols; one: the first line's)


def panel_lines(
    elapsed_s: float,
    remaining_s: float,
    account: AccountSnapshot,
    positions: Position | Sequence[Position],
) -> list[str]:
    """The live panel: the clock and the account; each symbol's open position with its stop and
    target, and the newest entry working (a strategy's limit waiting for its price); trades so far
    and PnL (realized, net of fees and funding, and unrealized). One symbol: its price and size on
    the first line; several: a line each with its mark (found by the cockpit audit: the panel
    showed one symbol of a multi-symbol session, the others' positions nowhere)."""
    held = [positions] if isinstance(positions, Position) else list(positions)
    pnl = account.equity - account.starting_equity
    if len(held) == 1:
        first = status_line(
            elapsed_s, remaining_s, account.mark_price, account.position_qty, account.equity, pnl
        )
    else:
        first = (
            f"elapsed {_fmt_s(elapsed_s)}  remaining {_fmt_s(remaining_s)}  "
            f"equity {account.equity:,.2f}  pnl {pnl:+,.2f}"
        )
    lines = [first, *(_held_line(position, with_mark=len(held) > 1) for position in held)]
    realized = account.realized_pnl - account.fees_paid - account.funding_paid
    trades = held[0].trades if held else 0
    lines.append(
        f"trades {trades}  realized {fmt_money(realized)}  "
        f"unrealized {fmt_money(account.unrealized_pnl)}  (USDT; realized net of fees and funding)"
    )
    return lines


def _held_line(position: Position, *, with_mark: bool) -> str:
    decimals = price_decimals(position.symbol)
    if abs(position.qty) > 0:
        side = "LONG" if position.qty > 0 else "SHORT"
        held = (
            f"{position.symbol} {side} {fmt_qty(abs(position.qty))} @ {fmt_price(position.entry, decimals)}  "
            f"stop {fmt_price(position.stop, decimals)}  target {fmt_price(position.target, decimals)}"
        )
    else:
        held = f"{position.symbol} flat"
    if with_mark:
        held += f"  mark {fmt_price(position.mark, decimals)}"
    if position.working is not None:
        held += f"  entry {position.working} working"
    return held


class Progress:
    """`mode`: "auto" (rich panel if stderr is a terminal, else plain lines), "plain" or "off"."""

    def __init__(self, mode: str, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.mode = mode
        if mode == "auto":
            self.mode = "rich" if self.stream.isatty() else "plain"
        self._live: Live | None = None

    def __enter__(self) -> Progress:
        if self.mode == "rich":
            # imported here: a session without a terminal (a backtest, a container) never loads rich
            from rich.console import Console
            from rich.live import Live
            from rich.text import Text

            self._live = Live(
                Text(""), console=Console(file=self.stream), refresh_per_second=4, transient=False
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def show(self, lines: str | list[str]) -> None:
        """The panel's lines (on a terminal: the panel; otherwise one line, joined by ` | `)."""
        if self.mode == "off":
            return
        lines = [lines] if isinstance(lines, str) else lines
        if self._live is not None:
            from rich.text import Text

            self._live.update(Text("\n".join(lines), style="bold"))
        else:
            self.stream.write(" | ".join(lines) + "\n")
            self.stream.flush()


def count_candles(path: str) -> int | None:
    """The data rows of a candle CSV (gzipped or not; its header excluded), for the bar's ETA."""
    try:
        opener: Callable[..., Any] = gzip.open if path.endswith(".gz") else open
        with opener(Path(path), "rb") as f:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        return max(0, lines - 1)
    except OSError:
        return None


class BacktestProgress:
    """A backtest's progress, updated between chunks of candles (`update(done, data_ts)`).
    `mode`: "auto" (a rich bar with candles/s and ETA when the stream is a terminal, else a line
    every `PLAIN_EVERY_S`), "plain" or "off". `total`: the candles to run, when known (the ETA)."""

    def __init__(
        self, mode: str, total: Callable[[], int | None] = lambda: None, stream: TextIO | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.mode = mode
        if mode == "auto":
            self.mode = "rich" if self.stream.isatty() else "plain"
        self._total = total
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None
        self._started = time.monotonic()
        self._next_line = self._started + PLAIN_EVERY_S

    @property
    def on(self) -> bool:
        return self.mode != "off"

    def __enter__(self) -> BacktestProgress:
        if self.mode == "rich":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import (
                Progress as RichProgress,
            )

            self._bar = RichProgress(
                TextColumn("backtest"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} candles/s  data {task.fields[data_time]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                refresh_per_second=4,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("backtest", total=self._total(), rate="-", data_time="-")
        self._started = time.monotonic()
        self._next_line = self._started + PLAIN_EVERY_S
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def update(self, done: int, data_ts: float) -> None:
        now = time.monotonic()
        rate = done / max(now - self._started, 1e-9)
        data_time = datetime.fromtimestamp(data_ts, UTC).strftime("%Y-%m-%d %H:%M") if data_ts > 0 else "-"
        if self._bar is not None and self._task is not None:
            total = self._bar.tasks[0].total
            done = min(done, int(total)) if total is not None else done
            self._bar.update(self._task, completed=done, rate=f"{rate:,.0f}", data_time=data_time)
        elif self.mode == "plain" and now >= self._next_line:
            self._next_line = now + PLAIN_EVERY_S
            self.stream.write(
                f"backtest: {done:,} candles in {now - self._started:,.0f} s ({rate:,.0f} candles/s), "
                f"data time {data_time} UTC\n"
            )
            self.stream.flush()
