"""A backtest on the kernel stops on SIGINT/SIGTERM where it is, flat, with its report.

The kernel's sessions (backtests and replays: a plain loop, no trio) note a signal in its handler
and look for it between two chunks of their inputs (actors/signals.py, `KernelSignals`). In
process, the signals are raised by the candle source itself as it hands out a given candle (the
same instant in every run: no timing); through the CLI, a real process gets a real SIGINT while it
is in the middle of its data.
"""

from __future__ import annotations

import math
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import logs
from actors.config import Config, load
from actors.feeds.history import read_candles_csv
from actors.plan import Plan
from actors.session import STORAGE_CHECK_EVERY, CandleSource, Session
from protocols.messages import Candle
from tests.conftest import cli_env, make_config, read_events, read_report
from tests.test_multi_symbol import THREE_STRATEGIES, write_bars
from tools.validate_session import validate

T0_MS = 1_704_067_200_000  # 2024-01-01
# always in the market (a fast EMA cross, no stop or target), no stop condition of its own
ALWAYS_IN = [
    "strategy.fast_period=2", "strategy.slow_period=3", "strategy.stop_loss_pct=0",
    "strategy.take_profit_pct=0", "risk.sizing=fixed", "risk.max_orders_per_minute=600", "risk.max_loss_pct=100",
    "risk.max_daily_drawdown_pct=100", "risk.max_consecutive_losses=0",
]  # fmt: skip
REPEATED = "already stopping, flattening"


def _bars(path: Path, n: int, seed: int = 3) -> Path:
    """Seeded random-walk 1-minute bars on the 0.1 grid."""
    rng = random.Random(seed)
    price = 60_000.0
    lines = ["open_time_ms,open,high,low,close,volume"]
    for i in range(n):
        o = round(price, 1)
        c = round(o * math.exp(rng.gauss(0, 0.001)), 1)
        h, lo = round(max(o, c) + rng.uniform(0.1, 20), 1), round(min(o, c) - rng.uniform(0.1, 20), 1)
        lines.append(f"{T0_MS + i * 60_000},{o},{h},{lo},{c},{round(rng.uniform(1, 5), 3)}")
        price = c
    path.write_text("\n".join(lines) + "\n")
    return path


def _raising(at: dict[int, signal.Signals]) -> CandleSource:
    """A candle source that raises `at[k]` in this process as it hands out its k-th candle
    (BTCUSDT's)."""

    def source(path: str, symbol: str) -> Iterator[Candle]:
        for k, candle in enumerate(read_candles_csv(Path(path), 60.0, symbol=symbol)):
            if symbol == "BTCUSDT" and k in at:
                signal.raise_signal(at[k])
            yield candle

    return source


def _stopped(events: list[dict]) -> dict:
    assert events[-1]["kind"] == "session.stopped"
    return events[-1]


def _ts(record: dict) -> float:
    from datetime import datetime

    return datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()


