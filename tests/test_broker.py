"""The paper broker: accounting invariants (hypothesis) and execution scenarios (the component
driven over a timed script, its orders reaching the market through its latency timers)."""

from __future__ import annotations

import itertools
import json
import math
import random
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.broker.paper import MAX_IN_FLIGHT, PaperBroker
from actors.config import BrokerConfig
from protocols.messages import (
    Book,
    Cancel,
    Candle,
    Event,
    FeedStatus,
    Flatten,
    Funding,
    HaltEntries,
    Order,
    RiskWatch,
    Side,
    StopSession,
    Tick,
)
from tests.helpers_components import Scripted, drive

W0 = 1_700_000_000.0  # the scripts' session times are offsets from this


def _account(**overrides: Any) -> PaperBroker:
    config = attrs.evolve(BrokerConfig(), **{"latency_ms": 0.0, "latency_jitter_ms": 0.0, **overrides})
    return PaperBroker(config, random.Random(1))


def _order(oid: str, side: Side, qty: float, ts: float = 0.0, **kw: Any) -> Order:
    return Order(
        id=oid, ts=ts, side=side, qty=qty, decision_price=kw.pop("decision_price", 100.0), reason="test", **kw
    )


# --- properties --------------------------------------------------------------------------------

steps = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.floats(-0.004, 0.004), st.integers(1, 5), st.floats(0, 2)),
        st.tuples(st.just("market"), st.sampled_from(["buy", "sell"]), st.integers(1, 300), st.booleans()),
        st.tuples(
            st.just("limit"), st.sampled_from(["buy", "sell"]), st.integers(1, 300), st.floats(-0.003, 0.003)
        ),
        st.tuples(
            st.just("stop"), st.sampled_from(["buy", "sell"]), st.integers(1, 300), st.floats(0.0005, 0.003)
        ),
        st.tuples(st.just("cancel"), st.integers(0, 30), st.just(0), st.just(0)),
        st.tuples(st.just("funding"), st.floats(-0.05, 0.05), st.integers(1, 3), st.just(0)),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps, slippage=st.sampled_from([0.0, 2.0]), on_touch=st.booleans())
def test_accounting_invariants_hold_over_random_orders_and_prices(
    steps: list[tuple[Any, ...]], slippage: float, on_touch: bool
) -> None:
    account = _account(slippage_bps=slippage, limit_fill_on_touch=on_touch, leverage=20.0)
    events: list[Event] = []
    ts, mid = 1_700_000_000.0, 60000.0
    quotes: dict[float, Tick] = {}

    def tick(move: float, spread_ticks: int, last_qty: float) -> None:
        nonlocal mid
        mid *= 1 + move
        bid = round(mid, 1)
        t = Tick(
            ts=ts,
            bid=bid,
            ask=round(bid + 0.1 * spread_ticks, 1),
            last=round(mid + move * mid, 1),
            last_qty=round(last_qty, 4),
        )
        quotes[ts] = t
        events.extend(account.on_market(t, ts))

    tick(0.0, 1, 0.0)
    for n, (kind, a, b, c) in enumerate(steps, start=1):
        ts += 3600.0  # an hour a step: funding instants pass too
        if kind == "tick":
            tick(a, b, c)
        elif kind == "market":
            events.extend(account.on_arrival(_order(f"o{n}", a, b / 1000, ts, reduce_only=c), ts))
        elif kind == "limit":
            price = round(mid * (1 + c), 1)
            events.extend(
                account.on_arrival(
                    _order(f"o{n}", a, b / 1000, ts, order_type="limit", limit_price=price), ts
                )
            )
        elif kind == "stop":
            trigger = round(mid * (1 + c if a == "buy" else 1 - c), 1)
            events.extend(
                account.on_arrival(
                    _order(f"o{n}", a, b / 1000, ts, order_type="stop_market", trigger_price=trigger), ts
                )
            )
        elif kind == "cancel":
            events.extend(account.cancel(Cancel(f"o{a}", ts, "test")))
        elif kind == "funding":
            events.extend(account.on_market(Funding(ts=ts, mark_price=round(mid, 1), rate_pct=a), ts))
    fill_events = [e for e in events if e.kind == "order.filled"]
    fills = [e.fields for e in fill_events]
    realized = sum(f["realized_pnl"] for f in fills)
    fees = sum(f["fee"] for f in fills)
    funding = sum(e.fields["amount"] for e in events if e.kind == "funding")
    expected = account.starting_equity + realized - fees - funding + account.unrealized_pnl
    assert abs(account.equity - expected) < 1e-6
    position = sum(f["qty"] if f["side"] == "buy" else -f["qty"] for f in fills)
    assert abs(account.position_qty - position) < 1e-9
    for event, f in zip(fill_events, fills, strict=True):
        rate = account.taker_fee_rate if f["liquidity"] == "taker" else account.maker_fee_rate
        assert abs(f["fee"] - f["qty"] * f["fill_price"] * rate) < 1e-9
        if f["liquidity"] == "taker":  # at the touch or worse by at most the slippage, never better
            touch = f["ask"] if f["side"] == "buy" else f["bid"]
            worse = f["fill_price"] - touch if f["side"] == "buy" else touch - f["fill_price"]
            assert -1e-9 <= worse <= touch * slippage / 10_000 + 0.1 + 1e-9
        else:  # a resting limit: filled at its price, only on a quote whose last trade went through it
            quote = quotes[event.ts]
            through = f["fill_price"] - quote.last if f["side"] == "buy" else quote.last - f["fill_price"]
            assert through > 0 or (on_touch and through >= 0)


# --- scenarios ---------------------------------------------------------------------------------


def _run_broker(account: PaperBroker, script: list[tuple[float, Scripted]]) -> list[Event]:
    """Drive the broker component: each item at its offset from W0 (see `drive`), then 5 s more."""
    return drive(account, [(W0 + at, item) for at, item in script])


def _tick(bid: float, ask: float, last: float | None = None, last_qty: float = 0.0) -> Tick:
    return Tick(ts=0.0, bid=bid, ask=ask, last=last or bid, last_qty=last_qty)


