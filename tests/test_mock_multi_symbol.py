"""The mock source serving several symbols (actors/feeds/mock.py): correlated walks, each at its
level and on its tick grid, every event with its symbol; one symbol is today's single walk, draw
for draw; checkpoints (old and new) continue the same market. Seeded, on trio's autojump clock."""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
import trio

from actors.clock import SessionClock
from actors.config import FeedConfig, load
from actors.feeds.mock import MarketWalk, RandomWalk, build_walk, run_mock_feed
from protocols.instruments import table_instrument
from protocols.messages import Candle, MarketEvent, Tick

T0 = 1_700_000_000.0  # the session clock's start (no wall clock)
BTC_ETH_SOL = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


def _feed_config(*sets: str) -> FeedConfig:
    return load(None, {}, list(sets), {}).feed


async def _run_feed(
    config: FeedConfig,
    walk: RandomWalk | MarketWalk,
    seconds: float,
    *,
    interval_s: float = 60.0,
    **labels: Any,
) -> list[MarketEvent]:
    """Everything the mock feed hands out in its first `seconds` (of the autojump clock)."""
    tx, rx = trio.open_memory_channel[MarketEvent](math.inf)
    with trio.move_on_after(seconds):
        await run_mock_feed(config, interval_s, SessionClock(T0), walk, [tx], **labels)
    return [e async for e in rx]  # the feed closed its end


def _on_grid(symbol: str, *prices: float) -> bool:
    instrument = table_instrument(symbol) or table_instrument("BTCUSDT")
    assert instrument is not None
    return all(instrument.price_on_grid(p) for p in prices)


# --- one symbol: today's walk, draw for draw ------------------------------------------------------


def test_one_symbol_is_the_single_walk_of_before() -> None:
    """Values recorded from the single-symbol `RandomWalk` before several symbols existed (seed 7,
    the default config): the one-symbol market must keep them."""
    config = _feed_config()
    market = build_walk(config, random.Random(7), ["BTCUSDT"])
    (history,) = market.history(T0, 60, 0.5)
    assert (history[0].open_ts, history[0].open, history[0].close, history[0].volume) == (
        T0 - 200 * 60,
        60105.3,
        60102.7,
        9.12720706,
    )
    assert (history[-1].high, history[-1].low, history[-1].close) == (60108.5, 59989.5, 59999.9)
    ticks = [market.step(T0 + 0.25 + k * 0.5, 0.5) for k in range(3)]
    assert [(t.bid, t.ask, t.last, v) for ((t, v),) in ticks] == [
        (59999.6, 59999.7, 59999.6, 0.0222),
        (59998.0, 59998.1, 59998.0, 0.0795),
        (60002.0, 60002.1, 60002.0, 0.0557),
    ]


@pytest.mark.parametrize("sets", [(), ("feed.mock_regime_min=0",), ("feed.mock_spread_ticks=3",)])
async def test_one_symbol_feed_is_the_random_walk_feed(
    autojump_clock: trio.abc.Clock, sets: tuple[str, ...]
) -> None:
    config = _feed_config(*sets)
    for seed in (1, len(sets) + 2):
        single = await _run_feed(config, RandomWalk(config, random.Random(seed)), 300, symbol="BTCUSDT")
        market = build_walk(config, random.Random(seed), ("BTCUSDT",))
        assert await _run_feed(config, market, 300, symbols=("BTCUSDT",)) == single
        assert Counter(type(e) for e in single) == {
            Candle: 200 + 4,
            Tick: 600,
        }  # the fifth minute not closed yet


