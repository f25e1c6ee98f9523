"""Replay reproduces a recorded session exactly; backtests run the same actors over candle files."""

from __future__ import annotations

import json
import math
import random
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from actors.config import load
from actors.plan import Plan, PlanError, load_recording
from actors.recording.abandon import close_abandoned
from actors.session import run_session
from tests.conftest import TRADES_OFTEN, make_config, read_events, read_report
from tools.validate_session import validate

# Wall-clock and identity fields; everything else (orders, fills, fees, PnL, stop reason) must match.
NOT_COMPARED = {"run_id", "started_at", "ended_at", "elapsed_s", "data_source", "config", "downtime_s"}


async def test_replay_reproduces_a_mock_session(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    original = await run_session(
        make_config(tmp_path / "a", *TRADES_OFTEN, duration_min=5), handle_signals=False, progress_mode="off"
    )
    first = read_report(original.run_path)
    assert first["fills"] >= 4
    recording = load_recording(original.run_path)
    config = make_config(tmp_path / "b", *TRADES_OFTEN, duration_min=5)
    replayed = await run_session(config, plan=Plan(mode="replay", recording=recording), handle_signals=False)
    second = read_report(replayed.run_path)
    for key in first.keys() - NOT_COMPARED:
        assert first[key] == second[key], key
    fills_a = [
        (e["order_id"], e["qty"], e["fill_price"], e["fee"])
        for e in read_events(original.run_path)
        if e["kind"] == "order.filled"
    ]
    fills_b = [
        (e["order_id"], e["qty"], e["fill_price"], e["fee"])
        for e in read_events(replayed.run_path)
        if e["kind"] == "order.filled"
    ]
    assert fills_a == fills_b
    # the replay records the market it acted on, the original's to the byte, so the validator checks
    # its fills against it too (a replay's market.jsonl used to be empty, and those checks skipped)
    market = (original.run_path / "market.jsonl").read_bytes()
    assert market and (replayed.run_path / "market.jsonl").read_bytes() == market
    assert validate(replayed.run_path) == []
    # and a replay can be replayed: the same fills again
    again = await run_session(
        make_config(tmp_path / "c", *TRADES_OFTEN, duration_min=5),
        plan=Plan(mode="replay", recording=load_recording(replayed.run_path)),
        handle_signals=False,
    )
    assert [
        (e["order_id"], e["qty"], e["fill_price"], e["fee"])
        for e in read_events(again.run_path)
        if e["kind"] == "order.filled"
    ] == fills_a
    assert (again.run_path / "market.jsonl").read_bytes() == market
    # an older version's replay recorded no market: refused, naming the session to replay instead
    (again.run_path / "market.jsonl").write_bytes(b"")
    with pytest.raises(
        PlanError, match=f"replay the session it replayed \\(replay of {replayed.run_path.name}\\)"
    ):
        load_recording(again.run_path)


async def test_a_killed_replay_closed_as_abandoned_validates_and_is_not_replayed(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Found by an audit: a kernel replay killed mid-way, once the next start had closed it as
    abandoned, failed the validator (its fills after market.jsonl's end had "no quote": the kill
    cut that file's buffer further back than the events'), and `--replay` of it ran "ok" with
    fewer fills. Here the kill's leavings are made exactly: the events cut at three quarters, the
    market at half with a torn last line."""
    original = await run_session(
        make_config(tmp_path / "a", *TRADES_OFTEN, duration_min=5), handle_signals=False, progress_mode="off"
    )
    config = make_config(tmp_path / "b", *TRADES_OFTEN, duration_min=5)
    run = (
        await run_session(config, plan=Plan(mode="replay", recording=load_recording(original.run_path)))
    ).run_path
    lines = (run / "events.jsonl").read_bytes().splitlines(keepends=True)
    (run / "events.jsonl").write_bytes(b"".join(lines[: len(lines) * 3 // 4]))
    market = (run / "market.jsonl").read_bytes().splitlines(keepends=True)
    whole = b"".join(market[: len(market) // 2])
    (run / "market.jsonl").write_bytes(whole + market[len(market) // 2][:20])
    (run / "final_report.json").unlink()

    closed = close_abandoned(run)
    assert closed.closed and closed.report is not None and closed.report["status"] == "abandoned"
    assert (run / "market.jsonl").read_bytes() == whole  # the torn line cut off
    last_arrival = json.loads(market[len(market) // 2 - 1])["arrival_ts"]
    fills = [e for e in read_events(run) if e["kind"] == "order.filled"]
    assert any(datetime.fromisoformat(e["ts"]).timestamp() > last_arrival + 1 for e in fills)  # the case
    assert validate(run) == []
    with pytest.raises(PlanError, match=r"closed as abandoned.*replay the session it replayed"):
        load_recording(run)


def write_bars(path: Path, n: int, seed: int = 7) -> list[float]:
    """Seeded GBM 1-minute bars (like the peers' gen_bars.py, without numpy); returns the closes."""
    rng = random.Random(seed)
    price = 60000.0
    closes = []
    lines = ["open_time_ms,open,high,low,close,volume"]
    for i in range(n):
        o = round(
            price * math.exp(rng.gauss(0, 0.0002)), 1
        )  # opens gap from the last close, as real ones can
        c = round(o * math.exp(rng.gauss(0, 0.0008)), 1)
        h = round(max(o, c) * (1 + abs(rng.gauss(0, 0.0004))) + 0.05, 1)
        lo = round(min(o, c) * (1 - abs(rng.gauss(0, 0.0004))) - 0.05, 1)
        lines.append(f"{1_704_067_200_000 + i * 60_000},{o},{h},{lo},{c},{round(rng.uniform(1, 5), 3)}")
        closes.append(c)
        price = c
    path.write_text("\n".join(lines) + "\n")
    return closes


def reference(
    closes: list[float], fast: int, slow: int, qty: float, fee: float, cash: float
) -> tuple[int, float]:
    """The peers' reference loop (reference_loop.py): always-in-market EMA crossover, fills at the
    signal candle's close, fee on every fill, final equity marked at the last close."""
    af, as_ = 2 / (fast + 1), 2 / (slow + 1)
    ef = es = closes[0]
    pos, fills, prev = 0.0, 0, None
    for i, c in enumerate(closes):
        ef, es = af * c + (1 - af) * ef, as_ * c + (1 - as_) * es
        if i < slow - 1:
            continue
        d = ef - es
        if prev is not None and ((prev < 0 < d and pos <= 0) or (prev > 0 > d and pos >= 0)):
            side = 1 if d > 0 else -1
            if pos != 0:
                cash += side * -qty * c - qty * c * fee
                fills += 1
            cash += side * -qty * c - qty * c * fee
            pos = side * qty
            fills += 1
        prev = d
    return fills, cash + pos * closes[-1]


PEER_JOB = [
    "strategy.fast_period=20", "strategy.slow_period=50", "strategy.order_qty=0.01",
    "broker.starting_equity=100000", "broker.backtest_fill=close", "broker.latency_ms=0",
    "broker.latency_jitter_ms=0", "broker.slippage_bps=0", "risk.max_position_size=1",
    "risk.max_orders_per_minute=600", "risk.sizing=fixed", "strategy.stop_loss_pct=0",
    "strategy.take_profit_pct=0", "risk.max_notional=1000000", "risk.max_leverage=100", "risk.max_loss_pct=100",
    "risk.max_daily_drawdown_pct=100", "risk.max_consecutive_losses=0",
]  # fmt: skip


async def test_backtest_matches_the_reference_loop(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    data = tmp_path / "bars.csv"
    closes = write_bars(data, 3000)
    config = load(None, {}, [f"session.run_dir={tmp_path / 'runs'}", "session.interval=1m", *PEER_JOB])
    result = await run_session(config, plan=Plan(mode="backtest", data=str(data)), handle_signals=False)
    report = read_report(result.run_path)
    fills, equity = reference(closes, 20, 50, 0.01, 0.0006, 100_000.0)
    events = read_events(result.run_path)
    flatten_fee = sum(
        e["fee"] for e in events if e["kind"] == "order.filled" and e["reason"] == "flatten_on_exit"
    )
    assert report["stop_reason"] == "data_end"
    assert report["fills"] - (1 if flatten_fee else 0) == fills
    assert abs(report["ending_equity"] + flatten_fee - equity) < 0.01
    assert validate(result.run_path) == []


async def test_backtest_default_fills_at_the_next_open_never_better(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    data = tmp_path / "bars.csv"
    write_bars(data, 1500)
    config = load(
        None,
        {},
        [
            f"session.run_dir={tmp_path / 'runs'}",
            "session.interval=1m",
            "strategy.fast_period=5",
            "strategy.slow_period=13",
            "broker.slippage_bps=0",
            "risk.max_consecutive_losses=0",
            "risk.max_daily_drawdown_pct=100",
            "risk.max_loss_pct=100",
        ],
    )
    result = await run_session(config, plan=Plan(mode="backtest", data=str(data)), handle_signals=False)
    events = read_events(result.run_path)
    fills = [e for e in events if e["kind"] == "order.filled" and e["reason"].startswith(("entry", "exit"))]
    assert fills
    opens = {}
    for line in data.read_text().splitlines()[1:]:
        t, o, *_ = line.split(",")
        opens[int(t) // 1000] = float(o)
    for f in fills:  # the open of the candle the order reached the market in, not the signal's close
        fill_ts = datetime.fromisoformat(f["ts"].replace("Z", "+00:00")).timestamp()
        candle_open = int(fill_ts // 60 * 60)
        assert fill_ts - candle_open < 1.0  # latency, after the signal candle closed
        assert f["fill_price"] == opens[candle_open]
    assert validate(result.run_path) == []


async def test_backtest_over_shared_real_data(
    tmp_path: Path, autojump_clock: trio.abc.Clock, shared_data: Path
) -> None:
    import gzip

    source = shared_data / "btcusdt_perp_1m.csv.gz"
    data = tmp_path / "real.csv"
    with gzip.open(source, "rt") as f:  # the first 5,000 candles: enough to trade, quick to run
        data.write_text("".join(line for _, line in zip(range(5001), f, strict=False)))
    config = load(
        None,
        {},
        [
            f"session.run_dir={tmp_path / 'runs'}",
            "session.interval=1m",
            "risk.max_consecutive_losses=0",
            "risk.max_daily_drawdown_pct=100",
            "risk.max_loss_pct=100",
        ],
    )
    result = await run_session(config, plan=Plan(mode="backtest", data=str(data)), handle_signals=False)
    report = read_report(result.run_path)
    assert report["stop_reason"] == "data_end" and report["fills"] > 0
    assert report["open_positions"] == []
    assert validate(result.run_path) == []


async def test_backtest_broker_works_a_candle_before_the_strategy_decides(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A candle that both reaches a resting stop or target and crosses the EMAs: the stop fills
    first, and the strategy decides on the account as the candle left it, whatever the scheduler's
    order (it shuffles each batch of runnable tasks)."""
    data = tmp_path / "bars.csv"
    write_bars(data, 1500)
    sets = [
        "session.interval=1m",
        "strategy.fast_period=2",
        "strategy.slow_period=5",
        "strategy.stop_loss_pct=0.05",
        "strategy.take_profit_pct=0.05",
        "broker.backtest_fill=close",
        "broker.latency_ms=0",
        "broker.latency_jitter_ms=0",
        "risk.max_orders_per_minute=600",
        "risk.max_consecutive_losses=0",
        "risk.max_daily_drawdown_pct=100",
        "risk.max_loss_pct=100",
    ]
    protective = ("stop_loss", "take_profit")
    runs = []
    for i in range(3):
        config = load(None, {}, [f"session.run_dir={tmp_path / f'runs{i}'}", *sets])
        result = await run_session(config, plan=Plan(mode="backtest", data=str(data)), handle_signals=False)
        events = read_events(result.run_path)
        working: set[str] = set()  # orders resting at the market
        collisions = 0
        for n, e in enumerate(events):
            if e["kind"] == "order.working":
                working.add(e["order_id"])
            elif e["kind"] == "signal":
                # a stop or target already resting when the candle closed fills before the signal
                late = [
                    f
                    for f in events[n:]
                    if f["ts"] == e["ts"] and f["kind"] == "order.filled" and f["order_id"] in working
                ]
                assert late == []
                collisions += any(
                    f["ts"] == e["ts"] and f["kind"] == "order.filled" and f["reason"] in protective
                    for f in events[n - 3 : n]
                )
            elif e["kind"] in ("order.filled", "order.cancelled"):
                working.discard(e["order_id"])
        assert collisions >= 5  # the data exercises it
        runs.append([{k: v for k, v in e.items() if k not in NOT_COMPARED} for e in events])
    assert runs[0] == runs[1] == runs[2]


IDENTITY = {"run_id", "config", "data_source", "pid", "seq"}


async def test_a_replay_ends_where_its_session_did_to_the_microsecond(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A session stopped by its loss limit on a fill that came after the order's latency, at an
    instant between two milliseconds: its replay took the start and end from the events' `ts`,
    cut to the ms, so that fill fell after the replay's end, which then stopped for `duration`
    with other orders (an audit of the replays found it). The replay now starts and ends at the
    recorded full-precision times: the same events, line by line."""
    sets = [
        *TRADES_OFTEN,
        "risk.max_loss_pct=0.02",
        "broker.latency_ms=777.7",
        "broker.latency_jitter_ms=333.3",
    ]
    original = await run_session(
        make_config(tmp_path / "a", *sets, duration_min=5), handle_signals=False, progress_mode="off"
    )
    events = read_events(original.run_path)
    stopped = events[-1]
    assert stopped["stop_reason"] == "max_loss" and stopped["ended_ts"] * 1000 % 1 != 0  # between two ms
    recording = load_recording(original.run_path)
    assert (recording.started_ts, recording.ended_ts) == (events[0]["started_ts"], stopped["ended_ts"])
    config = make_config(tmp_path / "b", *sets, duration_min=5)
    replayed = await run_session(config, plan=Plan(mode="replay", recording=recording), handle_signals=False)
    again = read_events(replayed.run_path)

    def comparable(records: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in IDENTITY} for r in records]

    assert comparable(again) == comparable(events)
    assert validate(replayed.run_path) == []


def test_replaying_a_backtests_run_folder_is_refused_naming_what_to_do(tmp_path: Path) -> None:
    """Found by an audit: `--replay` of a backtest's folder (no market data recorded) ran a
    'replay' of nothing for the backtest's whole data span and exited 0 with no trade."""
    from tests.conftest import run_main

    data = tmp_path / "bars.csv"
    rows = [f"{1_704_067_200_000 + i * 60_000},100.0,101.0,99.0,100.5,5.0" for i in range(30)]
    data.write_text("open_time_ms,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    runs = str(tmp_path / "runs")
    assert (
        run_main("--mode", "backtest", "--data", str(data), "--run-dir", runs, cwd=tmp_path).returncode == 0
    )
    backtest = (tmp_path / "runs" / "latest").resolve()
    refused = run_main("--replay", str(backtest), "--run-dir", runs, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert (
        f"--replay: {backtest.name} is a backtest's run folder: it recorded no market data" in refused.stderr
    )
    assert f"run the backtest again (backtest: {data})" in refused.stderr
    assert (tmp_path / "runs" / "latest").resolve() == backtest  # nothing ran


def _run(config_sets: list[str], run_dir: Path, plan: Plan) -> Path:
    config = load(
        None, {}, [f"session.run_dir={run_dir}", f"session.kill_switch={run_dir}/kill.txt", *config_sets]
    )

    async def main() -> Path:
        return (await run_session(config, plan=plan, handle_signals=False, progress_mode="off")).run_path

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_risk_stop_on_a_backtests_last_candle_is_the_same_on_both_runtimes(tmp_path: Path) -> None:
    """Found by an audit: when the last candle closed the trade reaching max_trades, the kernel
    stopped on `max_trades` and the actors on `data_end` with an error (the feed asked for the
    end before the broker had worked that candle, and the broker's stop hit a closed channel)."""
    sets = ["session.interval=1m", "strategy.fast_period=2", "strategy.slow_period=5", "risk.max_trades=1",
            "broker.backtest_fill=close", "broker.latency_ms=0", "broker.latency_jitter_ms=0"]  # fmt: skip
    full = tmp_path / "full.csv"
    write_bars(full, 300)
    probe = _run(sets, tmp_path / "probe", Plan(mode="backtest", data=str(full)))
    stopped = read_events(probe)[-1]
    assert stopped["stop_reason"] == "max_trades"
    rows = full.read_text().splitlines()  # cut after the candle whose close stopped it
    cut = [rows[0]] + [r for r in rows[1:] if int(r.split(",")[0]) + 60_000 <= stopped["ended_ts"] * 1000]
    data = tmp_path / "bars.csv"
    data.write_text("\n".join(cut) + "\n")
    logs = {}
    for runtime in ("kernel", "actors"):
        run = _run(sets, tmp_path / runtime, Plan(mode="backtest", data=str(data), runtime=runtime))
        report = read_report(run)
        assert (report["status"], report["stop_reason"]) == ("ok", "max_trades"), runtime
        logs[runtime] = [{k: v for k, v in e.items() if k not in NOT_COMPARED} for e in read_events(run)]
    assert logs["kernel"] == logs["actors"]


@pytest.mark.parametrize(
    "sets",
    [
        ["risk.max_trades=1", "feed.mock_volatility_pct=150"],  # stopped by a fill after its latency
        [
            "strategy.stop_loss_pct=0.05",
            "strategy.take_profit_pct=0.05",
            "risk.max_consecutive_losses=1",
            "risk.max_orders_per_minute=100",
        ],  # stopped by the breaker, some at a quote's arrival
    ],
    ids=["max_trades", "breaker"],
)
def test_replays_of_sessions_their_data_stopped_reproduce_on_both_runtimes(
    tmp_path: Path, sets: list[str]
) -> None:
    """Found by an audit: a replay (kernel) of a session stopped at the instant of a timer's fill
    refused that fill `session_stopping` and ended on `duration`; the actors' replay lost the
    last instant's input or timer to the watchdog's end at that same instant (39 of 39)."""
    base = [
        "session.interval=2s",
        "strategy.fast_period=2",
        "strategy.slow_period=5",
        "session.duration_min=3",
    ]
    stopped = 0
    for seed in range(1, 7):
        config_sets = [*base, *sets, f"session.seed={seed}"]
        original = _run(config_sets, tmp_path / f"orig{seed}", Plan())
        expected = read_report(original)
        stopped += expected["stop_reason"] != "duration"
        recording = load_recording(original)
        for runtime in ("kernel", "actors"):
            replay = _run(
                config_sets,
                tmp_path / f"{runtime}{seed}",
                Plan(mode="replay", recording=recording, runtime=runtime),
            )
            got = read_report(replay)
            assert {k: v for k, v in got.items() if k not in NOT_COMPARED} == {
                k: v for k, v in expected.items() if k not in NOT_COMPARED
            }, (seed, runtime)
    assert stopped >= 3  # most of them stopped by their data, not their duration


async def test_a_replay_skips_and_counts_the_market_records_it_cannot_read(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Found by an audit: one damaged line of market.jsonl (not JSON, a field gone) ended the replay
    with a traceback. Malformed market data is dropped, counted and logged, the session goes on:
    the replay runs to its end and its report counts what it skipped."""
    original = await run_session(
        make_config(tmp_path / "a", *TRADES_OFTEN, duration_min=5), handle_signals=False, progress_mode="off"
    )
    lines = (original.run_path / "market.jsonl").read_text().splitlines(keepends=True)
    lines[50] = "{not json\n"
    damaged = json.loads(lines[60])
    damaged["bid"] = None if "bid" in damaged else damaged.pop("open_ts", None)
    lines[60] = json.dumps(damaged) + "\n"
    (original.run_path / "market.jsonl").write_text("".join(lines))
    config = make_config(tmp_path / "b", *TRADES_OFTEN, duration_min=5)
    replayed = await run_session(
        config, plan=Plan(mode="replay", recording=load_recording(original.run_path)), handle_signals=False
    )
    report = read_report(replayed.run_path)
    assert (report["status"], report["stop_reason"]) == ("ok", read_report(original.run_path)["stop_reason"])
    assert report["malformed_dropped"].get("replay_bad_record") == 2


async def test_a_replay_of_a_mock_session_charges_no_funding_the_session_did_not(
    tmp_path: Path, autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the determinism audit: a mock session (no funding: `funding_source` none) holding a
    position at a funding instant (08:00 UTC) recorded no funding there, as it should; its replay
    charged one, at rate 0 and the mark of the replay's own quote, an event the original never had
    (and the validator refused it). The replay now models funding only where its original did:
    the same events, line by line."""
    instant = 1_704_096_000  # 2024-01-01T08:00:00Z, a funding instant
    # the session's one clock starts 2 minutes before it (the mock walk is the seed's whenever it runs)
    monkeypatch.setattr("actors.clock.time", SimpleNamespace(time=lambda: instant - 120.25))
    sets = [*TRADES_OFTEN, "session.seed=1"]
    original = await run_session(
        make_config(tmp_path / "a", *sets, duration_min=4), handle_signals=False, progress_mode="off"
    )
    events = read_events(original.run_path)
    assert events[-1]["funding_source"] == "none"
    # the precondition: a position open at the instant (the last heartbeat before it says so)
    before = [e for e in events if e["kind"] == "heartbeat" and e["ts"] < "2024-01-01T08:00:00"]
    assert before and before[-1]["position_qty"] != 0
    assert not [e for e in events if e["kind"] == "funding"]
    recording = load_recording(original.run_path)
    replayed = await run_session(
        make_config(tmp_path / "b", *sets, duration_min=4),
        plan=Plan(mode="replay", recording=recording),
        handle_signals=False,
    )
    again = read_events(replayed.run_path)
    assert [e for e in again if e["kind"] == "funding"] == []

    def comparable(records: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in IDENTITY} for r in records]

    assert comparable(again) == comparable(events)
    assert validate(replayed.run_path) == []