def _fills(events: list[Event]) -> list[dict[str, Any]]:
    return [e.fields for e in events if e.kind == "order.filled"]


def test_latency_moves_the_fill_to_the_later_market() -> None:
    account = _account(latency_ms=150.0, slippage_bps=0.0)
    events = _run_broker(
        account,
        [
            (0.0, _tick(100.0, 100.1)),
            (1.0, _order("o1", "buy", 0.01)),
            (1.1, _tick(101.0, 101.1)),
            (1.2, _tick(102.0, 102.1)),
        ],
    )
    (fill,) = _fills(events)
    assert fill["requested_price"] == 100.0  # what the decision saw
    assert fill["fill_price"] == 101.1  # the market 150 ms later
    assert 150 <= fill["latency_ms"] < 160


def test_large_market_order_walks_the_book() -> None:
    account = _account(slippage_bps=0.0)
    book = Book(ts=0.0, bids=((99.9, 1.0),), asks=((100.0, 0.5), (100.5, 1.0), (101.0, 2.0)))
    events = _run_broker(account, [(0.0, _tick(99.9, 100.0)), (0.1, book), (1.0, _order("o1", "buy", 1.2))])
    assert [(f["qty"], f["fill_price"]) for f in _fills(events)] == [(0.5, 100.0), (0.7, 100.5)]
    assert abs(account.avg_price - (0.5 * 100 + 0.7 * 100.5) / 1.2) < 1e-9


def test_limit_touched_but_not_traded_through_does_not_fill() -> None:
    account = _account()
    limit = _order("o1", "buy", 0.01, order_type="limit", limit_price=99.5)
    events = _run_broker(
        account, [(0.0, _tick(99.9, 100.0)), (1.0, limit), (2.0, _tick(99.5, 99.6, last=99.5, last_qty=5.0))]
    )
    assert _fills(events) == []
    assert "o1" in account.working
    events = _run_broker(account, [(10.0, _tick(99.3, 99.4, last=99.4, last_qty=5.0))])
    (fill,) = _fills(events)
    assert (fill["fill_price"], fill["liquidity"]) == (99.5, "maker")


def test_partial_fills_bounded_by_traded_volume_and_consumed_once() -> None:
    account = _account()
    first = _order("o1", "buy", 1.0, order_type="limit", limit_price=99.5)
    second = _order("o2", "buy", 1.0, order_type="limit", limit_price=99.5)
    events = _run_broker(
        account,
        [
            (0.0, _tick(99.9, 100.0)),
            (1.0, first),
            (1.5, second),
            (2.0, _tick(99.3, 99.4, last=99.4, last_qty=0.3)),
            (3.0, _tick(99.3, 99.4, last=99.4, last_qty=0.5)),
        ],
    )
    fills = _fills(events)
    assert [(f["order_id"], f["qty"], f["partial"]) for f in fills] == [("o1", 0.3, True), ("o1", 0.5, True)]
    assert account.working["o1"].remaining == 0.2 and account.working["o2"].remaining == 1.0


def test_funding_is_charged_at_the_funding_instant_only() -> None:
    eight = datetime(2026, 11, 24, 8, 0, tzinfo=UTC).timestamp()
    account = _account()
    start = eight - 30 - W0  # script times are offsets from W0
    script: list[tuple[float, Scripted]] = [
        (start, Funding(ts=0.0, mark_price=100.0, rate_pct=0.01)),
        (start + 1, _tick(99.9, 100.0)),
        (start + 2, _order("o1", "buy", 1.0)),
        (start + 10, _tick(99.9, 100.0)),  # 07:59:40: nothing due yet
        # the mark before the instant: the freshest price, here the exchange's mark price again
        (start + 11, Funding(ts=0.0, mark_price=100.0, rate_pct=0.01)),
        (start + 40, _tick(99.9, 100.0)),  # 08:00:10: the 08:00 instant has passed
        (start + 60, _tick(99.9, 100.0)),  # no second charge
    ]
    events = _run_broker(account, script)
    funding = [e for e in events if e.kind == "funding"]
    assert len(funding) == 1
    # the 08:00 charge, booked live when the first quote after it comes (08:00:10): stamped then,
    # not at the instant, so that no record goes before what was written before it (found by an
    # audit: after a restart, a downtime's instant was written after the resume, hours earlier)
    assert funding[0].fields["instant"] == "2026-11-24T08:00:00Z"
    assert funding[0].ts == eight + 10
    assert abs(funding[0].fields["amount"] - 1.0 * 100.0 * 0.01 / 100) < 1e-12
    assert abs(account.funding_paid - 0.01) < 1e-12


def test_a_backtest_strategy_sees_the_funding_rate_last_settled_not_the_next() -> None:
    """What the funding gates read (`AccountSnapshot.funding_rate_pct`): in a backtest the
    schedule's rate settled at or before now, as a live session's `price` channel says it (found
    by an audit: the next instant's rate, not known until then, blocked an entry at 00:50)."""
    from actors.feeds.funding import FundingRates

    midnight = datetime(2026, 11, 24, tzinfo=UTC).timestamp()
    schedule = FundingRates([midnight * 1000, (midnight + 8 * 3600) * 1000], [0.01, 0.1], "file:f.csv")
    account = PaperBroker(attrs.evolve(BrokerConfig(), latency_ms=0.0), random.Random(1), funding=schedule)
    seen = {h: account.snapshot(midnight + h * 3600).funding_rate_pct for h in (0, 0.8, 7.99, 8, 9)}
    assert seen == {0: 0.01, 0.8: 0.01, 7.99: 0.01, 8: 0.1, 9: 0.1}


