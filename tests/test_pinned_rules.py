"""Rules pinned by a mutation-testing audit: each test here fails when one rule of the broker, the
portfolio, the risk gate, a strategy, the validator or the report's statistics is turned into a
plausible wrong one (a flipped sign, `<` for `<=`, a rounding the other way, a clamp left out), and
no other test noticed.

Every expected number is worked out here from the rule as written (README.md, docs/fills.md, the
docstrings), never read back from the code. Components are driven directly (no trio, no
subprocess), as tests/test_fills.py drives the broker: `step` runs the timers due (an order with
latency 0 reaches the market) before each input.

The broker's defaults (BrokerConfig): starting equity 10,000 USDT, leverage 2, taker fee 6 bps,
maker fee 2 bps, `slippage_bps` 2; BTCUSDT's grid is 0.1 USDT, its lot 0.0001 BTC.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import attrs
import pytest

from actors.broker.portfolio import Portfolio
from actors.config import BrokerConfig, RiskConfig, StrategyConfig
from actors.recording.report_stats import slippage_cost, statistics
from actors.risk.gate import RiskGate
from actors.strategies.ema_cross import EmaCross, intents_for
from protocols.messages import (
    Book,
    Candle,
    Event,
    Funding,
    Order,
    OrderIntent,
    RiskWatch,
    Tick,
    quote,
)
from tests.test_fills import (
    FUNDING_INSTANT,
    INTERVAL,
    Backtest,
    ConstantFunding,
    fills,
    make_broker,
    of_kind,
    order,
    step,
)
from tests.test_report_html import _closed, _ev
from tests.test_trend_pullback import account, run, signals, strategy, trend
from tests.test_validate_session import _trading_run_once, trading_run  # noqa: F401 (fixtures)
from tools.validate_session import check_fills, check_sequence, validate

T = 1_700_000_000.0  # a live session's time, 8 h funding instants well away (next: 1_700_006_400)
TAKER = 6.0 / 10_000
MAKER = 2.0 / 10_000


def tick(ts: float, bid: float, ask: float, last: float | None = None, size: float = 1.0) -> Tick:
    """A live quote (WebSocket) with `size` BTC at the bid and at the ask."""
    return Tick(ts, bid, ask, bid if last is None else last, size, size, 1.0, "BTCUSDT", "ws")


def kinds(events: list[Event], *wanted: str) -> list[tuple[str, dict[str, Any]]]:
    return [(e.kind, e.fields) for e in events if e.kind in wanted]


# --- funding (P22) ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "rate", "amount"),
    [
        # amount = position_qty x mark x rate / 100 = (+/-0.01) x 100000 x (+/-0.01) / 100 = +/-0.1
        ("buy", 0.01, 0.1),  # a long pays a positive rate
        ("sell", 0.01, -0.1),  # a short receives it
        ("buy", -0.01, -0.1),  # a long receives a negative rate
        ("sell", -0.01, 0.1),  # a short pays it
    ],
)
def test_funding_is_signed_by_the_position_a_short_receives_a_positive_rate(
    side: str, rate: float, amount: float
) -> None:
    """README, Funding: `amount = position_qty x mark x rate_pct / 100` (longs pay a positive
    rate, shorts receive it). A 0.01 BTC position held through 00:00 UTC, marked at 100000."""
    bt = Backtest(make_broker(slippage_bps=0.0), start=FUNDING_INSTANT - 2 * INTERVAL)
    bt.broker.funding = ConstantFunding(rate)
    entry = bt.candle(100000.0, 100000.0, 100000.0, 100000.0, 100.0, [order("o1", side, 0.01)])  # type: ignore[arg-type]
    assert [f["fill_price"] for f in fills(entry)] == [100000.0]
    events = bt.candle(100000.0, 100000.0, 100000.0, 100000.0, 100.0)  # closes at the instant
    (charge,) = of_kind(events, "funding")
    assert charge["instant"] == "2023-11-15T00:00:00Z"  # 1_700_006_400: a funding instant
    assert charge["mark_price"] == 100000.0 and charge["rate_pct"] == rate
    assert charge["amount"] == pytest.approx(amount, rel=1e-12)
    assert bt.broker.funding_paid == pytest.approx(amount, rel=1e-12)
    # equity: 10000 less the entry's taker fee (0.01 x 100000 x 6 bps = 0.6) less the funding paid
    assert bt.broker.equity == pytest.approx(10000.0 - 0.6 - amount, abs=1e-9)


# --- liquidity: the book, the touch, the impact model (P26, P27, P28, P29) ---------------------------


def test_a_second_order_at_the_same_quote_finds_the_touch_used_up() -> None:
    """docs/fills.md: at most what is left of the touch size at the touch; the taken touch is
    used up until the next quote. The ask shows 0.005 BTC: a first buy of 0.005 takes all of it at
    100000.1; a second of 0.005 at the same quote finds none left, so all of it goes by the impact
    model, n = ceil(0.005 / 0.005) = 1 step: 100000.1 x (1 + 2/10000) = 100020.10002 -> up: 100020.2."""
    b = make_broker(bars=False)
    events = step(b, T, tick(T, 100000.0, 100000.1, size=0.005))
    events += step(b, T, order("o1", "buy", 0.005)) + step(b, T, order("o2", "buy", 0.005))
    events += step(b, T + 0.001, tick(T + 0.001, 100000.0, 100000.1, size=0.005))
    got = [(f["order_id"], f["qty"], f["fill_price"], f["source"]) for f in fills(events)]
    assert got == [("o1", 0.005, 100000.1, "touch"), ("o2", 0.005, 100020.2, "impact")]


def test_the_impact_model_moves_the_touch_one_step_per_further_touch_size() -> None:
    """docs/fills.md: the rest beyond the touch at the touch moved `slippage_bps` x n, n = the rest
    over the touch size, rounded up. Ask 0.001 BTC, a buy of 0.01: 0.001 at 100000.1, the rest
    0.009 is n = 9 touch sizes: 9 x 2 = 18 bps, 100000.1 x 1.0018 = 100180.10018 -> up: 100180.2."""
    b = make_broker(bars=False)
    events = step(b, T, tick(T, 100000.0, 100000.1, size=0.001))
    events += step(b, T, order("o1", "buy", 0.01)) + step(b, T + 0.001, tick(T + 0.001, 100000.0, 100000.1))
    got = [(f["qty"], f["fill_price"], f["source"]) for f in fills(events)]
    assert got == [(0.001, 100000.1, "touch"), (0.009, 100180.2, "impact")]


def test_past_the_last_visible_level_the_rest_pays_slippage_beyond_it() -> None:
    """docs/fills.md: a fresh book is walked level by level; past the last visible level the rest
    fills at that level's price moved `slippage_bps` further. Asks 0.001 @ 100000.1 and 0.001 @
    100000.5, a buy of 0.005: the rest 0.003 at 100000.5 x 1.0002 = 100020.5001 -> up: 100020.6."""
    b = make_broker(bars=False)
    events = step(b, T, tick(T, 100000.0, 100000.1))
    events += step(b, T, Book(T, ((100000.0, 1.0),), ((100000.1, 0.001), (100000.5, 0.001))))
    events += step(b, T, order("o1", "buy", 0.005)) + step(b, T + 0.001, tick(T + 0.001, 100000.0, 100000.1))
    got = [(f["qty"], f["fill_price"], f["source"]) for f in fills(events)]
    assert got == [(0.001, 100000.1, "book"), (0.001, 100000.5, "book"), (0.003, 100020.6, "beyond_book")]


def test_a_book_older_than_two_seconds_is_not_walked() -> None:
    """docs/fills.md: a fresh book is at most 2 s older than the step (`BOOK_FRESH_S`). A book of
    10 s ago showing asks at 99000.0 is not the market: the buy takes the quote's touch, 100000.1
    (1 BTC shown there), never the stale 99000.0."""
    b = make_broker(bars=False)
    events = step(b, T, Book(T, ((98999.9, 1.0),), ((99000.0, 0.01),)))
    events += step(b, T + 10, tick(T + 10, 100000.0, 100000.1))
    events += step(b, T + 10, order("o1", "buy", 0.002)) + step(
        b, T + 10.001, tick(T + 10.001, 100000.0, 100000.1)
    )
    got = [(f["qty"], f["fill_price"], f["source"]) for f in fills(events)]
    assert got == [(0.002, 100000.1, "touch")]


# --- limits, stops and deferred orders, live (P31, P08, P37) ----------------------------------------


def test_a_buy_limit_at_the_ask_takes_at_once_as_taker() -> None:
    """A marketable limit takes as a taker (paper.py's docstring): a buy limit at the ask, 100000.1,
    is marketable and fills at once at the ask, taker fee 0.01 x 100000.1 x 6 bps; it never rests."""
    b = make_broker(bars=False)
    events = step(b, T, tick(T, 100000.0, 100000.1))
    events += step(b, T, order("o1", "buy", 0.01, order_type="limit", limit_price=100000.1))
    events += step(b, T + 0.001, tick(T + 0.001, 100000.0, 100000.1))
    assert of_kind(events, "order.working") == []
    (fill,) = fills(events)
    assert (fill["fill_price"], fill["liquidity"], fill["reference_price"]) == (100000.1, "taker", 100000.1)
    assert fill["fee"] == pytest.approx(0.01 * 100000.1 * TAKER, rel=1e-12)
    assert b.position_qty == 0.01


def test_a_live_buy_stop_triggers_when_the_last_trade_is_at_its_trigger() -> None:
    """Stop-market orders trigger on the last price (paper.py): a buy stop triggers when the last
    trade reaches its trigger, `last >= trigger`. A short 0.01 sold at the bid 100000.0 with its
    stop at 101000.0 (on the grid already); a trade prints at 101000.0 exactly: the stop buys at the
    ask, 101000.1, and the position is flat."""
    b = make_broker(bars=False, slippage_bps=0.0)
    events = step(b, T, tick(T, 100000.0, 100000.1, last=100000.0))
    events += step(b, T, order("o1", "sell", 0.01, stop_price=101000.0))
    events += step(b, T + 1, tick(T + 1, 100999.9, 101000.1, last=101000.0))
    got = [(f["reason"], f["side"], f["qty"], f["fill_price"]) for f in fills(events)]
    assert got == [("test", "sell", 0.01, 100000.0), ("stop_loss", "buy", 0.01, 101000.1)]
    assert b.position_qty == 0.0


def test_a_deferred_order_is_released_by_a_quote_stamped_at_its_decision() -> None:
    """`defer_to_next_quote`: a market order decided at T on a quote of T-1 waits for a quote of
    its decision's time or later (`stale_quote` is a quote older than the decision). The quote
    stamped T itself releases it: it buys at that quote's ask, 100100.1, not at a later one."""
    b = make_broker(bars=False)
    b.defer_to_next_quote = True
    events = step(b, T - 1, tick(T - 1, 100000.0, 100000.1))
    events += step(b, T, Order("o1", T, "buy", 0.01, 100000.1, "test"))
    events += step(b, T, tick(T, 100100.0, 100100.1))  # the order reaches the market first: deferred
    assert b.awaiting_quote == []
    events += step(b, T + 5, tick(T + 5, 100500.0, 100500.1))
    assert [(f["fill_price"], f["bid"], f["ask"]) for f in fills(events)] == [(100100.1, 100100.0, 100100.1)]


# --- reduce-only, margin, risk limit, brackets (P36, P39, P30, P40) ----------------------------------


def test_a_reduce_only_order_larger_than_the_position_is_cut_to_it_before_the_cap() -> None:
    """docs/fills.md: no reduce-only fill ever increases the position or flips it. A long 0.01; a
    reduce-only market sell of 0.05 at a quote whose participation budget is 0.02 (10 % of the last
    candle's 0.2 BTC): it is cut to the 0.01 it can close, which fits the budget, so it fills 0.01
    and nothing of it is left working. A new long of 0.01 afterwards stays open (no rest of the old
    exit waits to sell it)."""
    bt = Backtest(make_broker())
    bt.candle(100000.0, 100000.0, 100000.0, 100000.0, 100.0, [order("o1", "buy", 0.01)])
    bt.candle(100000.0, 100000.0, 100000.0, 100000.0, 0.2)
    events = bt.candle(
        100000.0, 100000.0, 100000.0, 100000.0, 0.2, [order("o2", "sell", 0.05, reduce_only=True)]
    )
    assert [(f["order_id"], f["qty"]) for f in fills(events)] == [("o2", 0.01)]
    assert of_kind(events, "order.working") == []
    assert bt.broker.position_qty == 0.0 and bt.broker.working == {}
    events = bt.candle(100000.0, 100000.0, 100000.0, 100000.0, 100.0, [order("o3", "buy", 0.01)])
    events += bt.candle(100000.0, 100000.0, 100000.0, 100000.0, 100.0)
    assert [(f["order_id"], f["side"], f["qty"]) for f in fills(events)] == [("o3", "buy", 0.01)]
    assert bt.broker.position_qty == 0.01


@pytest.mark.parametrize(
    ("qty", "refused"),
    [
        (0.2, False),  # 0.2 x 100000.0 / 2 = 10000.0: exactly the equity, within it
        (0.2001, True),  # 0.2001 x 100000.0 / 2 = 10005.0 > 10000
        (0.3, True),  # 15000 > 10000 (and less than twice the equity)
    ],
)
def test_the_initial_margin_must_fit_in_the_equity(qty: float, refused: bool) -> None:
    """`_margin_refusal`: the position after the order, at the touch (the ask 100000.0), over the
    leverage (2), within the equity (10000, flat): else `insufficient_margin`."""
    b = make_broker(bars=False)
    events = step(b, T, tick(T, 99999.9, 100000.0, size=10.0))
    events += step(b, T, order("o1", "buy", qty)) + step(b, T + 0.001, tick(T + 0.001, 99999.9, 100000.0))
    got = kinds(events, "order.rejected", "order.filled")
    if refused:
        assert [(k, f["reason"]) for k, f in got] == [("order.rejected", "insufficient_margin")]
        assert b.position_qty == 0.0
    else:
        assert [(k, f["qty"], f["fill_price"]) for k, f in got] == [("order.filled", qty, 100000.0)]


def test_the_risk_limit_tier_is_that_of_the_position_after_the_order() -> None:
    """docs/fills.md: `risk_limit_exceeded` when the configured leverage is above the tier's
    maximum for the position's notional (tiers: to 1,000,000 USDT 20x, to 5,000,000 10x). At
    leverage 15, a long of 9 BTC at 100000.1 (900,000.9 USDT: 20x; margin 60,000) is allowed; 2
    BTC more make 11 BTC, 1,100,001.1 USDT: 10x < 15, refused (its margin, 73,333, would fit),
    though 2 BTC alone would be 200,000 USDT."""
    b = make_broker(bars=False, leverage=15.0, starting_equity=100000.0, slippage_bps=0.0)
    events = step(b, T, tick(T, 100000.0, 100000.1, size=100.0))
    events += step(b, T, order("o1", "buy", 9.0)) + step(
        b, T + 1, tick(T + 1, 100000.0, 100000.1, size=100.0)
    )
    assert [(f["qty"], f["fill_price"]) for f in fills(events)] == [(9.0, 100000.1)]
    events = step(b, T + 1, order("o2", "buy", 2.0)) + step(
        b, T + 2, tick(T + 2, 100000.0, 100000.1, size=100.0)
    )
    got = kinds(events, "order.rejected", "order.filled")
    assert [(k, f["reason"]) for k, f in got] == [("order.rejected", "risk_limit_exceeded")]
    assert b.position_qty == 9.0


def test_a_plain_order_that_flips_the_position_cancels_its_brackets() -> None:
    """docs/fills.md: the stop and target are reduce-only for the position; when a fill closes the
    position the other is cancelled (`position_closed`), and no protective order may ever grow
    a position. A long 0.01 with stop 99000 and target 101000 (both sells); a plain market sell of
    0.02 flips it to a short of 0.01: the two sells would add to the short, so both are cancelled."""
    b = make_broker(bars=False)
    events = step(b, T, tick(T, 100000.0, 100000.1))
    events += step(b, T, order("o1", "buy", 0.01, stop_price=99000.0, target_price=101000.0))
    events += step(b, T + 0.001, tick(T + 0.001, 100000.0, 100000.1))
    brackets = {f["reason"]: f["order_id"] for f in of_kind(events, "order.working")}
    assert set(brackets) == {"stop_loss", "take_profit"}
    events = step(b, T + 1, order("o2", "sell", 0.02)) + step(
        b, T + 1.001, tick(T + 1.001, 100000.0, 100000.1)
    )
    assert [(f["qty"], f["fill_price"]) for f in fills(events)] == [(0.02, 100000.0)]
    assert b.position_qty == -0.01
    cancelled = {f["order_id"]: f["reason"] for f in of_kind(events, "order.cancelled")}
    assert cancelled == {brackets["stop_loss"]: "position_closed", brackets["take_profit"]: "position_closed"}
    assert b.working == {}


# --- backtest quotes and the quiet candle (P01, P43) ----------------------------------------------


def test_an_off_grid_close_is_bid_at_the_tick_below() -> None:
    """`_grid_quote`: a price between two ticks (a finer-ticked market's data) is bid at the tick
    below and asked at the tick above, so that no fill is better than the price. A close at
    100000.07 on the 0.1 grid: bid 100000.0, ask 100000.1; a market sell there (no slippage) fills
    at 100000.0, never above the traded 100000.07."""
    bt = Backtest(make_broker(slippage_bps=0.0))
    bt.candle(100000.0, 100000.0, 100000.0, 100000.0, 100.0, [order("o1", "buy", 0.01)])
    bt.candle(100000.0, 100000.07, 100000.0, 100000.07, 100.0)
    events = bt.candle(
        100000.07,
        100000.07,
        100000.07,
        100000.07,
        100.0,
        [order("o2", "sell", 0.01, decision_price=100000.07)],
    )
    (fill,) = fills(events)
    assert (fill["fill_price"], fill["bid"], fill["ask"]) == (100000.0, 100000.0, 100000.1)
    assert fill["realized_pnl"] == 0.0  # bought at 100000.0, sold at 100000.0


@pytest.mark.parametrize(
    "price", [100000.0, 100000.07, 100000.05, 100000.1 + 1e-9, 0.3, 97123.44999999, 1e-4, 65432.1]
)
def test_a_quiet_candles_open_mark_is_the_mid_of_the_quote_its_step_would_make(price: float) -> None:
    """`quiet_candle` takes the open's mark without building its quote (`_grid_mid`): the mid of
    `_grid_quote`'s bid and ask, bit for bit, on the grid and between two ticks (bid below, ask
    above: the mid of the two ticks, not the price)."""
    b = make_broker()
    tick = b._grid_quote(T, price, "BTCUSDT")
    assert b._grid_mid(price) == (tick.bid + tick.ask) / 2
    if price == 100000.07:
        assert (tick.bid, tick.ask, b._grid_mid(price)) == (100000.0, 100000.1, (100000.0 + 100000.1) / 2)


def test_a_candle_whose_low_touches_a_buy_limit_is_not_quiet_with_fill_on_touch() -> None:
    """`quiet_candle` says nothing can happen only when no resting order is within reach of the
    path. With `broker.limit_fill_on_touch` a buy limit at 99000.0 fills when the low touches it:
    a candle with low 99000.0 is not quiet, and taking its two steps fills the limit at its own
    price, maker (0.01 x 99000 x 2 bps)."""
    b = make_broker(limit_fill_on_touch=True)
    step(b, T, quote(T, 100000.0))
    step(b, T, order("o1", "buy", 0.01, order_type="limit", limit_price=99000.0))
    step(b, T + 60, Candle(T, 60.0, 100000.0, 100000.0, 100000.0, 100000.0, 100.0))
    assert list(b.working) == ["o1"]
    b.handle(RiskWatch(T + 60, -math.inf, math.inf), T + 60)
    b.account_update(T + 60)  # nothing due: only the candle itself could make it not quiet
    touching = Candle(T + 60, 60.0, 100000.0, 100000.0, 99000.0, 99500.0, 100.0)
    assert b.quiet_candle(touching) is False
    events = step(b, T + 60, quote(T + 60, 100000.0)) + step(b, T + 120, touching)
    got = [(f["order_id"], f["qty"], f["fill_price"], f["liquidity"]) for f in fills(events)]
    assert got == [("o1", 0.01, 99000.0, "maker")]
    assert fills(events)[0]["fee"] == pytest.approx(0.01 * 99000.0 * MAKER, rel=1e-12)


# --- the portfolio (Q02, Q03, Q05) -----------------------------------------------------------------


def _portfolio() -> Portfolio:
    config = attrs.evolve(BrokerConfig(), latency_ms=0.0, latency_jitter_ms=0.0)
    return Portfolio(config, random.Random(1), symbols=["BTCUSDT", "ETHUSDT"])


def _q(ts: float, symbol: str, bid: float, spread: float = 0.1) -> Tick:
    return Tick(ts, bid, bid + spread, bid, 10.0, 10.0, 1.0, symbol, "ws")


def _long_btc(p: Portfolio) -> list[Event]:
    """A long 0.1 BTC bought at the ask 100000.1 (fee 0.1 x 100000.1 x 6 bps = 6.000006)."""
    events = p.handle(_q(T, "BTCUSDT", 100000.0), T) + p.handle(_q(T, "ETHUSDT", 4000.0), T)
    events += p.handle(Order("o1", T, "buy", 0.1, 100000.0, "test", symbol="BTCUSDT"), T)
    while p.next_timer() <= T:
        events += p.on_timer(T)
    assert [(f["qty"], f["fill_price"]) for f in fills(events)] == [(0.1, 100000.1)]
    return events


@pytest.mark.parametrize(("eth", "refused"), [(2.2, False), (2.6, True)])
def test_another_symbols_position_holds_its_margin_over_leverage(eth: float, refused: bool) -> None:
    """portfolio.py: a new position's initial margin must fit in the account's equity less the
    initial margin the other symbols' positions hold (isolated: entry notional / leverage).
    BTC long 0.1 at 100000.1 holds 10000.01 / 2 = 5000.005; the equity, marked at the mid
    100000.05, is 10000 - 6.000006 - 0.005 = 9993.994994: 4993.989994 left. An ETH buy at the
    ask 4000.1 needs 2.2 x 4000.1 / 2 = 4400.11 (fits) or 2.6 x 4000.1 / 2 = 5200.13 (does not)."""
    p = _portfolio()
    _long_btc(p)
    assert p.equity == pytest.approx(9993.994994, abs=1e-6)
    events = p.handle(Order("o2", T + 1, "buy", eth, 4000.0, "test", symbol="ETHUSDT"), T + 1)
    while p.next_timer() <= T + 1:
        events += p.on_timer(T + 1)
    got = kinds(events, "order.rejected", "order.filled")
    if refused:
        assert [(k, f["reason"]) for k, f in got] == [("order.rejected", "insufficient_margin")]
    else:
        assert [(k, f["qty"], f["fill_price"]) for k, f in got] == [("order.filled", eth, 4000.1)]


def test_the_portfolio_snapshot_subtracts_the_funding_paid() -> None:
    """portfolio.py: equity is the starting equity plus realized PnL, less fees and funding, plus
    unrealized. A long 0.1 BTC through 00:00 UTC at +0.01 % on the mark 100000.0 pays
    0.1 x 100000 x 0.01 / 100 = 1.0; the snapshot's equity is then
    10000 - 6.000006 (fee) - 1.0 + (100000.05 - 100000.1) x 0.1 = 9992.994994."""
    f = FUNDING_INSTANT
    t = f - 60
    p = _portfolio()
    p.handle(_q(t, "BTCUSDT", 100000.0), t)
    p.handle(Funding(t, 100000.0, 0.01, "BTCUSDT", "feed"), t)
    p.handle(Order("o1", t, "buy", 0.1, 100000.0, "test", symbol="BTCUSDT"), t)
    while p.next_timer() <= t:
        p.on_timer(t)
    events = p.handle(_q(f + 1, "BTCUSDT", 100000.0), f + 1)
    assert [x["amount"] for x in of_kind(events, "funding")] == [pytest.approx(1.0, rel=1e-12)]
    snap = p.snapshot(f + 1)
    assert snap.funding_paid == pytest.approx(1.0, rel=1e-12)
    assert snap.equity == pytest.approx(9992.994994, abs=1e-6)
    assert snap.equity == pytest.approx(p.equity, abs=1e-9)


def test_the_portfolio_keeps_its_deepest_drawdown() -> None:
    """portfolio.py: the peak and the deepest drawdown are the account's. A long 0.1 BTC at
    100000.1 (fee 6.000006) marked at the mid 95000.05: equity 10000 - 6.000006 - 500.005 =
    9493.994994, 5.06005006 % below the peak 10000; back at 100000.05 the deepest stays."""
    p = _portfolio()
    _long_btc(p)
    p.handle(_q(T + 1, "BTCUSDT", 95000.0), T + 1)
    p.handle(_q(T + 2, "BTCUSDT", 100000.0), T + 2)
    assert p.max_drawdown_pct == pytest.approx(5.06005006, rel=1e-9)
    assert p.drawdown_pct == pytest.approx(0.06005006, rel=1e-6)


# --- the risk gate's grid (G20, G21) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("side", "kind", "asked", "placed"),
    [
        ("buy", "limit", 99999.97, 99999.9),  # a buy never pays more than asked: down
        ("sell", "limit", 100000.03, 100000.1),  # a sell never takes less: up
        ("buy", "stop_market", 100000.03, 100000.1),  # a buy stop no earlier than asked: up
        ("sell", "stop_market", 99999.97, 99999.9),  # a sell stop no later: down
    ],
)
def test_the_gate_puts_limit_and_trigger_prices_on_the_grid_away_from_the_trader(
    side: str, kind: str, asked: float, placed: float
) -> None:
    """gate.py `_on_grid`: a limit price is never worse than asked (a buy's down, a sell's up); a
    trigger no earlier than asked (a buy stop up, a sell stop down). On BTCUSDT's 0.1 grid."""
    b = make_broker(bars=False)
    step(b, T, tick(T, 100000.0, 100000.1))
    gate = RiskGate(RiskConfig(), 10000.0)
    price = {"limit_price": asked} if kind == "limit" else {"trigger_price": asked}
    intent = OrderIntent(T, side, 0.001, 100000.0, reason="test", order_type=kind, **price)  # type: ignore[arg-type]
    placed_order = gate.check(intent, b.snapshot(T), T)
    assert isinstance(placed_order, Order)
    got = placed_order.limit_price if kind == "limit" else placed_order.trigger_price
    assert got == placed


