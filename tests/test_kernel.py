"""The differential test: the same inputs through the live Trio actors (on trio's MockClock) and
through the kernel give the same `events.jsonl`, line for line.

The kernel (actors/kernel.py) is a plain loop; the actors (actors/broker/actor.py and its peers)
talk over channels and asks. Both drive the same components in the same order of messages, and
these configurations exercise every path between them: latency on and off (orders reaching the
market inside a candle, as timers), stops and targets, partial fills of resting targets, breaker
trips (stop and halt, with cooldowns), the loss limit, max_trades, max_losses, gaps in the data.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.config import build, dict_layer, flags_layer, load
from actors.feeds.funding import FundingRates
from actors.kernel import Kernel
from actors.plan import Plan, load_recording
from actors.recording import checkpoint
from actors.session import Parts, Session, run_session
from protocols.messages import Event
from tests.conftest import REPO, TRADES_OFTEN, make_config
from tests.test_multi_symbol import T0_MS
from tests.test_multi_symbol import write_bars as write_multi_bars
from tests.test_replay_backtest import PEER_JOB, write_bars
from tools.validate_session import validate

LOOSE_LIMITS = ["risk.max_consecutive_losses=0", "risk.max_daily_drawdown_pct=100", "risk.max_loss_pct=100"]
FAST = ["strategy.fast_period=2", "strategy.slow_period=5"]
CLOSE_FILLS = ["broker.backtest_fill=close", "broker.latency_ms=0", "broker.latency_jitter_ms=0"]
# what differs between two runs of the same session by construction
RUN_FIELDS = {"run_id", "pid"}


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
    ("default_limits_breaker", [*FAST, "risk.on_breaker=stop"], 2000, False, "breaker"),
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


CASES += [
    (
        "latency_inside_candles",
        [*FAST, *LOOSE_LIMITS, "broker.latency_ms=20000", "broker.latency_jitter_ms=15000"],
        1500,
        False,
        "data_end",
    ),
    (
        "partial_fills_thin_volume",
        [
            *FAST,
            *CLOSE_FILLS,
            *LOOSE_LIMITS,
            "risk.sizing=fixed",
            "strategy.order_qty=0.5",
            "risk.max_position_size=5",
            "risk.max_notional=10000000",
            "risk.max_leverage=50",
            "broker.leverage=50",
            "strategy.stop_loss_pct=0.3",
            "strategy.take_profit_pct=0.03",
            "risk.max_orders_per_minute=600",
        ],
        1500,
        False,
        "data_end",
    ),
    ("max_losses", [*FAST, "risk.max_losses=4", *LOOSE_LIMITS], 2000, False, "max_losses"),
    (
        "throttled",
        [*FAST, *CLOSE_FILLS, *LOOSE_LIMITS, "risk.max_orders_per_minute=1"],
        1500,
        False,
        "data_end",
    ),
]


def _normalized(run_path: Path) -> list[dict[str, Any]]:
    lines = []
    with (run_path / "events.jsonl").open() as f:
        for line in f:
            record = {k: v for k, v in json.loads(line).items() if k not in RUN_FIELDS}
            if record["kind"] == "session.started":
                record["config"]["session"].pop("run_dir")
                record["config"]["session"].pop("kill_switch")
            lines.append(record)
    return lines


def _first_difference(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"first difference at line {i + 1}:\n actors: {x}\n kernel: {y}"
    return f"lengths differ: {len(a)} lines from the actors, {len(b)} from the kernel"


async def _backtest(run_dir: Path, data: Path, sets: list[str], runtime: str) -> Path:
    config = load(None, {}, [f"session.run_dir={run_dir}", "session.interval=1m", *sets])
    plan = Plan(mode="backtest", data=str(data), runtime=runtime)  # type: ignore[arg-type]
    result = await run_session(config, plan=plan, handle_signals=False, progress_mode="off")
    return result.run_path


# the cases `nox -s quick` runs (one of each mechanism: fills at the open and the close, stops and
# targets, a breaker's stop, latency, partial fills); `nox -s tests` runs them all
QUICK_CASES = {
    "peer_job",
    "honest_defaults",
    "fast_tight_stops_close_fills",
    "default_limits_breaker",
    "latency_inside_candles",
    "partial_fills_thin_volume",
}


@pytest.mark.parametrize(
    ("sets", "bars", "gaps", "stop_reason"),
    [pytest.param(*c[1:], id=c[0], marks=() if c[0] in QUICK_CASES else pytest.mark.slow) for c in CASES],
)
async def test_the_actors_and_the_kernel_write_the_same_events(
    tmp_path: Path,
    autojump_clock: trio.abc.Clock,
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
    on_actors = await _backtest(tmp_path / "actors", data, sets, "actors")
    on_kernel = await _backtest(tmp_path / "kernel", data, sets, "kernel")
    a, k = _normalized(on_actors), _normalized(on_kernel)
    assert a == k, _first_difference(a, k)
    stopped = a[-1]
    assert stopped["kind"] == "session.stopped" and stopped["stop_reason"] == stop_reason
    assert validate(on_kernel) == [] and validate(on_actors) == []
    kinds = {e["kind"] for e in a}
    assert "order.filled" in kinds


@pytest.mark.parametrize(
    "sets",
    [
        [*FAST, *LOOSE_LIMITS],
        [*FAST, "risk.on_breaker=halt", "risk.max_consecutive_losses=2", "risk.max_daily_drawdown_pct=100"],
        [*FAST, *LOOSE_LIMITS, "broker.latency_ms=20000", "broker.latency_jitter_ms=15000"],
    ],
    ids=["honest_defaults", "breaker_halts", "orders_in_flight"],
)
@pytest.mark.parametrize("cut", [333, 1001])
def test_a_run_resumed_from_its_checkpoint_state_writes_the_same_events(
    tmp_path: Path, sets: list[str], cut: int
) -> None:
    """A resumed session: the components' state taken between two steps (what a checkpoint keeps,
    through JSON as a checkpoint file holds it), restored into new components, and the run goes on
    from there: the same events as the run that never stopped (orders in flight, working stops
    and targets, a breaker's cooldown and the strategy's EMAs all carried over)."""
    data = tmp_path / "bars.csv"
    write_bars(data, 1500)
    config = load(None, {}, [f"session.run_dir={tmp_path}", "session.interval=1m", *sets])
    plan = Plan(mode="backtest", data=str(data))

    def fresh() -> tuple[Session, Parts, list[Event]]:
        session = Session(config, plan)
        started, _ = session.candles()
        return session, session.parts(session.timeline(started)), []

    session, whole, expected = fresh()
    Kernel(whole.broker, whole.gate, whole.strategies, expected.append).run_candles(session.candles()[1])

    session, first, got = fresh()
    candles = session.candles()[1]
    assert (
        Kernel(first.broker, first.gate, first.strategies, got.append).run_candles(
            itertools.islice(candles, cut), finish=False
        )
        is None
    )
    state = json.loads(checkpoint.encode(first.state()))["state"]
    _, resumed, _ = fresh()
    resumed.restore(state, first.broker.last_ts or 0.0)
    Kernel(resumed.broker, resumed.gate, resumed.strategies, got.append).run_candles(candles)
    assert len(got) == len(expected) and got == expected
    assert any(e.kind == "order.filled" for e in expected[: len(expected) // 2])


async def test_a_replay_on_the_actors_and_on_the_kernel_writes_the_same_events(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A recorded mock session (market.jsonl with its arrival times) replayed through both
    runtimes: the same events, to the original's end (timers after the last market event
    included) and with its stop reason."""
    original = await run_session(
        make_config(tmp_path / "live", *TRADES_OFTEN, duration_min=3),
        handle_signals=False,
        progress_mode="off",
    )
    recording = load_recording(original.run_path)
    runs = {}
    for runtime in ("actors", "kernel"):
        config = make_config(tmp_path / runtime, *TRADES_OFTEN, duration_min=3)
        plan = Plan(mode="replay", recording=recording, runtime=runtime)  # type: ignore[arg-type]
        runs[runtime] = (await run_session(config, plan=plan, handle_signals=False)).run_path
    a, k = _normalized(runs["actors"]), _normalized(runs["kernel"])
    assert a == k, _first_difference(a, k)
    assert a[-1]["stop_reason"] == "duration" and sum(e["kind"] == "order.filled" for e in a) >= 4
    # each records the market it acted on: the original's
    market = (original.run_path / "market.jsonl").read_bytes()
    assert market and all((runs[r] / "market.jsonl").read_bytes() == market for r in runs)