# --- several symbols ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbols", "sets", "levels"),
    [
        (("BTCUSDT", "ETHUSDT"), (), (60000.0, 3000.0)),
        (BTC_ETH_SOL, (), (60000.0, 3000.0, 150.0)),
        # the first symbol starts at feed.mock_start_price; one the table does not know: 1,000 on 0.1
        (("ETHUSDT", "SOLUSDT", "DOGEUSDT"), ("feed.mock_start_price=2500",), (2500.0, 150.0, 1000.0)),
    ],
)
async def test_every_symbol_gets_history_ticks_and_candles_at_its_level_on_its_grid(
    autojump_clock: trio.abc.Clock, symbols: tuple[str, ...], sets: tuple[str, ...], levels: tuple[float, ...]
) -> None:
    config = _feed_config("feed.mock_spread_ticks=2", *sets)
    events = await _run_feed(config, build_walk(config, random.Random(3), symbols), 600)
    n = config.mock_history_candles
    history, live = events[: n * len(symbols)], events[n * len(symbols) :]

    # the history: every symbol's, whole, contiguous, ending at the start; handed out in time order
    assert all(isinstance(e, Candle) and e.backfill for e in history)
    assert [(e.open_ts, e.symbol) for e in history] == [
        (T0 - (n - k) * 60, s) for k in range(n) for s in symbols
    ]
    assert not any(isinstance(e, Candle) and e.backfill for e in live)

    instants = itertools.groupby((e for e in live if isinstance(e, Tick)), key=lambda t: t.ts)
    assert all(tuple(t.symbol for t in group) == symbols for _, group in instants)  # one each, in order
    for symbol, level in zip(symbols, levels, strict=True):
        instrument = table_instrument(symbol) or table_instrument("BTCUSDT")
        assert instrument is not None
        own = [c for c in history if c.symbol == symbol]
        assert abs(own[-1].close - level) <= 2 * instrument.tick_size  # the ticks begin where it ends
        ticks = [e for e in live if isinstance(e, Tick) and e.symbol == symbol]
        candles = [e for e in live if isinstance(e, Candle) and e.symbol == symbol]
        assert len(ticks) == 1200 and len(candles) == 9  # the tenth not closed yet
        assert [c.open_ts for c in candles] == [T0 + 60 * k for k in range(9)]
        assert 0.99 * level < ticks[0].bid < 1.01 * level
        assert all(_on_grid(symbol, t.bid, t.ask, t.last) for t in ticks)
        assert all(_on_grid(symbol, c.open, c.high, c.low, c.close) for c in [*own, *candles])
        assert all(math.isclose(t.ask - t.bid, 2 * instrument.tick_size) for t in ticks)
        # a candle is its own symbol's ticks over its minute
        first = [t for t in ticks if T0 <= t.ts < T0 + 60]
        assert (candles[0].open, candles[0].close) == (first[0].last, first[-1].last)
        assert candles[0].high == max(t.last for t in first) and candles[0].low == min(t.last for t in first)


def test_the_walks_are_correlated_not_the_same() -> None:
    """Ten hours of one-minute returns (5-second steps): every pair's sample correlation is clearly
    positive (MARKET_CORRELATION is 0.7) and short of a copy."""
    config = _feed_config()
    market = build_walk(config, random.Random(11), BTC_ETH_SOL)
    closes: dict[str, list[float]] = {s: [] for s in BTC_ETH_SOL}
    for k in range(10 * 60 * 12):
        ticks = market.step(T0 + 5 * k, 5.0)
        if k % 12 == 11:
            for tick, _ in ticks:
                closes[tick.symbol].append((tick.bid + tick.ask) / 2)
    returns = {s: [math.log(b / a) for a, b in itertools.pairwise(c)] for s, c in closes.items()}
    for x, y in itertools.combinations(BTC_ETH_SOL, 2):
        assert 0.3 < _correlation(returns[x], returns[y]) < 0.95, (x, y)
    # each still about its own level after ten hours (a wrong level would be off by 20x or more)
    for symbol, level in zip(BTC_ETH_SOL, (60000, 3000, 150), strict=True):
        assert 0.8 < closes[symbol][-1] / level < 1.25, symbol


