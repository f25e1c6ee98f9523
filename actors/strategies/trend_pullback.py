"""`trend_pullback`: in an EMA trend, a limit entry on the pullback to the fast EMA (the original
system's "Setup A: pullback_ribbon", issue 12).

The rules, as a trader reads them (defaults in brackets; each is a `strategy.<key>`). Everything is
decided on the close of a candle; EMAs are of closes, seeded with the simple mean of their first
`n` closes; the ATR is the simple mean of the last `atr_period` true ranges.

- **Trend.** Up: EMA 20 above EMA 50 and the close above EMA 20. Down: EMA 20 below EMA 50 and the
  close below EMA 20 (`ema_fast` 20, `ema_slow` 50).
- **Entry.** On a candle that closes in a trend, if the strategy is flat and has no entry working:
  a limit order at EMA 20 as it stands then, on the trend's side of the market (a buy below the
  price in an up-trend, a sell above it in a down-trend); its price goes on the tick grid toward
  patience (a buy rounded down, a sell up). It fills only if the price comes back to it (the
  broker works it along each candle's path). A `signal` event says so (direction, close, EMAs,
  ATR, entry, stop, target).
- **Stop and target.** The stop 1.5 ATR(14) beyond the entry, the target 2R beyond it on the other
  side (R = the stop distance) (`stop_atr_mult` 1.5, `atr_period` 14, `target_r` 2; 0: no target).
  They travel with the entry: the broker attaches them to its fill as a protective stop-market and
  a take-profit limit sized to the position, and the risk gate sizes the entry from the limit price
  and the stop (`risk.sizing = "risk"`; with "fixed", `strategy.order_qty`). No entry when the stop
  (a long's) or the target (a short's) would be at or below 0: no such order can rest.
- **Expiry.** The entry works for 24 candles after the signal candle (`entry_expiry_candles`): at
  the close of the 24th, still flat, the strategy lets it go (a `signal` event, direction
  `expire`) and may take the next setup. The entry carries that time as its good-till
  (`expire_ts`), so the broker cancels it then (`order.cancelled`, reason `expired`); across a
  gap in the data that time can come before the 24th candle does (the broker goes by the clock,
  the strategy by candles), and the entry is gone at the first candle after the gap (below).
  Until it has no working order of its own, the strategy places no new entry (two entries could
  otherwise both fill); if an old one fills, the strategy manages that position like any of its
  own. An entry gone before its 24th candle with the strategy flat (filled, then stopped or taken
  profit on the same candle's path; refused by the risk gate; or cancelled at its good-till
  across a gap in the data) frees it at the next close: no `expire`, the next setup may enter.
  `entry_expiry_candles = 1` re-prices the entry every candle, as the original did: the broker
  cancels it at the next close, and the strategy places the next at that close's EMA 20 while
  the trend holds (never two working at once: the broker cancels first, then hands the close on).
  That next close is the entry's expiry whatever became of it, so there the strategy says
  `expire` (`still_working` false) of an entry refused or filled and closed too.
- **Trailing stop.** In a position, a trail at the close minus 2 ATR (a short: plus), which only
  tightens, set on each close; when a close crosses the trail as it stood before that candle, the
  strategy exits at market (reduce-only; a `signal` with direction `exit`, reason `trail`)
  (`trail_atr_mult` 2; 0: no trail). An exit decided is sent again on each close until the
  position is gone (the risk gate refuses a second while the first is on its way).
- **Time exit.** After 50 candles in the position (the candle its entry is first seen filled
  counts as the first), it exits at market on that close (reason `time`; `time_exit_candles`
  50; 0: none).
- **A new position starts afresh.** A position closed and opened again the same way between two
  closes (the rest of a partly filled entry filling after its stop or target closed the first
  part) is a new position: its trail, its candle count and any exit decided for the old one start
  over (the account snapshot's `Position.opened` tells it; found by an audit: the old trail was
  applied to the new position).
- **Funding.** No entry when the funding rate in force (the account snapshot's, per 8 h: a 4 h or
  1 h symbol's rate scaled to 8 h by the broker) is more than 0.05 % per 8 h against the
  position (a long when longs pay more than 0.05 %, a short when shorts do); half size above
  0.03 % against it (`funding_block_pct`, `funding_half_pct`). A setup blocked by funding emits
  one `signal.skipped` event (again once the trend breaks and sets up anew).
- **One position at a time.** While the strategy holds a position (its own virtual position in the
  symbol), or its own entry is still working or on its way, no new entry; another strategy's
  position or orders on the symbol neither block it nor are its to manage.
- **History.** Candles from history (`backfill`) warm the EMAs and ATR up; only live candles trade.
  No decision before EMA 50 and ATR 14 are ready (`warmup`: 50 candles). No entry on a candle whose
  ATR is 0; a position is managed on it as on any other (its trail then at the close itself, its
  time exit).
"""