def write_funding(path: Path, rate: str, every_h: int, hours: int) -> None:
    """A funding file of one `rate` (a fraction per `every_h` hours) settled every `every_h` hours
    from the bars' first open for `hours`."""
    rows = [f"{T0_MS + i * every_h * 3600_000},{rate},{every_h}" for i in range(hours // every_h + 1)]
    path.write_text("ts_ms,rate,interval_h\n" + "\n".join(rows) + "\n")


async def test_the_three_symbols_template_with_each_symbols_funding_runs_the_same_on_both_runtimes(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Found by the parity audit: no differential test gave the symbols different funding rates,
    so a runtime handing a symbol's strategies another symbol's account snapshot (its funding
    rate, instrument, staleness: `broker.snapshot(now)` for `broker.snapshot(now, event.symbol)`
    in actors/broker/actor.py, or in the kernel's `decide`) passed every test (the differential,
    multi-symbol, funding, attribution and strategy test files). The three_symbols template (a
    trend pullback on each of three symbols, whose funding gate reads the snapshot's rate) over
    three symbols' bars, each symbol with its own rates (BTCUSDT 0.04 % per 8 h: longs at half
    size; ETHUSDT -0.06 %: no shorts; SOLUSDT settled every 4 h), through both runtimes: the same
    events, line for line."""
    data = {"BTCUSDT": (60_000.0, 1), "ETHUSDT": (3_000.0, 2), "SOLUSDT": (150.0, 3)}
    rates = {"BTCUSDT": ("0.0004", 8), "ETHUSDT": ("-0.0006", 8), "SOLUSDT": ("0.0001", 4)}
    files, funding = [], []
    for seed, (symbol, (price, decimals)) in enumerate(data.items(), start=1):
        bars, rate_file = tmp_path / f"{symbol}.csv", tmp_path / f"{symbol}-funding.csv"
        write_multi_bars(bars, 2000, seed, price, decimals)
        write_funding(rate_file, *rates[symbol], hours=40)
        files.append((symbol, str(bars)))
        funding.append((symbol, FundingRates.from_csv(rate_file)))
    runs = {}
    for runtime in ("actors", "kernel"):
        config = load(
            REPO / "config" / "templates" / "three_symbols.toml",
            {},
            [f"session.run_dir={tmp_path / runtime}", f"session.kill_switch={tmp_path / 'kill.txt'}"],
        )
        plan = Plan(
            mode="backtest",
            data_by_symbol=tuple(files),
            funding_by_symbol=tuple(funding),
            runtime=runtime,  # type: ignore[arg-type]
        )
        result = await run_session(config, plan=plan, handle_signals=False, progress_mode="off")
        runs[runtime] = result.run_path
    a, k = _normalized(runs["actors"]), _normalized(runs["kernel"])
    assert a == k, _first_difference(a, k)
    assert validate(runs["kernel"]) == [] and validate(runs["actors"]) == []
    # each symbol's gate saw its own rate: ETHUSDT's shorts skipped for funding, BTCUSDT's longs halved
    skipped = {
        (e["symbol"], e["direction"]) for e in k if e["kind"] == "signal.skipped" and e["reason"] == "funding"
    }
    assert ("ETHUSDT", "short") in skipped and not any(symbol == "BTCUSDT" for symbol, _ in skipped)
    halved = {e["symbol"] for e in k if e["kind"] == "signal" and e.get("size_scale") == 0.5}
    assert "BTCUSDT" in halved and "ETHUSDT" not in halved
    charged = {e["symbol"] for e in k if e["kind"] == "funding"}
    assert len(charged) >= 2, charged


# Every strategy kind at once, on two symbols (one account: the `Portfolio`), trading within
# minutes on the mock: a trend pullback's limit entries with their good-till times, a liquidity
# sweep and an EMA cross on another symbol, against the account-wide notional cap.
EVERY_KIND = """
[session]
interval = "5s"
seed = 3

[feed]
source = "mock"
mock_volatility_pct = 150

[risk]
max_position_size = 1.0
max_orders_per_minute = 30
max_total_notional = 3000.0
max_loss_pct = 50
max_daily_drawdown_pct = 50
max_consecutive_losses = 0

[[strategies]]
id = "btc_trend"
kind = "trend_pullback"
ema_fast = 5
ema_slow = 12

[[strategies]]
id = "btc_sweep"
kind = "liquidity_sweep"
lookback = 3

[[strategies]]
id = "eth_ema"
kind = "ema_cross"
symbol = "ETHUSDT"
fast_period = 2
slow_period = 5
"""


async def test_a_session_of_every_strategy_kind_on_two_symbols_replays_the_same_on_both_runtimes(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Found missing by the parity audit: the replay differential above runs one EMA cross on one
    symbol. A live session (the actors, on the mock) of each strategy kind on two symbols, replayed
    from its recorded config (as --replay does) through both runtimes: the two replays write the
    same events, and each the original's, line for line (signals, orders, rejections, fills and
    their fees, heartbeats, the final equity), but for the data source it names."""
    path = tmp_path / "every_kind.toml"
    path.write_text(EVERY_KIND)
    config = load(
        path,
        {},
        [f"session.run_dir={tmp_path / 'live'}", f"session.kill_switch={tmp_path / 'kill.txt'}"],
        {"session.duration_min": (10.0, "--duration")},
    )
    original = (await run_session(config, handle_signals=False, progress_mode="off")).run_path
    recording = load_recording(original)
    runs = {}
    for runtime in ("actors", "kernel"):
        problems: list[str] = []
        layer = dict_layer(recording.config, "recorded", problems)
        replay_config = build(
            [layer, flags_layer({"session.run_dir": (str(tmp_path / runtime), "--run-dir")})], problems
        )
        plan = Plan(mode="replay", recording=recording, runtime=runtime)  # type: ignore[arg-type]
        runs[runtime] = (await run_session(replay_config, plan=plan, handle_signals=False)).run_path
    a, k = _normalized(runs["actors"]), _normalized(runs["kernel"])
    assert a == k, _first_difference(a, k)

    def as_traded(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{key: v for key, v in e.items() if key != "data_source"} for e in events]

    o = _normalized(original)
    assert as_traded(o) == as_traded(k), _first_difference(as_traded(o), as_traded(k))
    filled = {e["strategy_id"] for e in o if e["kind"] == "order.filled"}
    assert {"btc_trend", "btc_sweep", "eth_ema"} <= filled
    assert {e["symbol"] for e in o if e["kind"] == "order.filled"} == {"BTCUSDT", "ETHUSDT"}
    assert all(validate(run) == [] for run in (original, *runs.values()))
