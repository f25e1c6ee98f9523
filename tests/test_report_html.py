"""report.html: the statistics against hand-worked values; the page of a backtest and of a live
session against the project's fake exchange opened in headless Chromium (no console error, every
chart drew its data, a screenshot, the statistics shown equal those recomputed here from
events.jsonl); `python -m tools.report`; a page that cannot be built never fails the session.

Chromium is driven through the DevTools protocol on a WebSocket (trio-websocket): it is started on
about:blank, the page's console and exceptions are listened to before it loads, and what it drew
is read by evaluating JavaScript. The browser tests skip, saying why, without Debian's `chromium`
(.ci/run installs it)."""

from __future__ import annotations

import base64
import itertools
import json
import math
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from actors.plan import Plan
from actors.recording import html_report
from actors.recording.report_stats import STATISTICS, statistics, trades, ts_of
from actors.session import Session
from tests.conftest import REPO, cli_env, make_config, read_events
from tests.test_feed_bitunix import ZIGZAG_TRADER, live_session, offset_for_close_in
from tests.test_replay_backtest import write_bars
from tools.fake_bitunix import FakeBitunix, Faults

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not installed (Debian: apt-get install chromium; .ci/run installs it)",
)
# A strategy that trades often on write_bars' candles; the default breaker trips now and then.
BACKTEST_SETS = ("strategy.fast_period=5", "strategy.slow_period=20", "observability.progress=off")


# --- the statistics, by hand ----------------------------------------------------------------------


def _ev(kind: str, ts: str, **fields: Any) -> dict[str, Any]:
    return {"kind": kind, "ts": f"2024-01-01T{ts}.000Z", **fields}


def _fill(ts: str, side: str, qty: float, position: float, realized: float, bps: float) -> dict[str, Any]:
    return _ev(
        "order.filled",
        ts,
        side=side,
        qty=qty,
        requested_price=100.0,
        fill_price=100.0,
        fee=1.0,
        realized_pnl=realized,
        slippage_bps=bps,
        position_qty=position,
        symbol="BTCUSDT",
    )


T0 = datetime.fromisoformat("2024-01-01T00:00:00+00:00").timestamp()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _closed(
    ts: str, side: str, opened_h: float, held_h: float, realized: float, net: float
) -> dict[str, Any]:
    return _ev(
        "position.closed",
        ts,
        side=side,
        qty=1.0,
        entry_price=100.0,
        exit_price=101.0,
        realized_pnl=realized,
        fees=realized - net,
        net_pnl=net,
        opened_ts=T0 + opened_h * 3600,
        held_s=held_h * 3600,
        exit_reason="signal",
        symbol="BTCUSDT",
    )


HAND_WORKED = [
    _ev("session.started", "00:00:00", symbol="BTCUSDT", starting_equity=1000.0),
    # equity 1000 -> 1100 -> 1210 -> 1089 -> 1197.9: returns +10 %, +10 %, -10 %, +10 %
    _ev("heartbeat", "01:00:00", equity=1100.0, drawdown_pct=0.0),
    _ev("heartbeat", "02:00:00", equity=1210.0, drawdown_pct=0.0),
    _ev("heartbeat", "03:00:00", equity=1089.0, drawdown_pct=10.0),
    _ev("heartbeat", "04:00:00", equity=1197.9, drawdown_pct=1.0),
    # six fills of slippage 10 bps of 100 x 1 (0.10 each), 1.00 fee each; realized 32, -8, -18
    _fill("00:30:00", "buy", 1, 1, 0.0, 10),
    _fill("01:30:00", "sell", 1, 0, 32.0, 10),
    _fill("01:30:00", "sell", 1, -1, 0.0, 10),
    _fill("02:30:00", "buy", 1, 0, -8.0, 10),
    _fill("03:00:00", "buy", 1, 1, 0.0, 10),
    _fill("03:30:00", "sell", 1, 0, -18.0, 10),
    # trades of net +30, -10, -20: held [0.5 h, 1.5 h], [1 h, 2.5 h] (overlapping), [3 h, 3.5 h]
    _closed("01:30:00", "long", 0.5, 1.0, 32.0, 30.0),
    _closed("02:30:00", "short", 1.0, 1.5, -8.0, -10.0),
    _closed("03:30:00", "long", 3.0, 0.5, -18.0, -20.0),
    _ev("funding", "02:00:00", amount=0.5),
    _ev("session.stopped", "04:00:00", ending_equity=1197.9, max_drawdown_pct=10.0),
]


def test_statistics_against_hand_worked_values() -> None:
    s = statistics(HAND_WORKED)
    assert (s["trades"], s["wins"], s["losses"], s["fills"]) == (3, 1, 2, 6)
    assert s["win_rate"] == pytest.approx(1 / 3)
    assert s["avg_win"] == pytest.approx(30.0)
    assert s["avg_loss"] == pytest.approx(-15.0)
    assert s["profit_factor"] == pytest.approx(1.0)  # 30 won / 30 lost
    assert s["expectancy"] == pytest.approx(0.0)
    assert s["gross_pnl"] == pytest.approx(6.0)  # 32 - 8 - 18
    assert s["fees"] == pytest.approx(6.0)
    assert s["slippage"] == pytest.approx(0.6)
    assert s["funding"] == pytest.approx(0.5)
    assert s["fees_share"] == pytest.approx(1.0) and s["slippage_share"] == pytest.approx(0.1)
    assert s["net_pnl"] == pytest.approx(197.9) and s["return_pct"] == pytest.approx(19.79)
    assert s["max_drawdown_pct"] == 10.0
    # hourly points over 4 hours: too short a curve to annualise
    assert s["sample_s"] == 3600
    assert s["sharpe"] is None and s["sortino"] is None

    # the same equity every 6 hours, a day in all: returns 0.1, 0.1, -0.1, 0.1, mean 0.05, sample
    # stdev 0.1, downside sqrt(0.01 / 4) = 0.05; sqrt(4 x 365) periods a year
    def stretched(last_s: float) -> list[dict[str, Any]]:
        """HAND_WORKED's equity curve at 6-hour steps, its last point (and stop) at `last_s`."""
        out = []
        for r in HAND_WORKED:
            if r["kind"] in ("heartbeat", "session.stopped"):
                r = {**r, "ts": _iso(min(T0 + (ts_of(r) - T0) * 6, T0 + last_s))}
            out.append(r)
        return out

    day = statistics(stretched(86_400))
    assert day["sample_s"] == 6 * 3600
    assert day["sharpe"] == pytest.approx(0.5 * math.sqrt(1460))
    assert day["sortino"] == pytest.approx(1.0 * math.sqrt(1460))
    assert statistics(stretched(86_399))["sharpe"] is None  # a second short of a day
    # in the market 0.5 h .. 2.5 h and 3 h .. 3.5 h: 2.5 h of the run's 4 h
    assert s["time_in_market"] == pytest.approx(2.5 / 4)