def _correlation(x: Sequence[float], y: Sequence[float]) -> float:
    mx, my = statistics.fmean(x), statistics.fmean(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def test_the_same_seed_the_same_market_another_seed_another() -> None:
    config = _feed_config("feed.mock_history_candles=20")

    def run(seed: int) -> list[Any]:
        market = build_walk(config, random.Random(seed), BTC_ETH_SOL)
        history = [list(backlog) for backlog in market.history(T0, 60, 0.5)]
        return [history, [market.step(T0 + k, 0.5) for k in range(200)]]

    assert run(4) == run(4)
    assert run(4) != run(5)


# --- checkpoints ----------------------------------------------------------------------------------


def _restored(config: FeedConfig, market: MarketWalk, symbols: Sequence[str]) -> MarketWalk:
    """A fresh market (another seed) restored from `market`'s checkpoint as JSON, with the
    generator's state (the session saves its streams beside the walk's state)."""
    again = build_walk(config, random.Random(99), symbols)
    again.restore(json.loads(json.dumps(market.snapshot())))
    again.rng.setstate(market.rng.getstate())
    return again


async def test_a_checkpoint_mid_history_hands_out_the_rest_in_the_same_order(
    autojump_clock: trio.abc.Clock,
) -> None:
    config = _feed_config()
    whole = await _run_feed(config, build_walk(config, random.Random(8), BTC_ETH_SOL), 120)

    market = build_walk(config, random.Random(8), BTC_ETH_SOL)
    tx, rx = trio.open_memory_channel[MarketEvent](0)
    got: list[MarketEvent] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_mock_feed, config, 60.0, SessionClock(T0), market, [tx])
        async with rx:
            for _ in range(250):  # of 600 history candles; the 251st is never taken
                got.append(await rx.receive())
            nursery.cancel_scope.cancel()
    assert [len(b) for b in market.history(T0, 60, 0.5)] == [116, 117, 117]
    rest = await _run_feed(config, _restored(config, market, BTC_ETH_SOL), 120)
    assert got + rest == whole


async def test_a_checkpoint_mid_run_continues_the_same(autojump_clock: trio.abc.Clock) -> None:
    config = _feed_config()
    market = build_walk(config, random.Random(9), BTC_ETH_SOL)
    await _run_feed(config, market, 95)  # history, then ticks into a second candle
    again = _restored(config, market, BTC_ETH_SOL)
    assert [list(b) for b in again.history(T0, 60, 0.5)] == [[], [], []]  # no new history
    first, second = await _run_feed(config, market, 300), await _run_feed(config, again, 300)
    assert first == second
    assert {e.symbol for e in first} == set(BTC_ETH_SOL) and len(first) == 3 * (600 + 4)


def test_a_single_walk_checkpoint_of_before_restores() -> None:
    """A one-symbol session's checkpoint written by `RandomWalk.snapshot()` (the format before
    several symbols): the one-symbol market goes on as the walk does; in a market of several it is
    the first symbol's."""
    config = _feed_config()
    walk = RandomWalk(config, random.Random(5))
    backlog = walk.history(T0, 60, 0.5)
    for _ in range(50):
        backlog.popleft()
    for k in range(300):
        walk.step(T0 + k, 0.5)
    state = json.loads(json.dumps(walk.snapshot()))
    rng = walk.rng.getstate()
    walk_mid, saved_backlog = walk.mid, list(walk.backlog)

    one = build_walk(config, random.Random(99), ["BTCUSDT"])
    one.restore(state)
    one.rng.setstate(rng)
    assert list(one.history(T0, 60, 0.5)[0]) == list(walk.backlog)
    assert [one.step(T0 + 300 + k, 0.5)[0] for k in range(100)] == [
        walk.step(T0 + 300 + k, 0.5) for k in range(100)
    ]

    several = build_walk(config, random.Random(99), BTC_ETH_SOL)
    several.restore(state)
    btc = several.walk("BTCUSDT")
    assert (btc.mid, btc.regime, list(btc.backlog)) == (walk_mid, state["regime"], saved_backlog)
    assert not several.walk("ETHUSDT").seeded  # its history is built when the feed starts


# --- the feed's symbol arguments -----------------------------------------------------------------


async def test_the_feed_refuses_symbols_its_walk_does_not_serve(autojump_clock: trio.abc.Clock) -> None:
    config = _feed_config()
    tx, _rx = trio.open_memory_channel[MarketEvent](math.inf)
    market = build_walk(config, random.Random(1), ("BTCUSDT", "ETHUSDT"))
    with pytest.raises(ValueError, match="serves BTCUSDT, ETHUSDT, not BTCUSDT: build it with build_walk"):
        await run_mock_feed(config, 60.0, SessionClock(T0), market, [tx], symbol="BTCUSDT")
    with pytest.raises(ValueError, match="not ETHUSDT, BTCUSDT"):
        await run_mock_feed(config, 60.0, SessionClock(T0), market, [tx], symbols=("ETHUSDT", "BTCUSDT"))