# --- ema_cross (S06, S07, S08, S09) ------------------------------------------------------------------


def test_ema_cross_emas_use_alpha_two_over_n_plus_one() -> None:
    """ema_cross: EMAs of the closes, alpha = 2 / (n + 1), seeded with the first close. Fast 3
    (alpha 0.5), slow 5 (alpha 1/3): closes 100 then 103 give fast 100 + 0.5 x 3 = 101.5 and slow
    100 + 3 / 3 = 101.0."""
    ema = EmaCross(3, 5, 100)
    ema.update(100.0)
    ema.update(103.0)
    assert ema.fast == pytest.approx(101.5, rel=1e-12)
    assert ema.slow == pytest.approx(101.0, rel=1e-12)


def test_ema_cross_can_signal_on_the_close_after_the_slow_period() -> None:
    """Once the slow EMA has seen `slow_period` closes (3), its difference counts: the 3rd close
    sets `prev`, the 4th can cross. Fast 2 (alpha 2/3), slow 3 (alpha 1/2): closes 100, 100, 99:
    fast 99.3333, slow 99.5 (fast below); then 102: fast 99.3333 + 2/3 x 2.6667 = 101.1111,
    slow 99.5 + 1/2 x 2.5 = 100.75 (fast above): "up" on the 4th close."""
    ema = EmaCross(2, 3, 100)
    got = [ema.update(c) for c in (100.0, 100.0, 99.0, 102.0)]
    assert got == [None, None, None, "up"]
    assert ema.fast == pytest.approx(101.0 + 1 / 9, rel=1e-12)
    assert ema.slow == pytest.approx(100.75, rel=1e-12)


