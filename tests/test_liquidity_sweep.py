"""`liquidity_sweep` (actors/strategies/liquidity_sweep.py): sweep and reclaim of the recent range.

- a golden test on a month of real 1-minute candles: the strategy's signals (time, direction,
  swept level, stop, target) equal those of an independent reference written here in plain Python
  (its own EMA, ATR and daily VWAP; nothing imported from the project's indicators or strategy);
- a backtest of ~20,000 real candles through the kernel in a full session (`strategy.name =
  liquidity_sweep`; run folder, report, validator): it trades, and its stops and targets attach
  and fill;
- each rule and filter on a tiny hand-built candle sequence, against the same sequence with the
  rule relaxed (trend, volume, volatility, room to the target, both sides swept, the funding gate,
  one position at a time, history candles);
- the state round trip mid-run gives the same outputs as a run never interrupted.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import json
import math
import random
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest

from actors.broker.paper import PaperBroker
from actors.config import BrokerConfig, ConfigError, StrategyConfig, load
from actors.feeds.history import read_candles_csv
from actors.plan import Plan
from actors.session import Session
from actors.strategies.base import PARAMS, REGISTRY, build_strategy
from actors.strategies.liquidity_sweep import LiquiditySweepParams, LiquiditySweepStrategy
from protocols.instruments import table_instrument
from protocols.messages import AccountSnapshot, Candle, Event, Order, OrderIntent, Position, Tick
from tests.conftest import make_config
from tools.validate_session import validate

SYMBOL = "BTCUSDT"
DAY0 = 19675 * 86400.0  # 2023-11-14 00:00 UTC: the hand-built sequences start a UTC day

# --- helpers -------------------------------------------------------------------------------------


def account(funding: float = 0.0, qty: float = 0.0) -> AccountSnapshot:
    """A snapshot with no position (or `qty`) and the funding rate in force."""
    positions = (Position(SYMBOL, qty, 100.0), Position(SYMBOL, qty, 100.0, 0.0, "ls")) if qty else ()
    return AccountSnapshot(
        0.0, SYMBOL, 10_000.0, 10_000.0, 0.0, 0.0, 0.0, 0.0, 0.0, None, positions, funding_rate_pct=funding
    )


FLAT = account()


def strategy(**params: Any) -> LiquiditySweepStrategy:
    return LiquiditySweepStrategy(StrategyConfig(), "ls", SYMBOL, LiquiditySweepParams(**params))


def run(
    strat: LiquiditySweepStrategy, candles: Sequence[Candle], acct: AccountSnapshot = FLAT
) -> list[Event | OrderIntent]:
    out: list[Event | OrderIntent] = []
    for c in candles:
        out += strat.on_candle(c, acct, c.close_ts)
    return out


def signals(outputs: Sequence[Event | OrderIntent]) -> list[dict[str, Any]]:
    return [o.fields for o in outputs if isinstance(o, Event) and o.kind == "signal"]


def intents(outputs: Sequence[Event | OrderIntent]) -> list[OrderIntent]:
    return [o for o in outputs if isinstance(o, OrderIntent)]


Row = tuple[float, float, float, float, float]  # open, high, low, close, volume


def candles_of(rows: Sequence[Row], start: float = DAY0) -> list[Candle]:
    return [Candle(start + 60 * i, 60.0, *row) for i, row in enumerate(rows)]


@attrs.frozen
class Built:
    rows: list[Row]
    price: float  # the last close before the sweep candle
    swing_low: float  # of the last 10 candles
    swing_high: float


def build(base: float = 110.0, trend: float = 0.1, n_trend: int = 35, wick: float = 0.2) -> Built:
    """30 heavy candles flat at `base` (volume 10: they anchor the day's VWAP there), 10 candles
    from `base` to 100, then `n_trend` candles moving `trend` each (volume 1), with wicks `wick`
    beyond their bodies. With the defaults: an up-move (EMA9 > EMA20) well below the VWAP (~109):
    a long's setting."""
    rows: list[Row] = [(base, base + 0.5, base - 0.5, base, 10.0)] * 30
    price, step = base, (100.0 - base) / 10
    for move in [step] * 10 + [trend] * n_trend:
        o, price = price, price + move
        rows.append((o, max(o, price) + wick, min(o, price) - wick, price, 1.0))
    last = rows[-10:]
    return Built(rows, price, min(r[2] for r in last), max(r[1] for r in last))


def long_sweep(volume: float = 1.0, high: float | None = None, **kw: Any) -> list[Candle]:
    """`build(**kw)` then a candle whose low runs 0.5 under the swing low and whose close is back
    above it (high: just above the open, under the swing high, unless given)."""
    b = build(**kw)
    close = max(b.price, b.swing_low) + 0.05
    sweep = (b.price, high if high is not None else close + 0.05, b.swing_low - 0.5, close, volume)
    return candles_of([*b.rows, sweep])


def mirrored(candles: Sequence[Candle], around: float = 200.0) -> list[Candle]:
    """Prices reflected (p -> around - p; high and low swap): a long's setting becomes a short's."""
    return [
        c._replace(open=around - c.open, high=around - c.low, low=around - c.high, close=around - c.close)
        for c in candles
    ]


# --- an independent reference, in plain Python ----------------------------------------------------


def ref_ema(values: Sequence[float], n: int) -> list[float | None]:
    """Seeded with the simple mean of the first n values, then e += (v - e) * 2 / (n + 1)."""
    out: list[float | None] = [None] * len(values)
    if len(values) < n:
        return out
    e = sum(values[:n]) / n
    out[n - 1] = e
    for i in range(n, len(values)):
        e += (values[i] - e) * (2.0 / (n + 1))
        out[i] = e
    return out


def ref_atr(candles: Sequence[Candle], n: int) -> list[float | None]:
    """The simple mean of the last n true ranges (the first candle has none)."""
    trs = [math.nan] + [
        max(c.high - c.low, abs(c.high - p.close), abs(c.low - p.close))
        for p, c in itertools.pairwise(candles)
    ]
    return [sum(trs[i - n + 1 : i + 1]) / n if i >= n else None for i in range(len(candles))]


def ref_vwap(candles: Sequence[Candle]) -> list[float]:
    """Of the typical price, since 00:00 UTC of each candle's day (the close while no volume)."""
    out, day, pv, vol = [], None, 0.0, 0.0
    for c in candles:
        d = datetime.fromtimestamp(c.open_ts, UTC).date()
        if d != day:
            day, pv, vol = d, 0.0, 0.0
        pv += (c.high + c.low + c.close) / 3.0 * c.volume
        vol += c.volume
        out.append(pv / vol if vol > 0 else c.close)
    return out


def reference_signals(candles: Sequence[Candle]) -> list[tuple[float, str, float, float, float]]:
    """(open_ts, direction, level, stop, target) of every setup, by the rules with the default
    parameters: range of the 10 previous candles; both sides swept: none; ATR(14)/close >= 0.0001;
    no long while EMA9 < EMA20, no short while EMA9 > EMA20; volume >= 0.5 x the mean of the last 20
    volumes, this candle's included; target the day's VWAP, beyond the close; stop 0.5 ATR beyond
    the level; the reward (close to target) at least 1.5 x the risk (close to stop), the original
    supervisor's rr_min."""
    closes = [c.close for c in candles]
    fast, slow, atr, vwap = ref_ema(closes, 9), ref_ema(closes, 20), ref_atr(candles, 14), ref_vwap(candles)
    out = []
    for i in range(19, len(candles)):  # the 20th candle: EMA20 and the volume mean are full
        c = candles[i]
        prev = candles[i - 10 : i]
        swing_high, swing_low = max(p.high for p in prev), min(p.low for p in prev)
        long = c.low < swing_low and c.close > swing_low
        short = c.high > swing_high and c.close < swing_high
        f, s, a = fast[i], slow[i], atr[i]
        assert f is not None and s is not None and a is not None
        if long == short or a / c.close < 0.0001:
            continue
        if c.volume < 0.5 * (sum(p.volume for p in candles[i - 19 : i + 1]) / 20):
            continue
        if long and f >= s and vwap[i] > c.close:
            stop = swing_low - 0.5 * a
            if vwap[i] - c.close >= 1.5 * (c.close - stop):
                out.append((c.open_ts, "long", swing_low, stop, vwap[i]))
        if short and f <= s and vwap[i] < c.close:
            stop = swing_high + 0.5 * a
            if c.close - vwap[i] >= 1.5 * (stop - c.close):
                out.append((c.open_ts, "short", swing_high, stop, vwap[i]))
    return out


# --- real data -----------------------------------------------------------------------------------


@functools.cache
def _head(path: Path) -> list[Candle]:
    """The first 150,000 candles of the shared data (2019-10 to 2021-04), read once."""
    return list(itertools.islice(read_candles_csv(path, 60.0), 150_000))


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()


def real(shared_data: Path, start: str, end: str) -> list[Candle]:
    lo, hi = _ts(start), _ts(end)
    return [c for c in _head(shared_data / "btcusdt_1m.csv.gz") if lo <= c.open_ts < hi]


def golden_month(shared_data: Path) -> list[Candle]:
    # the contiguous segment 2020-05-21 00:34 -> 2020-06-20 00:32 (43,199 candles, no gap)
    candles = real(shared_data, "2020-05-21", "2020-06-21")
    assert len(candles) == 43_199
    return candles


def test_golden_a_month_of_real_candles_against_an_independent_reference(shared_data: Path) -> None:
    month = golden_month(shared_data)
    outputs = run(strategy(), month)
    got = signals(outputs)
    expected = reference_signals(month)
    assert len(got) == len(expected) > 0, (len(got), len(expected))
    for g, (ts, direction, level, stop, target) in zip(got, expected, strict=True):
        assert (g["candle_open_ts"], g["direction"], g["level"]) == (ts, direction, level)
        assert g["stop"] == pytest.approx(stop, rel=1e-9, abs=0)
        assert g["target"] == pytest.approx(target, rel=1e-9, abs=0)
        assert g["vwap"] == g["target"] and g["entry"] and g["skipped"] is None
    # a flat account, no funding: each signal is followed by its entry, at the close, with its prices
    assert [type(o).__name__ for o in outputs] == ["Event", "OrderIntent"] * len(got)
    for g, intent in zip(got, intents(outputs), strict=True):
        long = g["direction"] == "long"
        assert intent.side == ("buy" if long else "sell") and intent.order_type == "market"
        assert (intent.decision_price, intent.stop_price, intent.target_price) == (
            g["price"],
            g["stop"],
            g["target"],
        )
        assert (intent.strategy_id, intent.symbol, intent.size_scale) == ("ls", SYMBOL, 1.0)
        assert intent.stop_price is not None and intent.target_price is not None
        assert (intent.stop_price < intent.decision_price < intent.target_price) == long
    assert {g["direction"] for g in got} == {"long", "short"}


# --- a backtest through the kernel -------------------------------------------------------------------


def write_csv(path: Path, candles: Sequence[Candle]) -> None:
    with gzip.open(path, "wt") as f:
        f.write("open_time_ms,open,high,low,close,volume\n")
        for c in candles:
            f.write(f"{round(c.open_ts * 1000)},{c.open!r},{c.high!r},{c.low!r},{c.close!r},{c.volume!r}\n")


def test_a_backtest_over_20000_real_candles_trades_with_stops_and_targets(
    tmp_path: Path, shared_data: Path
) -> None:
    candles = real(shared_data, "2021-04-02", "2021-04-17")[:20_000]
    assert len(candles) == 20_000
    data = tmp_path / "candles.csv.gz"
    write_csv(data, candles)
    sets = [
        "session.interval=1m",
        "observability.progress=off",
        "risk.max_loss_pct=100",
        "risk.max_daily_drawdown_pct=100",
        "risk.max_consecutive_losses=0",
    ]
    config = make_config(tmp_path, *sets, "strategy.name=liquidity_sweep")
    result = Session(config, Plan(mode="backtest", data=str(data))).run_kernel()
    assert result.report["status"] == "ok" and result.report["stop_reason"] == "data_end"
    assert validate(result.run_path) == []
    events = [json.loads(line) for line in (result.run_path / "events.jsonl").open()]

    sigs = [e for e in events if e["kind"] == "signal"]
    assert sigs and {s["strategy"] for s in sigs} == {"liquidity_sweep"}
    assert {s["direction"] for s in sigs} == {"long", "short"}
    entered = [s for s in sigs if s["entry"]]
    assert any(s["skipped"] == "in_position" for s in sigs)  # one position at a time

    fills = [e for e in events if e["kind"] == "order.filled"]
    entries = [f for f in fills if f["reason"].startswith("entry_sweep_")]
    assert len(entries) >= 10
    # every entry filled from flat (one position at a time; partial fills of one order aside)
    position, entry_order = 0.0, None
    for f in fills:
        if f["reason"].startswith("entry_sweep_"):
            assert abs(position) < 1e-9 or f["order_id"] == entry_order, f
            entry_order = f["order_id"]
        position = f["position_qty"]

    # the brackets: each entry's stop and target, on the grid away from the flattering side
    grid = table_instrument(SYMBOL).round_price  # type: ignore[union-attr]
    stops = {grid(s["stop"], "down" if s["direction"] == "long" else "up") for s in entered}
    targets = {grid(s["target"], "up" if s["direction"] == "long" else "down") for s in entered}
    working = [e for e in events if e["kind"] == "order.working"]
    stop_orders = [w for w in working if w["reason"] == "stop_loss"]
    target_orders = [w for w in working if w["reason"] == "take_profit"]
    assert stop_orders and target_orders
    assert {w["trigger_price"] for w in stop_orders} <= stops
    assert {w["limit_price"] for w in target_orders} <= targets
    closed_by = {f["reason"] for f in fills}
    assert {"stop_loss", "take_profit"} <= closed_by, closed_by


# --- each rule on a hand-built sequence ----------------------------------------------------------------


def test_the_hand_built_long_and_its_mirror_short() -> None:
    b = build()
    candles = long_sweep()
    (sig,) = signals(out := run(strategy(), candles))
    assert (sig["direction"], sig["level"], sig["candle_open_ts"]) == (
        "long",
        b.swing_low,
        candles[-1].open_ts,
    )
    assert sig["stop"] == pytest.approx(b.swing_low - 0.5 * sig["atr"], rel=1e-12)
    assert sig["ema_fast"] > sig["ema_slow"] and sig["target"] > sig["price"] == candles[-1].close
    (intent,) = intents(out)
    assert (intent.side, intent.reason, intent.size_scale) == ("buy", "entry_sweep_long", 1.0)

    (short,) = signals(out := run(strategy(), mirrored(candles)))
    assert short["direction"] == "short"
    assert short["level"] == pytest.approx(200 - b.swing_low, rel=1e-12)
    assert short["stop"] == pytest.approx(200 - sig["stop"], rel=1e-12)
    assert short["target"] == pytest.approx(200 - sig["target"], rel=1e-12)
    (intent,) = intents(out)
    assert (intent.side, intent.reason) == ("sell", "entry_sweep_short")


def test_the_trend_filter_blocks_a_long_against_the_emas() -> None:
    # the same sweep after a down-move (EMA9 < EMA20) of candles without wicks (none of them
    # reclaims the low it makes: the sweep candle is the only setup)
    down = long_sweep(trend=-0.1, wick=0.0)
    assert run(strategy(), down) == []
    # the same candles with the filter made neutral (equal EMAs block nothing): a long
    assert [s["direction"] for s in signals(run(strategy(ema_fast=20), down))] == ["long"]
    # and a short against an up-move, mirrored
    assert run(strategy(), mirrored(down)) == []
    assert [s["direction"] for s in signals(run(strategy(ema_fast=20), mirrored(down)))] == ["short"]


def test_the_volume_filter_blocks_a_thin_sweep_and_counts_the_sweep_candle_in_the_mean() -> None:
    thin = long_sweep(volume=0.3)  # the mean of the last 20 (itself included): 0.965; half: 0.48
    assert run(strategy(), thin) == []
    assert len(signals(run(strategy(min_vol_ratio=0.0), thin))) == 1
    # volume 0.5 against a ratio 0.51: the previous 19 alone (mean 1) would block it; with the
    # candle in the mean (0.975 x 0.51 = 0.497) it passes
    assert len(signals(run(strategy(min_vol_ratio=0.51), long_sweep(volume=0.5)))) == 1
    assert run(strategy(min_vol_ratio=0.52), long_sweep(volume=0.5)) == []


def test_the_volatility_filter() -> None:
    candles = long_sweep()  # ATR ~0.6 at a price ~103: ~0.6 %
    assert len(signals(run(strategy(), candles))) == 1
    assert len(signals(run(strategy(min_atr_pct=0.5), candles))) == 1
    assert run(strategy(min_atr_pct=1.0), candles) == []


def test_no_setup_without_room_to_the_vwap() -> None:
    # the day anchored at 90 (VWAP ~91) under the same up-move: a long's target would be under its entry
    assert run(strategy(), long_sweep(base=90.0)) == []
    assert run(strategy(), mirrored(long_sweep(base=90.0))) == []


def test_no_setup_whose_reward_is_under_min_rr_times_its_risk() -> None:
    """The original's rr_min (1.5, its supervisor refused every order under it): the hand-built
    long's reward to risk, from its own signal, decides at a hair either side of it."""
    (sig,) = signals(run(strategy(min_rr=0.0), long_sweep()))
    rr = (sig["target"] - sig["price"]) / (sig["price"] - sig["stop"])
    assert rr >= 1.5  # the default lets it through
    assert len(signals(run(strategy(min_rr=rr * 0.999), long_sweep()))) == 1
    assert run(strategy(min_rr=rr * 1.001), long_sweep()) == []
    assert run(strategy(min_rr=rr * 1.001), mirrored(long_sweep())) == []


def test_a_candle_sweeping_both_sides_gives_no_setup() -> None:
    b = build()
    assert len(signals(run(strategy(), long_sweep(high=b.swing_high - 0.01)))) == 1
    assert run(strategy(), long_sweep(high=b.swing_high + 0.01)) == []


def test_sweep_and_reclaim_are_strict() -> None:
    b = build()
    rows, close = b.rows, b.price + 0.05
    # a low equal to the swing low did not sweep it; a close equal to it did not reclaim it
    assert run(strategy(), candles_of([*rows, (b.price, close + 0.05, b.swing_low, close, 1.0)])) == []
    at = (b.swing_low + 0.1, b.swing_low + 0.2, b.swing_low - 0.5, b.swing_low, 1.0)
    assert run(strategy(), candles_of([*rows, at])) == []


@pytest.mark.parametrize(
    ("funding", "entry", "scale"),
    [
        (0.0, True, 1.0),
        (0.03, True, 1.0),  # not above 0.03: full size
        (0.031, True, 0.5),
        (0.05, True, 0.5),  # not above 0.05: allowed, at half size
        (0.051, False, None),
        (0.5, False, None),
        (-0.5, True, 1.0),  # the long is paid: never held back
    ],
)
def test_the_funding_gate(funding: float, entry: bool, scale: float | None) -> None:
    for candles, sign in ((long_sweep(), 1), (mirrored(long_sweep()), -1)):
        out = run(strategy(), candles, account(funding=sign * funding))
        (sig,) = signals(out)
        assert sig["entry"] is entry and sig["skipped"] == (None if entry else "funding")
        assert [i.size_scale for i in intents(out)] == ([scale] if entry else [])


def test_one_position_at_a_time() -> None:
    for qty in (0.01, -0.01):
        out = run(strategy(), long_sweep(), account(qty=qty))
        (sig,) = signals(out)
        assert (sig["entry"], sig["skipped"], intents(out)) == (False, "in_position", [])
    # another symbol's position does not count
    other = account()._replace(positions=(Position("ETHUSDT", 1.0, 2000.0),))
    assert len(intents(run(strategy(), long_sweep(), other))) == 1


def test_its_entry_working_counts_as_its_position() -> None:
    """Found by an audit: one position at a time looked at the filled position only, so while its
    market entry was still working (on its way, or resting unfilled) a second setup sent a second
    entry. An order of its own at the broker, flat, is its entry: no entry beside it; another
    strategy's working order does not hold it back."""
    # the snapshot a broker gives with the strategy's entry on its way to the market
    broker = PaperBroker(BrokerConfig(), random.Random(1))
    broker.on_market(Tick(DAY0, 100.0, 100.1, 100.05), DAY0)
    entry = Order("o1", DAY0, "buy", 0.01, 100.05, "entry_sweep_long", strategy_id="ls", symbol=SYMBOL)
    broker.on_order(entry, DAY0)
    in_flight = broker.snapshot(DAY0)
    assert in_flight.position(SYMBOL, "ls").qty == 0.0 and in_flight.open_orders_of("ls") == 1
    resting = account()._replace(strategy_orders=(("ls", 1),))  # a resting limit of its own, flat
    for acct in (in_flight, resting):
        out = run(strategy(), long_sweep(), acct)
        (sig,) = signals(out)
        assert (sig["entry"], sig["skipped"], intents(out)) == (False, "in_position", [])
    others = account()._replace(strategy_orders=(("other", 2),))
    assert len(intents(run(strategy(), long_sweep(), others))) == 1


def test_history_candles_warm_up_but_never_trade() -> None:
    candles = long_sweep()
    history = [c._replace(backfill=True) for c in candles]
    strat = strategy()
    assert run(strat, history) == []
    assert strat.setup is not None  # the setup was seen, and not traded
    # warmed by history, the live candles decide at once
    warmed = strategy()
    run(warmed, history[:-1])
    assert len(signals(run(warmed, candles[-1:]))) == 1


@pytest.mark.parametrize("params", [{"ema_fast": 20}, {"ema_fast": 20, "lookback": 30}])
def test_the_first_signal_comes_at_the_warmup(params: dict[str, Any]) -> None:
    """A falling staircase whose every candle sweeps the previous low and closes back above it,
    under a VWAP anchored higher, the trend filter off: a long is due at every candle, and the
    first comes at the `warmup`-th candle (every window and indicator full)."""
    rows: list[Row] = [(110.0, 110.5, 109.5, 110.0, 10.0)]
    for i in range(60):
        p = 109.9 - 0.1 * i
        rows.append((p, p + 0.05, p - 0.5, p - 0.1, 1.0))
    strat = strategy(**params)
    outputs = [strat.on_candle(c, FLAT, c.close_ts) for c in candles_of(rows)]
    first = next(i for i, o in enumerate(outputs) if o)
    assert first == strat.warmup - 1 == max(19, params.get("lookback", 10))
    assert all(len(signals(o)) == 1 for o in outputs[first:])


# --- registry and state ------------------------------------------------------------------------------


def test_registered_with_its_parameters() -> None:
    assert REGISTRY["liquidity_sweep"] is LiquiditySweepStrategy
    assert PARAMS["liquidity_sweep"] is LiquiditySweepParams
    config = StrategyConfig(name="liquidity_sweep")
    built = build_strategy(config, "a", SYMBOL, LiquiditySweepParams(lookback=5))
    assert isinstance(built, LiquiditySweepStrategy) and built.params.lookback == 5
    assert build_strategy(config, "b", SYMBOL).params == LiquiditySweepParams()  # type: ignore[attr-defined]
    defaults = attrs.asdict(LiquiditySweepParams())
    assert defaults == {
        "lookback": 10,
        "ema_fast": 9,
        "ema_slow": 20,
        "volume_window": 20,
        "min_vol_ratio": 0.5,
        "atr_period": 14,
        "stop_atr_mult": 0.5,
        "min_atr_pct": 0.01,
        "min_rr": 1.5,
        "funding_block_pct": 0.05,
        "funding_half_pct": 0.03,
    }
    for field in attrs.fields(LiquiditySweepParams):
        assert field.metadata["rule"].doc


def test_its_parameters_are_keys_of_the_strategy_table() -> None:
    config = load(
        None, {}, ["strategy.name=liquidity_sweep", "strategy.lookback=12", "strategy.min_vol_ratio=0"]
    )
    assert config.strategy_params == LiquiditySweepParams(lookback=12, min_vol_ratio=0.0)
    with pytest.raises(ConfigError, match=re.escape("strategy.lookback: 0 is not allowed")):
        load(None, {}, ["strategy.name=liquidity_sweep", "strategy.lookback=0"])
    # the rules between keys: the constructor refuses what they forbid
    with pytest.raises(ValueError, match=re.escape("strategy.ema_fast: 21 is not allowed")):
        strategy(ema_fast=21)
    with pytest.raises(ValueError, match=re.escape("strategy.funding_half_pct: 0.06 is not allowed")):
        strategy(funding_half_pct=0.06)
    strategy(ema_fast=20)  # equal EMAs: the trend filter off


def test_state_round_trip_mid_run_gives_the_same_outputs(shared_data: Path) -> None:
    candles = golden_month(shared_data)[:6000]
    whole = run(strategy(), candles)
    # cut points: inside the EMA seeding, inside the ATR's first window, just after the first
    # signal, and in the middle of the day
    first_signal = next(i for i, c in enumerate(candles) if c.open_ts == signals(whole)[0]["candle_open_ts"])
    for cut in (5, 12, first_signal + 1, 3001):
        before = strategy()
        got = run(before, candles[:cut])
        state = json.loads(json.dumps(before.state()))
        after = strategy()
        after.restore(state)
        got += run(after, candles[cut:])
        assert got == whole, cut
    assert len(signals(whole)) > 0


def test_no_setup_whose_stop_would_be_at_or_below_zero() -> None:
    """Found by an audit: a long's stop `stop_atr_mult` ATRs under the swept low could fall at or
    below 0 (a wide ATR on a low price, a large multiple, `min_rr = 0`): a sell stop there never
    triggers, and the position went out unprotected. The hand-built long with wide wicks: its
    swing low over its ATR (both computed here) is the multiple at which the stop reaches 0."""
    candles = long_sweep(wick=1.0)
    b = build(wick=1.0)
    atr = ref_atr(candles, 14)[-1]
    assert atr is not None
    at_zero = b.swing_low / atr  # ~47.5
    below = run(strategy(min_rr=0.0, stop_atr_mult=at_zero * 0.99), candles)
    (sig,) = signals(below)
    assert sig["stop"] == pytest.approx(b.swing_low - at_zero * 0.99 * atr) and sig["stop"] > 0
    assert len(intents(below)) == 1
    assert run(strategy(min_rr=0.0, stop_atr_mult=at_zero * 1.01), candles) == []
    # a short's stop is above its level, never at 0
    assert len(signals(run(strategy(min_rr=0.0, stop_atr_mult=at_zero * 1.01), mirrored(candles)))) == 1