def test_a_signal_stops_a_backtest_at_the_end_of_its_chunk_flat_with_its_report(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    data = _bars(tmp_path / "bars.csv", 3000)
    config = make_config(tmp_path, *ALWAYS_IN)
    k = 1000  # SIGTERM as the 1000th candle is read, then a Ctrl-C and another SIGTERM
    source = _raising({k: signal.SIGTERM, k + 1: signal.SIGINT, k + 2: signal.SIGTERM})
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    logs.configure("INFO")
    try:
        result = Session(config, Plan(mode="backtest", data=str(data)), candle_source=source).run_kernel()
    finally:
        logs.configure()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # given back
    report, run = result.report, result.run_path
    assert (report["status"], report["stop_reason"], report["open_positions"]) == ("ok", "signal", [])
    assert result.exit_code == 0
    events = read_events(run)
    stopped = _stopped(events)
    assert stopped["stop_reason"] == "signal" and stopped["detail"] == "SIGTERM"
    # the chunk the signal came in is finished (candles 960..1023), and nothing after it is read
    last = (k // STORAGE_CHECK_EVERY + 1) * STORAGE_CHECK_EVERY - 1
    assert _ts(stopped) == T0_MS / 1000 + (last + 1) * 60
    assert all(_ts(e) <= _ts(stopped) for e in events)
    # it was in the market: the stop flattened it through the broker
    assert any(e["kind"] == "order.filled" and e["order_id"].startswith("flatten") for e in events)
    (flatten,) = [e for e in events if e["kind"] == "order.submitted" and e["order_id"].startswith("flatten")]
    assert flatten["symbol"] == "BTCUSDT" and flatten["reason"] == "flatten_on_exit"
    assert validate(run) == []
    assert read_report(run)["stop_reason"] == "signal"
    err = capfd.readouterr().err
    assert err.count("stopping: signal SIGTERM") == 1
    assert err.count(REPEATED) == 1 and "SIGINT again" in err


def test_a_sigint_the_process_ignores_stays_ignored(tmp_path: Path) -> None:
    """A process started with SIGINT ignored (a background job `cmd &` of a script: a Ctrl-C for
    the script's foreground leaves it running, as Python leaves it) keeps it ignored: found by an
    audit, the session put its handler over it and the Ctrl-C stopped it. A SIGINT at candle 400
    does nothing; the SIGTERM at candle 1000 stops it (SIGTERM is the session's, ignored or not)."""
    data = _bars(tmp_path / "bars.csv", 3000)
    config = make_config(tmp_path, *ALWAYS_IN)
    raising = _raising({400: signal.SIGINT, 1000: signal.SIGTERM})
    seen: list[object] = []

    def source(path: str, symbol: str) -> Iterator[Candle]:
        for k, candle in enumerate(raising(path, symbol)):
            if k == 399:  # the session listens by now: SIGINT's disposition then
                seen.append(signal.getsignal(signal.SIGINT))
            yield candle

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        result = Session(config, Plan(mode="backtest", data=str(data)), candle_source=source).run_kernel()
        after = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, before)
    assert seen == [signal.SIG_IGN] and after is signal.SIG_IGN
    stopped = _stopped(read_events(result.run_path))
    assert (stopped["stop_reason"], stopped["detail"]) == ("signal", "SIGTERM")
    last = (1000 // STORAGE_CHECK_EVERY + 1) * STORAGE_CHECK_EVERY - 1  # the SIGTERM's chunk
    assert _ts(stopped) == T0_MS / 1000 + (last + 1) * 60


def test_without_a_signal_the_backtest_runs_to_the_end_of_its_data(tmp_path: Path) -> None:
    """The same session with no signal raised (the check itself stops nothing)."""
    data = _bars(tmp_path / "bars.csv", 1500)
    config = make_config(tmp_path, *ALWAYS_IN)
    result = Session(config, Plan(mode="backtest", data=str(data)), candle_source=_raising({})).run_kernel()
    assert result.report["stop_reason"] == "data_end"
    assert _ts(_stopped(read_events(result.run_path))) >= T0_MS / 1000 + 1500 * 60


def _two_symbols(tmp_path: Path, candles: int) -> tuple[Config, Plan]:
    """Three strategies on BTCUSDT and ETHUSDT (tests/test_multi_symbol.py's), `candles` of each."""
    files = {"BTCUSDT": tmp_path / "btc.csv", "ETHUSDT": tmp_path / "eth.csv"}
    write_bars(files["BTCUSDT"], candles, 1, 60_000.0, 1)
    write_bars(files["ETHUSDT"], candles, 2, 3_000.0, 2)
    config_path = tmp_path / "three.toml"
    config_path.write_text(THREE_STRATEGIES)
    config = load(config_path, {}, [f"session.run_dir={tmp_path / 'runs'}", "session.kill_switch=kill.txt"])
    plan = Plan(
        mode="backtest",
        data=str(files["BTCUSDT"]),
        data_by_symbol=tuple((s, str(p)) for s, p in files.items()),
    )
    return config, plan


def test_a_signal_stops_a_two_symbol_backtest_flat(tmp_path: Path) -> None:
    """Several symbols go through `Kernel.run`, one market event a step: the same stop."""
    config, plan = _two_symbols(tmp_path, 1500)
    k = 700
    result = Session(config, plan, candle_source=_raising({k: signal.SIGINT})).run_kernel()
    report, run = result.report, result.run_path
    assert (report["status"], report["stop_reason"], report["open_positions"]) == ("ok", "signal", [])
    stopped = _stopped(read_events(run))
    assert stopped["detail"] == "SIGINT"
    # within a chunk of inputs (each minute: two symbols' quotes and candles) after the signal's
    # candle, which the source reads a step ahead of the kernel
    signal_ts = T0_MS / 1000 + k * 60
    assert signal_ts - 60 <= _ts(stopped) <= signal_ts + (STORAGE_CHECK_EVERY / 4 + 2) * 60
    assert validate(run) == []


def test_a_signal_before_the_first_step_stops_a_two_symbol_backtest_at_its_start(tmp_path: Path) -> None:
    """A signal that came while the data's first candles were being read (before any step): the
    session stops at its start, with its report (it once stopped at an infinite time and failed)."""
    config, plan = _two_symbols(tmp_path, 300)
    result = Session(config, plan, candle_source=_raising({0: signal.SIGTERM})).run_kernel()
    report, run = result.report, result.run_path
    assert (report["status"], report["stop_reason"], report["fills"]) == ("ok", "signal", 0)
    stopped = _stopped(read_events(run))
    assert stopped["detail"] == "SIGTERM" and _ts(stopped) == T0_MS / 1000
    assert validate(run) == []


@pytest.mark.slow  # a real process, 200,000 candles
def test_ctrl_c_in_a_cli_backtest_stops_it_with_its_report(tmp_path: Path) -> None:
    data = _bars(tmp_path / "bars.csv", 200_000)
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "actors.main", "--mode", "backtest", "--data", str(data), "--run-dir", str(runs),
         *(a for s in [*ALWAYS_IN, "observability.progress=off"] for a in ("--set", s))],
        cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        events = runs / "latest" / "events.jsonl"
        deadline = time.monotonic() + 60
        # in the middle of its data: its first fills are on disk
        while not (events.exists() and '"order.filled"' in events.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, "no fill on disk"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    run = (runs / "latest").resolve()
    report = read_report(run)
    assert (report["status"], report["stop_reason"], report["open_positions"]) == ("ok", "signal", [])
    stopped = _stopped(read_events(run))
    assert _ts(stopped) < T0_MS / 1000 + 200_000 * 60  # before the end of its data
    assert err.count("stopping: signal SIGINT") == 1 and err.count(REPEATED) <= 1
    assert validate(run) == []