def test_live_funding_waits_for_the_rate_its_instant_settles() -> None:
    """Bitunix's `fr` is the rate last settled (`ft` its instant): the rate the 08:00 instant
    charges comes with the first price frame after 08:00. The charge is that rate, on the position
    and at the mark of 08:00 (not the 00:00 rate the account knew then, nor the position of when
    the rate came), and each instant is charged once; a checkpoint keeps one waiting."""
    midnight = datetime(2026, 11, 24, 0, 0, tzinfo=UTC).timestamp()
    eight = midnight + 8 * 3600
    account = _account()

    def at(offset: float) -> float:  # script times are offsets from W0
        return eight + offset - W0

    script: list[tuple[float, Scripted]] = [
        (at(-30), Funding(ts=0.0, mark_price=100.0, rate_pct=0.01, settled_ts=midnight)),
        (at(-29), _tick(99.9, 100.0)),
        (at(-28), _order("o1", "buy", 1.0)),  # long 1 from 07:59:32
        (at(-1), Funding(ts=0.0, mark_price=101.0, rate_pct=0.01, settled_ts=midnight)),  # mark 101
        (at(0.4), _tick(101.9, 102.0)),  # the 08:00 instant has passed: its rate is not known yet
        (at(0.5), _order("o2", "sell", 0.4)),  # the position is 0.6 when the rate comes
    ]
    events = _run_broker(account, script)
    assert not [e for e in events if e.kind == "funding"] and len(account.funding_pending) == 1
    restored = _account()
    restored.restore(json.loads(json.dumps(account.state())))
    assert restored.funding_pending == account.funding_pending
    # the first frame after the settlement: 08:00's own rate, -0.02 %
    came = restored.on_market(
        Funding(ts=eight + 0.8, mark_price=102.0, rate_pct=-0.02, settled_ts=eight), eight + 0.8
    )
    (funding,) = [e for e in came if e.kind == "funding"]
    assert funding.ts == eight + 0.8
    assert funding.fields["instant"] == "2026-11-24T08:00:00Z"
    assert funding.fields["rate_settled_at"] == "2026-11-24T08:00:00Z"
    assert (funding.fields["rate_pct"], funding.fields["mark_price"], funding.fields["position_qty"]) == (
        -0.02,
        101.0,
        1.0,
    )
    assert funding.fields["amount"] == pytest.approx(1.0 * 101.0 * -0.02 / 100)  # a long receives
    assert restored.funding_paid == pytest.approx(-0.0202) and not restored.funding_pending
    again = restored.on_market(
        Funding(ts=eight + 2, mark_price=102.0, rate_pct=-0.02, settled_ts=eight), eight + 2
    )
    assert not [e for e in again if e.kind == "funding"]  # charged once


@pytest.mark.parametrize(("held", "then", "paid"), [(0.0, "buy", 0.0), (1.0, "sell", 0.01)])
def test_live_funding_is_on_the_position_open_at_the_instant_not_at_the_next_quote(
    held: float, then: Side, paid: float
) -> None:
    """Found by an audit: an order reaching the market 0.1 s after 16:00, before the next quote,
    changed the position the 16:00 funding was charged on (a long bought then paid it, a long sold
    then escaped it)."""
    sixteen = datetime(2026, 11, 24, 16, 0, tzinfo=UTC).timestamp()
    account = _account()
    account.on_market(Funding(ts=sixteen - 5, mark_price=100.0, rate_pct=0.01), sixteen - 5)
    account.on_market(Tick(ts=sixteen - 5, bid=100.0, ask=100.0, last=100.0, last_qty=0.0), sixteen - 5)
    if held:
        account.on_arrival(_order("pre", "buy", held, sixteen - 4), sixteen - 4)
    events = account.on_arrival(_order("o", then, 1.0, sixteen + 0.1), sixteen + 0.1)
    events += account.on_market(
        Tick(ts=sixteen + 1, bid=100.0, ask=100.0, last=100.0, last_qty=0.0), sixteen + 1
    )
    funding = [e.fields for e in events if e.kind == "funding"]
    assert [f["position_qty"] for f in funding] == ([held] if held else [])
    assert account.funding_paid == pytest.approx(paid)  # 1 x 100 x 0.01 %


def test_a_funding_instant_whose_rate_never_came_is_charged_at_the_last_rate_at_the_end() -> None:
    midnight = datetime(2026, 11, 24, 0, 0, tzinfo=UTC).timestamp()
    eight = midnight + 8 * 3600
    account = _account()
    script: list[tuple[float, Scripted]] = [
        (eight - 30 - W0, Funding(ts=0.0, mark_price=100.0, rate_pct=0.01, settled_ts=midnight)),
        (eight - 29 - W0, _tick(99.9, 100.0)),
        (eight - 28 - W0, _order("o1", "sell", 2.0)),
        (eight + 1 - W0, _tick(99.9, 100.0)),
    ]
    assert not [e for e in _run_broker(account, script) if e.kind == "funding"]
    (funding,) = account.settle_funding(eight + 2)
    assert funding.fields["rate_pct"] == 0.01 and funding.fields["rate_settled_at"] == "2026-11-24T00:00:00Z"
    assert funding.fields["mark_price"] == 99.95  # the freshest price before 08:00: the quote's mid
    assert funding.fields["amount"] == pytest.approx(-2.0 * 99.95 * 0.01 / 100)  # a short receives
    assert account.settle_funding(eight + 3) == []


