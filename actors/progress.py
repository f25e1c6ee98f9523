"""Live progress on stderr, once a second: a single updating panel on a terminal (rich), plain
lines otherwise (pipes, files, containers without a TTY)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.live import Live


def _fmt_s(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


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
        f"pos {position_qty:+.4f} BTC  equity {equity:,.2f}  pnl {pnl:+,.2f}"
    )


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

    def show(self, line: str) -> None:
        if self.mode == "off":
            return
        if self._live is not None:
            from rich.text import Text

            self._live.update(Text(line, style="bold"))
        else:
            self.stream.write(line + "\n")
            self.stream.flush()