def test_no_sharpe_from_a_few_hours_of_curve_spread_over_a_day_by_a_gap_in_the_data() -> None:
    """Found by an audit: a backtest of 80 one-minute candles, a gap of 24 h 40 min in the data,
    then 11 more, showed a Sharpe of -106.74 and a Sortino of -76.10 from the 4 returns of its
    hourly equity curve (3 trades): the curve's span, 26 h, passed the rule that keeps the ratios
    from a curve shorter than a day. Here hourly points at 0, 1, 2, 3 h and 27, 28 h: 5 returns,
    5 h of curve; annualised from them the ratios would say nothing."""
    records: list[dict[str, Any]] = [
        _ev("session.started", "00:00:00", symbol="BTCUSDT", starting_equity=1000.0)
    ]
    for hour, equity in ((1, 1100.0), (2, 1210.0), (3, 1089.0), (27, 1197.9), (28, 1100.0)):
        records.append(
            {"kind": "heartbeat", "ts": _iso(T0 + hour * 3600), "equity": equity, "drawdown_pct": 0.0}
        )
    records.append({"kind": "session.stopped", "ts": _iso(T0 + 28 * 3600), "ending_equity": 1100.0})
    s = statistics(records)
    assert s["sample_s"] == 3600
    assert s["sharpe"] is None and s["sortino"] is None
    # the same points an hour apart, 5 h in all: short, as it always was
    even = [
        r if r["kind"] != "heartbeat" or ts_of(r) < T0 + 4 * 3600 else {**r, "ts": _iso(ts_of(r) - 23 * 3600)}
        for r in records
    ]
    assert statistics(even)["sharpe"] is None


def test_a_sharpe_from_few_trades_is_shown_with_a_caveat() -> None:
    """Found by an audit: a Sharpe and Sortino from 3 trades were shown like any other (-106.74,
    -76.10), with nothing to say they mean little. HAND_WORKED's curve over a day: 3 trades, a
    Sharpe of 0.5 x sqrt(1460) = 19.10 and a Sortino of 38.21, each now said to be from 3 trades;
    from 30 trades, as before."""
    stats = {key: None for key, _, _ in STATISTICS} | {"trades": 3, "sharpe": 19.1049, "sortino": 38.2099}
    table = html_report._stats_table(stats, "stat")
    assert ">19.10 (3 trades: too few to judge by)<" in table
    assert ">38.21 (3 trades: too few to judge by)<" in table
    assert 'data-value="19.1049"' in table  # the figure itself, as before
    table = html_report._stats_table({**stats, "trades": 30}, "stat")
    assert ">19.10<" in table and ">38.21<" in table and "too few" not in table
    table = html_report._stats_table({**stats, "sharpe": None, "sortino": None}, "stat")
    assert "too few" not in table  # none shown, nothing to caveat


def test_the_slippage_cost_is_said_to_be_in_the_gross_pnl_already() -> None:
    """Found by an audit: the statistics read gross PnL -45.64, fees 154.41, slippage cost 34.66,
    funding 0.00, net PnL -200.05 (config/templates/two_setups.toml over the perp data): -45.64 -
    154.41 = -200.05, the slippage being in the fills' prices and so in the gross PnL already, but
    nothing said so, and a trader taking it off too gets -234.71. The trade list's columns alike
    (PnL -1.77, fees 0.80, slippage 0.20, net -2.57). The label and the column now say it."""
    stats = {key: None for key, _, _ in STATISTICS} | {"trades": 0}
    table = html_report._stats_table(stats, "stat")
    label = re.search(r'<tr><th>([^<]*)</th><td id="stat-slippage"', table)
    assert label is not None and "in the gross PnL" in label.group(1), label
    trade = html_report.Trade(
        "BTCUSDT",
        "short",
        0.0094,
        T0,
        105825.5,
        T0 + 120,
        106014.0,
        -1.7719,
        0.797,
        0.199,
        -2.569,
        120.0,
        "stop_loss",
    )
    data = html_report.RunData(Path("."), [], {}, None, {}, {})
    head = html_report._trade_table(data, [trade]).split("</tr>", 1)[0]
    assert "<th>slippage (USDT, in PnL)</th>" in head


def _summary_rows(records: list[dict[str, Any]], report: dict[str, Any] | None) -> dict[str, str]:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_kind.setdefault(r["kind"], []).append(r)
    data = html_report.RunData(Path("run"), records, by_kind, report, {}, {})
    page = html_report._summary(data, statistics(records))
    return dict(re.findall(r'<tr><th>([^<]*)</th><td class="text">([^<]*)</td></tr>', page))


