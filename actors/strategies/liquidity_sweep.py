"""`liquidity_sweep`: sweep and reclaim of the recent range (the original system's "Setup B").

The idea: stops and resting orders pile up just beyond the recent swing high and low. A candle
that runs those stops (trades through the level) and then closes back inside the range has
"swept the liquidity" and failed to break out; trade the reclaim back toward the session's fair
price (its VWAP).

The rules, on each closed candle (all prices that candle's, all indicators including it unless
said otherwise):

- **Range.** Over the previous `lookback` candles (10; the current candle excluded): swing high =
  the highest high, swing low = the lowest low.
- **Setup.** Long: the candle's low went below the swing low and it closed above it (swept and
  reclaimed the low). Short: its high went above the swing high and it closed below it. A candle
  that did both (an outside candle reclaiming both sides) gives no setup: it says nothing about
  which side failed. Both comparisons are strict (a low equal to the swing low did not sweep it; a
  close equal to it did not reclaim it).
- **Volatility filter.** No setup when ATR(14) / close < `min_atr_pct` (0.01 %, the original's
  0.0001): the market is too quiet for the stop to mean anything.
- **Trend filter.** EMA(9) and EMA(20) of the closes: no long while EMA9 < EMA20 (trend down), no
  short while EMA9 > EMA20 (equal EMAs block neither side).
- **Volume filter.** The candle's volume must be at least `min_vol_ratio` (0.5) × the mean volume
  of the last `volume_window` (20) candles, *the current candle included* (as the original
  computed it: the sweep candle's own volume is part of the mean it is compared with).
- **Target.** The session VWAP: the volume-weighted mean of the typical price (H + L + C) / 3
  since 00:00 UTC of the candle's day, this candle included (the original used the last 60
  candles' VWAP; issue 12 asks for the session's). No setup when the VWAP is not beyond the
  entry in the trade's direction (a long needs VWAP > close, a short VWAP < close): no room.
- **Stop.** `stop_atr_mult` (0.5) × ATR(14) beyond the swept level: long swing low − 0.5 ATR,
  short swing high + 0.5 ATR (ATR: the simple mean of the last 14 true ranges). No setup when a
  long's stop would be at or below 0 (a stop there could never trigger).
- **Reward to risk.** No setup when the reward (close to VWAP) is less than `min_rr` (1.5) × the
  risk (close to stop): the original's `rr_min` (its supervisor refused every order under it; a
  VWAP a few dollars away is a trade the fees lose).
- **Entry.** At market, decided at the candle's close (the decision price is the close); the
  entry carries its stop and target, which the broker attaches as a protective stop and a
  take-profit sized to the position (docs/fills.md). The size is the risk gate's
  (`risk.sizing`), or `strategy.order_qty` with fixed sizing.
- **Funding gate** (the rate in force, percent per 8 h, from the account snapshot: a 4 h or 1 h
  symbol's rate scaled to 8 h by the broker). No entry
  when funding runs against the position by more than `funding_block_pct` (0.05 %): a long
  while the rate > 0.05 (longs pay), a short while it is < −0.05. Half size (`size_scale` 0.5)
  when it runs against it by more than `funding_half_pct` (0.03 %). Funding in the trade's
  favour never blocks.
- **One position at a time.** No entry while the strategy holds a position (its own virtual
  position in the symbol, of either side; another strategy's position on the symbol does not
  block it) or has an order of its own working or on its way to the market (its entry not yet
  filled, as the account snapshot's `strategy_orders` counts it: found by an audit, a second
  entry could go out while the first was still resting unfilled); the open trade ends at its
  stop or its target.

Every setup that passes the candle rules is recorded as a `signal` event (with `entry`: whether
it was entered, and `skipped`: why not: `in_position` or `funding`); only entered ones give an
`OrderIntent`. No setup before every window and indicator is full (`warmup`: 20 candles with the
defaults). Candles from history (`backfill`) warm the indicators up and never trade.

Parameters (`LiquiditySweepParams`, keys of the [strategy] table with `strategy.name =
"liquidity_sweep"`): lookback 10, ema_fast 9, ema_slow 20 (ema_fast <= ema_slow; equal turns the
trend filter off), volume_window 20, min_vol_ratio 0.5 (0: off), atr_period 14, stop_atr_mult
0.5, min_atr_pct 0.01 (0: off), min_rr 1.5 (0: off), funding_block_pct 0.05, funding_half_pct 0.03 (<= the block).
Tests: tests/test_liquidity_sweep.py (a golden month of real candles against an independent
reference, a backtest through the kernel, each rule on hand-built candles, the state round trip).
"""

from __future__ import annotations

from typing import Any, ClassVar, Final, Literal

import attrs