def test_the_mark_follows_the_freshest_price_of_any_source() -> None:
    """Issue 15: during a REST failover the REST-polled quotes move, fills happen at them, and the
    mark (the heartbeats' `price`, equity, unrealized PnL) follows them, not the last WebSocket
    price; `mark_source` says where each came from. The expectations are worked out here from the
    script's prices and the fills' events alone."""
    config = attrs.evolve(BrokerConfig(), latency_ms=0.0, latency_jitter_ms=0.0, slippage_bps=0.0)
    account = PaperBroker(config, random.Random(1), heartbeat_s=1.0, started_ts=W0)
    ws = dict(source="ws")
    rest = dict(source="rest")
    script: list[tuple[float, Scripted]] = [
        (0.2, Tick(0.0, 99.9, 100.0, 100.0, 2.0, 2.0, **ws)),
        (0.4, _order("o1", "buy", 1.0)),  # a long at 100.0
        (0.6, Funding(ts=0.0, mark_price=100.3, rate_pct=0.01, **ws)),  # the exchange's mark, last
        (1.3, Tick(0.0, 100.1, 100.2, 100.1, 2.0, 2.0, **ws)),
        (1.5, Funding(ts=0.0, mark_price=100.4, rate_pct=0.01, **ws)),  # the last WebSocket price
        # the socket is down: REST polling, one book a second, prices moving
        (3.5, Tick(0.0, 101.0, 101.2, 101.0, 2.0, 2.0, **rest)),
        (4.5, Tick(0.0, 102.0, 102.1, 102.0, 2.0, 2.0, **rest)),
        (5.5, Tick(0.0, 99.0, 99.4, 99.0, 2.0, 2.0, **rest)),
        (5.7, _order("o2", "sell", 0.4)),  # fills at the REST bid
        (6.5, Tick(0.0, 98.5, 98.6, 98.5, 2.0, 2.0, **rest)),
        (7.5, Tick(0.0, 103.0, 103.3, 103.0, 2.0, 2.0, **rest)),
        # the socket is back
        (8.5, Tick(0.0, 103.5, 103.6, 103.5, 2.0, 2.0, **ws)),
        (9.2, Funding(ts=0.0, mark_price=103.4, rate_pct=0.01, **ws)),
        (10.5, Tick(0.0, 104.0, 104.2, 104.0, 2.0, 2.0, **ws)),
    ]
    events = drive(account, [(W0 + at, item) for at, item in script], tail_s=1.0)

    # what each heartbeat must say: the last price given before it and its source; the account
    # from the fills' events
    heartbeats = [e for e in events if e.kind == "heartbeat"]
    assert [round(h.ts - W0) for h in heartbeats] == list(range(1, 12))
    fills = [e.fields for e in events if e.kind == "order.filled"]
    assert [(f["order_id"], f["fill_price"]) for f in fills] == [("o1", 100.0), ("o2", 99.0)]
    for beat in heartbeats:
        last = [item for at, item in script if W0 + at < beat.ts and not isinstance(item, Order)][-1]
        price = last.mark_price if isinstance(last, Funding) else (last.bid + last.ask) / 2
        assert (beat.fields["price"], beat.fields["mark_source"]) == (pytest.approx(price), last.source), beat
        pos = avg = realized = fees = 0.0
        for f in (e.fields for e in events if e.kind == "order.filled" and e.ts < beat.ts):
            signed = f["qty"] if f["side"] == "buy" else -f["qty"]
            if pos and (pos > 0) != (signed > 0):
                realized += (f["fill_price"] - avg) * min(abs(pos), abs(signed)) * (1 if pos > 0 else -1)
            else:
                avg = (avg * abs(pos) + f["fill_price"] * abs(signed)) / abs(pos + signed)
            pos += signed
            fees += f["fee"]
        unrealized = (price - avg) * pos
        assert beat.fields["position_qty"] == pytest.approx(pos)
        assert beat.fields["unrealized_pnl"] == pytest.approx(unrealized, abs=1e-6), beat
        expected_equity = config.starting_equity + realized - fees + unrealized
        assert beat.fields["equity"] == pytest.approx(expected_equity, abs=1e-6), beat
    by_second = {round(h.ts - W0): h.fields for h in heartbeats}
    assert [by_second[s]["mark_source"] for s in range(1, 12)] == ["ws"] * 3 + ["rest"] * 5 + ["ws"] * 3
    # not frozen at the last WebSocket price while REST polling ran: every REST quote moved it
    failover = [by_second[s]["price"] for s in range(4, 9)]
    assert failover == pytest.approx([101.1, 102.05, 99.2, 98.55, 103.15])
    # a checkpoint keeps where the mark came from
    restored = PaperBroker(config, random.Random(1))
    restored.restore(json.loads(json.dumps(account.state())))
    assert (restored.mark_price, restored.mark_source) == (account.mark_price, "ws")


def test_liquidation_when_the_mark_crosses() -> None:
    account = _account(leverage=10.0, slippage_bps=0.0)
    events = _run_broker(
        account,
        [
            (0.0, _tick(99.9, 100.0)),
            (1.0, _order("o1", "buy", 0.5)),
            (2.0, _tick(95.0, 95.1)),
            (3.0, _tick(90.0, 90.1)),
        ],
    )
    liq = [e for e in events if e.kind == "liquidation"]
    assert len(liq) == 1
    assert abs(liq[0].fields["liquidation_price"] - 100.0 * (1 - 0.1 + 0.005)) < 1e-9
    closed = [e for e in events if e.kind == "position.closed"]
    assert closed and closed[-1].fields["exit_reason"] == "liquidation"
    assert account.position_qty == 0.0
    assert _fills(events)[-1]["fee"] > 0


def test_stop_market_triggers_on_last_and_cancel_works() -> None:
    account = _account(slippage_bps=0.0)
    stop = _order("o1", "sell", 0.01, order_type="stop_market", trigger_price=99.0)
    resting = _order("o2", "buy", 0.01, order_type="limit", limit_price=90.0)
    events = _run_broker(
        account,
        [
            (0.0, _tick(99.9, 100.0)),
            (1.0, stop),
            (1.1, resting),
            (2.0, Cancel("o2", 0.0, "test")),
            (3.0, _tick(98.9, 99.0, last=98.9)),
        ],
    )
    (fill,) = _fills(events)
    assert (fill["order_id"], fill["fill_price"]) == ("o1", 98.9)
    assert any(e.kind == "order.cancelled" and e.fields["order_id"] == "o2" for e in events)


def test_post_only_limit_that_would_take_is_rejected() -> None:
    account = _account()
    order = _order("o1", "buy", 0.01, order_type="limit", limit_price=100.5, post_only=True)
    events = _run_broker(account, [(0.0, _tick(99.9, 100.0)), (1.0, order)])
    assert [e.fields["reason"] for e in events if e.kind == "order.rejected"] == ["post_only_would_take"]


# --- orders in flight ----------------------------------------------------------------------------


