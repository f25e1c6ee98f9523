"""Backtest runs (`CandleRun`): the feed hands the candles up to the strategy's next signal over in
one message, and the broker works each as if it had come alone. The events must be the same, line
for line, as candle by candle (`actors.feeds.history.MAX_RUN = 0`)."""

from __future__ import annotations

import itertools
import json
import math
import random
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import attrs.exceptions
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import actors.feeds.history
from actors.clock import SessionClock
from actors.config import load
from actors.feeds.history import run_candle_feed
from actors.plan import Plan
from actors.session import run_session
from actors.strategies.ema_cross import EmaCross
from protocols.messages import Candle, CandleRun, FeedMessage, Tick, checked_candle, quote
from tests.conftest import read_events, read_report
from tests.test_replay_backtest import NOT_COMPARED, PEER_JOB, write_bars
from tools.validate_session import validate

IGNORED = NOT_COMPARED | {"pid"}

LOOSE_LIMITS = ["risk.max_consecutive_losses=0", "risk.max_daily_drawdown_pct=100", "risk.max_loss_pct=100"]
FAST = ["strategy.fast_period=2", "strategy.slow_period=5"]
CLOSE_FILLS = ["broker.backtest_fill=close", "broker.latency_ms=0", "broker.latency_jitter_ms=0"]