def test_ema_cross_needs_fast_strictly_below_before_an_up_cross() -> None:
    """A cross up is `prev fast-slow < 0 < now`: from equal EMAs (a flat start, difference 0)
    a rise is not a cross. Fast 2, slow 3: closes 100 x 4 (difference 0), then 101: no signal."""
    ema = EmaCross(2, 3, 100)
    assert [ema.update(c) for c in (100.0, 100.0, 100.0, 100.0, 101.0)] == [None] * 5


@pytest.mark.parametrize(
    ("cross", "stop", "target"), [("up", 99500.0, 101000.0), ("down", 100500.0, 99000.0)]
)
def test_ema_cross_stop_is_below_a_long_entry_and_above_a_short(
    cross: str, stop: float, target: float
) -> None:
    """ema_cross: the entry's stop `stop_loss_pct` (0.5 %) from the signal close, against the
    position, the target `take_profit_pct` (1 %) for it: at 100000 a long's stop 99500 and
    target 101000, a short's stop 100500 and target 99000."""
    (entry,) = intents_for(cross, 0.0, StrategyConfig(), 100000.0, 0.0)  # type: ignore[arg-type]
    assert entry.side == ("buy" if cross == "up" else "sell")
    assert entry.stop_price == pytest.approx(stop, rel=1e-12)
    assert entry.target_price == pytest.approx(target, rel=1e-12)