def test_the_summary_says_why_the_run_stopped_its_seed_its_end_its_alerts_and_config() -> None:
    """Found by an audit: the page's summary said `ok (stop reason: max_loss)` and no more: not
    the stop's detail (`session loss 2.00 % >= 2 %`; an abandoned run's `its position was lost
    with the process`), the seed the run drew its market (mock) or latencies from, whether it
    ended flat, nor the alerts raised (76 breaker trips in one backtest); nor was the
    configuration on the page, only in final_report.json."""
    started = _ev("session.started", "00:00:00", symbol="BTCUSDT", starting_equity=1000.0, seed=7)
    alert = _ev("alert", "00:10:00", rule="breaker", severity="warning", message="tripped")
    stopped = _ev(
        "session.stopped",
        "01:00:00",
        status="ok",
        stop_reason="max_loss",
        detail="session loss 2.00 % >= 2 %",
        ending_equity=980.0,
        open_positions=[],
    )
    records = [started, alert, {**alert, "rule": "liquidation"}, alert, stopped]
    report = {"config": {"risk": {"max_loss_pct": 2.0}}, "strategies": {}}
    rows = _summary_rows(records, report)
    assert rows["status"] == "ok (stop reason: max_loss: session loss 2.00 % &gt;= 2 %)"
    assert rows["seed"] == "7"
    assert rows["at the end"] == "flat"
    assert rows["alerts"] == "3: breaker 2, liquidation 1"
    held = {"symbol": "BTCUSDT", "side": "long", "qty": 0.01, "avg_price": 60000.0, "unrealized_pnl": -1.234}
    rows = _summary_rows([started, {**stopped, "status": "abandoned", "open_positions": [held]}], None)
    assert rows["at the end"] == "open: BTCUSDT long 0.0100 @ 60,000.0 (unrealized -1.23)"
    assert rows["alerts"] == "none"
    assert rows["status"].startswith("abandoned")
    # abandoned by a kill: no open_positions (its process held them), but its fills leave a long
    fill = _fill("00:30:00", "buy", 0.01, 0.01, 0.0, 0)
    lost = {**stopped, "status": "abandoned", "detail": "killed; its position was lost with the process"}
    rows = _summary_rows([started, fill, lost], None)
    assert (
        rows["at the end"]
        == "not flat: its fills leave BTCUSDT +0.0100 (the stop&#x27;s detail says what became of it)"
    )
    section = html_report._configuration(report)
    assert "<h2>Configuration</h2>" in section and "max_loss_pct" in section
    assert html_report._configuration(None) == ""


def test_every_sum_of_money_on_the_page_says_its_currency_and_the_sampling_its_unit() -> None:
    """Found by an audit: the summary's equity (10,000.00), the statistics' money (Net PnL
    -200.05, Fees 154.41, ...), the trade list's and the attribution tables' money said no
    currency (only the equity chart's axis said USDT), and the equity's sampling, shown
    '1 h 00 min', was labelled 'Equity sampled every (s)'."""
    labels = {key: label for key, label, _ in STATISTICS}
    for key, _, how in STATISTICS:
        if how == "money":
            assert labels[key].endswith("(USDT)"), labels[key]
    assert "(s)" not in labels["sample_s"]
    started = _ev("session.started", "00:00:00", symbol="BTCUSDT", starting_equity=10000.0, seed=42)
    stopped = _ev("session.stopped", "01:00:00", status="ok", stop_reason="duration", ending_equity=9799.95)
    rows = _summary_rows([started, stopped], {"funding_source": "none", "funding_paid": 0.0})
    assert rows["starting equity"] == "10,000.00 USDT" and rows["ending equity"] == "9,799.95 USDT"
    assert rows["net PnL"] == "-200.05 USDT (-2.00 %)"
    # its times say their zone (found by the same audit: only the footer did)
    assert rows["period"] == "2024-01-01 00:00:00 UTC -&gt; 2024-01-01 01:00:00 UTC (1 h 00 min)"
    assert rows["funding"].startswith("0.00 USDT paid; ")
    trade = html_report.Trade(
        "BTCUSDT", "long", 0.01, T0, 100.0, T0 + 60, 101.0, 1.0, 0.1, 0.0, 0.9, 60.0, "x"
    )
    data = html_report.RunData(Path("."), [], {}, None, {}, {})
    head = html_report._trade_table(data, [trade]).split("</tr>", 1)[0]
    assert re.findall(r"<th>([^<]*USDT[^<]*)</th>", head) == [
        "PnL (USDT)",
        "fees (USDT)",
        "slippage (USDT, in PnL)",
        "net PnL (USDT)",
    ]
    row = {"fills": 2, "trades": 1, "wins": 1, "losses": 0, "realized_pnl": 1.0}
    row |= {"fees": 0.1, "funding": 0.0, "net_pnl": 0.9}
    section = html_report._attribution({"strategies": {"a": row, "b": row}})
    assert re.findall(r"<th>([^<]*USDT[^<]*)</th>", section) == [
        "realized_pnl (USDT)",
        "fees (USDT)",
        "funding (USDT)",
        "net_pnl (USDT)",
    ]


def test_the_longest_losing_streak_is_counted_across_the_breakers_halts() -> None:
    """Found by an audit: config/templates/two_setups.toml over the perp data lost 55 trades in a
    row (counted here from events.jsonl), through 76 trips of its max_consecutive_losses = 5
    breaker, each a halt of 30 minutes; nothing on the page said so, and the breaker's 5 read as
    the worst run of losses there could be. Net results +1, -1, -2, 0, -1, -1, -1, +3: the 0
    ends a streak (not a loss), so the longest is 3."""
    records = [_ev("session.started", "00:00:00", symbol="BTCUSDT", starting_equity=1000.0)]
    for n, net in enumerate((1.0, -1.0, -2.0, 0.0, -1.0, -1.0, -1.0, 3.0)):
        records.append(_closed(f"00:{n:02d}:00", "long", 0, 0.01, net, net))
    assert statistics(records)["max_losing_streak"] == 3
    assert statistics(records[:1])["max_losing_streak"] == 0
    assert "max_losing_streak" in {key for key, _, _ in STATISTICS}