def test_orders_in_flight_reach_the_market_in_the_order_sent() -> None:
    """One connection: with jitter larger than the gap between sends, a later order never
    overtakes an earlier one."""
    account = _account(latency_ms=100.0, latency_jitter_ms=500.0, slippage_bps=0.0)
    script: list[tuple[float, Scripted]] = [(0.0, _tick(99.9, 100.0))]
    script += [(0.01 * n, _order(f"o{n}", "buy", 0.001)) for n in range(1, 21)]
    events = _run_broker(account, script)
    fills = [e for e in events if e.kind == "order.filled"]
    assert [e.fields["order_id"] for e in fills] == [f"o{n}" for n in range(1, 21)]
    arrivals = [e.ts for e in fills]
    assert arrivals == sorted(arrivals)
    assert all(e.fields["latency_ms"] >= 100 for e in fills)
    assert len({e.ts for e in fills}) > 1  # the jitter did draw different latencies


def test_an_order_beyond_max_in_flight_is_refused_and_counted() -> None:
    account = _account(latency_ms=1000.0, slippage_bps=0.0)
    script: list[tuple[float, Scripted]] = [(0.0, _tick(99.9, 100.0))]
    script += [(1.0, _order(f"o{n}", "buy", 0.001)) for n in range(MAX_IN_FLIGHT + 1)]
    script.append((1.0, Cancel("o0", 0.0, "test")))
    events = _run_broker(account, script)
    refused = [e.fields for e in events if e.kind == "order.rejected"]
    assert [(r["order_id"], r["reason"]) for r in refused] == [(f"o{MAX_IN_FLIGHT}", "in_flight_limit")]
    assert [e.fields for e in events if e.kind == "order.cancel_rejected"] == [
        {"order_id": "o0", "reason": "in_flight_limit"}
    ]
    assert len(_fills(events)) == MAX_IN_FLIGHT  # the others all reached the market
    assert account.position_qty == pytest.approx(MAX_IN_FLIGHT * 0.001)
    # the refused order is processed too: the risk gate would not count it as pending forever
    assert account.processed_signed_qty == pytest.approx((MAX_IN_FLIGHT + 1) * 0.001)


def test_orders_in_flight_are_kept_by_a_checkpoint_and_refused_on_resume() -> None:
    account = _account(latency_ms=500.0)
    _run_broker(account, [(0.0, _tick(99.9, 100.0))])
    account.handle(_order("o1", "buy", 0.01, ts=W0 + 10), W0 + 10)
    saved = account.state()
    resumed = _account(latency_ms=500.0)
    resumed.restore(saved)
    assert resumed.next_timer() == W0 + 10.5
    events = resumed.abandon_in_flight(W0 + 60)
    assert [(e.fields["order_id"], e.fields["reason"]) for e in events if e.kind == "order.rejected"] == [
        ("o1", "lost_at_restart")
    ]
    assert resumed.next_timer() == math.inf and resumed.position_qty == 0.0
    assert resumed.processed_signed_qty == 0.01


@pytest.mark.parametrize("when", ["before_the_first_watch", "after_a_breaker_reset"])
def test_state_is_json_for_a_checkpoint(when: str) -> None:
    account = _account()
    if when == "after_a_breaker_reset":
        _run_broker(account, [(0.0, _tick(99.9, 100.0))])
        account.handle(RiskWatch(W0, 9800.0, W0 + 86400), W0)
        account.handle(HaltEntries(W0 + 1, W0 + 60, "max_consecutive_losses"), W0 + 1)
        account.handle(HaltEntries(W0 + 60, -math.inf, "breaker_reset"), W0 + 60)
    else:
        account.on_market(FeedStatus(W0, stale=True, reason="no data yet"), W0)
    state = json.loads(json.dumps(account.state(), allow_nan=False))
    restored = _account()
    restored.restore(state)
    assert restored.state() == account.state()


# --- the risk gate's commands -------------------------------------------------------------------


def test_halt_entries_refuses_entries_until_then_lets_them_through() -> None:
    account = _account(slippage_bps=0.0)
    _run_broker(account, [(0.0, _tick(99.9, 100.0)), (1.0, _order("o1", "buy", 0.5))])
    assert account.position_qty == 0.5
    account.handle(HaltEntries(W0 + 10, W0 + 100, "max_consecutive_losses"), W0 + 10)
    events = _run_broker(
        account,
        [
            (20.0, _order("o2", "buy", 0.1)),  # an entry: refused
            (21.0, _order("o3", "sell", 0.2, reduce_only=True)),  # an exit: goes through
            (100.0, _order("o4", "buy", 0.1)),  # at the end of the halt: goes through
        ],
    )
    assert [(r["order_id"], r["reason"]) for r in _kinds(events, "order.rejected")] == [
        ("o2", "breaker_halt")
    ]
    assert [(f["order_id"], f["qty"]) for f in _fills(events)] == [("o3", 0.2), ("o4", 0.1)]
    account.handle(HaltEntries(W0 + 200, -math.inf, "breaker_reset"), W0 + 200)
    assert _fills(_run_broker(account, [(201.0, _order("o5", "buy", 0.1))])) != []


@pytest.mark.parametrize("command", ["halt", "stop"])
def test_an_entry_waiting_for_its_next_quote_is_held_by_a_halt_or_stop_that_came_meanwhile(
    command: str,
) -> None:
    """Found by a review: in a backtest filling at the next open, an entry parked until its next
    quote (the symbol's data had a gap) filled during the breaker's halt that tripped meanwhile.
    Refused at its quote, as it would have been on arrival; an exit parked beside it still goes."""
    config = attrs.evolve(BrokerConfig(), latency_ms=0.0, latency_jitter_ms=0.0, slippage_bps=0.0)
    account = PaperBroker(config, random.Random(1), bars=True, defer_to_next_quote=True)
    account.on_market(Tick(ts=W0, bid=100.0, ask=100.0, last=100.0, last_qty=0.0), W0)
    account.on_arrival(_order("o1", "buy", 0.5, W0), W0)
    assert account.position_qty == 0.5
    # decided on a later close than the last quote: both wait for the next quote
    account.on_arrival(_order("entry", "buy", 0.1, W0 + 60), W0 + 60)
    account.on_arrival(_order("exit", "sell", 0.2, W0 + 60, reduce_only=True), W0 + 60)
    assert [o.id for o in account.awaiting_quote] == ["entry", "exit"]
    if command == "halt":
        account.handle(HaltEntries(W0 + 70, W0 + 86_400, "max_daily_drawdown"), W0 + 70)
    else:
        account.handle(StopSession(W0 + 70, "max_loss", "session loss"), W0 + 70)
    events = account.on_market(Tick(ts=W0 + 120, bid=100.0, ask=100.0, last=100.0, last_qty=0.0), W0 + 120)
    reason = "breaker_halt" if command == "halt" else "session_stopping"
    assert [(r["order_id"], r["reason"]) for r in _kinds(events, "order.rejected")] == [("entry", reason)]
    assert [(f["order_id"], f["qty"]) for f in _fills(events)] == [("exit", 0.2)]
    assert account.position_qty == pytest.approx(0.3)