# --- trend_pullback (S11, S18) ------------------------------------------------------------------------


def test_trend_pullback_entry_is_good_till_the_close_of_its_expiry_candle() -> None:
    """trend_pullback: the entry works for 24 candles after the signal candle; at the close of the
    24th the strategy lets it go, and the entry carries that time as its `expire_ts` (the broker
    cancels it then). The first setup is on candle 49 (open 49 x 60 = 2940 s): good till
    2940 + 60 x (1 + 24) = 4440, the close of candle 73, where the strategy's `expire` signal is."""
    candles = trend(80)
    outs = run(strategy(), candles)
    first = next(o for o in outs if isinstance(o, OrderIntent))
    assert signals(outs)[0].fields["candle_open_ts"] == candles[49].open_ts == 2940.0
    assert first.expire_ts == 4440.0
    (expire,) = signals(outs, "expire")
    assert expire.fields["candle_open_ts"] == candles[73].open_ts
    assert candles[73].open_ts + candles[73].interval_s == first.expire_ts


def test_trend_pullback_skips_a_funding_blocked_setup_again_once_it_sets_up_anew() -> None:
    """trend_pullback: a setup blocked by funding emits one `signal.skipped` (again once the trend
    breaks and sets up anew). Longs pay 0.06 % (> 0.05 %) all along: the up-trend from candle 49
    is skipped once; a close at 50400, below EMA 20 (about 50576) with EMA 20 still above EMA 50,
    is no setup; the next close, 50800, above both, is a new long setup: skipped again."""
    up = trend(70)  # closes 50000 .. 50690, one a minute
    funded = account(funding=0.06)
    s = strategy()
    outs = run(s, up, funded)
    breaker = Candle(70 * 60.0, 60.0, 50690.0, 50700.0, 50390.0, 50400.0, 5.0)
    again = Candle(71 * 60.0, 60.0, 50400.0, 50810.0, 50390.0, 50800.0, 5.0)
    outs += run(s, [breaker, again], funded)
    skipped = [o.fields for o in outs if isinstance(o, Event) and o.kind == "signal.skipped"]
    assert [(f["direction"], f["candle_open_ts"], f["reason"]) for f in skipped] == [
        ("long", up[49].open_ts, "funding"),
        ("long", again.open_ts, "funding"),
    ]
    assert [o for o in outs if isinstance(o, OrderIntent)] == []


