"""report.html: one self-contained page per run folder (plotly, its JavaScript inlined: it works
offline), and a page comparing several runs. Everything on it is what the run folder's files say
(events.jsonl; final_report.json, market.jsonl, alerts.jsonl), so a finished run's page can be
rebuilt at any time (`python -m tools.report RUN`) and is the same; the session's own page takes
the records of events.jsonl as the recorder wrote them (`PageRecords`) rather than reading the
file back.

The recorder writes it right after final_report.json (`write_report_html`); a failure is logged,
never the session's. Large runs stay light: a chart line or candle series of more than
`MAX_POINTS` points is downsampled (lines keep each bucket's lowest and highest points; candles are
merged into longer ones), at most `MAX_MARKED_TRADES` trades are marked on the price chart (an
evenly spaced sample beyond that) and `MAX_TRADE_ROWS` rows shown in the trade list.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import html
import importlib.util
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import orjson
from loguru import logger

from actors import secrets
from actors.feeds.funding import describe
from actors.recording.page_records import UNREAD_KINDS, PageRecords
from actors.recording.report_stats import (
    STATISTICS,
    Trade,
    equity_curve,
    seconds,
    statistics,
    trades,
    ts_of,
)
from protocols.instruments import table_instrument
from protocols.records import FLAT_EPS, is_resting_entry, resting_price, utc_clock, utc_millis

REPORT_NAME = "report.html"
MAX_POINTS = 5_000  # points of a chart's line (or candles) at most
MAX_MARKED_TRADES = 2_000  # trades marked on a price chart at most
MAX_TRADE_ROWS = 2_000  # rows of the trade list at most
FEED_KINDS = (
    "feed.connected",
    "feed.disconnected",
    "feed.reconnecting",
    "feed.stale",
    "feed.fresh",
    "feed.failover",
    "feed.fallback",
    "feed.backfill",
    "feed.gap",
    "feed.rest_retry",
    "feed.malformed",
    "feed.klines",
    "feed.book",
)
# Statistics shown green when positive, red when negative (the others are counts or costs).
SIGNED_STATISTICS = {"avg_win", "avg_loss", "expectancy", "gross_pnl", "net_pnl", "return_pct"}
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
# A Sharpe or Sortino ratio of a run of fewer closed trades is shown with a caveat (`_value_cell`).
RATIOS = {"sharpe", "sortino"}
FEW_TRADES = 30
# The attribution tables' columns that are money (their headers say the currency).
MONEY_FIELDS = {"realized_pnl", "fees", "funding", "net_pnl"}


class NotARunFolder(ValueError):
    """The path is not a run folder (it has no events.jsonl)."""


@attrs.frozen
class RunData:
    """What the page is made of, read from a run folder."""

    path: Path
    records: list[dict[str, Any]]  # events.jsonl, without the kinds in UNREAD_KINDS
    by_kind: dict[str, list[dict[str, Any]]]  # the same records by kind (see `of`)
    report: dict[str, Any] | None  # final_report.json (None when missing or unreadable)
    candles: dict[str, list[dict[str, Any]]]  # market.jsonl's candles by symbol
    instruments: dict[str, dict[str, Any]]  # the `feed.instrument` events by symbol
    # the alerts of alerts.jsonl that no event carries (`memory`, `disk`: no seq), by rule
    machine_alerts: dict[str, int] = attrs.field(factory=dict)
    machine_resolved: int = 0  # and those of them resolved alerts (severity info), not counted there

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The records of one kind, in file order (a chart of one kind need not scan them all)."""
        return self.by_kind.get(kind, [])

    @property
    def started(self) -> dict[str, Any]:
        return next(iter(self.of("session.started")), {})

    @property
    def stopped(self) -> dict[str, Any]:
        return next(reversed(self.of("session.stopped")), {})

    @property
    def symbols(self) -> list[str]:
        started = self.started
        return list(started.get("symbols") or [started.get("symbol", "")])


def run_folder(path: Path) -> Path:
    """The run folder `path` names (the folder itself, or its events.jsonl); NotARunFolder if none."""
    if path.is_file() and path.name == "events.jsonl":
        path = path.parent
    if not (path / "events.jsonl").is_file():
        raise NotARunFolder(f"{path} is not a run folder (no events.jsonl in it)")
    return path


def load_run(path: Path, page: PageRecords | None = None) -> RunData:
    """The run's records, read a line at a time (a long backtest's events.jsonl is tens of MB):
    the kinds the page does not read are skipped unparsed, and the many records of a long run
    (fills, trades, heartbeats, orders) keep only the fields the page reads (`PageRecords`), so
    the page of any run is built in bounded memory beside the session's own. They are indexed by
    kind as they are read: a chart of one kind reads only its own (`RunData.of`). `page`: the
    records already collected as they were written (the recorder's), instead of the file's."""
    path = run_folder(path)
    if page is None:
        page = PageRecords()
        with (path / "events.jsonl").open("rb") as f:
            for line in f:
                start = line.find(b'"kind":"') + 8
                if line[start : line.find(b'"', start)] in UNREAD_KINDS:
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a torn last line of a crashed session
                page.add(record)
    report = None
    with contextlib.suppress(OSError, orjson.JSONDecodeError):
        report = orjson.loads((path / "final_report.json").read_bytes())
    candles: dict[str, list[dict[str, Any]]] = {}
    market = path / "market.jsonl"
    if market.is_file():
        with market.open("rb") as f:
            for line in f:
                if b'"type":"candle"' in line:
                    candle = orjson.loads(line)
                    candles.setdefault(candle.get("symbol", ""), []).append(candle)
    by_kind = page.by_kind
    instruments = {r.get("symbol", ""): r for r in by_kind.get("feed.instrument", [])}
    return RunData(path, page.records, by_kind, report, candles, instruments, *_machine_alerts(path))


