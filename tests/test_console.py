"""What a person sees: fills and closed trades on the console, the progress panel, the end summary;
session.log as JSON lines, rotated and pruned; the one-line messages of the fake exchange and of
the feed's fallback."""

from __future__ import annotations

import io
import json
import math
import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio_websocket
from hypothesis import example, given, settings
from hypothesis import strategies as st
from loguru import logger

from actors import logs, progress
from actors.console import ConsoleSink, closed_line, crossed_line, fill_line, fmt_money
from actors.feeds.bitunix import _network_reason
from protocols.messages import Cancel
from tests.conftest import REPO, cli_env, read_events, read_report, run_cli, run_main

TRADES = [
    "--set",
    "strategy.fast_period=2",
    "--set",
    "strategy.slow_period=5",
    "--set",
    "risk.max_orders_per_minute=100",
    "--set",
    "risk.max_loss_pct=50",
    "--set",
    "risk.max_daily_drawdown_pct=50",
    "--set",
    "risk.max_consecutive_losses=0",
]


def _candles(path: Path, n: int = 1500) -> Path:
    rng = random.Random(7)
    price, t0 = 60000.0, 1_700_000_000_000
    rows = ["open_time_ms,open,high,low,close,volume"]
    for i in range(n):
        close = price * math.exp(rng.gauss(0, 0.002) + 0.001 * math.sin(i / 15))
        high, low = max(price, close) * 1.0005, min(price, close) * 0.9995
        rows.append(
            f"{t0 + i * 60_000},{price:.1f},{high:.1f},{low:.1f},{close:.1f},{rng.uniform(5, 50):.3f}"
        )
        price = close
    path.write_text("\n".join(rows) + "\n")
    return path