# --- the validator (V10, V04) ----------------------------------------------------------------------


def _event(seq: int, kind: str, **fields: Any) -> dict[str, Any]:
    return {"seq": seq, "ts": "2024-01-01T00:00:00.000Z", "kind": kind, **fields}


def test_a_deleted_heartbeat_is_named_as_a_seq_gap() -> None:
    """tools/validate_session.py `check_sequence`: seq counts 1, 2, 3, ... with no gap; the first
    event out of line is named, `events.jsonl: seq N where M was expected`. Heartbeat 3 deleted
    from 1 started, 2 heartbeat, 3 heartbeat, 4 heartbeat, 5 stopped: seq 4 where 3 was expected."""
    events = [
        _event(1, "session.started"),
        _event(2, "heartbeat"),
        _event(3, "heartbeat"),
        _event(4, "heartbeat"),
        _event(5, "session.stopped"),
    ]
    assert check_sequence(events, finished=True) == []
    del events[2]
    assert check_sequence(events, finished=True) == ["events.jsonl: seq 4 where 3 was expected"]


def test_a_heartbeat_deleted_from_a_real_run_is_named_as_a_seq_gap(request: pytest.FixtureRequest) -> None:
    """The same through `validate` on a real session's run folder (tests/test_validate_session.py's
    5-minute trading session): its first heartbeat line deleted, nothing doubled. The heartbeat had
    seq k, so the line after it, seq k + 1, is where k was expected."""
    run_dir: Path = request.getfixturevalue("trading_run")  # a copy of the run, to tamper with
    path = run_dir / "events.jsonl"
    assert validate(run_dir) == []
    lines = path.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if json.loads(line)["kind"] == "heartbeat")
    k = json.loads(lines[at])["seq"]
    assert k == at + 1  # seq counts the lines from 1
    del lines[at]
    path.write_text("\n".join(lines) + "\n")
    problems = validate(run_dir)
    assert f"events.jsonl: seq {k + 1} where {k} was expected" in problems
    assert not any("more than once" in p for p in problems)