def _machine_alerts(path: Path) -> tuple[dict[str, int], int]:
    """The alerts of the run's alerts.jsonl that are not in events.jsonl (`memory` and `disk`,
    whose `seq` is null), by rule (found by an audit: a run out of disk read `alerts: none`), and
    how many resolved alerts (severity info) among them, apart."""
    counts: Counter[str] = Counter()
    resolved = 0
    with contextlib.suppress(OSError), (path / "alerts.jsonl").open("rb") as f:
        for line in f:
            try:
                alert = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a torn last line of a crashed session
            if isinstance(alert, dict) and alert.get("seq") is None:
                if alert.get("severity") == "info":
                    resolved += 1
                else:
                    counts[str(alert.get("rule", "?"))] += 1
    return dict(counts), resolved


# --- the pages ---------------------------------------------------------------------------------------------


def write_report_html(run: Path, page: PageRecords | None = None) -> Path | None:
    """Build `run/report.html` (`page`: its records as the recorder collected them); a failure is
    logged, never raised (the session goes on)."""
    try:
        return build_report(run, page=page)
    except Exception as exc:
        logger.warning("{} not written: {!r}", REPORT_NAME, exc)
        logger.opt(exception=exc).debug("{} failed", REPORT_NAME)
        return None


def build_report(run: Path, out: Path | None = None, page: PageRecords | None = None) -> Path:
    """Write the run's page to `out` (default: `run/report.html`, atomically); its path. `page`:
    the records of its events.jsonl already collected (`load_run`)."""
    # hundreds of thousands of records, no cycle among them: the cyclic collector would only scan
    # them again and again (a third of the time of a long backtest's page)
    collecting = gc.isenabled()
    gc.disable()
    try:
        data = load_run(run, page)
        out = out or data.path / REPORT_NAME
        _write(out, report_page(data))
    finally:
        seconds.cache_clear()
        if collecting:
            gc.enable()
    return out


def build_comparison(runs: Sequence[Path], out: Path) -> Path:
    """Write a page comparing the runs' statistics and equity curves side by side."""
    _write(out, comparison_page([load_run(r) for r in runs]))
    return out


def _write(out: Path, page: Page) -> None:
    """The page, written in its parts with plotly.js copied in from plotly's package file between
    them (never decoded: as a str the 4.8 MB bundle takes twice that, and the whole page again),
    atomically."""
    tmp = out.with_name(f".{out.name}.tmp")
    before, after = (secrets.scrub(part) for part in page)
    try:
        with tmp.open("wb") as f:
            f.write(before.encode("utf-8"))
            with plotly_js_path().open("rb") as js:
                shutil.copyfileobj(js, f)
            f.write(after.encode("utf-8"))
        os.replace(tmp, out)
    except BaseException:  # a full disk, say: no temporary file left behind
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def plotly_js_path() -> Path:
    """plotly.js as plotly.py ships it (what `plotly.offline.get_plotlyjs()` reads)."""
    spec = importlib.util.find_spec("plotly")  # found, not imported: the page needs only the file
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("plotly is not installed")
    return Path(spec.origin).parent / "package_data" / "plotly.min.js"


def page_text(page: Page) -> str:
    """A page as one string (plotly.js inlined), for a caller that wants it in memory."""
    return page[0] + plotly_js_path().read_text(encoding="utf-8") + page[1]


# A page as the text before and after the inlined plotly.js (see `_write`).
Page = tuple[str, str]


def report_page(data: RunData) -> Page:
    curve = equity_curve(data.records)
    stats = statistics(data.records, curve)
    trade_list = trades(data.records)
    title = f"Run {data.started.get('run_id', data.path.name)}"
    sections = [
        _summary(data, stats),
        _section("Statistics", _stats_table(stats, "stat")),
        _section("Equity and drawdown", _equity_chart(curve)),
        *(_price_section(data, symbol, trade_list) for symbol in data.symbols),
        _section("Trades", _trade_table(data, trade_list)),
        _section("Entries at the market", _entry_table(data)),
        _section("Fills: latency and slippage", _fills_chart(data.of("order.filled"))),
        _section("Feed health", _feed_section(data)),
        _section("Risk events", _risk_section(data)),
        _attribution(data.report),
        _configuration(data.report),
        _section("Definitions", _definitions()),
    ]
    return _page(title, sections)


def comparison_page(runs: list[RunData]) -> Page:
    names = [r.started.get("run_id", r.path.name) for r in runs]
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    rows = []
    all_stats = [statistics(r.records) for r in runs]
    for key, label, how in STATISTICS:
        cells = "".join(
            _value_cell(f"cmp-{i}-{key}", s[key], how, _price_dp(r, r.symbols[0]), s["trades"])
            for i, (r, s) in enumerate(zip(runs, all_stats, strict=True))
        )
        rows.append(f"<tr><th>{_e(label)}</th>{cells}</tr>")
    table = f'<table class="stats" id="comparison"><tr><th></th>{head}</tr>{"".join(rows)}</table>'
    info = "".join(
        f"<li><b>{_e(n)}</b>: {_e(str(r.path))}, {_e(str(r.started.get('data_source', '')))}, "
        f"{_e(_period(r))}</li>"
        for n, r in zip(names, runs, strict=True)
    )
    return _page(
        "Comparison of " + ", ".join(names),
        [
            _section("Runs", f"<ul>{info}</ul>"),
            _section("Statistics", table),
            _section("Equity curves", _comparison_chart(runs, names)),
            _section("Definitions", _definitions()),
        ],
    )


def _page(title: str, sections: list[str]) -> Page:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<title>{_e(title)}</title><style>{CSS}</style><script type="text/javascript">',
        f"</script></head><body><h1>{_e(title)}</h1>{''.join(sections)}"
        f"<footer>Written {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} from the run "
        "folder's files. Times are UTC.</footer></body></html>\n",
    )


CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 1.8em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: right; white-space: nowrap; }
th { text-align: left; background: #f6f6f6; }
td.text { text-align: left; }
.scroll { max-height: 480px; overflow: auto; }
.note { color: #666; font-size: 0.85em; }
.pos { color: #11823b; } .neg { color: #c0392b; }
pre { font-size: 0.85em; background: #f6f6f6; padding: 0.8em; white-space: pre-wrap; }
footer { margin-top: 2em; color: #888; font-size: 0.8em; }
"""


def _section(title: str, body: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{body}</section>" if body else ""


def _e(text: object) -> str:
    return html.escape(str(text))


# --- summary and statistics ------------------------------------------------------------------------------


def _summary(data: RunData, stats: dict[str, Any]) -> str:
    started, stopped, report = data.started, data.stopped, data.report or {}
    strategies = ", ".join(report.get("strategies") or []) or "-"
    # why it stopped, in the stop's own words too (found by an audit: only its reason's code was
    # here, `max_loss`, not `session loss 2.00 % >= 2 %`, nor an abandoned run's lost position)
    detail = f": {stopped['detail']}" if stopped.get("detail") else ""
    items = [
        (
            "status",
            f"{stopped.get('status', 'unfinished')} (stop reason: {stopped.get('stop_reason', '-')}{detail})",
        ),
        ("at the end", _at_the_end(data)),
        ("period", _period(data)),
        ("data", started.get("data_source", "-")),
        ("seed", str(started.get("seed", "-"))),
        ("symbols", ", ".join(data.symbols)),
        ("strategies", strategies),
        ("starting equity", _usdt(started.get("starting_equity"))),
        ("ending equity", _usdt(stopped.get("ending_equity"))),
        ("net PnL", f"{_usdt(stats['net_pnl'])} ({_fmt(stats['return_pct'], 'pct')})"),
    ]
    source = report.get("funding_source", stopped.get("funding_source", started.get("funding_source")))
    if source is not None:  # where the funding came from, in plain words (not modelled: said so)
        paid = report.get("funding_paid", stopped.get("funding_paid"))
        if paid is None:
            said = ""
        elif round(paid, 2) < 0:  # received (found by an audit: "-0.06 paid" read as a cost)
            said = f"{_usdt(-paid)} received; "
        else:
            said = f"{_usdt(paid)} paid; "
        items.append(("funding", said + describe(source)))
    for symbol, gap in (stopped.get("data_gaps") or {}).items():  # a backtest's data gaps
        items.append(
            (
                f"data gaps ({symbol})",
                f"{gap['count']}, {_duration(gap['missing_s'])} missing; the longest "
                f"{_duration(gap['longest_s'])} from {gap['longest_from']} to {gap['longest_to']} "
                "(the account went on through them as it was)",
            )
        )
    # the conditions raised, by rule; the resolved alerts (severity info: one a condition that
    # ended) counted apart, not as more of their rule's
    events = [r for r in data.of("alert") if r.get("severity") != "info"]
    alerts = Counter(r.get("rule", "?") for r in events) + Counter(data.machine_alerts)
    resolved = len(data.of("alert")) - len(events) + data.machine_resolved
    said = ", ".join(f"{rule} {n}" for rule, n in sorted(alerts.items()))
    said += f"; {resolved} resolved" if resolved else ""
    items.append(("alerts", f"{alerts.total()}: {said}" if alerts else "none"))
    rows = "".join(f'<tr><th>{_e(k)}</th><td class="text">{_e(v)}</td></tr>' for k, v in items)
    return f'<section id="summary"><table>{rows}</table></section>'


def _at_the_end(data: RunData) -> str:
    """Whether the run ended flat, or the positions it left open (`session.stopped`'s)."""
    stopped = data.stopped
    if not stopped:
        return "unfinished"
    held = stopped.get("open_positions") or []
    if not held:
        # a run closed as abandoned records none: its process held them (and lost them); its fills
        # say whether it was flat
        left: dict[str, float] = {}
        for r in data.of("order.filled"):
            if r.get("position_qty") is not None:
                left[r.get("symbol") or data.symbols[0]] = float(r["position_qty"])
        open_legs = [
            f"{symbol} {qty:+.{_qty_dp(data, symbol)}f}"
            for symbol, qty in left.items()
            if abs(qty) > FLAT_EPS
        ]
        if open_legs:
            return (
                f"not flat: its fills leave {', '.join(open_legs)} (the stop's detail says what became of it)"
            )
        return "flat"
    parts = []
    for p in held:
        symbol = p.get("symbol", "")
        parts.append(
            f"{symbol} {p.get('side', '?')} {float(p.get('qty', 0.0)):.{_qty_dp(data, symbol)}f} @ "
            f"{float(p.get('avg_price', 0.0)):,.{_price_dp(data, symbol)}f} "
            f"(unrealized {_money(p.get('unrealized_pnl'))})"
        )
    return "open: " + "; ".join(parts)


def _configuration(report: dict[str, Any] | None) -> str:
    """The configuration the run used (final_report.json's `config`), as the file has it."""
    config = (report or {}).get("config")
    if not config:
        return ""
    text = orjson.dumps(config, option=orjson.OPT_INDENT_2).decode()
    return _section(
        "Configuration",
        f'<p class="note">As final_report.json records it (`config`).</p><pre>{_e(text)}</pre>',
    )


def _period(data: RunData) -> str:
    started, stopped = data.started, data.stopped
    if not started:
        return "-"
    begin = _time(ts_of(started)) + " UTC"
    if not stopped:
        return f"{begin} -> (unfinished)"
    span = ts_of(stopped) - ts_of(started)
    return f"{begin} -> {_time(ts_of(stopped))} UTC ({_duration(span)})"


def _stats_table(stats: dict[str, Any], prefix: str) -> str:
    rows = "".join(
        f"<tr><th>{_e(label)}</th>{_value_cell(f'{prefix}-{key}', stats[key], how, 2, stats['trades'])}</tr>"
        for key, label, how in STATISTICS
    )
    return f'<table class="stats" id="statistics">{rows}</table>'


def _value_cell(cell_id: str, value: Any, how: str, price_dp: int, trades: float | None = None) -> str:
    """A statistic's cell: shown rounded for people, its exact value in `data-value`; a Sharpe or
    Sortino ratio of a run of fewer than `FEW_TRADES` trades (`trades`) says so beside it."""
    raw = "" if value is None else repr(value)
    cls = ""
    key = cell_id.rsplit("-", 1)[-1]
    if key in SIGNED_STATISTICS and value:
        cls = ' class="pos"' if value > 0 else ' class="neg"'
    text = _fmt(value, how, price_dp)
    if key in RATIOS and value is not None and trades is not None and trades < FEW_TRADES:
        # found by an audit: -106.74 from 3 trades, shown like any other
        text += f" ({trades} trade{'' if trades == 1 else 's'}: too few to judge by)"
    return f'<td id="{cell_id}" data-value="{raw}"{cls}>{_e(text)}</td>'


def _fmt(value: Any, how: str, price_dp: int = 2) -> str:
    if value is None:
        return "-"
    if how == "int":
        return f"{value:,}"
    if how == "money":
        return _money(value)
    if how == "price":
        return f"{value:,.{price_dp}f}"
    # round first, then + 0.0: a value that rounds to zero is never shown as "-0.00"
    if how == "pct":
        return f"{round(value, 2) + 0.0:.2f} %"
    if how == "pct_fraction":
        return f"{round(value * 100, 1) + 0.0:.1f} %"
    if how == "ratio":
        return f"{round(value, 2) + 0.0:.2f}"
    if how == "seconds":
        return _duration(value)
    return str(value)


def _usdt(value: Any) -> str:
    """A sum of money with its currency (every symbol the project trades settles in USDT)."""
    return "-" if value is None else f"{_money(value)} USDT"


def _money(value: Any) -> str:
    if value is None:
        return "-"
    cents = round(float(value), 2)
    return f"{cents + 0.0:,.2f}"  # + 0.0: no "-0.00"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _time(ts: float) -> str:
    """`time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))` (`utc_clock`)."""
    return utc_clock(math.floor(ts))


def _x(ts: float) -> str:
    """A time as plotly reads it (UTC, milliseconds: `utc_millis`)."""
    return utc_millis(ts)


def _x_iso(record: dict[str, Any]) -> str:
    """An event's `ts` as plotly reads it (no `T`, no `Z`)."""
    return str(record["ts"]).replace("T", " ").rstrip("Z")


def _definitions() -> str:
    doc = statistics.__doc__ or ""
    lines = [line[4:] if line.startswith("    ") else line for line in doc.splitlines()]
    return (
        f"<pre>{_e(chr(10).join(lines).strip())}</pre>"
        f'<p class="note">Charts: a line or candle series of more than {MAX_POINTS:,} points is '
        "downsampled (a line keeps the lowest and highest point of each bucket; candles are merged "
        f"into longer ones, as the chart's title says); at most {MAX_MARKED_TRADES:,} trades are "
        f"marked on a price chart (an evenly spaced sample beyond that); the trade list shows at most "
        f"{MAX_TRADE_ROWS:,} rows. Statistics always use every event.</p>"
    )


# --- instruments ---------------------------------------------------------------------------------------------


def _decimals(step: float) -> int:
    exponent = Decimal(str(step)).normalize().as_tuple().exponent
    return max(0, -int(exponent))


def _instrument_field(data: RunData, symbol: str, name: str, default: float) -> float:
    event = data.instruments.get(symbol) or {}
    if event.get(name):
        return float(event[name])
    instrument = table_instrument(symbol)
    return float(getattr(instrument, name)) if instrument is not None else default


def _price_dp(data: RunData, symbol: str) -> int:
    return _decimals(_instrument_field(data, symbol, "tick_size", 0.1))


def _qty_dp(data: RunData, symbol: str) -> int:
    return _decimals(_instrument_field(data, symbol, "lot_size", 0.0001))


# --- charts ---------------------------------------------------------------------------------------------------


def _plot(div_id: str, traces: list[dict[str, Any]], layout: dict[str, Any]) -> str:
    """A chart's div and script, as plotly.io.to_html writes them: the figure is plain data
    (plotly's JSON schema) serialized once with orjson, without plotly.py's per-point validation
    and copies (seconds and tens of MB on a long backtest's series)."""
    layout = {"margin": {"l": 70, "r": 20, "t": 40, "b": 40}, "hovermode": "closest", **layout}
    height = layout.get("height")
    outer = (
        f"height:{height}px; width:100%;" if isinstance(height, int | float) else "height:100%; width:100%;"
    )

    def js(value: Any) -> str:  # JSON inside a <script>: no "</" may end it early
        return orjson.dumps(value).decode().replace("</", "<\\/")

    return (
        f'<div class="chart" data-chart="{div_id}"><div style="{outer}">'
        f'<div id="{div_id}" class="plotly-graph-div" style="height:100%; width:100%;"></div>'
        f'<script>if (document.getElementById("{div_id}")) {{Plotly.newPlot("{div_id}", '
        f"{js(traces)}, {js(layout)}, {js(PLOT_CONFIG)})}};</script></div></div>"
    )


# Two charts one above the other on a shared time axis (x/y above, x2/y2 below).
TWO_ROWS: dict[str, dict[str, Any]] = {
    "xaxis": {"anchor": "y", "matches": "x2", "showticklabels": False},
    "xaxis2": {"anchor": "y2"},
    "yaxis": {"domain": [0.34, 1.0]},
    "yaxis2": {"domain": [0.0, 0.28]},
}


def _keep(n: int, series: Sequence[Sequence[float]]) -> list[int]:
    """Indices to draw of n points: all when n <= MAX_POINTS; else, in each of about
    MAX_POINTS / (2 x the series) buckets, the lowest and highest point of each series (and always
    the first and last point)."""
    if n <= MAX_POINTS:
        return list(range(n))
    size = math.ceil(n / (MAX_POINTS // (2 * len(series) + 1)))
    keep = {0, n - 1}
    for start in range(0, n, size):
        idx = range(start, min(start + size, n))
        for values in series:
            keep.add(min(idx, key=values.__getitem__))
            keep.add(max(idx, key=values.__getitem__))
    return sorted(keep)


def _equity_chart(curve: list[tuple[float, float, float]]) -> str:
    if not curve:
        return '<p class="note">No equity points (the run wrote no heartbeat).</p>'
    equity = [e for _, e, _ in curve]
    drawdown = [-d for _, _, d in curve]
    keep = _keep(len(curve), [equity, drawdown])
    x = [_x(curve[i][0]) for i in keep]
    traces = [
        {
            "type": "scatter",
            "x": x,
            "y": [equity[i] for i in keep],
            "name": "equity",
            "line": {"color": "#1f5fa8"},
        },
        {
            "type": "scatter",
            "x": x,
            "y": [drawdown[i] for i in keep],
            "name": "drawdown %",
            "fill": "tozeroy",
            "line": {"color": "#c0392b"},
            "xaxis": "x2",
            "yaxis": "y2",
        },
    ]
    note = f" ({len(keep):,} of {len(curve):,} points drawn)" if len(keep) < len(curve) else ""
    layout = {
        **TWO_ROWS,
        "title": {"text": f"Equity at every heartbeat{note}"},
        "height": 480,
        "showlegend": False,
    }
    layout["yaxis"] = {
        **TWO_ROWS["yaxis"],
        "title": {"text": "equity (USDT)"},
        "tickformat": ",.2f",
        "hoverformat": ",.2f",
    }
    layout["yaxis2"] = {**TWO_ROWS["yaxis2"], "title": {"text": "drawdown %"}, "hoverformat": ".2f"}
    return _plot("chart-equity", traces, layout)


def _price_section(data: RunData, symbol: str, trade_list: list[Trade]) -> str:
    dp = _price_dp(data, symbol)
    traces: list[dict[str, Any]] = []
    candles = data.candles.get(symbol, [])
    title = f"{symbol}: "
    interval = float(candles[0].get("interval_s", 60)) if candles else 0.0
    if candles:
        merged, k = _merge_candles(candles)
        title += f"candles of {_duration(interval * k)}" + (f" ({k} merged into one)" if k > 1 else "")
        traces.append(
            {
                "type": "candlestick",
                "x": [_x(c["open_ts"]) for c in merged],
                "open": [c["open"] for c in merged],
                "high": [c["high"] for c in merged],
                "low": [c["low"] for c in merged],
                "close": [c["close"] for c in merged],
                "name": "candles",
            }
        )
    xs, ys = _heartbeat_prices(data, symbol)
    if xs:
        keep = _keep(len(xs), [ys])
        title += ("; " if candles else "") + "price at every heartbeat"
        if len(keep) < len(xs):
            title += f" ({len(keep):,} of {len(xs):,} drawn)"
        traces.append(
            {
                "type": "scatter",
                "x": [_x(xs[i]) for i in keep],
                "y": [ys[i] for i in keep],
                "name": "price (heartbeats)",
                "line": {"color": "#555", "width": 1},
            }
        )
    mine = [t for t in trade_list if t.symbol == symbol]
    marked = mine
    if len(mine) > MAX_MARKED_TRADES:
        step = len(mine) / MAX_MARKED_TRADES
        marked = [mine[int(i * step)] for i in range(MAX_MARKED_TRADES)]
        title += f"; {len(marked):,} of {len(mine):,} trades marked"
    traces += _trade_marks(marked, dp)
    windows = [(t.entry_ts, t.exit_ts) for t in marked] if len(marked) < len(mine) else None
    traces += _bracket_traces(data, symbol, windows)
    if not traces:
        return ""
    layout: dict[str, Any] = {
        "title": {"text": title},
        "height": 520,
        "xaxis": {"rangeslider": {"visible": False}},
        "yaxis": {"title": {"text": "price"}, "tickformat": f",.{dp}f", "hoverformat": f",.{dp}f"},
        "legend": {"orientation": "h"},
    }
    started, stopped = data.started, data.stopped
    if candles and started and stopped and candles[0]["open_ts"] < ts_of(started) - 10 * interval:
        # the history the strategies warmed up on is there to zoom out to; show the session
        layout["xaxis"]["range"] = [_x(ts_of(started) - 5 * interval), _x(ts_of(stopped) + interval)]
    return _section(f"Price: {symbol}", _plot(f"chart-price-{symbol}", traces, layout))


def _merge_candles(candles: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    k = max(1, math.ceil(len(candles) / MAX_POINTS))
    if k == 1:
        return candles, 1
    merged = []
    for i in range(0, len(candles), k):
        group = candles[i : i + k]
        merged.append(
            {
                "open_ts": group[0]["open_ts"],
                "open": group[0]["open"],
                "high": max(c["high"] for c in group),
                "low": min(c["low"] for c in group),
                "close": group[-1]["close"],
            }
        )
    return merged, k


def _heartbeat_prices(data: RunData, symbol: str) -> tuple[list[float], list[float]]:
    """The symbol's price at every heartbeat (a price chart's line when the run recorded no candles)."""
    first = data.symbols[0] if data.symbols else ""
    xs, ys = [], []
    for r in data.of("heartbeat"):
        price = (r.get("prices") or {}).get(symbol)
        if price is None and symbol == first:
            price = r.get("price")
        if price:
            xs.append(ts_of(r))
            ys.append(float(price))
    return xs, ys


def _trade_marks(marked: list[Trade], dp: int) -> list[dict[str, Any]]:
    if not marked:
        return []
    entries = {
        "type": "scatter",
        "mode": "markers",
        "name": "entries",
        "x": [_x(t.entry_ts) for t in marked],
        "y": [t.entry_price for t in marked],
        "marker": {
            "symbol": ["triangle-up" if t.side == "long" else "triangle-down" for t in marked],
            "size": 11,
            "color": ["#11823b" if t.side == "long" else "#c0392b" for t in marked],
        },
        "text": [f"{t.side} {t.qty:g} @ {t.entry_price:,.{dp}f}" for t in marked],
        "hoverinfo": "text+x",
    }
    exits = {
        "type": "scatter",
        "mode": "markers",
        "name": "exits",
        "x": [_x(t.exit_ts) for t in marked],
        "y": [t.exit_price for t in marked],
        "marker": {"symbol": "x", "size": 10, "color": "#222"},
        "text": [f"exit ({t.exit_reason}) @ {t.exit_price:,.{dp}f}: net {_money(t.net_pnl)}" for t in marked],
        "hoverinfo": "text+x",
    }
    return [entries, exits]


BRACKETS = (("stop_loss", "stops", "#c0392b"), ("take_profit", "targets", "#11823b"))
# every other order that works at a price (a strategy's entry waiting for it) is drawn as an entry
ENTRY_SEGMENTS = ("entry", "entry orders", "#2e86c1")


def _bracket_traces(
    data: RunData, symbol: str, windows: list[tuple[float, float]] | None
) -> list[dict[str, Any]]:
    """The stop and target orders, and the entries that wait for a price, as horizontal segments
    at their price, from when they start working until they are cancelled, filled or the run
    ends; with `windows` (the marked trades' entry and exit times, when only a sample is marked)
    those that start within one."""
    if not data.of("order.working"):
        return []  # no stop or target order in the run (no need to read its fills)
    first = data.symbols[0] if data.symbols else symbol
    last_symbol = first
    working: dict[str, tuple[str, str, float]] = {}
    kinds = (*BRACKETS, ENTRY_SEGMENTS)
    segments: dict[str, list[tuple[str, str, float]]] = {reason: [] for reason, _, _ in kinds}
    for r in data.records:
        kind = r["kind"]
        if kind == "order.filled":
            last_symbol = r.get("symbol") or first
        if kind == "order.working":
            # a bracket names its symbol (runs before it did: the fill it follows in the same step)
            price = resting_price(r)
            if (r.get("symbol") or last_symbol) == symbol and price:
                reason = r.get("reason")
                working[r["order_id"]] = (
                    reason if reason in segments else ENTRY_SEGMENTS[0],
                    _x_iso(r),
                    float(price),
                )
        elif kind in ("order.cancelled", "order.filled", "order.amended") and r.get("order_id") in working:
            reason, begin, price = working.pop(r["order_id"])
            segments[reason].append((begin, _x_iso(r), price))
            new_price = r.get("trigger_price") or r.get("limit_price")
            if kind == "order.amended" and new_price:
                working[r["order_id"]] = (reason, _x_iso(r), float(new_price))
    for reason, begin, price in working.values():
        segments[reason].append((begin, _x_iso(data.stopped) if data.stopped else begin, price))
    spans = [(_x(a), _x(b)) for a, b in windows] if windows is not None else None
    traces: list[dict[str, Any]] = []
    for reason, name, color in kinds:
        xs: list[str | None] = []
        ys: list[float | None] = []
        for begin, finish, price in segments[reason]:
            if spans is None or _within(begin, spans):
                xs += [begin, finish, None]
                ys += [price, price, None]
        if xs:
            traces.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "name": name,
                    "x": xs,
                    "y": ys,
                    "line": {"color": color, "dash": "dot", "width": 1.5},
                }
            )
    return traces


def _within(x: str, spans: list[tuple[str, str]]) -> bool:
    """Whether the time `x` (as plotly reads it: such strings sort as times do) is in a span."""
    i = bisect.bisect_right(spans, (x, "~")) - 1
    return i >= 0 and spans[i][0] <= x <= spans[i][1]


def _fills_chart(fills: list[dict[str, Any]]) -> str:
    if not fills:
        return '<p class="note">No fills.</p>'
    # a resting order's latency is how long it rested: only market orders' say how long a fill takes
    latency = [
        round(r["latency_ms"], 2)
        for r in fills
        if r.get("latency_ms") is not None and r.get("type", "market") == "market"
    ]
    slippage = [round(r["slippage_bps"], 3) for r in fills if r.get("slippage_bps") is not None]
    traces: list[dict[str, Any]] = []
    if latency:
        traces.append({"type": "histogram", "x": latency, "name": "latency", "marker": {"color": "#1f5fa8"}})
    if slippage:
        traces.append(
            {
                "type": "histogram",
                "x": slippage,
                "name": "slippage",
                "marker": {"color": "#d68910"},
                "xaxis": "x2",
                "yaxis": "y2",
            }
        )
    layout = {
        "height": 340,
        "showlegend": False,
        "bargap": 0.05,
        "title": {"text": f"{len(fills):,} fills"},
        "xaxis": {
            "domain": [0.0, 0.46],
            "anchor": "y",
            "title": {"text": "latency of market orders' fills (ms)"},
        },
        "xaxis2": {
            "domain": [0.54, 1.0],
            "anchor": "y2",
            "title": {"text": "slippage (bps; positive: worse)"},
        },
        "yaxis": {"anchor": "x", "title": {"text": "fills"}},
        "yaxis2": {"anchor": "x2"},
    }
    return _plot("chart-fills", traces, layout)


def _trade_table(data: RunData, trade_list: list[Trade]) -> str:
    if not trade_list:
        return '<p class="note">No closed trades.</p>'
    head = (
        "<tr><th>#</th><th>symbol</th><th>side</th><th>qty</th><th>entry (UTC)</th><th>entry price</th>"
        "<th>exit (UTC)</th><th>exit price</th><th>PnL (USDT)</th><th>fees (USDT)</th>"
        "<th>slippage (USDT, in PnL)</th><th>net PnL (USDT)</th><th>held</th><th>exit reason</th></tr>"
    )
    dps = {s: (_price_dp(data, s), _qty_dp(data, s)) for s in {t.symbol for t in trade_list}}
    rows = []
    for n, t in enumerate(trade_list[:MAX_TRADE_ROWS], 1):
        pdp, qdp = dps[t.symbol]
        cls = "pos" if t.net_pnl > 0 else "neg" if t.net_pnl < 0 else ""
        rows.append(
            f'<tr><td>{n}</td><td class="text">{_e(t.symbol)}</td><td class="text">{t.side}</td>'
            f"<td>{t.qty:.{qdp}f}</td><td>{_time(t.entry_ts)}</td><td>{t.entry_price:,.{pdp}f}</td>"
            f"<td>{_time(t.exit_ts)}</td><td>{t.exit_price:,.{pdp}f}</td><td>{_money(t.realized_pnl)}</td>"
            f"<td>{_money(t.fees)}</td><td>{_money(t.slippage)}</td>"
            f'<td class="{cls}">{_money(t.net_pnl)}</td><td>{_duration(t.held_s)}</td>'
            f'<td class="text">{_e(t.exit_reason)}</td></tr>'
        )
    note = (
        f'<p class="note">The first {MAX_TRADE_ROWS:,} of {len(trade_list):,} trades; every one is in '
        "events.jsonl (`position.closed`).</p>"
        if len(trade_list) > MAX_TRADE_ROWS
        else ""
    )
    return f'{note}<div class="scroll"><table id="trades">{head}{"".join(rows)}</table></div>'


def _entry_table(data: RunData) -> str:
    """The entries that rested at the market waiting for a price (the `order.working` orders
    other than stops and targets), with what became of each: filled (when its whole quantity
    had), cancelled (when, and why) or still working when the run ended."""
    rows: dict[str, dict[str, Any]] = {}
    for r in data.records:
        kind = r["kind"]
        if kind == "order.working":
            if is_resting_entry(r):
                rows.setdefault(r["order_id"], {**r, "filled": 0.0, "outcome": "working at the end"})
        elif kind == "order.filled":
            row = rows.get(r.get("order_id", ""))
            if row is not None:
                row["filled"] += r["qty"]
                if row["filled"] >= row["qty"] - FLAT_EPS:
                    row["outcome"] = f"filled {_x_iso(r)[:19]}"
                else:
                    row["outcome"] = "partly filled"
        elif kind == "order.cancelled":
            row = rows.get(r.get("order_id", ""))
            if row is not None:
                row["outcome"] = f"cancelled {_x_iso(r)[:19]} ({r.get('reason', '?')})"
    if not rows:
        return '<p class="note">No entry rested at the market (every entry, if any, was a market order).</p>'
    entries = list(rows.values())
    head = (
        "<tr><th>#</th><th>working from (UTC)</th><th>symbol</th><th>side</th><th>type</th><th>qty</th>"
        "<th>price</th><th>reason</th><th>outcome (UTC)</th></tr>"
    )
    lines = []
    for n, e in enumerate(entries[:MAX_TRADE_ROWS], 1):
        symbol = e.get("symbol", "")
        price = resting_price(e)
        lines.append(
            f'<tr><td>{n}</td><td>{_e(_x_iso(e)[:19])}</td><td class="text">{_e(symbol)}</td>'
            f'<td class="text">{_e(e.get("side", "?"))}</td><td class="text">{_e(e.get("type", "?"))}</td>'
            f"<td>{e.get('qty', 0.0):.{_qty_dp(data, symbol)}f}</td><td>{price:,.{_price_dp(data, symbol)}f}</td>"
            f'<td class="text">{_e(e.get("reason", ""))}</td><td class="text">{_e(e["outcome"])}</td></tr>'
        )
    filled = sum(e["outcome"].startswith("filled") for e in entries)
    note = (
        f'<p class="note">{len(entries):,} {"entry" if len(entries) == 1 else "entries"} rested at '
        f"the market; {filled:,} filled."
        + (
            f" The first {MAX_TRADE_ROWS:,} are listed; every one is in events.jsonl (`order.working`)."
            if len(entries) > MAX_TRADE_ROWS
            else ""
        )
        + "</p>"
    )
    return f'{note}<div class="scroll"><table id="entries">{head}{"".join(lines)}</table></div>'


def _feed_section(data: RunData) -> str:
    events = [r for kind in FEED_KINDS for r in data.of(kind)]
    report = data.report or {}
    counts = Counter(r["kind"] for r in events)
    summary = [
        ("connections", counts["feed.connected"]),
        ("reconnects", report.get("reconnects", 0)),
        ("feed downtime", _duration(report.get("feed_downtime_s") or 0.0)),
        ("stale", counts["feed.stale"]),
        ("REST failovers", sum(1 for r in events if r["kind"] == "feed.failover" and r.get("active"))),
        ("fallback to mock", counts["feed.fallback"]),
        ("REST retries", report.get("rest_retries", 0)),
        (
            "malformed frames dropped",
            ", ".join(f"{k}: {v}" for k, v in (report.get("malformed_dropped") or {}).items()) or "0",
        ),
    ]
    table = "".join(f'<tr><th>{_e(k)}</th><td class="text">{_e(v)}</td></tr>' for k, v in summary)
    if not events:
        return (
            f'<p class="note">No feed events: the data came from '
            f"{_e(data.started.get('data_source', 'a file'))}.</p>"
        )
    traces: list[dict[str, Any]] = []
    for kind in FEED_KINDS:
        mine = data.of(kind)
        if mine:
            traces.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "name": kind.removeprefix("feed."),
                    "x": [_x_iso(r) for r in mine],
                    "y": [kind.removeprefix("feed.")] * len(mine),
                    "marker": {"size": 10},
                    "text": [_feed_text(r) for r in mine],
                    "hoverinfo": "text+x",
                }
            )
    layout = {
        "title": {"text": "feed events over time"},
        "height": 320,
        "showlegend": False,
        "yaxis": {"type": "category"},
    }
    return f'<table id="feed-summary">{table}</table>' + _plot("chart-feed", traces, layout)


def _feed_text(r: dict[str, Any]) -> str:
    parts = [
        f"{k}={r[k]}"
        for k in (
            "reason",
            "attempt",
            "delay_s",
            "downtime_s",
            "active",
            "symbols",
            "counts",
            "symbol",
            "silent",
        )
        if r.get(k) not in (None, "")
    ]
    return ", ".join(parts) or r["kind"]


def _risk_section(data: RunData) -> str:
    rejected = Counter(r.get("reason", "?") for r in data.of("order.rejected"))
    parts = []
    if rejected:
        reasons = sorted(rejected, key=lambda k: -rejected[k])
        bars = {
            "type": "bar",
            "x": reasons,
            "y": [rejected[k] for k in reasons],
            "marker": {"color": "#d68910"},
        }
        layout = {"title": {"text": "orders rejected, by reason"}, "height": 300}
        parts.append(_plot("chart-rejections", [bars], layout))
    else:
        parts.append('<p class="note">No order was rejected.</p>')
    trips = data.of("breaker.tripped")
    parts.append(
        _event_table(
            "breakers",
            f"Breaker trips ({len(trips)})",
            trips,
            ("reason", "detail", "action", "halted_until_iso"),
        )
    )
    liquidations = data.of("liquidation")
    parts.append(
        _event_table(
            "liquidations",
            f"Liquidations ({len(liquidations)})",
            liquidations,
            ("symbol", "position_qty", "mark_price", "liquidation_price", "margin"),
        )
    )
    return "".join(parts)


def _event_table(table_id: str, title: str, records: list[dict[str, Any]], fields: Sequence[str]) -> str:
    if not records:
        return f"<h3>{_e(title)}</h3>"
    head = "<tr><th>time (UTC)</th>" + "".join(f"<th>{_e(f)}</th>" for f in fields) + "</tr>"
    rows = "".join(
        f"<tr><td>{_e(_x_iso(r)[:19])}</td>"
        + "".join(f'<td class="text">{_e(_cell(r.get(f)))}</td>' for f in fields)
        + "</tr>"
        for r in records[:MAX_TRADE_ROWS]
    )
    return f'<h3>{_e(title)}</h3><div class="scroll"><table id="{table_id}">{head}{rows}</table></div>'


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) >= 1 else f"{value:g}"
    return str(value)


def _attribution(report: dict[str, Any] | None) -> str:
    if not report:
        return ""
    parts = []
    for key, title in (("strategies", "strategy"), ("symbols", "symbol")):
        table = report.get(key) or {}
        if len(table) < 2:
            continue
        fields = list(next(iter(table.values())))
        head = (
            f"<tr><th>{title}</th>"
            + "".join(f"<th>{_e(f)}{' (USDT)' if f in MONEY_FIELDS else ''}</th>" for f in fields)
            + "</tr>"
        )
        rows = "".join(
            f'<tr><td class="text">{_e(name or "(nobody)")}</td>'
            + "".join(f"<td>{_money(v) if isinstance(v, float) else _e(v)}</td>" for v in row.values())
            + "</tr>"
            for name, row in table.items()
        )
        account = _account_row(report, fields)
        if account is not None:
            rows += (
                '<tr><th class="text">account</th>'
                + "".join(f"<th>{_money(v) if isinstance(v, float) else _e(v)}</th>" for v in account)
                + "</tr>"
            )
        parts.append(f'<h3>By {title}</h3><table id="by-{title}">{head}{rows}</table>')
    if parts:  # found by an audit: three rounded rows summed to a cent off the total shown
        # and (another audit) the counts were said to add up: two strategies' overlapping round
        # trips are one of the net position's (212 trades in the rows, 211 the account's)
        parts.append(
            '<p class="note">The money (realized_pnl, fees, funding, net_pnl) adds up to the account '
            "row exactly before rounding (realized_pnl once every strategy is flat, as at a clean "
            "end); each figure is rounded to the cent on its own, so the rows may differ from it by "
            "a cent or two after. The counts need not add up: a fill shared by "
            "strategies counts in each of their fills; their trades are the round trips of each one's "
            "own virtual position, the account's those of the net position (two strategies in the "
            "market at once make two trades of theirs and one of the account's, or opposite ones more), "
            "and a strategy's wins and losses count the funding charged to it, the account's leave "
            "funding out (as the statistics do).</p>"
        )
    return _section("Per strategy and per symbol", "".join(parts))


def _account_row(report: dict[str, Any], fields: list[str]) -> list[Any] | None:
    """The account's figures under the attribution tables' columns (None: the report lacks one)."""
    try:
        realized, fees, funding = report["realized_pnl"], report["fees_paid"], report["funding_paid"]
        figures = {
            "fills": report["fills"],
            "trades": report["trade_count"],
            "wins": report["wins"],
            "losses": report["losses"],
            "realized_pnl": float(realized),
            "fees": float(fees),
            "funding": float(funding),
            "net_pnl": float(realized) - float(fees) - float(funding),  # nothing unrealized, as a row's
        }
        return [figures[f] for f in fields]
    except (KeyError, TypeError, ValueError):
        return None


def _comparison_chart(runs: list[RunData], names: list[str]) -> str:
    traces: list[dict[str, Any]] = []
    for name, run in zip(names, runs, strict=True):
        curve = equity_curve(run.records)
        if not curve:
            continue
        t0, e0 = curve[0][0], curve[0][1]
        ret = [(e / e0 - 1) * 100 for _, e, _ in curve]
        dd = [-d for _, _, d in curve]
        keep = _keep(len(curve), [ret, dd])
        hours = [(curve[i][0] - t0) / 3600 for i in keep]
        line = {"type": "scatter", "x": hours, "name": name, "legendgroup": name}
        traces.append({**line, "y": [ret[i] for i in keep]})
        traces.append({**line, "y": [dd[i] for i in keep], "showlegend": False, "xaxis": "x2", "yaxis": "y2"})
    layout = {
        **TWO_ROWS,
        "height": 520,
        "legend": {"orientation": "h"},
        "xaxis2": {"anchor": "y2", "title": {"text": "hours since the start"}},
        "yaxis": {**TWO_ROWS["yaxis"], "title": {"text": "return %"}, "hoverformat": ".2f"},
        "yaxis2": {**TWO_ROWS["yaxis2"], "title": {"text": "drawdown %"}, "hoverformat": ".2f"},
    }
    return _plot("chart-compare", traces, layout)
