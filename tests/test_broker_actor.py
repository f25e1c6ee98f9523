"""The broker actor's order of steps when it runs late (actors/broker/actor.py).

Market events reach the broker stamped with their arrival time; an order in flight reaches the
market at a timer. A live session under load can wake the broker after the timer's due time
with an event stamped *before* it already waiting in the channel: that event is the market the
order meets, as a replay of the session (which steps exactly by the stamps) has it. Found by CI
(6 workers on 2 cores): a fill met an older quote than the session had, which the validator
caught against market.jsonl. Here the lateness is made by hand on trio's MockClock.
"""

from __future__ import annotations

import trio
import trio.testing

from actors.broker.actor import run_broker
from actors.broker.paper import PaperBroker
from actors.clock import SessionClock
from actors.config import BrokerConfig
from actors.mailbox import open_mailbox
from actors.recording.actor import EventSink
from protocols.messages import MarketView, Order, StopSession, Tick

T0 = 1_767_225_600.0


def quote(ts: float, bid: float) -> Tick:
    return Tick(ts, bid, bid + 0.1, bid, 1.0, 1.0, 0.0)


async def test_an_event_stamped_before_a_timer_due_meanwhile_is_stepped_first(
    mock_clock: trio.testing.MockClock,
) -> None:
    clock = SessionClock(wall_start=T0)
    broker = PaperBroker(BrokerConfig(latency_ms=100.0, latency_jitter_ms=0.0, slippage_bps=0.0))
    market_tx, market_rx = trio.open_memory_channel[tuple[float, Tick]](10)
    orders_tx, orders_rx = trio.open_memory_channel[Order](10)
    stop_tx, _stop_rx = trio.open_memory_channel[StopSession](1)
    asker, answerer = open_mailbox()
    sink = EventSink()
    held = trio.Event()  # the risk gate is answering the first quote's ask
    release = trio.Event()

    async def risk_gate() -> None:
        async for request in answerer.requests:
            if isinstance(request, MarketView) and not held.is_set():
                # the strategy's market buy on the first quote: it reaches the market at +100 ms
                orders_tx.send_nowait(Order("o1", request.event.ts, "buy", 0.01, request.event.ask, "entry"))
                held.set()
                await release.wait()
            await answerer.reply(None)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(risk_gate)
        nursery.start_soon(
            lambda: run_broker(broker, market_rx, asker, orders_rx, sink, clock, stop_tx, published=(Tick,))
        )
        mock_clock.jump(1.0)
        market_tx.send_nowait((T0 + 1.0, quote(T0 + 1.0, 100.0)))
        await held.wait()
        # while the broker is busy with that step: a new quote arrives 50 ms later, and the clock
        # runs past the order's arrival (+100 ms) before the broker is back at its channel
        mock_clock.jump(0.05)
        market_tx.send_nowait((T0 + 1.05, quote(T0 + 1.05, 101.0)))
        mock_clock.jump(0.15)
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()

    fills = [e for e in sink._queue if getattr(e, "kind", "") == "order.filled"]
    assert len(fills) == 1
    fill = fills[0].fields
    # the order met the quote stamped 50 ms before it reached the market, not the one before that
    assert (fill["bid"], fill["ask"], fill["latency_ms"]) == (101.0, 101.1, 100.0)
    assert fills[0].ts == T0 + 1.1


def test_a_book_is_the_quote_an_order_meets_until_its_tick_comes() -> None:
    """The feed sends each push's `Book`, then its best bid/ask `Tick`: an order reaching the
    market between the two walks the new book and records that book's touch beside its fills
    (found by CI under load: it recorded the last tick's, and its price looked better than it)."""
    from protocols.messages import Book
    from tests.helpers_components import drive

    broker = PaperBroker(BrokerConfig(latency_ms=100.0, latency_jitter_ms=0.0, slippage_bps=0.0))
    book = Book(T0 + 1.1, ((99.8, 5.0), (99.7, 5.0)), ((99.9, 0.004), (100.0, 5.0)))
    order = Order("o1", T0 + 1.05, "buy", 0.01, 100.1, "entry")
    events = drive(broker, [(T0 + 1.0, quote(T0 + 1.0, 100.0)), (T0 + 1.05, order), (T0 + 1.1, book)])
    fills = [e.fields for e in events if e.kind == "order.filled"]
    assert [(f["fill_price"], f["qty"], f["bid"], f["ask"]) for f in fills] == [
        (99.9, 0.004, 99.8, 99.9),
        (100.0, 0.006, 99.8, 99.9),
    ]