from __future__ import annotations

from typing import Any, ClassVar, Final, Literal

import attrs

from actors.config import StrategyConfig, _num, key
from actors.strategies.base import StrategyOutput, funding_gate_problems, funding_size, register
from actors.strategies.indicators import Atr, Ema
from protocols.instruments import grid_instrument
from protocols.messages import AccountSnapshot, Candle, Event, OrderIntent, Side, Tick

NAME: Final = "trend_pullback"
Direction = Literal["long", "short"]
# a position smaller than this is flat
EPS: Final = 1e-12


@attrs.frozen
class TrendPullbackParams:
    """`trend_pullback`'s own keys of the [strategy] table (`strategy.ema_fast = 20`, ...)."""

    ema_fast: int = key(
        20, "trend_pullback: fast EMA period, candles: the trend and the entry's level", _num(ge=1, le=1000)
    )
    ema_slow: int = key(
        50, "trend_pullback: slow EMA period, candles (must be > ema_fast)", _num(ge=2, le=1000)
    )
    atr_period: int = key(
        14, "trend_pullback: ATR period (mean of the true ranges), candles", _num(ge=1, le=1000)
    )
    stop_atr_mult: float = key(
        1.5, "trend_pullback: stop distance beyond the entry, in ATRs", _num(gt=0, le=100)
    )
    target_r: float = key(
        2.0,
        "trend_pullback: target distance from the entry, in stop distances (R); 0: no target",
        _num(ge=0, le=100),
    )
    entry_expiry_candles: int = key(
        24,
        "trend_pullback: candles the limit entry works before the strategy lets it go",
        _num(ge=1, le=100000),
    )
    trail_atr_mult: float = key(
        2.0,
        "trend_pullback: ATR trailing stop's distance from the close, in ATRs (0: no trail)",
        _num(ge=0, le=100),
    )
    time_exit_candles: int = key(
        50,
        "trend_pullback: candles in a position after which it exits at market (0: never)",
        _num(ge=0, le=1000000),
    )
    funding_block_pct: float = key(
        0.05,
        "trend_pullback: no entry when funding against the position exceeds this, percent per 8 h",
        _num(ge=0, le=100),
    )
    funding_half_pct: float = key(
        0.03,
        "trend_pullback: half-size entry when funding against the position exceeds this, percent per 8 h "
        "(must be <= funding_block_pct)",
        _num(ge=0, le=100),
    )


attrs.resolve_types(TrendPullbackParams)  # real types for the config loader (annotations are text)


def check_params(p: TrendPullbackParams) -> list[str]:
    """The rules between keys (each key's own range is in its validator), one line each."""
    problems = []
    if p.ema_slow <= p.ema_fast:
        problems.append(
            f"strategy.ema_fast: {p.ema_fast} is not allowed; expected less than strategy.ema_slow ({p.ema_slow})"
        )
    return problems + funding_gate_problems(p.funding_half_pct, p.funding_block_pct)


