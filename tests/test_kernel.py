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

from actors.config import load
from actors.kernel import Kernel
from actors.plan import Plan, load_recording
from actors.recording import checkpoint
from actors.session import Parts, Session, run_session
from protocols.messages import Event
from tests.conftest import TRADES_OFTEN, make_config
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