def test_funding_charged_in_a_run_whose_funding_source_is_none_is_a_problem() -> None:
    """README, Funding: `funding_source` 'none' means funding is not modelled: no funding events
    charge anything. One funding event charging 0.25 (the report's funding_paid agreeing) is
    named: `report funding_source = 'none' (not modelled) but 1 funding events charged`."""
    report = {"funding_source": "none", "funding_paid": 0.25, "realized_pnl": 0.0, "fees_paid": 0.0}
    charged = [_event(1, "session.started"), _event(2, "funding", amount=0.25)]
    assert check_fills(charged, report) == [
        "report funding_source = 'none' (not modelled) but 1 funding events charged"
    ]
    nothing = [_event(1, "session.started"), _event(2, "funding", amount=0.0)]
    assert check_fills(nothing, {**report, "funding_paid": 0.0}) == []


# --- report statistics (R07) -------------------------------------------------------------------------


def test_the_max_drawdown_statistic_takes_the_session_stopped_figure() -> None:
    """report_stats.statistics: `max_drawdown_pct` is the largest of the heartbeats'
    `drawdown_pct` and `session.stopped`'s `max_drawdown_pct` (the report's, marked at every
    step: deeper than any heartbeat caught). Heartbeats at 1 % and 2 %, the session's 3.5 %: 3.5."""
    records = [
        _ev("session.started", "00:00:00", symbol="BTCUSDT", starting_equity=1000.0),
        _ev("heartbeat", "00:00:01", equity=990.0, drawdown_pct=1.0),
        _ev("heartbeat", "00:00:02", equity=980.0, drawdown_pct=2.0),
        _ev("session.stopped", "00:00:02", ending_equity=980.0, max_drawdown_pct=3.5),
    ]
    assert statistics(records)["max_drawdown_pct"] == 3.5