class TrendPullback:
    """The strategy component: candles in; `signal` events, limit entries with their stop and
    target, and reduce-only market exits out."""

    subscribes: ClassVar[tuple[type, ...]] = (Candle,)

    def __init__(
        self,
        config: StrategyConfig,
        strategy_id: str,
        symbol: str,
        params: TrendPullbackParams | None = None,
    ) -> None:
        p = params if params is not None else TrendPullbackParams()
        problems = check_params(p)
        if problems:
            raise ValueError("; ".join(problems))
        self.config = config
        self.params = p
        self.id = strategy_id
        self.symbol = symbol
        # the limit price goes on the exchange's grid (the risk gate rounds the decision, stop and
        # target prices, not a limit price; the broker refuses one off the grid)
        self.round_price = grid_instrument(symbol).round_price
        self.fast = Ema(p.ema_fast)
        self.slow = Ema(p.ema_slow)
        self.atr = Atr(p.atr_period)
        self.n = 0  # candles seen, history included (the clock of expiry and holding time)
        # the entry working: {"placed": n, "direction", "entry", "stop", "target"}
        self.pending: dict[str, Any] | None = None
        # the position it manages: {"direction", "since": n, "trail", "exit": reason or None}
        self.held: dict[str, Any] | None = None
        # something of its own may be at the broker (an entry, a position, an entry it let go):
        # it decides on every candle while so, and on the others only when a setup holds
        self.watch = False
        # the setup direction funding blocked (one `signal.skipped` per setup)
        self.blocked: Direction | None = None
        self.setup: Direction | None = None  # the last update's, for its decide (within one step)

    @property
    def warmup(self) -> int:
        return max(self.params.ema_slow, self.params.atr_period + 1)

    def state(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "fast": self.fast.state(),
            "slow": self.slow.state(),
            "atr": self.atr.state(),
            "pending": dict(self.pending) if self.pending is not None else None,
            "held": dict(self.held) if self.held is not None else None,
            "watch": self.watch,
            "blocked": self.blocked,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.n = state["n"]
        self.fast.restore(state["fast"])
        self.slow.restore(state["slow"])
        self.atr.restore(state["atr"])
        self.pending = dict(state["pending"]) if state["pending"] is not None else None
        self.held = dict(state["held"]) if state["held"] is not None else None
        self.watch = state["watch"]
        self.blocked = state["blocked"]

    def on_quote(self, tick: Tick, account: AccountSnapshot, now: float) -> list[StrategyOutput]:
        return []

    def on_candle(self, candle: Candle, account: AccountSnapshot, now: float) -> list[StrategyOutput]:
        return self.decide(candle, account, now) if self.update(candle) else []

    # --- the two phases --------------------------------------------------------------------------

    def update(self, candle: Candle) -> bool:
        self.n += 1
        close = candle.close
        fast = self.fast.update(close)
        slow = self.slow.update(close)
        atr = self.atr.update(candle.high, candle.low, close)
        setup: Direction | None = None
        if fast is not None and slow is not None:
            if fast > slow and close > fast:
                setup = "long"
            elif fast < slow and close < fast:
                setup = "short"
        self.setup = setup
        if self.blocked is not None and setup != self.blocked:
            self.blocked = None
        if candle.backfill or atr is None or slow is None:
            return False  # history warms up; it never trades
        return setup is not None or self.watch

    def decide(self, candle: Candle, account: AccountSnapshot, now: float) -> list[StrategyOutput]:
        out: list[StrategyOutput] = []
        position = account.position(self.symbol, self.id)
        qty = position.qty
        flat = -EPS < qty < EPS
        if self.watch:
            if not flat:
                direction: Direction = "long" if qty > 0 else "short"
                held = self.held
                # (a checkpoint from before `opened` was kept: the position it held is this one)
                if (
                    held is None
                    or held["direction"] != direction
                    or held.get("opened", position.opened) != position.opened
                ):
                    # its entry filled (the one working, or one it let go and could not cancel); or
                    # a new position the same way since the last close: nothing of the old one's
                    self.held = {
                        "direction": direction,
                        "since": self.n,
                        "trail": None,
                        "exit": None,
                        "opened": position.opened,
                    }
                    self.pending = None
                else:
                    held["opened"] = position.opened
                return self._manage(candle, qty, now)
            self.held = None  # closed: by its stop, target, or an exit of its own
            pending = self.pending
            if pending is not None and self.n - pending["placed"] >= self.params.entry_expiry_candles:
                out.append(
                    self._event(
                        now,
                        candle,
                        "expire",
                        reason="entry_expiry",
                        entry=pending["entry"],
                        still_working=account.open_orders_of(self.id) > 0,
                    )
                )
                self.pending = None
            elif pending is not None and self.n > pending["placed"] and account.open_orders_of(self.id) == 0:
                # gone before its expiry, flat: filled and closed on one candle's path, or refused
                # (found by an audit: it waited out the 24 candles on an entry that no longer was)
                self.pending = None
            # its own orders done (another strategy's brackets, another symbol's, are not its)
            if self.pending is None and account.open_orders_of(self.id) == 0:
                self.watch = False
        if not flat or self.watch or self.setup is None:
            return out
        return out + self._enter(self.setup, candle, account, now)

    # --- entries and exits -----------------------------------------------------------------------

    def _enter(
        self, direction: Direction, candle: Candle, account: AccountSnapshot, now: float
    ) -> list[StrategyOutput]:
        p = self.params
        atr = self.atr.value
        fast = self.fast.value
        assert atr is not None and fast is not None
        if atr <= 0:
            return []
        long = direction == "long"
        size_scale = funding_size(account.funding_rate_pct, long, p.funding_block_pct, p.funding_half_pct)
        if size_scale == 0.0:
            if self.blocked == direction:
                return []
            self.blocked = direction
            return [
                self._event(
                    now,
                    candle,
                    direction,
                    kind="signal.skipped",
                    reason="funding",
                    funding_rate_pct=account.funding_rate_pct,
                )
            ]
        sign = 1.0 if long else -1.0
        # on the grid of the exchange's figures when the broker has them (a live session's)
        instrument = account.instrument_for(self.symbol)
        entry = (instrument.round_price if instrument else self.round_price)(fast, "down" if long else "up")
        risk = p.stop_atr_mult * atr
        stop = entry - sign * risk
        target = entry + sign * p.target_r * risk if p.target_r > 0 else None
        if not stop > 0 or (target is not None and not target > 0):
            # a long's stop, or a short's target, at or below 0 (wide ATRs on a low price, or large
            # stop_atr_mult and target_r): no such order can rest on the market (found by an audit:
            # a short's take-profit went to the broker at -288,638.6)
            return []
        side: Side = "buy" if long else "sell"
        signal = self._event(
            now,
            candle,
            direction,
            fast_ema=fast,
            slow_ema=self.slow.value,
            atr=atr,
            entry=entry,
            stop=stop,
            target=target,
            size_scale=size_scale,
            funding_rate_pct=account.funding_rate_pct,
            expires_after_candles=p.entry_expiry_candles,
        )
        intent = OrderIntent(
            now,
            side,
            self.config.order_qty,
            entry,
            reason=f"pullback_entry_{direction}",
            order_type="limit",
            limit_price=entry,
            stop_price=stop,
            target_price=target,
            strategy_id=self.id,
            symbol=self.symbol,
            size_scale=size_scale,
            # good till the close of the expiry candle: the broker cancels it then (`expired`)
            expire_ts=candle.open_ts + candle.interval_s * (1 + p.entry_expiry_candles),
        )
        self.pending = {
            "placed": self.n,
            "direction": direction,
            "entry": entry,
            "stop": stop,
            "target": target,
        }
        self.watch = True
        return [signal, intent]

    def _manage(self, candle: Candle, qty: float, now: float) -> list[StrategyOutput]:
        """In a position: the exit already decided (again, until it fills: the gate refuses a
        second one while the first is on its way), else the trail and the time exit."""
        p, held = self.params, self.held
        assert held is not None
        out: list[StrategyOutput] = []
        close = candle.close
        long = held["direction"] == "long"
        if held["exit"] is None:
            trail = held["trail"]
            candles_held = self.n - held["since"] + 1
            # the reason in a local of its own: mypyc 2.4 takes `held["exit"]` for None in this
            # branch (its `is None` test narrows it) even after it is set (nox -s compiled found it)
            if trail is not None and (close < trail if long else close > trail):
                reason = "trail"
            elif p.time_exit_candles and candles_held >= p.time_exit_candles:
                reason = "time"
            else:
                atr = self.atr.value
                if p.trail_atr_mult > 0 and atr is not None:
                    level = close - p.trail_atr_mult * atr if long else close + p.trail_atr_mult * atr
                    if trail is None:
                        held["trail"] = level
                    else:
                        held["trail"] = max(trail, level) if long else min(trail, level)
                return out
            held["exit"] = reason
            out.append(
                self._event(
                    now,
                    candle,
                    "exit",
                    reason=reason,
                    position=held["direction"],
                    trail=trail,
                    atr=self.atr.value,
                    candles_held=candles_held,
                    qty=qty,
                )
            )
        out.append(
            OrderIntent(
                now,
                "sell" if long else "buy",
                abs(qty),
                close,
                reason=f"{held['exit']}_exit",
                reduce_only=True,
                strategy_id=self.id,
                symbol=self.symbol,
            )
        )
        return out

    def _event(
        self, now: float, candle: Candle, direction: str, kind: str = "signal", **fields: Any
    ) -> Event:
        return Event(
            now,
            kind,
            {
                "strategy": NAME,
                "strategy_id": self.id,
                "symbol": self.symbol,
                "direction": direction,
                "price": candle.close,
                "candle_open_ts": candle.open_ts,
                **fields,
            },
        )


# registered after the class, not by a class decorator: compiled (setup.py), a decorated class is
# not a native class, and its attributes would be dictionary lookups
register(NAME, common=("history", "order_qty"), params=TrendPullbackParams)(TrendPullback)
