"""Strategies on longer candles than the session's (actors/feeds/intervals.py): 5m, 15m and 1h
candles built from 1m ones, checked against a resampling written here; a strategy on 5m candles of
a 1m backtest decides exactly as the same strategy in a 5m backtest over the same data resampled
here; both runtimes give the same events; a checkpoint in the middle of a bucket continues it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from actors.config import ConfigError, load, seed_problems
from actors.feeds.intervals import Intervals
from actors.kernel import Kernel
from actors.main import main
from actors.plan import Plan
from actors.session import Session, Timeline, build_parts
from protocols.messages import Candle, Event
from tests.conftest import read_events, run_main
from tests.test_multi_symbol import write_bars


def resample(
    rows: list[tuple[float, float, float, float, float, float]], every: float
) -> list[tuple[float, ...]]:
    """The reference: rows (open_ts, o, h, l, c, v) grouped by epoch bucket, in plain Python."""
    groups: dict[float, list[tuple[float, float, float, float, float, float]]] = {}
    for row in rows:
        groups.setdefault(math.floor(row[0] / every) * every, []).append(row)
    return [
        (
            start,
            group[0][1],
            max(r[2] for r in group),
            min(r[3] for r in group),
            group[-1][4],
            round(sum(r[5] for r in group), 8),
        )
        for start, group in sorted(groups.items())
    ]


def read_rows(path: Path) -> list[tuple[float, float, float, float, float, float]]:
    rows = []
    for line in path.read_text().splitlines()[1:]:
        ts, o, h, lo, c, v = (float(x) for x in line.split(","))
        rows.append((ts / 1000, o, h, lo, c, v))
    return rows


def candles(
    rows: list[tuple[float, float, float, float, float, float]], backfill: bool = False
) -> list[Candle]:
    return [Candle(r[0], 60.0, r[1], r[2], r[3], r[4], r[5], backfill, "BTCUSDT") for r in rows]


@pytest.mark.parametrize("every", [300.0, 900.0, 3600.0])
def test_longer_candles_equal_a_resampling_gaps_included(tmp_path: Path, every: float) -> None:
    path = tmp_path / "bars.csv"
    write_bars(path, 600, 3, 60_000.0, 1)
    rows = read_rows(path)
    rows = rows[:100] + rows[107:300] + rows[361:]  # a 7-minute gap and a whole hour missing
    built = Intervals(60.0, [("BTCUSDT", every)])
    out: list[Candle] = []
    for candle in candles(rows):
        out += built.add(candle)
    expected = resample(rows, every)
    # every bucket but the last, which the data ends inside of (when it does)
    last_complete = rows[-1][0] + 60 >= expected[-1][0] + every
    assert [(*c[:6], c.volume) for c in out] == [
        (e[0], every, *e[1:]) for e in (expected if last_complete else expected[:-1])
    ]
    assert all(c.symbol == "BTCUSDT" and not c.backfill for c in out)


def test_longer_candles_of_history_are_history_and_other_symbols_are_untouched() -> None:
    built = Intervals(60.0, [("BTCUSDT", 300.0)])
    rows = [(600.0 + 60 * k, 1.0 + k, 2.0 + k, 0.5, 1.5 + k, 1.0) for k in range(5)]
    out = [c for candle in candles(rows, backfill=True) for c in built.add(candle)]
    assert len(out) == 1 and out[0].backfill
    eth = Candle(600.0, 60.0, 1, 2, 0.5, 1.5, 1, False, "ETHUSDT")
    assert built.add(eth) == []
    with pytest.raises(ValueError, match="not a whole number"):
        Intervals(60.0, [("BTCUSDT", 90.0)])


FIVE = """
[session]
interval = "{interval}"
[risk]
max_loss_pct = 50
max_daily_drawdown_pct = 50
max_consecutive_losses = 0
[[strategies]]
id = "slow"
kind = "ema_cross"
{strategy_interval}
"""


def _signals(run: Path) -> list[dict[str, object]]:
    return [
        {k: v for k, v in e.items() if k not in ("seq", "ts")} | {"ts": e["ts"]}
        for e in read_events(run)
        if e["kind"] == "signal"
    ]


def test_a_5m_strategy_on_1m_data_decides_as_in_a_5m_backtest(tmp_path: Path) -> None:
    one = tmp_path / "1m.csv"
    write_bars(one, 3000, 5, 60_000.0, 1)
    five = tmp_path / "5m.csv"
    lines = ["open_time_ms,open,high,low,close,volume"]
    for start, o, h, lo, c, v in resample(read_rows(one), 300.0):
        lines.append(f"{int(start * 1000)},{o},{h},{lo},{c},{v}")
    five.write_text("\n".join(lines) + "\n")

    def run(name: str, interval: str, strategy_interval: str, data: Path, *extra: str) -> Path:
        config = tmp_path / f"{name}.toml"
        config.write_text(FIVE.format(interval=interval, strategy_interval=strategy_interval))
        runs = tmp_path / name
        args = ["--config", str(config), "--mode", "backtest", "--data", str(data)]
        assert main([*args, "--set", f"session.run_dir={runs}", *extra]) == 0
        return (runs / "latest").resolve()

    inside = run("inside", "1m", 'interval = "5m"', one)
    alone = run("alone", "5m", "", five)
    signals = _signals(inside)
    assert len(signals) > 10
    assert signals == _signals(alone)
    # the same on the actors runtime, event for event
    actors = run("actors", "1m", 'interval = "5m"', one, "--runtime", "actors")

    def comparable(run: Path) -> list[dict[str, object]]:
        return [
            {k: v for k, v in e.items() if k != "seq"}
            for e in read_events(run)
            if e["kind"] not in ("session.started", "session.stopped")
        ]

    assert comparable(actors) == comparable(inside)


def test_a_checkpoint_inside_a_bucket_continues_it(tmp_path: Path) -> None:
    data = tmp_path / "1m.csv"
    write_bars(data, 1500, 6, 60_000.0, 1)
    config_path = tmp_path / "five.toml"
    config_path.write_text(FIVE.format(interval="1m", strategy_interval='interval = "5m"'))
    config = load(config_path, {}, [f"session.run_dir={tmp_path / 'runs'}"])
    session = Session(config, Plan(mode="backtest", data=str(data)))

    def fresh() -> tuple[object, list[tuple[float, object]]]:
        started, steps = session.backtest_steps()
        parts = build_parts(
            config,
            Timeline(started, math.inf, "t"),
            heartbeat_s=3600.0,
            defer_to_next_quote=True,
            live=False,
            bars=True,
        )
        return parts, list(steps)

    def kernel(parts: object, out: list[Event]) -> Kernel:
        return Kernel(
            parts.broker,  # type: ignore[attr-defined]
            parts.gate,  # type: ignore[attr-defined]
            parts.strategies,  # type: ignore[attr-defined]
            out.append,
            intervals=parts.intervals,  # type: ignore[attr-defined]
            strategy_intervals=parts.strategy_intervals,  # type: ignore[attr-defined]
        )

    parts, steps = fresh()
    whole: list[Event] = []
    kernel(parts, whole).run(steps)  # type: ignore[arg-type]
    first, steps = fresh()
    cut = 2 * 707 + 1  # candle 707's step: two minutes into a five-minute bucket
    assert steps[cut][1].open_ts % 300 == 120  # type: ignore[attr-defined]
    before: list[Event] = []
    kernel(first, before).run(steps[:cut], end_ts=steps[cut][0])  # type: ignore[arg-type]
    saved = json.loads(json.dumps(first.state()))  # type: ignore[attr-defined]
    assert saved["intervals"]["BTCUSDT/300"] is not None
    second, _ = fresh()
    second.restore(saved, steps[cut][0])  # type: ignore[attr-defined]
    after: list[Event] = []
    kernel(second, after).run(steps[cut:])  # type: ignore[arg-type]
    assert [(e.ts, e.kind, e.fields) for e in before + after] == [(e.ts, e.kind, e.fields) for e in whole]


def test_a_strategy_interval_must_be_a_whole_number_of_session_candles(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(FIVE.format(interval="5m", strategy_interval='interval = "1m"'))
    with pytest.raises(ConfigError, match=r"strategies\[slow\]\.interval: '1m' is not allowed"):
        load(path, {}, [])
    path.write_text(FIVE.format(interval="2m", strategy_interval='interval = "5m"'))
    with pytest.raises(ConfigError, match="whole multiple"):
        load(path, {}, [])
    path.write_text(FIVE.format(interval="1m", strategy_interval='interval = "1h"'))
    config = load(path, {}, [])
    assert config.strategy_history == 200 * 60  # the live feed seeds this many 1m candles


SLOW_TREND = """
[session]
interval = "1m"
[[strategies]]
id = "hourly"
kind = "trend_pullback"
interval = "1h"
ema_slow = {ema_slow}
history = 300
"""


def test_a_live_session_refuses_a_warm_up_its_seeded_history_cannot_hold(tmp_path: Path) -> None:
    """Found by an audit: a strategy on 1h candles of a 1m session with a warm-up of 250 (ema_slow
    250, history 300) passed every check, but the live feed and the mock seed at most 12,000
    session candles, 200 hours: it sat cold, silently, through its first 50 live hours. A live
    start (and --check-config of one) now refuses it, exit 2, naming the table's interval and
    the counts; 200 hours fit; a backtest, which warms up on its data, runs it."""
    path = tmp_path / "slow.toml"
    path.write_text(SLOW_TREND.format(ema_slow=250))
    config = load(path, {}, [])
    assert config.strategy_history == 12_000 and 12_000 // 60 == 200 < 250
    (problem,) = seed_problems(config)
    assert problem.startswith(
        "strategies[hourly].interval: '1h' is not allowed in a live session with a warm-up of 250"
    )
    assert "at most 12,000 1m candles are seeded, 200 of 1h" in problem
    result = run_main("--config", str(path), "--check-config", cwd=tmp_path)
    assert result.returncode == 2 and "config error: strategies[hourly].interval: '1h'" in result.stderr
    assert "Traceback" not in result.stderr
    data = tmp_path / "bars.csv"
    write_bars(data, 10, 1, 60_000.0, 1)
    backtest = run_main(
        "--config", str(path), "--mode", "backtest", "--data", str(data), "--check-config", cwd=tmp_path
    )
    assert backtest.returncode == 0, backtest.stderr
    path.write_text(SLOW_TREND.format(ema_slow=200))
    assert seed_problems(load(path, {}, [])) == []
