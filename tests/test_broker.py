"""The paper broker: accounting invariants (hypothesis) and execution scenarios (autojump clock)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import attrs
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.broker.paper import PaperAccount, run_broker
from actors.clock import SessionClock
from actors.config import BrokerConfig
from protocols.messages import Book, Cancel, Event, Funding, MarketEvent, Order, Tick


def _account(**overrides: Any) -> PaperAccount:
    config = attrs.evolve(BrokerConfig(), **{"latency_ms": 0.0, "latency_jitter_ms": 0.0, **overrides})
    return PaperAccount(config, random.Random(1))


def _order(oid: str, side: str, qty: float, ts: float = 0.0, **kw: Any) -> Order:
    return Order(
        id=oid, ts=ts, side=side, qty=qty, decision_price=kw.pop("decision_price", 100.0), reason="test", **kw
    )  # type: ignore[arg-type]


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


async def _run_broker(
    account: PaperAccount, script: list[tuple[float, MarketEvent | Order | Cancel]]
) -> list[Event]:
    """Drive the real broker actor: each item is sent at its session time."""
    clock = SessionClock(wall_start=1_700_000_000.0)
    market_tx, market_rx = trio.open_memory_channel[MarketEvent](0)
    orders_tx, orders_rx = trio.open_memory_channel[Order | Cancel](0)
    events_tx, events_rx = trio.open_memory_channel[Event](1000)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_broker, account, market_rx, orders_rx, events_tx, clock)
        with market_tx, orders_tx:
            for at, item in script:
                await clock.sleep_until(clock.wall_start + at)
                if isinstance(item, Order | Cancel):
                    await orders_tx.send(attrs.evolve(item, ts=clock.now()))
                else:
                    await market_tx.send(attrs.evolve(item, ts=clock.now()))
            await trio.sleep(5)
    events: list[Event] = []
    while True:
        try:
            events.append(events_rx.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return events


def _tick(bid: float, ask: float, last: float | None = None, last_qty: float = 0.0) -> Tick:
    return Tick(ts=0.0, bid=bid, ask=ask, last=last or bid, last_qty=last_qty)


def _fills(events: list[Event]) -> list[dict[str, Any]]:
    return [e.fields for e in events if e.kind == "order.filled"]


async def test_latency_moves_the_fill_to_the_later_market(autojump_clock: trio.abc.Clock) -> None:
    account = _account(latency_ms=150.0, slippage_bps=0.0)
    events = await _run_broker(
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


async def test_large_market_order_walks_the_book(autojump_clock: trio.abc.Clock) -> None:
    account = _account(slippage_bps=0.0)
    book = Book(ts=0.0, bids=((99.9, 1.0),), asks=((100.0, 0.5), (100.5, 1.0), (101.0, 2.0)))
    events = await _run_broker(
        account, [(0.0, _tick(99.9, 100.0)), (0.1, book), (1.0, _order("o1", "buy", 1.2))]
    )
    assert [(f["qty"], f["fill_price"]) for f in _fills(events)] == [(0.5, 100.0), (0.7, 100.5)]
    assert abs(account.avg_price - (0.5 * 100 + 0.7 * 100.5) / 1.2) < 1e-9


async def test_limit_touched_but_not_traded_through_does_not_fill(autojump_clock: trio.abc.Clock) -> None:
    account = _account()
    limit = _order("o1", "buy", 0.01, order_type="limit", limit_price=99.5)
    events = await _run_broker(
        account, [(0.0, _tick(99.9, 100.0)), (1.0, limit), (2.0, _tick(99.5, 99.6, last=99.5, last_qty=5.0))]
    )
    assert _fills(events) == []
    assert "o1" in account.working
    events = await _run_broker(account, [(0.0, _tick(99.3, 99.4, last=99.4, last_qty=5.0))])
    (fill,) = _fills(events)
    assert (fill["fill_price"], fill["liquidity"]) == (99.5, "maker")


async def test_partial_fills_bounded_by_traded_volume_and_consumed_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    account = _account()
    first = _order("o1", "buy", 1.0, order_type="limit", limit_price=99.5)
    second = _order("o2", "buy", 1.0, order_type="limit", limit_price=99.5)
    events = await _run_broker(
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


async def test_funding_is_charged_at_the_funding_instant_only(autojump_clock: trio.abc.Clock) -> None:
    eight = datetime(2026, 11, 24, 8, 0, tzinfo=UTC).timestamp()
    account = _account()
    start = eight - 30 - 1_700_000_000.0  # script times are offsets from the clock's wall start
    script: list[tuple[float, MarketEvent | Order | Cancel]] = [
        (start, Funding(ts=0.0, mark_price=100.0, rate_pct=0.01)),
        (start + 1, _tick(99.9, 100.0)),
        (start + 2, _order("o1", "buy", 1.0)),
        (start + 10, _tick(99.9, 100.0)),  # 07:59:40: nothing due yet
        (start + 40, _tick(99.9, 100.0)),  # 08:00:10: the 08:00 instant has passed
        (start + 60, _tick(99.9, 100.0)),  # no second charge
    ]
    events = await _run_broker(account, script)
    funding = [e for e in events if e.kind == "funding"]
    assert len(funding) == 1
    assert funding[0].ts == eight
    assert abs(funding[0].fields["amount"] - 1.0 * 100.0 * 0.01 / 100) < 1e-12
    assert abs(account.funding_paid - 0.01) < 1e-12


async def test_liquidation_when_the_mark_crosses(autojump_clock: trio.abc.Clock) -> None:
    account = _account(leverage=10.0, slippage_bps=0.0)
    events = await _run_broker(
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


async def test_stop_market_triggers_on_last_and_cancel_works(autojump_clock: trio.abc.Clock) -> None:
    account = _account(slippage_bps=0.0)
    stop = _order("o1", "sell", 0.01, order_type="stop_market", trigger_price=99.0)
    resting = _order("o2", "buy", 0.01, order_type="limit", limit_price=90.0)
    events = await _run_broker(
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


async def test_post_only_limit_that_would_take_is_rejected(autojump_clock: trio.abc.Clock) -> None:
    account = _account()
    order = _order("o1", "buy", 0.01, order_type="limit", limit_price=100.5, post_only=True)
    events = await _run_broker(account, [(0.0, _tick(99.9, 100.0)), (1.0, order)])
    assert [e.fields["reason"] for e in events if e.kind == "order.rejected"] == ["post_only_would_take"]