from actors.config import StrategyConfig, _num, key
from actors.strategies.base import StrategyOutput, funding_gate_problems, funding_size, register
from actors.strategies.indicators import Atr, DailyVwap, Ema, Window
from protocols.messages import AccountSnapshot, Candle, Event, OrderIntent, Tick

NAME: Final = "liquidity_sweep"
Direction = Literal["long", "short"]
FLAT_QTY: Final = 1e-12


@attrs.frozen
class LiquiditySweepParams:
    """The kind's own keys of the [strategy] table (`strategy.name = "liquidity_sweep"`)."""

    lookback: int = key(
        10,
        "liquidity_sweep: candles before the current one whose highest high / lowest low is the range "
        "a sweep runs through",
        _num(ge=1, le=1000),
    )
    ema_fast: int = key(
        9,
        "liquidity_sweep: trend filter, fast EMA period of the closes, candles (equal to ema_slow: "
        "the filter is off)",
        _num(ge=1, le=1000),
    )
    ema_slow: int = key(
        20,
        "liquidity_sweep: trend filter, slow EMA period; no long while EMA fast < EMA slow, no short "
        "while above (must be >= ema_fast)",
        _num(ge=1, le=1000),
    )
    volume_window: int = key(
        20,
        "liquidity_sweep: volume filter, candles in the mean volume (the current one included)",
        _num(ge=1, le=1000),
    )
    min_vol_ratio: float = key(
        0.5,
        "liquidity_sweep: volume filter, the candle's volume must be at least this times the mean (0: off)",
        _num(ge=0, le=1000),
    )
    atr_period: int = key(
        14, "liquidity_sweep: ATR period (simple mean of true ranges), candles", _num(ge=1, le=1000)
    )
    stop_atr_mult: float = key(
        0.5, "liquidity_sweep: stop distance beyond the swept level, in ATRs", _num(gt=0, le=100)
    )
    min_atr_pct: float = key(
        0.01,
        "liquidity_sweep: volatility filter, no setup while ATR / close is below this, percent (0: off)",
        _num(ge=0, le=100),
    )
    min_rr: float = key(
        1.5,
        "liquidity_sweep: no setup whose reward (close to VWAP) is under this times its risk (close to "
        "stop): the original's rr_min (0: off)",
        _num(ge=0, le=100),
    )
    funding_block_pct: float = key(
        0.05,
        "liquidity_sweep: no entry while the funding rate runs against the position by more than this, "
        "percent per 8 h",
        _num(ge=0, le=100),
    )
    funding_half_pct: float = key(
        0.03,
        "liquidity_sweep: half-size entry while the funding rate runs against the position by more "
        "than this, percent per 8 h (must be <= funding_block_pct)",
        _num(ge=0, le=100),
    )


attrs.resolve_types(LiquiditySweepParams)  # real types for the config loader (annotations are text)


def check_params(p: LiquiditySweepParams) -> list[str]:
    """The rules between keys (each key's own range is in its validator), one line each."""
    problems = []
    if p.ema_fast > p.ema_slow:
        problems.append(
            f"strategy.ema_fast: {p.ema_fast} is not allowed; expected at most strategy.ema_slow ({p.ema_slow})"
        )
    return problems + funding_gate_problems(p.funding_half_pct, p.funding_block_pct)


@attrs.frozen
class Setup:
    """A candle's setup that passed every candle rule (what its `decide` acts on)."""

    direction: Direction
    level: float  # the swept swing low (long) or high (short)
    stop: float
    target: float  # the session VWAP
    atr: float
    ema_fast: float
    ema_slow: float
    volume_mean: float


