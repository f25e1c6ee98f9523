"""The broker actor: a thin loop around the paper broker component, and the driver of each step.

Each input is a step (the kernel's, actors/kernel.py): a market event from the feed (stamped with
its arrival time) or one of the broker's own timers (an order reaching the market, a heartbeat).
The broker works it; asks the risk gate about each account update it has (and applies the
commands the gate sends back); then, for a market event some strategy takes, asks the gate with
the event and the account as it now is (the gate asks the strategies, and sends the orders it
approves back). The next input waits until the step is done, so a step is all-or-nothing and
its events reach the recorder in the kernel's order.

Timers due at or before a step's time run right after it; the others as they fall due while the
broker waits for the feed (a backtest's heartbeats only at times its data covers, none in a gap in
it, as in the kernel: `Coverage`). A `StopSession` from the gate ends the steps: the broker tells
the watchdog and ignores the rest of its input (the watchdog may have stopped the session in the
same instant: then the first stop stands). When the feed's channel closes, the broker returns,
having asked for its `input_end` stop first when it has one (a backtest's `data_end`);
flatten-on-exit is the session's, on the component, after every actor has finished.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import trio

from actors.broker.paper import PaperBroker
from actors.broker.portfolio import Portfolio
from actors.clock import SessionClock
from actors.feeds.intervals import Intervals
from actors.feeds.stamp import Stamped
from actors.kernel import Coverage
from actors.mailbox import Asker
from actors.recording.actor import EventSink
from actors.recording.recorder import MARKET_KIND
from protocols.messages import (
    AccountSnapshot,
    AccountUpdate,
    BrokerInput,
    Candle,
    Event,
    MarketEvent,
    MarketView,
    StopSession,
    Tick,
)


async def run_broker(
    broker: PaperBroker | Portfolio,
    market_rx: trio.MemoryReceiveChannel[Stamped],
    risk: Asker[AccountUpdate | MarketView, None],
    from_risk: trio.MemoryReceiveChannel[BrokerInput],
    sink: EventSink,
    clock: SessionClock,
    stop_tx: trio.MemorySendChannel[StopSession],
    *,
    published: tuple[type, ...] = (),
    record_market: bool = False,
    after_step: Callable[[float], None] | None = None,
    on_snapshot: Callable[[AccountSnapshot], None] | None = None,
    intervals: Intervals | None = None,
    input_end: str | None = None,
    coverage: Coverage | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`published`: the market event types some strategy takes; `record_market`: every market
    event acted on goes to market.jsonl (live sessions, for replay; and replays);
    `after_step(now)`: called after each step (the session checkpoints there); `on_snapshot`: the account after each step
    (the watchdog's progress display); `intervals`: the longer candles some strategies take, built
    from the session's candles and asked about right after them; `input_end`: the stop the broker
    asks for once it has worked every input and the feed's channel closed (a backtest's
    `data_end`: asked by the broker, after its last step, so that a risk stop in that step comes
    first, as in the kernel), None: none (the session ends otherwise); `coverage`: a backtest's
    (its quotes are its candles' opens): no heartbeat in a gap in its data, as in the kernel."""
    stopping: StopSession | None = None

    def record(events: list[Event]) -> None:
        for event in events:
            sink.send_nowait(event)

    def drain(now: float) -> None:
        nonlocal stopping
        while True:
            try:
                message = from_risk.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            record(broker.handle(message, now))
            if isinstance(message, StopSession) and stopping is None:
                stopping = message

    async def settle(now: float) -> None:
        while stopping is None and (update := broker.account_update(now)) is not None:
            await risk.ask(update)
            drain(now)

    async def timer_step(due: float) -> None:
        if coverage is not None and coverage.parks(broker, due) and broker.next_timer() > due:
            return  # a heartbeat past the data (a gap), and nothing else due
        record(broker.on_timer(due))
        await settle(due)
        end_step(due)

    async def market_step(event: MarketEvent, now: float) -> None:
        if record_market:
            sink.send_nowait(Event(now, MARKET_KIND, {"event": event}))
        record(broker.on_market(event, now))
        await settle(now)
        if stopping is None and isinstance(event, published):
            await risk.ask(MarketView(event, broker.snapshot(now, event.symbol)))
            drain(now)
        if intervals and type(event) is Candle:  # the longer candles it completes, as the kernel
            for longer in intervals.add(event):
                if stopping is None:
                    await risk.ask(MarketView(longer, broker.snapshot(now, longer.symbol)))
                    drain(now)
        end_step(now)

    def taken(stamped: Stamped) -> Stamped:
        """An input taken from the feed, before any timer due before it runs."""
        if coverage is not None and type(stamped[1]) is Tick:
            coverage.opens(broker, stamped[0])
        return stamped

    def end_step(now: float) -> None:
        if after_step is not None:
            after_step(now)
        if on_snapshot is not None:
            on_snapshot(broker.snapshot(now))

    with market_rx, risk, from_risk, stop_tx:
        task_status.started()
        now = -math.inf
        # a market event taken from the channel and not yet stepped (stamped after a timer due first)
        held: Stamped | None = None
        ended = False
        while stopping is None:
            due = broker.next_timer()
            if due <= now:  # due by the last step's time: before anything else
                now = due
                await timer_step(due)
                continue
            if held is None and not ended:
                with trio.move_on_at(clock.to_trio(due)) as waiting:
                    try:
                        held = taken(await market_rx.receive())
                    except trio.EndOfChannel:
                        ended = True
                if waiting.cancelled_caught:
                    # the timer fell due while waiting; an event stamped before it that is in the
                    # channel already goes first (found by an audit: under load the deadline
                    # cancelled the receive with such an event waiting, and the timer's fill met
                    # an older quote than the session had, unlike its replay)
                    try:
                        held = taken(market_rx.receive_nowait())
                    except trio.WouldBlock:
                        pass
                    except trio.EndOfChannel:
                        ended = True
            if held is None or held[0] > due:
                if held is None and ended:
                    if input_end is None:
                        return
                    end = now if math.isfinite(now) else clock.now()
                    stopping = StopSession(end, input_end, "all data delivered")
                    break
                now = due
                await timer_step(due)
                continue
            (arrival, event), held = held, None
            while (due := broker.next_timer()) <= arrival:
                await timer_step(due)
                if stopping is not None:
                    break
            if stopping is not None:
                break
            now = arrival
            await market_step(event, arrival)
        # the watchdog may have stopped the session meanwhile (the duration, the kill switch, a
        # signal, in the same instant): its channel is closed then, and the first stop stands
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            stop_tx.send_nowait(stopping)
        async for _ in market_rx:  # stopped: the rest of the input is not acted on
            pass
