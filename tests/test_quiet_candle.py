"""`PaperBroker.quiet_candle`: a backtest candle nothing can happen in, taken in one call, leaves
the broker exactly as its two steps do (the open quote, then the candle); any other candle it
leaves to them, untouched."""

from __future__ import annotations

import copy
import math
import random

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.broker.paper import PaperBroker, Working
from actors.config import BrokerConfig
from protocols.messages import Candle, Order, quote

T0 = 1_704_067_200.0  # a funding instant (00:00 UTC)


def _state(broker: PaperBroker) -> dict[str, object]:
    # the latest quote as it reads (a quiet candle's is built when first read), not its parts
    state = {k: v for k, v in vars(broker).items() if not k.startswith(("_lazy", "_last_tick"))}
    state["last_tick"] = broker.last_tick
    state["rng"] = broker.rng.getstate()
    return state


prices = st.floats(59_000, 61_000).map(lambda p: round(p, 2))  # off the 0.1 tick half the time


@pytest.mark.slow  # 400 examples (its edge cases below stay quick)
@settings(max_examples=400, deadline=None)
@given(
    o=prices,
    c=prices,
    wick_down=st.floats(0, 300),
    wick_up=st.floats(0, 300),
    position=st.sampled_from([0.0, 0.01, -0.01, 0.5, -0.5]),
    entry=prices,
    leverage=st.sampled_from([1.0, 20.0, 100.0]),
    floor=st.sampled_from([-math.inf] * 3 + [99_000.0, 99_990.0, 100_000.5]),
    watch_in=st.sampled_from([math.inf] * 3 + [30.0, 90.0]),
    minute=st.integers(1, 479),  # the candle's start, in minutes after a funding instant
    volume=st.sampled_from([0.0, 0.5, 12.0]),
    update_due=st.sampled_from([False] * 4 + [True]),
    resting=st.lists(
        st.tuples(
            st.sampled_from(["stop_market", "limit"]),
            st.sampled_from(["buy", "sell"]),
            st.floats(0, 3000).map(lambda d: round(d, 1)),  # away from 60,000, on its resting side
            st.booleans(),
        ),
        max_size=3,
    ),
    touch=st.booleans(),
)
def test_a_quiet_candle_leaves_the_state_of_its_two_steps(
    o: float,
    c: float,
    wick_down: float,
    wick_up: float,
    position: float,
    entry: float,
    leverage: float,
    floor: float,
    watch_in: float,
    minute: int,
    volume: float,
    update_due: bool,
    resting: list[tuple[str, str, float, bool]],
    touch: bool,
) -> None:
    config = attrs.evolve(
        BrokerConfig(), latency_ms=0.0, latency_jitter_ms=0.0, leverage=leverage, limit_fill_on_touch=touch
    )
    broker = PaperBroker(config, random.Random(3), bars=True)
    start = T0 + minute * 60
    # a first candle through the two steps: the funding clock and the marks are running
    before = Candle(start - 60, 60, entry, entry + 5, entry - 5, entry, 3.0)
    broker.on_quote(quote(before.open_ts, before.open), before.open_ts)
    broker.on_candle(before, start)
    broker.position_qty, broker.avg_price = position, entry
    broker._update_liq()
    broker.watch_floor, broker.watch_at = floor, start + watch_in
    broker.update_due = update_due
    for i, (order_type, side, away, triggered) in enumerate(resting):  # stops and limits resting
        above = (order_type == "stop_market") == (side == "buy")  # a buy stop or a sell limit: above
        level = 60_000.0 + away if above else 60_000.0 - away
        price = {"trigger_price": level} if order_type == "stop_market" else {"limit_price": level}
        order = Order(f"r{i}", start - 60, side, 0.01, level, "test", order_type=order_type, **price)  # type: ignore[arg-type]
        broker.working[order.id] = Working(order, 0.01, start - 60, triggered=triggered and i == 0)
    candle = Candle(start, 60, o, max(o, c) + wick_up, min(o, c) - wick_down, c, volume)

    quiet, stepped = broker, copy.deepcopy(broker)
    untouched = _state(quiet)
    if not quiet.quiet_candle(candle):
        assert _state(quiet) == untouched
        return
    assert stepped.on_quote(quote(start, o), start) == []  # no event: nothing happened
    assert stepped.on_candle(candle, start + 60) == []
    assert _state(quiet) == _state(stepped)


def test_quiet_candles_happen_and_so_do_the_others() -> None:
    """The property above is not empty: a flat broker's ordinary candle is quiet; a candle whose
    wick reaches the position's liquidation price is not."""
    broker = PaperBroker(attrs.evolve(BrokerConfig(), leverage=100.0), random.Random(3), bars=True)
    broker.on_quote(quote(T0 + 60, 60_000.0), T0 + 60)
    broker.on_candle(Candle(T0 + 60, 60, 60_000.0, 60_010.0, 59_990.0, 60_000.0, 1.0), T0 + 120)
    broker.watch_at, broker.update_due = math.inf, False  # the risk gate's watch set, its update taken
    assert broker.quiet_candle(Candle(T0 + 120, 60, 60_000.0, 60_020.0, 59_980.0, 60_010.0, 1.0))
    broker.position_qty, broker.avg_price = 0.01, 60_000.0
    broker._update_liq()
    assert not broker.quiet_candle(Candle(T0 + 180, 60, 60_000.0, 60_020.0, 50_000.0, 60_010.0, 1.0))


def test_a_resting_order_the_path_touches_is_not_quiet() -> None:
    """At the edge: a buy stop at the candle's high, a sell stop at its low, and a stop reached
    only by the gap from the last close to the open, each triggers (the walk takes them)."""
    for side, trigger, candle_open in (
        ("buy", 60_020.0, 60_000.0),
        ("sell", 59_980.0, 60_000.0),
        ("buy", 60_050.0, 60_000.0),
    ):
        broker = PaperBroker(attrs.evolve(BrokerConfig(), leverage=10.0), random.Random(3), bars=True)
        broker.on_quote(quote(T0 + 60, 60_000.0), T0 + 60)
        last_close = 60_060.0 if trigger == 60_050.0 else 60_000.0
        broker.on_candle(Candle(T0 + 60, 60, 60_000.0, 60_070.0, 59_990.0, last_close, 1.0), T0 + 120)
        broker.watch_at, broker.update_due = math.inf, False
        order = Order("s", T0, side, 0.01, trigger, "test", order_type="stop_market", trigger_price=trigger)  # type: ignore[arg-type]
        broker.working["s"] = Working(order, 0.01, T0)
        candle = Candle(T0 + 120, 60, candle_open, 60_020.0, 59_980.0, 60_010.0, 1.0)
        assert not broker.quiet_candle(candle), (side, trigger)
        assert any(e.kind == "order.filled" for e in broker.on_candle(candle, T0 + 180)), (side, trigger)