def write_gapped_bars(path: Path, n: int, seed: int = 11) -> None:
    """`write_bars`, then rows dropped in blocks (open times jump by 2..15 minutes, and once by
    three hours, across heartbeats and order arrivals)."""
    write_bars(path, n)
    header, *rows = path.read_text().splitlines()
    rng = random.Random(seed)
    dropped: set[int] = set(range(n // 2, n // 2 + 180))
    for start in rng.sample(range(20, n - 20), n // 60):
        dropped.update(range(start, start + rng.randint(2, 15)))
    kept = [row for i, row in enumerate(rows) if i not in dropped]
    opens = [int(row.split(",")[0]) for row in kept]
    assert max(b - a for a, b in itertools.pairwise(opens)) >= 3 * 3600_000
    path.write_text("\n".join([header, *kept]) + "\n")


# (id, settings, bars, gaps, expected stop reason)
CASES = [
    ("peer_job", PEER_JOB, 3000, False, "data_end"),
    ("honest_defaults", LOOSE_LIMITS, 3000, False, "data_end"),
    (
        "fast_tight_stops_close_fills",
        [
            *FAST,
            "strategy.stop_loss_pct=0.05",
            "strategy.take_profit_pct=0.05",
            *CLOSE_FILLS,
            "risk.max_orders_per_minute=600",
            *LOOSE_LIMITS,
        ],
        2000,
        False,
        "data_end",
    ),
    ("default_limits_breaker", FAST, 2000, False, "breaker"),
    ("max_trades", [*FAST, "risk.max_trades=5"], 2000, False, "max_trades"),
    (
        "max_loss",
        [*FAST, "risk.max_loss_pct=0.5", "risk.max_consecutive_losses=0", "risk.max_daily_drawdown_pct=100"],
        2000,
        False,
        "max_loss",
    ),
    (
        "breaker_halts_and_resets",
        [
            *FAST,
            "risk.on_breaker=halt",
            "risk.max_consecutive_losses=2",
            "risk.breaker_cooldown_min=30",
            "risk.max_daily_drawdown_pct=100",
            "risk.max_loss_pct=100",
        ],
        2000,
        False,
        "data_end",
    ),
    ("gaps_honest_fast", [*FAST, *LOOSE_LIMITS], 2500, True, "data_end"),
    (
        "gaps_close_fills",
        [*FAST, *CLOSE_FILLS, "risk.max_orders_per_minute=600", *LOOSE_LIMITS],
        2500,
        True,
        "data_end",
    ),
    (
        "gaps_breaker_halts",
        [
            *FAST,
            "risk.on_breaker=halt",
            "risk.max_consecutive_losses=2",
            "risk.breaker_cooldown_min=30",
            "risk.max_daily_drawdown_pct=100",
            "risk.max_loss_pct=100",
        ],
        2500,
        True,
        "data_end",
    ),
]


def _strip(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in IGNORED}


def _first_difference(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"first difference at event {i}:\n runs:   {x}\n single: {y}"
    return f"lengths differ: {len(a)} events with runs, {len(b)} candle by candle"


async def _backtest(run_dir: Path, data: Path, sets: list[str]) -> Path:
    config = load(None, {}, [f"session.run_dir={run_dir}", "session.interval=1m", *sets])
    result = await run_session(
        config, plan=Plan(mode="backtest", data=str(data)), handle_signals=False, progress_mode="off"
    )
    return result.run_path


@pytest.mark.parametrize(
    ("sets", "bars", "gaps", "stop_reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_runs_give_the_same_events_as_candle_by_candle(
    tmp_path: Path,
    autojump_clock: trio.abc.Clock,
    monkeypatch: pytest.MonkeyPatch,
    sets: list[str],
    bars: int,
    gaps: bool,
    stop_reason: str,
) -> None:
    data = tmp_path / "bars.csv"
    if gaps:
        write_gapped_bars(data, bars)
    else:
        write_bars(data, bars)

    assert actors.feeds.history.MAX_RUN > 0  # runs are on
    with_runs = await _backtest(tmp_path / "runs", data, sets)
    monkeypatch.setattr(actors.feeds.history, "MAX_RUN", 0)  # every candle alone: the reference
    single = await _backtest(tmp_path / "single", data, sets)

    report, reference_report = read_report(with_runs), read_report(single)
    assert reference_report["fills"] > 0, "candle by candle (MAX_RUN = 0) nothing traded: no candles read?"
    events = [_strip(e) for e in read_events(with_runs)]
    reference = [_strip(e) for e in read_events(single)]
    assert events == reference, _first_difference(events, reference)
    assert _strip(report) == _strip(reference_report)
    metrics = json.loads((with_runs / "metrics.json").read_text())
    assert metrics == json.loads((single / "metrics.json").read_text())

    # the data exercises the case
    assert report["status"] == "ok"
    assert report["stop_reason"] == stop_reason
    assert report["fills"] > 0
    kinds = {e["kind"] for e in events}
    assert "signal" in kinds and "heartbeat" in kinds
    if stop_reason != "data_end":  # stopped mid-file: the last event is well before the data's end
        assert _epoch(events[-1]["ts"]) < 1_704_067_200 + bars * 60 - 600
    if any("on_breaker=halt" in s for s in sets):
        assert {"breaker.tripped", "breaker.reset", "order.rejected"} <= kinds
    if any("stop_loss_pct=0.05" in s for s in sets):
        assert any(
            e["kind"] == "order.filled" and e["reason"] in ("stop_loss", "take_profit") for e in events
        )
    assert validate(with_runs) == []
    assert validate(single) == []


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# Prices near BTC's, from a few exact values (so runs of equal closes, and EMAs exactly equal,
# are common) and from a continuous range (tiny and larger moves).
_price = st.one_of(
    st.sampled_from([60000.0, 60000.1, 59999.9, 60000.0000001]),
    st.floats(min_value=59000.0, max_value=61000.0, allow_nan=False, allow_infinity=False),
    st.floats(min_value=1.0, max_value=1e6, allow_nan=False, allow_infinity=False),
)
# Each price repeated: mostly a few times, sometimes long enough for both EMAs to reach it exactly
# (then the EMA difference is exactly 0.0: neither above nor below).
_repeat = st.one_of(st.integers(1, 3), st.integers(1, 3), st.integers(20, 150))
_closes = st.lists(st.tuples(_price, _repeat), max_size=25).map(
    lambda pairs: [price for price, repeat in pairs for _ in range(repeat)]
)


@settings(max_examples=400, deadline=None)
@given(
    periods=st.integers(1, 30).flatmap(
        lambda fast: st.tuples(st.just(fast), st.integers(max(fast + 1, 2), 60))
    ),
    history=st.integers(2, 50),
    warmup=st.one_of(st.lists(_price, max_size=60), _closes),  # short ones end inside the EMAs' warm-up
    closes=st.one_of(st.lists(_price, max_size=80), _closes),
)
def test_lookahead_agrees_with_update(
    periods: tuple[int, int], history: int, warmup: list[float], closes: list[float]
) -> None:
    fast, slow = periods
    ema, reference = EmaCross(fast, slow, history), EmaCross(fast, slow, history)
    for close in warmup:
        ema.update(close)
        reference.update(close)
    # what update says, close by close; then how far each position is from the next cross
    crosses = [reference.update(close) is not None for close in closes]
    until_cross = [0] * (len(closes) + 1)
    for i in range(len(closes) - 1, -1, -1):
        until_cross[i] = 0 if crosses[i] else until_cross[i + 1] + 1
    # A lookahead from where the feed asks (the start, and right after each signal), and from
    # every state while the EMAs are still warming up.
    for k in range(len(closes) + 1):
        if k == 0 or crosses[k - 1] or ema.seen <= slow + 1:
            before = ema.snapshot()
            n = ema.lookahead(close for close in closes[k:])
            assert ema.snapshot() == before  # the state is not changed
            assert n == until_cross[k], (k, ema.seen, closes[k : k + n + 2])
        if k < len(closes):
            assert (ema.update(closes[k]) is not None) == crosses[k]


_positive = st.floats(min_value=0.0, exclude_min=True, allow_nan=False, allow_infinity=False)
_finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(
    ts=_finite,
    price=_positive,
    interval=_positive,
    ohlc=st.tuples(_positive, _positive, _positive, _positive),
    volume=st.floats(min_value=0.0, allow_nan=False, allow_infinity=False),
)
def test_hot_path_constructors_make_the_same_objects(
    ts: float, price: float, interval: float, ohlc: tuple[float, float, float, float], volume: float
) -> None:
    fast_tick, tick = quote(ts, price), Tick(ts, price, price, price)
    assert type(fast_tick) is Tick
    assert fast_tick == tick
    assert attrs.asdict(fast_tick) == attrs.asdict(tick)
    assert hash(fast_tick) == hash(tick)
    assert repr(fast_tick) == repr(tick)
    assert (fast_tick.bid_qty, fast_tick.ask_qty, fast_tick.last_qty) == (0.0, 0.0, 0.0)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fast_tick.bid = 1.0  # type: ignore[misc]

    o, h, lo, c = ohlc
    fast_candle, candle = (
        checked_candle(ts, interval, o, h, lo, c, volume),
        Candle(ts, interval, o, h, lo, c, volume),
    )
    assert type(fast_candle) is Candle
    assert fast_candle == candle
    assert attrs.asdict(fast_candle) == attrs.asdict(candle)
    assert hash(fast_candle) == hash(candle)
    assert repr(fast_candle) == repr(candle)
    assert fast_candle.backfill is False
    assert fast_candle.close_ts == candle.close_ts
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fast_candle.close = 1.0  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fast_candle.backfill = True  # type: ignore[misc]


async def test_a_signal_is_never_inside_a_run(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """The strategy raises on a signal inside a run; so the session must end cleanly, with one
    signal per cross a plain loop over the closes finds, at the same candles."""
    data = tmp_path / "bars.csv"
    write_gapped_bars(data, 3000)
    candles = list(actors.feeds.history.read_candles_csv(data, 60))
    ema = EmaCross(2, 5, 200)
    crosses = []
    for candle in candles:
        cross = ema.update(candle.close)
        if cross is not None:
            crosses.append((candle.open_ts, cross, candle.close))
    assert len(crosses) > 100
    assert actors.feeds.history.MAX_RUN > 0
    run_path = await _backtest(tmp_path / "runs", data, [*FAST, *LOOSE_LIMITS])
    report = read_report(run_path)
    assert (report["status"], report["stop_reason"]) == ("ok", "data_end")
    signals = [
        (e["candle_open_ts"], e["direction"], e["price"])
        for e in read_events(run_path)
        if e["kind"] == "signal"
    ]
    assert signals == crosses
    assert validate(run_path) == []


def test_gapped_bars_have_gaps(tmp_path: Path) -> None:
    data = tmp_path / "bars.csv"
    write_gapped_bars(data, 2500)
    opens = [c.open_ts for c in actors.feeds.history.read_candles_csv(data, 60)]
    steps = {round(b - a) for a, b in itertools.pairwise(opens)}
    assert 60 in steps and len(steps) > 5 and max(steps) >= 3 * 3600
    assert len(opens) < 2500 - 180


@pytest.mark.parametrize("max_run", [0, 1, 7, actors.feeds.history.MAX_RUN])
async def test_the_feed_hands_each_candle_over_once_in_order(
    tmp_path: Path, autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch, max_run: int
) -> None:
    """The feed alone, with stand-ins for the broker and the strategy: every candle reaches each
    once, in order; with MAX_RUN = 0 each alone (the open quote, the close quote, the candle),
    otherwise in runs that end at a signal candle, which the strategy gets alone."""
    monkeypatch.setattr(actors.feeds.history, "MAX_RUN", max_run)
    data = tmp_path / "bars.csv"
    write_bars(data, 400)
    candles = list(actors.feeds.history.read_candles_csv(data, 60))
    clock = SessionClock(wall_start=candles[0].open_ts)
    ema = EmaCross(2, 5, 200)
    market: list[FeedMessage] = []
    decided: list[Candle] = []
    alone: list[tuple[Candle, bool]] = []  # candles the strategy got alone, and whether they crossed
    market_tx, market_rx = trio.open_memory_channel[FeedMessage](math.inf)
    decide_tx, decide_rx = trio.open_memory_channel[FeedMessage](math.inf)

    async def broker() -> None:
        async for message in market_rx:
            market.append(message)
            if isinstance(message, CandleRun):
                message.worked.set()

    async def strategy() -> None:
        async for message in decide_rx:
            if isinstance(message, CandleRun):
                for candle in message.candles:
                    assert ema.update(candle.close) is None, "a signal inside a run"
                    decided.append(candle)
            else:
                assert isinstance(message, Candle)
                alone.append((message, ema.update(message.close) is not None))
                decided.append(message)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(broker)
        nursery.start_soon(strategy)
        await run_candle_feed(candles, clock, [market_tx, decide_tx], lookahead=ema.lookahead)

    assert decided == candles
    runs = [m for m in market if isinstance(m, CandleRun)]
    worked = [
        c
        for m in market
        for c in (m.candles if isinstance(m, CandleRun) else [m] if isinstance(m, Candle) else [])
    ]
    assert worked == candles
    if max_run == 0:
        assert runs == []
        assert market == [m for c in candles for m in (*actors.feeds.history.candle_ticks(c), c)]
        assert len(alone) == len(candles)
    else:
        assert all(r.quotes == tuple(actors.feeds.history.candle_ticks(c) for c in r.candles) for r in runs)
        assert all(len(r.candles) <= max_run for r in runs)
        assert [c for c, crossed in alone if not crossed] == []  # alone only when it signals
        assert len(alone) > 20  # the data signals
        if max_run > 1:
            assert max(len(r.candles) for r in runs) > 1


async def test_the_recorder_inbox_wakes_after_a_batch_and_on_close() -> None:
    """Under virtual time the recorder's inbox wakes it once `wake_after` events wait, and always
    when the last sender closes: nothing is lost, nothing reordered."""
    from actors.recording.recorder import EventSink
    from protocols.messages import Event

    sink = EventSink(wake_after=3)
    drained: list[list[str]] = []

    async def recorder() -> None:  # run_recorder's loop, without the files
        while True:
            await sink.wait()
            drained.append([e.kind for e in sink.drain()])
            if sink.closed:
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(recorder)
        await trio.testing.wait_all_tasks_blocked()
        for kind in ("a", "b"):
            await sink.send(Event(0.0, kind))
        await trio.testing.wait_all_tasks_blocked()
        assert drained == []  # two waiting, fewer than three: not woken
        await sink.send(Event(0.0, "c"))
        await trio.testing.wait_all_tasks_blocked()
        assert drained == [["a", "b", "c"]]
        await sink.send(Event(0.0, "d"))
        await trio.testing.wait_all_tasks_blocked()
        assert drained == [["a", "b", "c"]]
        sink.close()
    assert drained == [["a", "b", "c"], ["d"]]