def test_quiet_prints_no_fill_or_trade_lines_but_records_them_all(tmp_path: Path) -> None:
    data = _candles(tmp_path / "candles.csv")
    runs = str(tmp_path / "runs")
    done = run_main(
        "--mode", "backtest", "--data", str(data), "--run-dir", runs, "--quiet", *TRADES, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = read_report(tmp_path / "runs" / "latest")
    assert report["fills"] > 6 and report["trade_count"] > 3
    assert not [line for line in done.stderr.splitlines() if line.startswith(("FILL ", "CLOSED "))]
    assert f"session {report['run_id']}" in done.stderr and f"{report['net_pnl']:+,.2f} USDT" in done.stderr


def test_backtest_prints_every_fill_and_trade_and_the_summary(tmp_path: Path) -> None:
    data = _candles(tmp_path / "candles.csv")
    done = run_cli(
        "--mode", "backtest", "--data", str(data), "--run-dir", str(tmp_path / "runs"), *TRADES, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "runs" / "latest"
    report = read_report(run)
    assert report["trade_count"] > 3
    lines = done.stderr.splitlines()
    fills = [line for line in lines if line.startswith("FILL ")]
    closed = [line for line in lines if line.startswith("CLOSED ")]
    assert len(fills) == report["fills"]
    assert len(closed) == report["trade_count"]
    first = next(e for e in read_events(run) if e["kind"] == "order.filled")
    assert fills[0] == fill_line(first)
    assert f"@ {first['fill_price']:,.1f}" in fills[0]  # the price on BTCUSDT's tick
    assert " -> " in closed[0] and "net " in closed[0] and "held " in closed[0] and "exit " in closed[0]
    summary = done.stderr[done.stderr.index(f"session {report['run_id']}") :]
    for label in (
        "net PnL",
        "return",
        "win rate",
        "profit factor",
        "max drawdown",
        "fees paid",
        "funding paid",
    ):
        assert label in summary, label
    assert f"{report['net_pnl']:+,.2f} USDT" in summary
    assert "final_report.json" in summary or "report.html" in summary


def test_a_backtest_without_a_terminal_prints_progress_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)
    stream = io.StringIO()
    with progress.BacktestProgress("auto", stream=stream) as shown:  # a StringIO is no terminal
        assert shown.mode == "plain"
        shown.update(4096, 1_700_000_000.0)
        shown.update(8192, 1_700_245_760.0)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("backtest: 8,192 candles in ") and "candles/s" in lines[1]
    assert "data time 2023-11-17 18:29 UTC" in lines[1]
    with progress.BacktestProgress("off", stream=stream) as shown:
        assert not shown.on


@pytest.mark.slow  # a CLI session as a process (4 s): nox -s tests runs it, nox -s quick leaves it out
def test_live_progress_shows_the_position_line_and_the_summary(tmp_path: Path) -> None:
    done = run_cli(
        "--source",
        "mock",
        "--duration",
        "0.05",
        "--run-dir",
        str(tmp_path / "runs"),
        "--set",
        "observability.progress=plain",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    panel = [line for line in done.stderr.splitlines() if line.startswith("elapsed ")]
    assert panel, done.stderr
    assert "BTCUSDT flat" in panel[0] and "trades 0" in panel[0] and "unrealized" in panel[0]
    assert "profit factor" in done.stderr and "stop reason: duration" in done.stderr
    # the run folder's log: JSON lines, the console's messages among them
    log = tmp_path / "runs" / "latest" / "session.log"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(r["record"]["message"].startswith("stopping: duration") for r in records)


def test_session_log_rotates_and_keeps_the_configured_number_of_files(tmp_path: Path) -> None:
    logs.configure("ERROR", logs.RunLog(rotation_mb=2 / 1024, retention_files=3))  # 2 KiB
    try:
        sink = logs.open_run_log(tmp_path)
        for i in range(200):
            logger.info("message {} {}", i, "x" * 100)
        logger.remove(sink)
    finally:
        logs.configure()
    files = sorted(tmp_path.glob("session*.log"))
    assert (tmp_path / "session.log") in files
    assert len(files) == 4, files  # the current one and the 3 newest rotated ones
    for path in files:
        assert path.stat().st_size < 4 * 1024
        for line in path.read_text().splitlines():
            assert json.loads(line)["record"]["message"].startswith("message ")
    newest = json.loads((tmp_path / "session.log").read_text().splitlines()[-1])
    assert newest["record"]["message"].startswith("message 199 ")


def test_the_panel_shows_the_stop_and_target_the_broker_works() -> None:
    """The records of a real broker's bracket (a stop-market with its trigger, a take-profit limit
    with its limit price): the sink shows both (the target was '-': it looked for a trigger)."""
    from tests.test_fills import Backtest, make_broker, order

    bt = Backtest(make_broker(slippage_bps=0.0))
    entry = order("o1", "buy", 0.01, stop_price=99000.0, target_price=101000.0)
    events = bt.candle(100000.0, 100000.0, 100000.0, 100000.0, 100.0, [entry])
    sink = ConsoleSink()
    for event in events:
        sink.observe({"ts": "2024-01-02T03:04:05.000Z", "kind": event.kind, **event.fields})
    assert sink.stop_and_target("BTCUSDT") == (99000.0, 101000.0)


def test_an_entry_waiting_for_its_price_is_shown_until_it_fills_or_is_cancelled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A real broker's records: a buy limit below the market rests (an ORDER line; the panel names
    it beside a flat position), then is cancelled unfilled (a CANCEL line; gone from the panel);
    a second rests and fills (the FILL line; gone). Its stop and target are not entries."""
    from tests.test_fills import Backtest, make_broker, order

    bt = Backtest(make_broker(slippage_bps=0.0))
    sink = ConsoleSink(echo=True)

    def observe(events: list[Any]) -> None:
        for event in events:
            sink.observe({"ts": "2024-01-02T03:04:05.000Z", "kind": event.kind, **event.fields})

    first = attrs.evolve(
        order("e1", "buy", 0.01, order_type="limit", limit_price=99_500.0), reason="pullback_entry_long"
    )
    observe(bt.candle(100_000.0, 100_100.0, 99_900.0, 100_000.0, 100.0, [first]))
    assert sink.working_entry("BTCUSDT") == "BUY LIMIT 0.01 @ 99,500.0"
    assert sink.working_entry("ETHUSDT") is None
    shown = progress.panel_lines(
        60.0,
        540.0,
        bt.broker.snapshot(bt.now),
        progress.Position("BTCUSDT", working=sink.working_entry("BTCUSDT")),
    )
    assert shown[1] == "BTCUSDT flat  entry BUY LIMIT 0.01 @ 99,500.0 working"
    observe(bt.broker.cancel(Cancel("e1", bt.now, "expired")))
    assert sink.working_entry("BTCUSDT") is None

    second = order(
        "e2",
        "buy",
        0.01,
        order_type="limit",
        limit_price=99_800.0,
        stop_price=99_000.0,
        target_price=101_000.0,
    )
    observe(bt.candle(100_000.0, 100_100.0, 99_900.0, 100_000.0, 100.0, [second]))
    assert sink.working_entry("BTCUSDT") == "BUY LIMIT 0.01 @ 99,800.0"
    observe(bt.candle(100_000.0, 100_000.0, 99_700.0, 99_900.0, 100.0))  # down through its price
    assert sink.working_entry("BTCUSDT") is None
    assert sink.stop_and_target("BTCUSDT") == (99_000.0, 101_000.0)  # the bracket, not entries
    lines = capsys.readouterr().err.splitlines()
    assert (
        lines[0]
        == "ORDER  2024-01-02 03:04:05 UTC  BTCUSDT  BUY LIMIT 0.01 @ 99,500.0  working (pullback_entry_long)"
    )
    assert lines[1] == "CANCEL 2024-01-02 03:04:05 UTC  BTCUSDT  BUY LIMIT 0.01 @ 99,500.0  (expired)"
    assert lines[2].startswith("ORDER  ") and lines[2].endswith("@ 99,800.0  working (test)")
    assert lines[3].startswith("FILL   ") and "BUY 0.01 @ 99,800.0" in lines[3]
    assert len(lines) == 4
    # filled in parts (each fill flagged partial or not, as the broker's path was): it works on
    # until its whole quantity has filled
    base = {"ts": "2024-01-02T03:04:05.000Z", "symbol": "ETHUSDT", "order_id": "e3", "side": "sell"}
    sink.echo = False
    sink.observe({**base, "kind": "order.working", "type": "limit", "qty": 0.5, "limit_price": 3000.0,
                  "trigger_price": None, "reason": "pullback_entry_short"})  # fmt: skip
    for qty, partial in ((0.2, True), (0.2, False), (0.1, True)):
        assert sink.working_entry("ETHUSDT") == "SELL LIMIT 0.5 @ 3,000.00"
        sink.observe({**base, "kind": "order.filled", "qty": qty, "partial": partial, "fill_price": 3000.0,
                      "fee": 0.1})  # fmt: skip
    assert sink.working_entry("ETHUSDT") is None


def test_the_console_sink_tracks_stop_target_and_trade_figures() -> None:
    sink = ConsoleSink()
    base = {"ts": "2024-01-02T03:04:05.000Z"}
    sink.observe(
        {**base, "kind": "order.working", "order_id": "p1", "trigger_price": 59000.0, "reason": "stop_loss"}
    )
    sink.observe(
        {
            **base,
            "kind": "order.working",
            "order_id": "p2",
            "type": "limit",
            "limit_price": 61000.0,
            "trigger_price": None,
            "reason": "take_profit",
        }
    )
    assert sink.stop_and_target("BTCUSDT") == (59000.0, 61000.0)
    sink.observe({**base, "kind": "order.cancelled", "order_id": "p1"})
    sink.observe({**base, "kind": "order.rejected", "reason": "max_position_size"})  # no order id
    assert sink.stop_and_target("BTCUSDT") == (None, 61000.0)
    closed = {
        **base,
        "kind": "position.closed",
        "side": "long",
        "qty": 0.0012,
        "entry_price": 60006.350000000006,
        "exit_price": 60100.04,
        "net_pnl": 0.1049999,
        "held_s": 3723.0,
        "exit_reason": "take_profit",
        "symbol": "BTCUSDT",
    }
    sink.observe(closed)
    sink.observe({**closed, "net_pnl": -0.05})
    assert (sink.trades, sink.wins) == (2, 1)
    assert sink.profit_factor is not None and abs(sink.profit_factor - 2.1) < 1e-3
    assert closed_line(closed) == (
        "CLOSED 2024-01-02 03:04:05 UTC  BTCUSDT  LONG 0.0012  60,006.4 -> 60,100.0  net +0.10  "
        "held 1h02m03s  exit take_profit"
    )


def test_a_cross_of_opposite_strategies_says_no_trade_and_no_fee() -> None:
    crossed = {
        "ts": "2024-01-02T03:04:05.000Z",
        "kind": "position.crossed",
        "symbol": "BTCUSDT",
        "price": 59948.9,
        "reason": "breaker",
        "allocations": [["fast", 0.001, -0.012, 0.0], ["slow", -0.001, -0.1458, 0.0]],
    }
    assert crossed_line(crossed) == (
        "CROSSED 2024-01-02 03:04:05 UTC  BTCUSDT  fast BUY 0.001 (realized -0.01), slow SELL 0.001 "
        "(realized -0.15)  @ 59,948.9  (net flat: no trade, no fee; breaker)"
    )


def test_the_fallback_reason_names_a_failed_name_resolution() -> None:
    try:
        try:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        except socket.gaierror as cause:
            raise trio_websocket.HandshakeError() from cause
    except trio_websocket.HandshakeError as exc:
        reason = _network_reason(exc)
    assert reason is not None
    assert "name resolution" in reason and "Name or service not known" in reason
    assert "HandshakeError()" not in reason


def test_the_fake_exchange_without_the_test_extra_says_what_to_install() -> None:
    code = (
        "import sys, runpy; sys.modules['hypercorn'] = None; "
        "runpy.run_module('tools.fake_bitunix', run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "pip install -e '.[test]'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (-0.001, "+0.00"),
        (-0.0, "+0.00"),
        (0.004, "+0.00"),
        (-0.005, "-0.01"),
        (1234.5, "+1,234.50"),
        (-2.0, "-2.00"),
    ],
)
def test_money_never_shows_a_negative_zero(amount: float, shown: str) -> None:
    """A funding total of -0.0003 was printed `-0.00`: a sign for nothing."""
    assert fmt_money(amount) == shown


def test_the_summary_agrees_with_the_report_page_on_return_and_profit_factor(tmp_path: Path) -> None:
    """An audit against the page's definitions: the return is net PnL over the starting equity
    (rounded once: the report's return_pct is rounded already, and -0.02499974 came out -0.03);
    a return that rounds to zero is +0.00, not -0.00; without a loss the profit factor is "-"
    (None, as on the page; it said "inf")."""
    from actors.console import summary_rows
    from actors.recording.html_report import _fmt

    sink = ConsoleSink()
    sink.observe({"ts": "2024-01-02T03:04:05.000Z", "kind": "position.closed", "side": "long", "qty": 0.01,
                  "entry_price": 1.0, "exit_price": 2.0, "net_pnl": 3.0, "held_s": 60.0, "exit_reason": "x"})  # fmt: skip
    report = {
        "status": "ok", "stop_reason": "data_end", "net_pnl": -2.499974, "starting_equity": 10_000.0,
        "return_pct": -0.025, "trade_count": 1, "max_drawdown_pct": 0.1, "fees_paid": 1.0, "funding_paid": 0.0,
        "fills": 2, "orders_submitted": 2, "orders_rejected": {},
    }  # fmt: skip
    rows = dict(summary_rows(report, sink, tmp_path))
    assert rows["return"] == "-0.02 %" and rows["profit factor"] == "-"
    tiny = dict(summary_rows({**report, "net_pnl": -0.000001, "starting_equity": 1e6}, sink, tmp_path))
    assert tiny["return"] == "+0.00 %"
    # funding: a cost when positive; received says so (an audit read "-2.26" beside the fees as paid)
    assert rows["funding paid"] == "0.00 USDT" and rows["fees paid"] == "1.00 USDT"
    assert dict(summary_rows({**report, "funding_paid": 2.26}, sink, tmp_path))["funding paid"] == "2.26 USDT"
    received = dict(summary_rows({**report, "funding_paid": -2.26}, sink, tmp_path))["funding paid"]
    assert received == "-2.26 USDT (received 2.26)"
    assert (
        dict(summary_rows({**report, "funding_paid": -0.001}, sink, tmp_path))["funding paid"] == "0.00 USDT"
    )
    assert (_fmt(-0.00025, "pct"), _fmt(-0.001, "ratio"), _fmt(-0.0001, "pct_fraction")) == (
        "0.00 %",
        "0.00",
        "0.0 %",
    )


# --- the summary drawn without rich when stderr is not a terminal ---------------------------------

_CELL = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(title=_CELL, rows=st.lists(st.tuples(_CELL, _CELL), min_size=1, max_size=14))
@example(title="0", rows=[("0", ":A:")])  # an emoji code (rich draws the letter A emoji)
def test_the_plain_summary_is_the_table_rich_draws(title: str, rows: list[tuple[str, str]]) -> None:
    """Where `plain_table` draws the summary, it is rich's own drawing on a stream that is not a
    terminal, character for character (rich is the reference); where it does not (too wide, or
    text rich reads as markup or as an emoji code: two colons in a cell), rich draws it."""
    from rich.console import Console
    from rich.table import Table

    from actors.console import PLAIN_WIDTH, plain_table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("figure", style="bold")
    table.add_column("value")
    for label, value in rows:
        table.add_row(label, value)
    out = io.StringIO()
    Console(file=out, width=PLAIN_WIDTH).print(table)
    plain = plain_table(title, rows, "utf-8")
    width = max(len(a) for a, _ in rows) + max(len(b) for _, b in rows) + 7
    markup = "[" in title + "".join(a + b for a, b in rows)
    markup |= any(cell.count(":") > 1 for cell in (title, *(a for a, _ in rows), *(b for _, b in rows)))
    assert (plain is None) == (width > PLAIN_WIDTH or len(title) > width or markup)
    if plain is not None:
        assert plain == out.getvalue()


def test_the_plain_summary_needs_box_lines_the_stream_can_write() -> None:
    from actors.console import plain_table

    rows = [("status", "ok"), ("net PnL", "+1.00 USDT")]
    assert plain_table("session s", rows, "utf-8") is not None
    assert plain_table("session s", rows, "ascii") is None  # rich draws it, in its ASCII box
    assert plain_table("session s", [("report", "/tmp/é/report.html")], "utf-8") is None


def test_the_summary_gives_the_stop_in_its_own_words(tmp_path: Path) -> None:
    """Found by a report audit: the summary table and line said `stop reason: max_loss` and
    `stop_reason=max_loss`, not why (`session loss ... >= ... %`), which the report page says; the
    report now keeps the stop's detail (`stop_detail`) and both give it."""
    data = _candles(tmp_path / "candles.csv")
    flags = [*TRADES, "--set", "risk.max_loss_pct=0.05"]  # a limit the first losses cross
    done = run_main(
        "--mode", "backtest", "--data", str(data), "--run-dir", str(tmp_path / "runs"), *flags, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run = tmp_path / "runs" / "latest"
    report = read_report(run)
    stopped = next(e for e in read_events(run) if e["kind"] == "session.stopped")
    assert report["stop_reason"] == stopped["stop_reason"] == "max_loss"
    assert stopped["detail"].startswith("session loss ") and stopped["detail"].endswith(" >= 0.05 %")
    assert report["stop_detail"] == stopped["detail"]
    table = done.stderr[done.stderr.index(f"session {report['run_id']}") :]
    assert "│ stop detail " in table and f"{stopped['detail']} " in table
    line = done.stderr.splitlines()[-1]
    assert line.startswith(
        f"session {report['run_id']} ok: stop_reason=max_loss ({stopped['detail']}) net_pnl="
    ), line


TWO_SYMBOLS_OFTEN = """
[session]
symbol = "BTCUSDT"
interval = "2s"
[feed]
source = "mock"
mock_volatility_pct = 150
[risk]
max_position_size = 10
max_notional = 2000
max_total_notional = 3000
max_orders_per_minute = 100
sizing = "fixed"
max_loss_pct = 50
max_daily_drawdown_pct = 50
max_consecutive_losses = 0
[[strategies]]
id = "btc_fast"
kind = "ema_cross"
history = 10
fast_period = 3
slow_period = 8
order_qty = 0.01
[[strategies]]
id = "eth_fast"
kind = "ema_cross"
symbol = "ETHUSDT"
history = 10
fast_period = 2
slow_period = 5
order_qty = 0.01
"""


async def test_the_live_panel_of_two_symbols_shows_each_symbols_position_as_the_heartbeat(
    tmp_path: Path, autojump_clock: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by the cockpit audit: with several symbols the panel showed the session symbol's
    position only; holding ETHUSDT short and BTCUSDT long, it said `BTCUSDT LONG ...`, the short
    nowhere. Each plain progress line against the heartbeat of the same second in events.jsonl
    (the broker's record): every symbol, its side and size."""
    from actors.config import load
    from actors.session import run_session

    config_path = tmp_path / "two.toml"
    config_path.write_text(TWO_SYMBOLS_OFTEN)
    sets = [f"session.run_dir={tmp_path / 'runs'}", f"session.kill_switch={tmp_path / 'kill.txt'}"]
    config = load(config_path, {}, [*sets, "session.duration_min=3"])
    result = await run_session(config, handle_signals=False, progress_mode="plain")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("elapsed ")]
    heartbeats = {round(e["elapsed_s"]): e for e in read_events(result.run_path) if e["kind"] == "heartbeat"}
    checked = held = 0
    for line in lines:
        minutes, seconds = line.split()[1].split(":")
        heartbeat = heartbeats[int(minutes) * 60 + int(seconds)]
        shown = {}
        for part in line.split(" | ")[1:-1]:
            words = part.split()
            shown[words[0]] = (
                0.0 if words[1] == "flat" else float(words[2]) * (1 if words[1] == "LONG" else -1)
            )
        assert shown == pytest.approx(heartbeat["positions"], abs=1e-9), line
        checked += 1
        held += all(heartbeat["positions"].values())
    assert checked == 179 and held >= 10  # every second; both symbols held at once in some


def test_the_live_panel_counts_hours_as_the_monitor_does() -> None:
    """A 3-hour session (found by the cockpit audit): the panel said `elapsed 62:05  remaining
    117:55` where the monitor says 1:02:05; under an hour both say MM:SS."""
    from tests.test_fills import make_broker

    account = make_broker().snapshot(0.0)
    first = progress.panel_lines(3725.0, 7075.0, account, progress.Position("BTCUSDT"))[0]
    assert first.startswith("elapsed 1:02:05  remaining 1:57:55  price ")
    first = progress.panel_lines(59.0, 3541.0, account, progress.Position("BTCUSDT"))[0]
    assert first.startswith("elapsed 00:59  remaining 59:01  price ")