# --- beyond the brief's list, as cheap: the risk watch, statistics, the validator's other messages ---


def test_the_broker_reports_a_mark_that_leaves_equity_at_the_watch_floor() -> None:
    """RiskWatch: an `AccountUpdate` after a mark that leaves equity *at or below* the floor. A flat
    account of 10000 with the floor at 10000: the next quote's mark is due."""
    b = make_broker(bars=False)
    step(b, T, tick(T, 100000.0, 100000.1))
    b.handle(RiskWatch(T, 10000.0, math.inf), T)
    b.account_update(T)  # what the command itself made due, told
    assert b.account_update(T) is None
    step(b, T + 1, tick(T + 1, 100000.0, 100000.1))
    update = b.account_update(T + 1)
    assert update is not None and update.account.equity == 10000.0


def test_the_portfolio_reports_at_once_when_the_watch_floor_is_the_equity() -> None:
    """RiskWatch on the account of several symbols: equity 10000 (flat) at a floor of 10000 is
    at the floor: an update is due as the watch is set."""
    p = _portfolio()
    assert p.account_update(T) is None
    p.handle(RiskWatch(T, 10000.0, math.inf), T)
    update = p.account_update(T)
    assert update is not None and update.account.equity == 10000.0


def test_a_trade_of_net_zero_is_neither_a_win_nor_a_loss() -> None:
    """report_stats.statistics: wins are net_pnl > 0, losses net_pnl < 0. Trades of +4, 0, -2:
    1 win, 1 loss, win rate 1/3."""
    records = [
        _ev("session.started", "00:00:00", symbol="BTCUSDT", starting_equity=1000.0),
        _closed("00:10:00", "long", 0.0, 0.1, 5.0, 4.0),
        _closed("00:20:00", "long", 0.2, 0.1, 1.0, 0.0),
        _closed("00:30:00", "short", 0.4, 0.1, -1.0, -2.0),
        _ev("session.stopped", "00:30:00", ending_equity=1002.0, max_drawdown_pct=0.0),
    ]
    s = statistics(records)
    assert (s["trades"], s["wins"], s["losses"]) == (3, 1, 1)
    assert s["win_rate"] == pytest.approx(1 / 3)
    assert s["avg_win"] == 4.0 and s["avg_loss"] == -2.0