def test_stop_session_refuses_every_entry_but_not_exits() -> None:
    account = _account(slippage_bps=0.0)
    _run_broker(account, [(0.0, _tick(99.9, 100.0)), (1.0, _order("o1", "buy", 0.5))])
    account.handle(_order("o2", "buy", 0.1, ts=W0 + 2), W0 + 2)  # in flight when the stop comes
    account.handle(StopSession(W0 + 2, "max_loss"), W0 + 2)
    events = _run_broker(account, [(3.0, _order("o3", "sell", 0.5, reduce_only=True))])
    assert [(r["order_id"], r["reason"]) for r in _kinds(events, "order.rejected")] == [
        ("o2", "session_stopping")
    ]
    assert [f["order_id"] for f in _fills(events)] == ["o3"]
    assert account.position_qty == 0.0 and account.stopping


def test_stop_session_cancels_a_resting_entry_so_that_no_quote_fills_it_but_keeps_exits() -> None:
    """Found by an audit: a resting limit entry filled while a resumed session, past its end,
    waited for the next quote to flatten at (entries were refused only on their way in)."""
    account = _account(slippage_bps=0.0)
    entry = _order("o1", "buy", 0.5, stop_price=90.0, target_price=110.0)
    rest = _order("o2", "buy", 0.1, order_type="limit", limit_price=99.5, stop_price=95.0, target_price=105.0)
    _run_broker(account, [(0.0, _tick(99.9, 100.0)), (1.0, entry), (2.0, rest)])
    assert set(account.working) - {"o2"} and "o2" in account.working  # o1's stop and target, and o2
    events = account.handle(StopSession(W0 + 3, "max_loss"), W0 + 3)
    assert [(c["order_id"], c["reason"]) for c in _kinds(events, "order.cancelled")] == [
        ("o2", "session_stopping")
    ]
    events = _run_broker(account, [(4.0, _tick(99.3, 99.4, last=99.4, last_qty=5.0))])
    assert _fills(events) == [] and "o2" not in account.working
    assert len(account.working) == 2 and account.position_qty == 0.5  # o1's stop and target stay


def test_a_live_broker_keeps_the_last_candle_it_was_handed_for_a_resumes_feed() -> None:
    """History included (the strategies take it too); a checkpoint keeps it, and the resumed
    session's feed hands out only the candles after it (tests/test_feed_bitunix.py)."""
    account = _account()
    for k, backfill in ((0, True), (1, True), (2, False)):
        candle = Candle(W0 + 60 * k, 60.0, 100.0, 101.0, 99.0, 100.5, 1.0, backfill=backfill)
        account.handle(candle, W0 + 60 * (k + 1))
        assert account.candle_open_ts == W0 + 60 * k
    resumed = _account()
    resumed.restore(json.loads(json.dumps(account.state())))
    assert resumed.candle_open_ts == W0 + 120


def test_flatten_cancels_working_orders_and_closes_the_position_with_its_reason() -> None:
    account = _account(slippage_bps=0.0)
    entry = _order("o1", "buy", 0.5, stop_price=90.0, target_price=110.0)
    _run_broker(account, [(0.0, _tick(99.9, 100.0)), (1.0, entry)])
    assert account.position_qty == 0.5 and len(account.working) == 2  # the stop and the target
    events = account.handle(Flatten(W0 + 10, "breaker", "breaker-1"), W0 + 10)
    assert {c["reason"] for c in _kinds(events, "order.cancelled")} == {"breaker"}
    assert [(f["order_id"], f["reason"], f["fill_price"]) for f in _fills(events)] == [
        ("breaker-1", "breaker", 99.9)
    ]
    assert [c["exit_reason"] for c in _kinds(events, "position.closed")] == ["breaker"]
    assert account.position_qty == 0.0 and account.working == {}
    assert account.handle(Flatten(W0 + 11, "breaker", "breaker-2"), W0 + 11) == []  # flat: nothing to do


def test_account_updates_follow_the_risk_watch() -> None:
    account = _account(slippage_bps=0.0, leverage=10.0)
    # before the gate has said what to watch, every mark is reported
    _run_broker(account, [(0.0, _tick(99.9, 100.0))])
    first = account.account_update(W0)
    assert first is not None and first.closed == () and first.account.equity == 10000.0
    assert account.account_update(W0) is None  # once
    account.handle(RiskWatch(W0, 9990.0, W0 + 3600), W0)
    _run_broker(account, [(1.0, _order("o1", "buy", 10.0)), (2.0, _tick(99.4, 99.5))])
    assert account.account_update(W0 + 2) is None  # above the floor, before check_at
    _run_broker(account, [(3.0, _tick(98.8, 98.9))])  # ~12 USDT down: at or below the floor
    update = account.account_update(W0 + 3)
    assert update is not None and update.account.equity <= 9990.0 and update.closed == ()
    _run_broker(account, [(3600.0, _tick(99.4, 99.5))])  # check_at reached
    assert account.account_update(W0 + 3600) is not None
    # a closed trade is always reported, with its net result
    _run_broker(account, [(3601.0, _order("o2", "sell", 10.0, reduce_only=True))])
    update = account.account_update(W0 + 3601)
    assert update is not None
    (closed,) = update.closed
    net = account.realized_pnl - account.fees_paid
    assert (closed.symbol, closed.net_pnl) == ("BTCUSDT", net) and net < 0


def _kinds(events: list[Event], kind: str) -> list[dict[str, Any]]:
    return [e.fields for e in events if e.kind == kind]