class LiquiditySweepStrategy:
    """The strategy component: candles in; on a setup a `signal` event and, unless a gate holds
    it back, the entry intent with its stop and target."""

    subscribes: ClassVar[tuple[type, ...]] = (Candle,)

    def __init__(
        self,
        config: StrategyConfig,
        strategy_id: str,
        symbol: str,
        params: LiquiditySweepParams | None = None,
    ) -> None:
        p = params if params is not None else LiquiditySweepParams()
        problems = check_params(p)
        if problems:
            raise ValueError("; ".join(problems))
        self.config = config
        self.id = strategy_id
        self.symbol = symbol
        self.params = p
        self.highs = Window(p.lookback)  # the previous candles' (the current one added after the test)
        self.lows = Window(p.lookback)
        self.volumes = Window(p.volume_window)  # the current candle's included
        self.fast = Ema(p.ema_fast)
        self.slow = Ema(p.ema_slow)
        self.atr = Atr(p.atr_period)
        self.vwap = DailyVwap()
        self.setup: Setup | None = None  # the last update's, for its decide (within one step)

    @property
    def warmup(self) -> int:
        p = self.params
        return max(p.lookback + 1, p.ema_fast, p.ema_slow, p.atr_period + 1, p.volume_window)

    # --- state -------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "highs": self.highs.state(),
            "lows": self.lows.state(),
            "volumes": self.volumes.state(),
            "fast": self.fast.state(),
            "slow": self.slow.state(),
            "atr": self.atr.state(),
            "vwap": self.vwap.state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.highs.restore(state["highs"])
        self.lows.restore(state["lows"])
        self.volumes.restore(state["volumes"])
        self.fast.restore(state["fast"])
        self.slow.restore(state["slow"])
        self.atr.restore(state["atr"])
        self.vwap.restore(state["vwap"])
        self.setup = None

    # --- candles -----------------------------------------------------------------------------------

    def on_quote(self, tick: Tick, account: AccountSnapshot, now: float) -> list[StrategyOutput]:
        return []

    def update(self, candle: Candle) -> bool:
        p = self.params
        high, low, close = candle.high, candle.low, candle.close
        # the sweep, against the range of the candles before this one
        sweep: Direction | None = None
        if self.highs.full:
            swing_high, swing_low = self.highs.max(), self.lows.min()
            long = low < swing_low < close
            short = close < swing_high < high
            if long != short:
                sweep = "long" if long else "short"
        self.highs.update(high)
        self.lows.update(low)
        self.volumes.update(candle.volume)
        fast = self.fast.update(close)
        slow = self.slow.update(close)
        atr = self.atr.update(high, low, close)
        vwap = self.vwap.update(candle.open_ts, high, low, close, candle.volume)
        self.setup = None
        if sweep is None or fast is None or slow is None or atr is None or not self.volumes.full:
            return False
        if atr / close < p.min_atr_pct / 100:
            return False
        volume_mean = self.volumes.mean()
        if candle.volume < p.min_vol_ratio * volume_mean:
            return False
        if sweep == "long":
            if fast < slow or not vwap > close:
                return False
            level = swing_low
            stop = level - p.stop_atr_mult * atr
        else:
            if fast > slow or not vwap < close:
                return False
            level = swing_high
            stop = level + p.stop_atr_mult * atr
        if abs(vwap - close) < p.min_rr * abs(close - stop):  # reward under min_rr x risk
            return False
        if not stop > 0:  # a long's stop at or below 0 could never trigger: the position unprotected
            return False
        self.setup = Setup(sweep, level, stop, vwap, atr, fast, slow, volume_mean)
        return not candle.backfill  # history warms up; it never trades

    def decide(self, candle: Candle, account: AccountSnapshot, now: float) -> list[StrategyOutput]:
        setup = self.setup
        if setup is None:
            return []
        p = self.params
        long = setup.direction == "long"
        funding = account.funding_rate_pct
        size_scale = funding_size(funding, long, p.funding_block_pct, p.funding_half_pct)
        skipped: str | None = None
        if abs(account.position(self.symbol, self.id).qty) > FLAT_QTY or account.open_orders_of(self.id):
            # its entry working (resting, or on its way) counts as the position it will open; flat,
            # its only orders are entries (its stop and target are cancelled with the position)
            skipped, size_scale = "in_position", 1.0
        elif size_scale == 0.0:
            skipped, size_scale = "funding", 1.0
        signal = Event(
            now,
            "signal",
            {
                "strategy": NAME,
                "strategy_id": self.id,
                "symbol": self.symbol,
                "direction": setup.direction,
                "price": candle.close,
                "candle_open_ts": candle.open_ts,
                "level": setup.level,
                "vwap": setup.target,
                "atr": setup.atr,
                "stop": setup.stop,
                "target": setup.target,
                "ema_fast": setup.ema_fast,
                "ema_slow": setup.ema_slow,
                "volume": candle.volume,
                "volume_mean": setup.volume_mean,
                "funding_rate_pct": funding,
                "entry": skipped is None,
                "skipped": skipped,
                "size_scale": size_scale if skipped is None else 0.0,
            },
        )
        if skipped is not None:
            return [signal]
        intent = OrderIntent(
            now,
            "buy" if long else "sell",
            self.config.order_qty,
            candle.close,
            reason=f"entry_sweep_{setup.direction}",
            stop_price=setup.stop,
            target_price=setup.target,
            strategy_id=self.id,
            symbol=self.symbol,
            size_scale=size_scale,
        )
        return [signal, intent]

    def on_candle(self, candle: Candle, account: AccountSnapshot, now: float) -> list[StrategyOutput]:
        return self.decide(candle, account, now) if self.update(candle) else []


# registered after the class, not by a class decorator: compiled (setup.py), a decorated class is
# not a native class, and its attributes would be dictionary lookups
register(NAME, common=("history", "order_qty"), params=LiquiditySweepParams)(LiquiditySweepStrategy)
