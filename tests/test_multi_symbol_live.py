"""Issue 12: a live session of three strategies on two symbols against the fake exchange, for
3 minutes (`MULTI_SYMBOL_SECONDS`, default 180), on one WebSocket connection. It ends by its
duration, flat on both symbols; the per-strategy PnL, fees and trade counts sum to the account's
and the symbols' to the cent (recomputed here from the report's tables, and by the validator from
the fills' allocations); replaying its market log reproduces every figure of its report.

Two of the strategies share ETHUSDT (one net position, a virtual position each) and trade at
different speeds, so their positions overlap and the split of each fill is exercised. The fake's
path is its zigzag (a cross at every candle close of the fast strategies); its first candle closes
3 s in, so the session trades from its first seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from actors.config import Config, load
from actors.session import run_session
from tests.conftest import read_events, read_report
from tests.test_feed_bitunix import FEED_HEALTH, offset_for_close_in, replay_cli
from tests.test_replay_backtest import NOT_COMPARED
from tools.fake_bitunix import FakeBitunix
from tools.validate_session import validate

SECONDS = float(os.environ.get("MULTI_SYMBOL_SECONDS", "180"))
SYMBOLS = ("BTCUSDT", "ETHUSDT")

# two strategies, one on each symbol (tests/test_funding_interval.py runs them too)
TWO_SYMBOLS = """
[session]
symbol = "BTCUSDT"
interval = "1m"

[feed]
source = "bitunix"

[risk]
max_position_size = 10
max_notional = 2000
max_total_notional = 3000
max_orders_per_minute = 20
sizing = "fixed"
max_loss_pct = 50
max_daily_drawdown_pct = 50
max_consecutive_losses = 0

[[strategies]]
id = "btc_fast"
kind = "ema_cross"
history = 10
fast_period = 2
slow_period = 3
order_qty = 0.01

[[strategies]]
id = "eth_fast"
kind = "ema_cross"
symbol = "ETHUSDT"
history = 10
fast_period = 2
slow_period = 3
order_qty = 0.3
"""

CONFIG = (
    TWO_SYMBOLS
    + """
[[strategies]]
id = "eth_slow"
kind = "ema_cross"
symbol = "ETHUSDT"
history = 10
fast_period = 3
slow_period = 6
order_qty = 0.2
stop_loss_pct = 0.4
take_profit_pct = 0.3
"""
)


def session_config(text: str, fake: FakeBitunix, tmp_path: Path, seconds: float) -> Config:
    """The config `text` (written to tmp_path) of a session of `seconds` against `fake`, its run
    dir and kill switch in tmp_path."""
    config_path = tmp_path / "session.toml"
    config_path.write_text(text)
    return load(
        config_path,
        {},
        [
            f"session.run_dir={tmp_path / 'runs'}",
            f"session.kill_switch={tmp_path / 'kill.txt'}",
            f"feed.ws_url={fake.ws_url}",
            f"feed.rest_url={fake.rest_url}",
            f"session.duration_min={seconds / 60}",
        ],
    )


@pytest.mark.slow
async def test_three_strategies_on_two_symbols_live_for_three_minutes(tmp_path: Path) -> None:
    fake = FakeBitunix(seed=12, symbols=SYMBOLS, zigzag_pct=0.2, time_offset_s=offset_for_close_in(3))
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.run)
        config = session_config(CONFIG, fake, tmp_path, SECONDS)
        assert config.symbols == SYMBOLS
        with trio.fail_after(SECONDS + 60):
            result = await run_session(config, handle_signals=False, progress_mode="off")
        nursery.cancel_scope.cancel()

    report = result.report
    assert (report["status"], report["stop_reason"], report["errors"]) == ("ok", "duration", 0)
    assert report["data_source"] == "bitunix"
    assert fake.stats.connections == 1 and fake.stats.subscribe_msgs == 1  # one socket for all
    assert report["open_positions"] == []  # flat on both symbols
    assert validate(result.run_path) == []  # attribution included, from the fills' allocations

    # every strategy traded, each on its own symbol, and the tables add up to the account's
    strategies, symbols = report["strategies"], report["symbols"]
    assert set(strategies) >= {"btc_fast", "eth_fast", "eth_slow"}
    assert all(strategies[s]["fills"] > 0 for s in ("btc_fast", "eth_fast", "eth_slow")), strategies
    assert set(symbols) == set(SYMBOLS)
    for field in ("realized_pnl", "fees", "funding", "net_pnl"):
        by_strategy = sum(row[field] for row in strategies.values())
        by_symbol = sum(row[field] for row in symbols.values())
        assert by_strategy == pytest.approx(by_symbol, abs=0.01), field
    assert sum(r["realized_pnl"] for r in strategies.values()) == pytest.approx(
        report["realized_pnl"], abs=0.01
    )
    assert sum(r["fees"] for r in strategies.values()) == pytest.approx(report["fees_paid"], abs=0.01)
    assert sum(r["funding"] for r in strategies.values()) == pytest.approx(report["funding_paid"], abs=0.01)
    assert sum(r["net_pnl"] for r in strategies.values()) == pytest.approx(report["net_pnl"], abs=0.01)
    for field in ("trades", "wins", "losses"):  # (a fill split between two strategies is a fill of each)
        assert sum(r[field] for r in strategies.values()) == sum(r[field] for r in symbols.values()), field
    assert sum(r["fills"] for r in symbols.values()) == report["fills"]
    events = read_events(result.run_path)
    own = {"btc_fast": "BTCUSDT", "eth_fast": "ETHUSDT", "eth_slow": "ETHUSDT"}
    for fill in (e for e in events if e["kind"] == "order.filled"):
        assert {own[sid] for sid, *_ in fill["allocations"] if sid} <= {fill["symbol"]}, fill
    # the two ETH strategies held positions at the same time: some fill of the one net position
    # was split between them
    assert any(
        {a[0] for a in e["allocations"]} >= {"eth_fast", "eth_slow"}
        for e in events
        if e["kind"] == "order.filled"
    )

    # the replay of its market log reproduces every figure
    replayed = await replay_cli(result.run_path, tmp_path)
    second = read_report(replayed)
    for key in report.keys() - NOT_COMPARED - FEED_HEALTH:
        assert report[key] == second[key], key
    assert validate(replayed) == []