@settings(max_examples=300, deadline=None)
@given(
    started=st.floats(1.5e9, 2.5e9),
    period=st.one_of(st.sampled_from([0.3, 0.6, 0.7, 0.9, 1.1, 2.5, 60.0]), st.floats(0.001, 3600.0)),
    k=st.integers(0, 20_000),
)
def test_the_next_heartbeat_is_always_after_now(started: float, period: float, k: int) -> None:
    """From a heartbeat's own due time, the next is the next period, strictly later (found by an
    audit: with a period such as 0.7 s the division rounded a period short, the broker's timer
    came back at the same instant forever and a live session hung, deaf to its duration, the
    kill switch and SIGINT)."""
    from actors.broker.paper import next_heartbeat

    now = started + period * k  # as the broker computes its due times
    nxt = next_heartbeat(started, period, now, math.inf)
    assert now < nxt <= now + period * (1 + 1e-6) + 1e-6
    assert next_heartbeat(started, period, now, nxt) == math.inf  # none at or past the end


def test_a_heartbeat_period_of_0_7_s_moves_on() -> None:
    """The audit's case: 1796225473.9200544 + 3 x 0.7 came back as itself."""
    from actors.broker.paper import next_heartbeat

    started, due = 1796225473.9200544, 1796225476.0200543
    seen = [due]
    for _ in range(100):
        seen.append(next_heartbeat(started, 0.7, seen[-1], math.inf))
    assert all(b - a == pytest.approx(0.7, abs=1e-6) for a, b in itertools.pairwise(seen))


def test_a_live_flatten_says_how_old_its_quote_is_and_a_stale_one_alerts() -> None:
    """Found by an audit: a session restarted past its planned end closed its position at the
    quote of before the crash, 68 s old, with nothing saying so."""
    from actors.config import AlertsConfig
    from actors.recording.alerts import AlertRules

    account = _account()
    account.on_market(Tick(ts=W0, bid=100.0, ask=100.1, last=100.0, last_qty=0.0), W0)
    account.on_arrival(_order("o1", "buy", 1.0, W0), W0)
    fresh = [e for e in account.flatten(W0 + 2, "flatten_on_exit", "f1") if e.kind == "order.submitted"]
    assert fresh[0].fields["quote_age_s"] == 2.0
    account.on_arrival(_order("o2", "buy", 1.0, W0 + 2), W0 + 2)
    (stale,) = [e for e in account.flatten(W0 + 68, "flatten_on_exit", "f2") if e.kind == "order.submitted"]
    assert stale.fields["quote_age_s"] == 68.0
    rules = AlertRules(AlertsConfig())
    assert rules.on_event("order.submitted", W0 + 2, fresh[0].fields) == []
    (alert,) = rules.on_event("order.submitted", W0 + 68, stale.fields)
    assert (alert.rule, alert.severity) == ("stale_flatten", "critical") and "68.0 s old" in alert.message


def test_a_breakers_flatten_with_the_net_flat_crosses_the_strategies_at_the_mark() -> None:
    """Found by audits: strategies b (short) and c (long) net to 0. The breaker's flatten first
    cancelled both brackets and traded nothing (b's next exit left c long with no stop); then it
    kept them, and one of them filling reopened the account's exposure while entries were halted.
    Now nothing trades and nothing is left: each strategy's position is closed against the
    other's at the mark, no fee, and their realized PnL is the account's."""
    account = _account(slippage_bps=0.0)
    account.on_market(Tick(ts=W0, bid=100.0, ask=100.1, last=100.0, last_qty=0.0), W0)
    account.on_arrival(
        _order("b1", "sell", 0.01, W0, strategy_id="b", stop_price=102.0, target_price=98.0), W0
    )
    account.on_arrival(
        _order("c1", "buy", 0.01, W0, strategy_id="c", stop_price=98.0, target_price=102.0), W0
    )
    assert abs(account.position_qty) < 1e-12
    # b sold 0.01 at the bid 100.0, c bought it back at the ask 100.1: the account booked -0.001
    assert account.realized_pnl == pytest.approx(-0.001)
    fees = account.fees_paid
    brackets = {oid for oid, w in account.working.items() if w.order.protective}
    assert len(brackets) == 4
    events = account.flatten(W0 + 1, "max_consecutive_losses", "flatten-1")
    assert {e.fields["order_id"] for e in events if e.kind == "order.cancelled"} == brackets
    assert not account.working and not [e for e in events if e.kind == "order.filled"]
    (cross,) = [e for e in events if e.kind == "position.crossed"]
    # at the mark, the mid 100.05: b's short of 100.0 loses 0.0005, c's long of 100.1 loses 0.0005
    assert cross.fields["price"] == pytest.approx(100.05)
    assert cross.fields["reason"] == "max_consecutive_losses"
    assert sorted(cross.fields["allocations"]) == [
        ["b", pytest.approx(0.01), pytest.approx(-0.0005), 0.0],
        ["c", pytest.approx(-0.01), pytest.approx(-0.0005), 0.0],
    ]
    assert account.virtual["b"].qty == account.virtual["c"].qty == 0.0
    assert (account.realized_pnl, account.fees_paid) == (pytest.approx(-0.001), fees)  # no trade
    assert sorted(t.strategy_id for t in account.closed) == ["b", "c"]  # each one's trade ended
    # the market runs through both brackets' prices: nothing fills, the account stays flat
    for k, price in enumerate((103.0, 97.0)):
        ts = W0 + 2 + k
        moved = account.on_market(Tick(ts=ts, bid=price, ask=price, last=price, last_qty=1.0), ts)
        assert not [e for e in moved if e.kind == "order.filled"]
    assert account.position_qty == 0.0
    assert account.flatten(W0 + 5, "flatten_on_exit", "flatten-2") == []  # nothing left to do