def test_the_summary_counts_the_machines_alerts_that_only_alerts_jsonl_holds(tmp_path: Path) -> None:
    """Found by an audit: `memory` and `disk` alerts are not in events.jsonl (alerts.jsonl only),
    so a session that ran out of disk (critical) read `alerts: none` on its page. The page reads
    them from alerts.jsonl (those without a seq: an event's alert is counted from its event)."""
    run = tmp_path / "run"
    run.mkdir()
    started = _ev("session.started", "00:00:00", symbol="BTCUSDT", starting_equity=1000.0, seed=7)
    breaker = _ev("alert", "00:10:00", seq=2, rule="breaker", severity="warning", message="tripped")
    stopped = _ev("session.stopped", "01:00:00", status="ok", stop_reason="duration", ending_equity=1000.0)
    (run / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (started, breaker, stopped)))
    lines = [
        {"ts": breaker["ts"], "seq": 2, "rule": "breaker", "severity": "warning"},
        {"ts": breaker["ts"], "seq": None, "rule": "disk", "severity": "critical"},
        {"ts": breaker["ts"], "seq": None, "rule": "memory", "severity": "warning"},
        {"ts": breaker["ts"], "seq": None, "rule": "disk", "severity": "critical"},
    ]
    (run / "alerts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"ts": "torn')
    data = html_report.load_run(run)
    page = html_report._summary(data, statistics(data.records))
    rows = dict(re.findall(r'<tr><th>([^<]*)</th><td class="text">([^<]*)</td></tr>', page))
    assert rows["alerts"] == "4: breaker 1, disk 2, memory 1"


def test_the_summary_counts_resolved_alerts_apart_from_the_conditions(tmp_path: Path) -> None:
    """A condition that ends is said by a resolved alert of its rule (severity info): the page
    counts the conditions by rule and the resolved apart (not a feed outage counted twice)."""
    run = tmp_path / "run"
    run.mkdir()
    started = _ev("session.started", "00:00:00", symbol="BTCUSDT", starting_equity=1000.0, seed=7)
    down = _ev("alert", "00:10:00", seq=2, rule="feed_down", severity="critical", message="down")
    back = _ev("alert", "00:11:00", seq=3, rule="feed_down", severity="info", message="resolved: back")
    stopped = _ev("session.stopped", "01:00:00", status="ok", stop_reason="duration", ending_equity=1000.0)
    records = (started, down, back, stopped)
    (run / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = [
        {"ts": down["ts"], "seq": 2, "rule": "feed_down", "severity": "critical"},
        {"ts": back["ts"], "seq": 3, "rule": "feed_down", "severity": "info"},
        {"ts": down["ts"], "seq": None, "rule": "disk", "severity": "critical"},
        {"ts": back["ts"], "seq": None, "rule": "disk", "severity": "info"},
    ]
    (run / "alerts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    data = html_report.load_run(run)
    page = html_report._summary(data, statistics(data.records))
    rows = dict(re.findall(r'<tr><th>([^<]*)</th><td class="text">([^<]*)</td></tr>', page))
    assert rows["alerts"] == "2: disk 1, feed_down 1; 2 resolved"


def test_statistics_undefined_where_nothing_defines_them() -> None:
    flat = [
        _ev("session.started", "00:00:00", symbol="BTCUSDT", starting_equity=1000.0),
        _ev("heartbeat", "00:00:01", equity=1000.0, drawdown_pct=0.0),
        _ev("heartbeat", "00:00:02", equity=1000.0, drawdown_pct=0.0),
        _ev("session.stopped", "00:00:02", ending_equity=1000.0, max_drawdown_pct=0.0),
    ]
    s = statistics(flat)
    assert s["trades"] == 0 and s["fills"] == 0
    for key in ("win_rate", "avg_win", "avg_loss", "profit_factor", "expectancy", "sharpe", "sortino"):
        assert s[key] is None, key
    assert s["fees_share"] is None and s["time_in_market"] == 0.0 and s["sample_s"] == 1.0
    only_wins = [*flat[:3], _closed("00:00:02", "long", 0, 0.0001, 5.0, 4.0), flat[3]]
    assert statistics(only_wins)["profit_factor"] is None  # no loss to divide by


def test_trade_slippage_of_a_flip_is_shared_by_quantity() -> None:
    records = [
        _ev("session.started", "00:00:00", symbol="BTCUSDT", starting_equity=1000.0),
        _fill("00:01:00", "buy", 1, 1, 0.0, 10),  # 0.10, opens a long
        _fill("00:02:00", "sell", 2, -1, 1.0, 20),  # 0.40: half closes the long, half opens a short
        _closed("00:02:00", "long", 0, 0.1, 1.0, 0.0),
        _fill("00:03:00", "buy", 1, 0, 1.0, 10),  # 0.10, closes the short
        _closed("00:03:00", "short", 0, 0.1, 1.0, 0.0),
    ]
    assert [round(t.slippage, 9) for t in trades(records)] == [0.3, 0.3]


# --- the session and the CLI ------------------------------------------------------------------------


def _backtest_in_process(tmp_path: Path, *sets: str, candles: int = 400) -> Path:
    tmp_path.mkdir(exist_ok=True)
    data = tmp_path / "bars.csv"
    write_bars(data, candles)
    config = make_config(tmp_path, *BACKTEST_SETS, *sets)
    return Session(config, Plan(mode="backtest", data=str(data))).run_kernel().run_path


@pytest.mark.parametrize(
    ("sets", "words"),
    [
        ((), "funding NOT modelled: no --funding FILE"),
        (("broker.funding=constant", "broker.funding_rate_pct=0.05"), "funding at the constant"),
    ],
)
def test_the_summary_says_what_funding_was_paid_and_where_it_came_from(
    tmp_path: Path, sets: tuple[str, ...], words: str
) -> None:
    # the page a trader reads says it as plainly as the summary line: not modelled is not zero
    run = _backtest_in_process(tmp_path, *sets, candles=1000)  # past 08:00 UTC, a funding instant
    report = json.loads((run / "final_report.json").read_text())
    paid = sum(e["amount"] for e in read_events(run) if e["kind"] == "funding")
    assert report["funding_paid"] == pytest.approx(paid, abs=1e-6)
    assert (paid != 0) == bool(sets)  # the constant rate charged the positions held at 00/08/16 UTC
    page = (run / "report.html").read_text()
    row = page.split("<th>funding</th>", 1)[1].split("</tr>", 1)[0]
    # paid, or received (a short position paid by the longs: never "-0.30 paid")
    said = (
        f"{-round(paid, 2):,.2f} USDT received; "
        if round(paid, 2) < 0
        else f"{round(paid, 2) + 0.0:,.2f} USDT paid; "
    )
    assert said in row and words in row


def test_a_page_that_cannot_be_built_never_fails_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(data: Any) -> str:
        raise RuntimeError("plotting broke")

    monkeypatch.setattr(html_report, "report_page", broken)
    warnings: list[str] = []
    sink = html_report.logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    try:
        run = _backtest_in_process(tmp_path)
    finally:
        html_report.logger.remove(sink)
    report = json.loads((run / "final_report.json").read_text())
    assert report["status"] == "ok" and report["trade_count"] > 0
    assert not (run / "report.html").exists()
    assert any("report.html not written" in w and "plotting broke" in w for w in warnings)


def _report_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.report", *args],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # processes
def _without_time(page: bytes) -> bytes:
    return re.sub(rb"Written [0-9-]+ [0-9:]+ UTC", b"Written", page)


def test_tools_report_rebuilds_compares_and_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    run = _backtest_in_process(tmp_path)
    page = run / "report.html"
    assert page.is_file()  # written by the session itself, from the records as they were written
    written = _without_time(page.read_bytes())
    page.unlink()
    done = _report_cli(str(tmp_path / "runs" / "latest"))
    assert done.returncode == 0, done.stderr
    assert page.is_file() and "Plotly.newPlot" in page.read_text()
    assert _without_time(page.read_bytes()) == written  # the page the file gives, byte for byte
    assert "<script src=" not in page.read_text()  # the bundle is inlined: works offline

    other = _backtest_in_process(tmp_path / "second")
    out = tmp_path / "both.html"
    done = _report_cli(str(run), str(other), "-o", str(out))
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert run.name in text and 'id="chart-compare"' in text and 'id="cmp-1-trades"' in text

    for bad in (tmp_path, tmp_path / "missing"):
        done = _report_cli(str(bad))
        assert done.returncode == 2
        assert "is not a run folder" in done.stderr or "does not exist" in done.stderr
        assert "Traceback" not in done.stderr


# --- in the browser ---------------------------------------------------------------------------------


class DevTools:
    """A minimal DevTools-protocol client: commands to one page (a flat session), and the
    console errors and exceptions it reported."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.next_id = 0
        self.waiting: dict[int, trio.Event] = {}
        self.replies: dict[int, dict[str, Any]] = {}
        self.session = ""
        self.loaded = trio.Event()
        self.errors: list[str] = []

    async def receive(self) -> None:
        while True:
            try:
                message = json.loads(await self.ws.get_message())
            except ConnectionClosed:
                return  # the browser closed
            if "id" in message:
                self.replies[message["id"]] = message
                self.waiting.pop(message["id"]).set()
                continue
            method, params = message.get("method"), message.get("params", {})
            if method == "Page.loadEventFired":
                self.loaded.set()
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                self.errors.append(f"console.{params['type']}: {params['args']}")
            elif method == "Runtime.exceptionThrown":
                self.errors.append(f"exception: {params['exceptionDetails']}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                self.errors.append(f"log: {params['entry']['text']}")

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        done = self.waiting[self.next_id] = trio.Event()
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        await self.ws.send_message(json.dumps(message))
        with trio.fail_after(60):
            await done.wait()
        reply = self.replies.pop(message["id"])
        assert "error" not in reply, f"{method}: {reply['error']}"
        result: dict[str, Any] = reply["result"]
        return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")


@asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[DevTools]:
    """Headless Chromium on about:blank, a DevTools client attached to its page."""
    assert CHROMIUM is not None
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        "about:blank",
    ]
    async with trio.open_nursery() as nursery:
        proc = await nursery.start(
            partial(trio.run_process, args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        )
        assert proc.stderr is not None
        url, seen = "", b""
        with trio.fail_after(60):
            while not url:
                chunk = await proc.stderr.receive_some()
                assert chunk, f"chromium exited: {seen.decode(errors='replace')[-2000:]}"
                seen += chunk
                for line in seen.decode(errors="replace").splitlines():
                    if line.startswith("DevTools listening on "):
                        url = line.removeprefix("DevTools listening on ").strip()
        nursery.start_soon(_drain, proc.stderr)
        try:
            async with open_websocket_url(url, max_message_size=64 * 1024 * 1024) as ws:
                tools = DevTools(ws)
                nursery.start_soon(tools.receive)
                target = await tools.call("Target.createTarget", url="about:blank")
                attached = await tools.call(
                    "Target.attachToTarget", targetId=target["targetId"], flatten=True
                )
                tools.session = attached["sessionId"]
                for domain in ("Page", "Runtime", "Log"):
                    await tools.call(f"{domain}.enable")
                await tools.call(
                    "Emulation.setDeviceMetricsOverride",
                    width=1400,
                    height=1000,
                    deviceScaleFactor=1,
                    mobile=False,
                )
                yield tools
                tools.session = ""
                with trio.move_on_after(10):
                    await tools.call("Browser.close")
        finally:
            with trio.move_on_after(15):
                await proc.wait()
            nursery.cancel_scope.cancel()


async def _drain(stream: Any) -> None:
    while await stream.receive_some():
        pass


# For each chart: its id, the points of each trace, and the drawn SVG paths of each trace.
CHARTS_JS = """JSON.stringify(Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => ({
  id: gd.id,
  points: gd.data.map(t => (t.x || t.open || []).filter(v => v !== null).length),
  drawn: Array.from(gd.querySelectorAll('.cartesianlayer g.trace')).map(g =>
    Array.from(g.querySelectorAll('path')).filter(p => (p.getAttribute('d') || '').length > 4).length),
})))"""
STATS_JS = """JSON.stringify(Array.from(document.querySelectorAll('#statistics td[id^="stat-"]')).map(td =>
  [td.id.slice(5), td.dataset.value, td.textContent]))"""


async def open_report(run: Path, shot: Path) -> tuple[list[dict[str, Any]], dict[str, tuple[str, str]]]:
    """Open the run's report.html; assert no console error; screenshot it. Its charts and its
    statistics (name -> (exact value, text shown))."""
    page = run / "report.html"
    assert page.is_file()
    async with chromium(shot.parent / "chromium-profile") as tools:
        await tools.call("Page.navigate", url=page.as_uri())
        with trio.fail_after(60):
            await tools.loaded.wait()
            expected = await tools.evaluate("document.querySelectorAll('div.chart').length")
            while True:  # plotly draws each chart once its data is in
                charts = json.loads(await tools.evaluate(CHARTS_JS))
                if len(charts) == expected and all(len(c["drawn"]) == len(c["points"]) for c in charts):
                    break
                await trio.sleep(0.1)
        stats = {name: (value, text) for name, value, text in json.loads(await tools.evaluate(STATS_JS))}
        metrics = await tools.call("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        png = await tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)
        image = base64.b64decode(png["data"])
        await trio.Path(shot).write_bytes(image)
        await trio.sleep(0.2)  # late console messages
        assert tools.errors == [], tools.errors
    assert image[:8] == b"\x89PNG\r\n\x1a\n" and len(image) > 100_000
    width, height = int.from_bytes(image[16:20], "big"), int.from_bytes(image[20:24], "big")
    assert width > 1300 and height > 2000  # the whole page (charts, tables), as wide as the window
    return charts, stats


def assert_every_chart_drew(charts: list[dict[str, Any]], expected: set[str]) -> None:
    assert expected <= {c["id"] for c in charts}, [c["id"] for c in charts]
    for chart in charts:
        assert chart["points"] and all(n > 0 for n in chart["points"]), chart
        assert all(n > 0 for n in chart["drawn"]), chart


def recompute(events: list[dict[str, Any]]) -> dict[str, float | int | None]:
    """The page's statistics from events.jsonl, by this test's own arithmetic."""

    def when(e: dict[str, Any]) -> float:
        return datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()

    (start,) = [e for e in events if e["kind"] == "session.started"]
    (stop,) = [e for e in events if e["kind"] == "session.stopped"]
    nets = [e["net_pnl"] for e in events if e["kind"] == "position.closed"]
    fills = [e for e in events if e["kind"] == "order.filled"]
    wins, losses = [x for x in nets if x > 0], [x for x in nets if x < 0]
    gross = math.fsum(f["realized_pnl"] for f in fills)
    fees = math.fsum(f["fee"] for f in fills)
    slip = math.fsum(f["slippage_bps"] * f["requested_price"] * f["qty"] / 1e4 for f in fills)
    times = [when(start)] + [when(e) for e in events if e["kind"] == "heartbeat"]
    equity = [start["starting_equity"]] + [e["equity"] for e in events if e["kind"] == "heartbeat"]
    gaps = sorted(b - a for a, b in itertools.pairwise(times) if b > a)
    mid = len(gaps) // 2
    step = gaps[mid] if len(gaps) % 2 else (gaps[mid - 1] + gaps[mid]) / 2
    rets = [b / a - 1 for a, b in itertools.pairwise(equity)]
    mean = math.fsum(rets) / len(rets)
    sd = math.sqrt(math.fsum((r - mean) ** 2 for r in rets) / (len(rets) - 1))
    down = math.sqrt(math.fsum(r * r for r in rets if r < 0) / len(rets))
    per_year = math.sqrt(365 * 24 * 3600 / step)
    # no ratios for a curve sampling less than a day: its steps, each at most the median one
    a_day = math.fsum(min(g, step) for g in gaps) >= 86_400
    held = sorted(
        (e["opened_ts"], e["opened_ts"] + e["held_s"]) for e in events if e["kind"] == "position.closed"
    )
    covered, reach = 0.0, -math.inf
    for a, b in held:
        covered += max(0.0, b - max(a, reach))
        reach = max(reach, b)
    net = stop["ending_equity"] - start["starting_equity"]
    drawdowns = [e["drawdown_pct"] for e in events if e["kind"] == "heartbeat"] + [stop["max_drawdown_pct"]]
    return {
        "trades": len(nets),
        "wins": len(wins),
        "losses": len(losses),
        "win_rate": len(wins) / len(nets) if nets else None,
        "avg_win": math.fsum(wins) / len(wins) if wins else None,
        "avg_loss": math.fsum(losses) / len(losses) if losses else None,
        "profit_factor": math.fsum(wins) / -math.fsum(losses) if losses else None,
        "expectancy": math.fsum(nets) / len(nets) if nets else None,
        "max_losing_streak": max(
            (len(run) for run in "".join("L" if x < 0 else "." for x in nets).split(".")), default=0
        ),
        "gross_pnl": gross,
        "fees": fees,
        "slippage": slip,
        "funding": math.fsum(e["amount"] for e in events if e["kind"] == "funding"),
        "net_pnl": net,
        "return_pct": net / start["starting_equity"] * 100,
        "sharpe": mean / sd * per_year if sd and a_day else None,
        "sortino": mean / down * per_year if down and a_day else None,
        "max_drawdown_pct": max(drawdowns),
        "time_in_market": covered / (when(stop) - when(start)),
        "fees_share": fees / abs(gross) if gross else None,
        "slippage_share": slip / abs(gross) if gross else None,
        "fills": len(fills),
        "sample_s": step,
    }


def assert_statistics_shown(stats: dict[str, tuple[str, str]], events: list[dict[str, Any]]) -> None:
    expected = recompute(events)
    assert set(stats) == set(expected)
    for name, want in expected.items():
        value, text = stats[name]
        if want is None:
            assert (value, text) == ("", "-"), name
            continue
        assert float(value) == pytest.approx(want, rel=1e-9, abs=1e-9), name
    for name in ("net_pnl", "fees", "slippage", "gross_pnl", "expectancy"):  # money to the cent
        assert stats[name][1] == f"{round(expected[name] or 0.0, 2) + 0.0:,.2f}", name
    for name in ("trades", "wins", "losses", "fills"):
        assert stats[name][1] == f"{expected[name]:,}"
    assert stats["win_rate"][1] == f"{(expected['win_rate'] or 0) * 100:.1f} %"


@needs_chromium
@pytest.mark.slow  # a CLI backtest and a browser
async def test_a_backtests_report_in_chromium(tmp_path: Path) -> None:
    data = tmp_path / "bars.csv"
    write_bars(data, 3000)
    args = [sys.executable, "-m", "actors.main", "--mode", "backtest", "--data", str(data)]
    for item in (f"session.run_dir={tmp_path / 'runs'}", *BACKTEST_SETS):
        args += ["--set", item]
    done = await trio.run_process(args, cwd=REPO, env=cli_env(), capture_stdout=True, capture_stderr=True)
    run = (tmp_path / "runs" / "latest").resolve()
    events = read_events(run)
    kinds = {e["kind"] for e in events}
    assert {"position.closed", "order.rejected", "breaker.tripped"} <= kinds, done.stderr[-2000:]
    charts, stats = await open_report(run, tmp_path / "backtest.png")
    assert_every_chart_drew(
        charts, {"chart-equity", "chart-price-BTCUSDT", "chart-fills", "chart-rejections"}
    )
    price = next(c for c in charts if c["id"] == "chart-price-BTCUSDT")
    assert len(price["points"]) == 5  # price, entries, exits, stops, targets
    assert_statistics_shown(stats, events)
    assert int(stats["trades"][0]) >= 50


@needs_chromium
@pytest.mark.slow  # a live session of 17 s against the fake exchange, and a browser
async def test_a_live_sessions_report_in_chromium(tmp_path: Path) -> None:
    # every connection dropped after 25 data frames: reconnects for the feed chart
    fake = FakeBitunix(
        seed=3, zigzag_pct=0.2, time_offset_s=offset_for_close_in(3), faults=Faults(drop_after_frames=25)
    )
    result, events = await live_session(
        tmp_path, fake, *ZIGZAG_TRADER, "feed.ping_interval_s=2", "feed.backoff_max_s=1", duration_s=17
    )
    assert result.report["trade_count"] >= 1 and result.report["reconnects"] >= 1
    charts, stats = await open_report(result.run_path, tmp_path / "live.png")
    assert_every_chart_drew(charts, {"chart-equity", "chart-price-BTCUSDT", "chart-fills", "chart-feed"})
    price = next(c for c in charts if c["id"] == "chart-price-BTCUSDT")
    assert len(price["points"]) == 6  # candles, price, entries, exits, stops, targets
    assert_statistics_shown(stats, events)


def test_entries_that_rested_are_listed_with_what_became_of_them(tmp_path: Path) -> None:
    """A trend_pullback backtest (limit entries at EMA 20, each good for 24 candles): the page
    lists every entry that rested, in order, with its outcome as events.jsonl says it here (all
    of its quantity filled, or cancelled and why), and draws each at its price on the chart."""
    data = tmp_path / "bars.csv"
    write_bars(data, 1500)
    config = make_config(
        tmp_path,
        "strategy.name=trend_pullback",
        "observability.progress=off",
        "risk.max_consecutive_losses=0",
        "risk.max_daily_drawdown_pct=100",
        "risk.max_loss_pct=100",
    )
    run = Session(config, Plan(mode="backtest", data=str(data))).run_kernel().run_path
    events = read_events(run)
    expected: dict[str, list[Any]] = {}  # order id -> [price, qty, filled, outcome]
    for e in events:
        if e["kind"] == "order.working" and e["reason"].startswith("pullback_entry"):
            expected[e["order_id"]] = [e["limit_price"], e["qty"], 0.0, "working at the end"]
        elif e["kind"] == "order.filled" and e["order_id"] in expected:
            row = expected[e["order_id"]]
            row[2] += e["qty"]
            row[3] = "filled" if math.isclose(row[2], row[1]) else "partly filled"
        elif e["kind"] == "order.cancelled" and e["order_id"] in expected:
            expected[e["order_id"]][3] = f"cancelled ({e['reason']})"
    outcomes = {row[3] for row in expected.values()}
    assert {"filled", "cancelled (expired)"} <= outcomes, outcomes  # a run that shows both

    page = (run / "report.html").read_text()
    table = page[page.index('<table id="entries">') :]
    table = table[: table.index("</table>")]
    rows = [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in table.split("<tr>")[2:]]
    assert len(rows) == len(expected)
    for row, (price, qty, _filled, outcome) in zip(rows, expected.values(), strict=True):
        assert float(row[6].replace(",", "")) == price and float(row[5]) == qty
        assert re.sub(r" \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "", row[8]) == outcome
    filled = sum(row[3] == "filled" for row in expected.values())
    assert f"{len(expected):,} entries rested at the market; {filled:,} filled." in page
    # on the price chart: each entry a segment at its price (its start, its end, a break)
    traces = json.loads(re.search(r'Plotly.newPlot\("chart-price-BTCUSDT", (\[.*?\]), \{"margin"', page)[1])
    drawn = next(t for t in traces if t["name"] == "entry orders")
    assert drawn["y"][0::3] == [row[0] for row in expected.values()]


def test_the_attribution_tables_say_their_rows_are_rounded_on_their_own() -> None:
    """Three strategies' realized PnL -32.344, -0.954 and -12.594 (-45.892 in all, shown -45.89)
    are shown -32.34, -0.95 and -12.59, which add up to -45.88: the page says each figure is
    rounded on its own (found by an audit)."""
    row = {"fills": 2, "realized_pnl": -32.344}
    report = {
        "strategies": {"a": row, "b": {**row, "realized_pnl": -0.954}, "c": {**row, "realized_pnl": -12.594}},
        "symbols": {"BTCUSDT": {"fills": 6, "realized_pnl": -45.892}},
    }
    section = html_report._attribution(report)
    assert '<table id="by-strategy">' in section and "by-symbol" not in section  # one symbol: no table
    assert ">-32.34<" in section and ">-0.95<" in section and ">-12.59<" in section
    assert "rounded to the cent on its own" in section
    assert html_report._attribution({"strategies": {"a": row}}) == html_report._section(
        "Per strategy and per symbol", ""
    )


def test_the_validator_catches_a_page_whose_tables_were_edited(tmp_path: Path) -> None:
    """Found by an audit: a page with a trade's net PnL's sign flipped, an exit reason changed, a
    strategy's fills or the breaker trips' count edited passed `tools.validate_session` (only the
    summary and statistics were compared). Every table and section title is now."""
    from tools.validate_session import check_page

    run = _backtest_in_process(tmp_path, candles=1500)
    page = run / "report.html"
    honest = page.read_text()
    assert check_page(run) == []
    row = honest.split('<table id="trades">', 1)[1].split("</tr>", 2)[1]  # the first trade's row
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
    net, reason = cells[-3], cells[-1]  # net PnL, exit reason
    flipped = net[1:] if net.startswith("-") else f"-{net}"
    assert "Breaker trips (" in honest
    edits = [
        honest.replace(row, row.replace(f">{net}<", f">{flipped}<", 1), 1),
        honest.replace(row, row.replace(f">{reason}<", ">stop_loss<", 1), 1),
        re.sub(r"Breaker trips \(\d+\)", "Breaker trips (0)", honest, count=1),
    ]
    for edited in edits:
        assert edited != honest
        page.write_text(edited)
        (problem,) = check_page(run)
        assert problem.startswith("report.html: shows "), problem
    page.write_text(honest)


def test_the_feed_section_marks_a_symbols_silent_klines_and_book() -> None:
    # found by the feed audit: feed.klines (and the new feed.book), a symbol's kline or book
    # pushes stopped while its other data flowed, were left off the page's feed timeline
    from actors.recording.html_report import RunData, _feed_section

    records = [
        {"kind": "feed.connected", "ts": "2026-01-01T00:00:00.000Z", "reconnect": False},
        {"kind": "feed.klines", "ts": "2026-01-01T00:00:11.000Z", "symbol": "ETHUSDT", "silent": True},
        {"kind": "feed.book", "ts": "2026-01-01T00:00:12.000Z", "symbol": "ETHUSDT", "silent": True},
        {"kind": "feed.book", "ts": "2026-01-01T00:00:20.000Z", "symbol": "ETHUSDT", "silent": False},
    ]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_kind.setdefault(r["kind"], []).append(r)
    page = _feed_section(RunData(Path("."), records, by_kind, {}, {}, {}))
    for name in ("klines", "book"):
        assert f'"name":"{name}"' in page, name  # a marker trace of its own
    assert "symbol=ETHUSDT, silent=False" in page


def test_the_attribution_tables_end_with_the_accounts_row_and_say_which_columns_add_up() -> None:
    """Found by an audit (config/templates/two_setups.toml over a month of BTC with
    max_position_size 0.05): the strategies' rows said 9 + 203 = 212 trades and 6 + 149 = 155
    losses where the account made 211 trades and 154 losses, under a note saying the rows add up
    to the account's totals. Two strategies' overlapping round trips are one of the net
    position's: only the money adds up. The table now ends with the account's own row, and the
    note says the counts need not add up."""
    sweep = {"fills": 18, "trades": 9, "wins": 3, "losses": 6, "realized_pnl": 9.17438}
    sweep |= {"fees": 8.376569, "funding": 0.0, "net_pnl": 0.797811}
    trend = {"fills": 406, "trades": 203, "wins": 54, "losses": 149, "realized_pnl": -59.8538}
    trend |= {"fees": 140.873778, "funding": 0.099553, "net_pnl": -200.827131}
    report = {
        "strategies": {"sweep": sweep, "trend": trend},
        "symbols": {"BTCUSDT": {**trend, "fills": 424, "trades": 212, "wins": 57, "losses": 155}},
        "fills": 424,
        "trade_count": 211,
        "wins": 57,
        "losses": 154,
        "realized_pnl": -50.67942,
        "fees_paid": 149.250347,
        "funding_paid": 0.099553,
    }
    section = html_report._attribution(report)
    table = section[section.index('<table id="by-strategy">') : section.index("</table>")]
    last_row = table.rsplit("<tr>", 1)[1]
    # the account's: 424 fills, 211 trades (57 won, 154 lost), realized -50.68, fees 149.25,
    # funding 0.10, net -50.67942 - 149.250347 - 0.099553 = -200.02932
    cells = re.findall(r"<t[dh][^>]*>([^<]*)<", last_row)
    assert cells == ["account", "424", "211", "57", "154", "-50.68", "149.25", "0.10", "-200.03"]
    note = section[section.rindex('<p class="note">') :]
    assert "rows add up to the account's totals exactly" not in note
    assert "trades" in note and "need not add up" in note