def test_slippage_cost_is_of_the_requested_notional() -> None:
    """report_stats.slippage_cost: `slippage_bps` of the decision's `requested_price` x qty. A buy
    of 2 requested at 100.0, filled at 101.0 (100 bps worse): 100 / 10000 x 100.0 x 2 = 2.0."""
    fill = {
        "kind": "order.filled",
        "qty": 2.0,
        "requested_price": 100.0,
        "fill_price": 101.0,
        "slippage_bps": 100.0,
    }
    assert slippage_cost(fill) == pytest.approx(2.0, rel=1e-12)


def test_events_must_start_with_session_started_and_a_finished_run_end_with_session_stopped() -> None:
    """tools/validate_session.py `check_sequence`: the first event is session.started; a finished
    run's last is session.stopped; each said in its own words."""
    heartbeat_first = [_event(1, "heartbeat"), _event(2, "session.stopped")]
    assert check_sequence(heartbeat_first, finished=True) == [
        "events.jsonl: does not start with session.started"
    ]
    no_stop = [_event(1, "session.started"), _event(2, "heartbeat")]
    assert check_sequence(no_stop, finished=False) == []
    assert check_sequence(no_stop, finished=True) == [
        "events.jsonl: a finished session must end with session.stopped"
    ]


def test_report_figures_that_the_fills_and_funding_events_contradict_are_named() -> None:
    """`check_fills`: the report's realized PnL and fees must be the fills' (within a cent), its
    funding_paid the funding events'. A buy of 1 at 100 and a sell at 110 (fees 0.5 each): realized
    10.0, fees 1.0; funding events 0.3. A report saying realized 12.0 and funding 0.0 is named."""
    events = [
        _event(1, "session.started"),
        _event(2, "order.filled", order_id="a", fill_id="f1", side="buy", qty=1.0, fill_price=100.0, fee=0.5),
        _event(3, "funding", amount=0.3),
        _event(
            4, "order.filled", order_id="b", fill_id="f2", side="sell", qty=1.0, fill_price=110.0, fee=0.5
        ),
    ]
    right = {"realized_pnl": 10.0, "fees_paid": 1.0, "funding_paid": 0.3, "status": "ok"}
    assert check_fills(events, right) == []
    wrong = {**right, "realized_pnl": 12.0, "funding_paid": 0.0}
    assert check_fills(events, wrong) == [
        "report realized_pnl = 12.0 but the fills give 10.000000",
        "report funding_paid = 0.0 but funding events give 0.300000",
    ]


def test_no_tier_allows_a_leverage_that_liquidates_at_the_entry() -> None:
    """A long's liquidation price is entry x (1 - 1/leverage + maintenance rate) (docs/fills.md):
    at a leverage of 1/maintenance rate or more it is at or above the entry, and the position is
    liquidated by the next quote (found by an audit: the shipped ladder allowed 50x at 2.5 % and
    20x at 5 %). Every tier of every shipped instrument leaves a margin above its maintenance."""
    from protocols.instruments import TABLE

    for symbol, instrument in TABLE.items():
        for t in instrument.tiers:
            assert 1 / t.max_leverage > t.maintenance_margin_rate, (symbol, t)
    # and the broker at a tier's maximum: a long of 9 BTC at 20x (900,000 USDT, 2.5 %) stands
    b = make_broker(bars=False, leverage=20.0, starting_equity=100000.0, slippage_bps=0.0)
    events = step(b, T, tick(T, 100000.0, 100000.1, size=100.0))
    events += step(b, T, order("o1", "buy", 9.0)) + step(
        b, T + 1, tick(T + 1, 100000.0, 100000.1, size=100.0)
    )
    assert b.position_qty == 9.0 and not of_kind(events, "liquidation")
    assert b.liq_price == pytest.approx(100000.1 * (1 - 1 / 20 + 0.025))