def test_opposite_virtual_positions_netting_to_zero_each_pay_their_funding() -> None:
    """Found by an audit: at a net of exactly 0 the strategies were charged nothing, beside it
    their full amounts: each now pays its own virtual position's funding; the account, on its
    net, nothing."""
    account = _account()
    account.on_market(Tick(ts=W0, bid=100.0, ask=100.0, last=100.0, last_qty=0.0), W0)
    account.on_market(Funding(ts=W0, mark_price=100.0, rate_pct=0.05), W0)
    account.on_arrival(_order("b1", "sell", 1.0, W0, strategy_id="b"), W0)
    account.on_arrival(_order("c1", "buy", 1.0, W0, strategy_id="c"), W0)
    assert abs(account.position_qty) < 1e-12
    before = {sid: account.virtual[sid].trade_net for sid in ("b", "c")}
    later = W0 + 8 * 3600
    (funding,) = [
        e
        for e in account.on_market(Tick(ts=later, bid=100.0, ask=100.0, last=100.0, last_qty=0.0), later)
        if e.kind == "funding"
    ]
    assert funding.fields["amount"] == 0.0 and account.funding_paid == 0.0
    assert sorted(funding.fields["allocations"]) == [["b", pytest.approx(-0.05)], ["c", pytest.approx(0.05)]]
    # and in the round trip it is paid in, as the report's strategies table counts it (the gate's
    # max_losses and loss streak count those trades: found by an audit, a loss before funding
    # that funding made a win stopped a session on max_losses)
    assert account.virtual["b"].trade_net - before["b"] == pytest.approx(0.05)
    assert account.virtual["c"].trade_net - before["c"] == pytest.approx(-0.05)


def test_a_strategys_position_says_how_many_it_has_opened() -> None:
    """`Position.opened` (found by an audit: trend_pullback could not tell a position closed and
    opened again the same way between two closes from the one it held): one more at each
    position opened from flat or by a flip; a fill that adds to or reduces one is the same."""
    account = _account()
    account.on_market(Tick(ts=W0, bid=100.0, ask=100.0, last=100.0, last_qty=0.0), W0)

    def opened() -> int:
        return account.snapshot(W0).position("BTCUSDT", "s").opened

    assert opened() == 0
    steps = [
        ("buy", 0.4, 1),  # long 0.4: the first
        ("buy", 0.2, 1),  # 0.6: added to
        ("sell", 0.1, 1),  # 0.5: reduced
        ("sell", 0.5, 1),  # flat
        ("buy", 0.3, 2),  # long 0.3 again, the same way: the second
        ("sell", 0.5, 3),  # flipped short 0.2: the third
        ("buy", 0.2, 3),  # flat
        ("buy", 0.2, 4),  # long 0.2: the fourth
    ]
    for n, (side, qty, want) in enumerate(steps):
        account.on_arrival(_order(f"o{n}", side, qty, W0, strategy_id="s"), W0)  # type: ignore[arg-type]
        assert opened() == want, (n, side, qty)
    assert account.snapshot(W0).position("BTCUSDT", "").opened == 0  # the net position's: none kept


def test_an_open_positions_liquidation_price_is_on_the_grid_toward_it() -> None:
    """Found by a review: the liquidation price in `open_positions` (session.stopped) was rounded
    to 0.1 whatever the symbol: SOLUSDT's 128.849375 (tick 0.001) said 128.8, further away than
    it is. On the grid, toward the position: 128.850."""
    config = attrs.evolve(
        BrokerConfig(), latency_ms=0.0, latency_jitter_ms=0.0, slippage_bps=0.0, leverage=10.0
    )
    broker = PaperBroker(config, random.Random(1), symbol="SOLUSDT")
    broker.on_market(Tick(ts=W0, bid=142.375, ask=142.375, last=142.375, last_qty=0.0, symbol="SOLUSDT"), W0)
    broker.on_arrival(_order("o1", "buy", 1.0, W0, symbol="SOLUSDT"), W0)
    (position,) = broker.open_positions()
    assert broker.avg_price == 142.375
    # 142.375 x (1 - 1/10 + 0.005): the maintenance margin of the first tier, 0.5 %
    assert broker.liq_price == pytest.approx(142.375 * 0.905)
    assert position["liquidation_price"] == 128.85


def test_a_resting_limit_fills_on_a_trade_after_it_not_on_an_old_print_the_quotes_repeat() -> None:
    """Found by an audit: the exchange's quotes repeat the last trade's price on every book push;
    a buy limit at 59995, resting with the book at 60002/60002.1 after a print at 59990, was filled
    by that old print on the next book quote. Only a trade quote (`last_qty` > 0: what traded since
    the last kline push) fills it, up to what traded; the mock's quotes (each a trade) as before."""

    def quote(
        ts: float, bid: float, ask: float, last: float, traded: float = 0.0, source: str = "ws"
    ) -> Tick:
        return Tick(W0 + ts, bid, ask, last, 1.0, 1.0, traded, "BTCUSDT", source)

    broker = _account()
    broker.on_market(quote(0.0, 59989.9, 59990.0, 59990.0, traded=0.2), W0)  # the print at 59990
    broker.on_market(quote(0.5, 60002.0, 60002.1, 59990.0), W0 + 0.5)  # the book moved up
    limit = _order("o1", "buy", 0.3, W0 + 0.6, order_type="limit", limit_price=59995.0)
    arrived = broker.on_order(limit, W0 + 0.6) + broker.on_timer(broker.next_timer())
    assert [e.kind for e in arrived] == ["order.working"]  # below the ask: it rests
    assert broker.on_market(quote(1.0, 60002.0, 60002.1, 59990.0), W0 + 1.0) == []  # no trade since
    # a trade through it: it fills as a maker at its price, no more than traded (0.1 of 0.3)
    filled = broker.on_market(quote(1.5, 59993.0, 59993.1, 59993.0, traded=0.1), W0 + 1.5)
    fill = next(e for e in filled if e.kind == "order.filled")
    assert (fill.fields["fill_price"], fill.fields["qty"], fill.fields["liquidity"]) == (
        59995.0,
        0.1,
        "maker",
    )
    # the mock's quotes are each a trade of a size not given: the rest fills on one
    filled = broker.on_market(quote(2.0, 59993.0, 59993.1, 59993.0, source="mock"), W0 + 2.0)
    fill = next(e for e in filled if e.kind == "order.filled")
    assert (fill.fields["fill_price"], fill.fields["qty"]) == (59995.0, 0.2)
