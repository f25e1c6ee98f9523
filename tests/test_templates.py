"""Every template in config/templates/ runs unmodified as a session (issue 12), and a session of
several strategies (`[[strategies]]`) builds, checkpoints, records and replays each under its id.

Each template runs for its full `session.duration_min` on trio's autojump clock (minutes of session
time in about a second), on its own source (the mock: no network); only the run folder and the kill
switch are pointed into the test's folder. It must end `ok` at its duration and pass the validator.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import trio

from actors.config import Config, build, dict_layer, load, to_dict
from actors.plan import Plan, load_recording
from actors.session import Parts, Timeline, build_parts, run_session
from protocols.messages import Candle
from tests.conftest import REPO, read_events, read_report
from tools.validate_session import validate

TEMPLATES = sorted((REPO / "config" / "templates").glob("*.toml"))
TWO_SETUPS = REPO / "config" / "templates" / "two_setups.toml"

# every template's whole session (virtual clock): nox -s tests runs them, nox -s quick leaves them out
pytestmark = pytest.mark.slow


def _load(path: Path, tmp_path: Path) -> Config:
    """The template as it is, its run folder and kill switch in the test's folder."""
    return load(
        path, {}, [f"session.run_dir={tmp_path / 'runs'}", f"session.kill_switch={tmp_path / 'kill.txt'}"]
    )


def test_the_templates_are_there() -> None:
    names = {path.name for path in TEMPLATES}
    assert {"two_setups.toml", "trend_pullback.toml", "liquidity_sweep.toml", "three_symbols.toml"} <= names


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda path: path.stem)
async def test_template_runs_unmodified(path: Path, tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    config = _load(path, tmp_path)
    as_written = to_dict(load(path))
    for section, keys in to_dict(config).items():  # nothing else differs from the template
        if section == "session":
            keys = {k: v for k, v in keys.items() if k not in ("run_dir", "kill_switch")}
            assert keys.items() <= as_written[section].items()
        else:
            assert keys == as_written[section], section
    t0 = trio.current_time()
    result = await run_session(config, handle_signals=False, progress_mode="off")
    report = read_report(result.run_path)
    assert report["status"] == "ok", report["error_messages"]
    assert report["stop_reason"] == "duration"
    assert trio.current_time() - t0 == pytest.approx(config.session.duration_min * 60, abs=0.01)
    assert report["errors"] == 0
    assert report["open_positions"] == []
    assert validate(result.run_path) == []
    # every strategy the template configures took part, under its id
    events = read_events(result.run_path)
    submitted = {e.get("strategy_id") for e in events if e["kind"] == "order.submitted"} - {None, ""}
    assert submitted <= {spec.id for spec in config.strategy_specs}


def test_two_setups_is_two_strategies_on_one_market() -> None:
    config = load(TWO_SETUPS)
    specs = config.strategy_specs
    assert [(s.id, s.kind) for s in specs] == [("trend", "trend_pullback"), ("sweep", "liquidity_sweep")]
    assert (config.session.symbol, config.session.interval, config.feed.source) == ("BTCUSDT", "1m", "mock")
    assert config.session.duration_min == 10


def _parts(config: Config) -> Parts:
    timeline = Timeline(0.0, 600.0, "mock")
    return build_parts(config, timeline, heartbeat_s=1.0, defer_to_next_quote=False, live=False)


def _candles(n: int) -> list[Candle]:
    rng = random.Random(3)
    price, candles = 60000.0, []
    for i in range(n):
        close = price * math.exp(rng.gauss(0, 0.002))
        high, low = max(price, close) * 1.0005, min(price, close) * 0.9995
        candles.append(Candle(i * 60.0, 60.0, price, high, low, close, 1.0 + rng.random(), backfill=True))
        price = close
    return candles


def test_each_strategy_is_built_in_order_and_checkpointed_under_its_id() -> None:
    config = load(TWO_SETUPS)
    parts = _parts(config)
    strategies = parts.strategies
    assert [(s.id, type(s).__name__) for s in strategies] == [
        ("trend", "TrendPullback"),
        ("sweep", "LiquiditySweepStrategy"),
    ]
    assert strategies[0].params == config.strategy_specs[0].params
    assert strategies[1].params.lookback == 10
    for candle in _candles(80):
        for strategy in strategies:
            strategy.update(candle)
    state = parts.state()
    assert set(state["strategies"]) == {"trend", "sweep"}
    assert state["strategy"] is None  # the one-strategy key only with one strategy
    restored = _parts(config)
    restored.restore(state, 4800.0)
    assert restored.state()["strategies"] == state["strategies"]


def test_a_one_strategy_checkpoint_of_an_older_version_still_restores() -> None:
    config = load(REPO / "config" / "templates" / "trend_pullback.toml")
    parts = _parts(config)
    (strategy,) = parts.strategies
    assert strategy.id == "trend_pullback"  # the one [strategy]: its id is strategy.name
    for candle in _candles(60):
        strategy.update(candle)
    state = parts.state()
    assert state["strategies"] == {"trend_pullback": state["strategy"]}
    old = {k: v for k, v in state.items() if k != "strategies"}  # before strategies were keyed by id
    restored = _parts(config)
    restored.restore(old, 3600.0)
    assert restored.strategies[0].state() == state["strategy"]


async def test_a_two_setups_session_replays_from_its_recorded_config(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    config = _load(TWO_SETUPS, tmp_path / "a")
    original = await run_session(config, handle_signals=False, progress_mode="off")
    recording = load_recording(original.run_path)
    assert [t["id"] for t in recording.config["strategies"]] == ["trend", "sweep"]
    assert "strategy" not in recording.config
    # what --replay does with it (actors/main.py): the recorded config, loaded back, is the same
    problems: list[str] = []
    reloaded = build([dict_layer(recording.config, "recorded", problems)], problems)
    assert reloaded == config
    replay_config = _load(TWO_SETUPS, tmp_path / "b")
    replayed = await run_session(
        replay_config, plan=Plan(mode="replay", recording=recording), handle_signals=False
    )
    first, second = read_report(original.run_path), read_report(replayed.run_path)
    for key in ("status", "stop_reason", "net_pnl", "fills", "trade_count", "orders_submitted"):
        assert first[key] == second[key], key
    assert validate(replayed.run_path) == []
