"""The backtest and replay runtime: a plain loop over the data, driving the same components as the
live Trio actors, in the same order of messages.

One *step* per input, at its time `now` (a market event's arrival time, or a timer's due time):

1. the broker's timers due at or before `now` run first, each a step of its own (an order reaching
   the market, a heartbeat), in time order;
2. the broker works the input (`broker.handle`), and its events are recorded;
3. *settle*: while the broker has an `AccountUpdate` for the risk gate (its watch fired, or a
   trade closed), the gate reacts (`gate.on_account`) and its commands go to the broker at once
   (`Flatten`, `HaltEntries`, `StopSession`, `RiskWatch`); a `StopSession` ends the run after
   this step;
4. a market event some strategy subscribes to goes to those strategies, in their configured order,
   as a `MarketView` with the account as it now is; each strategy's intents go to the risk gate
   (`gate.on_intent`, with the same snapshot), and the orders it approves to the broker (which
   queues them: they reach the market after the latency, as timers).

At the end of a backtest's data the timers due at or before the last input run, then the run
ends (`data_end`); a replay runs the timers due before the recorded end, then ends with the
recorded reason. A backtest's heartbeats fall only at times its data covers, none in a gap in
it (`Coverage`). The live runtime (actors/broker/actor.py and its peers) takes the same steps
with channels between the components; tests/test_kernel.py runs both on the same inputs and
compares the event logs line by line.

No trio here, no scheduler and no virtual clock: time is the data's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import attrs

from actors.broker.paper import PaperBroker
from actors.broker.portfolio import Portfolio
from actors.feeds.intervals import Intervals
from actors.risk.gate import RiskGate
from actors.strategies.base import Strategy, StrategyOutput
from protocols.messages import (
    AccountSnapshot,
    Candle,
    Event,
    MarketEvent,
    Order,
    OrderIntent,
    StopSession,
    Tick,
    quote,
)


@attrs.frozen
class Stopped:
    """How a run ended: the reason and detail, and the time of the last step."""

    reason: str
    detail: str
    ts: float


def heartbeat_from(broker: PaperBroker | Portfolio, ts: float) -> float:
    """The broker's first heartbeat at or after `ts`: of its whole periods from its start (as
    `next_heartbeat` times them, the start itself excluded), the first not before `ts`; inf when
    it has no period, or none before its end."""
    period, started = broker.heartbeat_s, broker.started_ts
    if not math.isfinite(period):
        return math.inf
    k = max(1, math.ceil((ts - started) / period))
    due = started + period * k
    while due < ts:  # the division rounded a period short
        k += 1
        due = started + period * k
    while k > 1 and started + period * (k - 1) >= ts:  # or a period long
        k -= 1
        due = started + period * k
    return due if due < broker.end_ts else math.inf


class Coverage:
    """How far a backtest's data covers time: to the end of the latest candle whose open quote
    has come (`until`). A heartbeat falls only at a time the data covers: through a gap in the
    data (a time when no symbol has a candle) the account does not change, and a row per period
    of it says nothing (found by an audit: a placeholder row of 1970 before candles of 2024 wrote
    a metrics row for every hour between, 473,355 of them, 367 MB in 10 s); the heartbeats go on
    from the first period boundary at or after the open of the candle that ends the gap, which
    is said once, in the report's `data_gaps` (and a warning when it is an hour or longer).
    `opens` at every candle's open quote, before the timers due at it run (the kernel's `run`,
    the broker actor); `run_candles` needs none (one symbol: a heartbeat due before a candle's
    open fell in a gap)."""

    def __init__(self, interval_s: float, started_ts: float) -> None:
        self.interval_s = interval_s
        self.until = started_ts

    def opens(self, broker: PaperBroker | Portfolio, ts: float) -> None:
        """A candle opens at `ts`: after a gap (no candle open since `until`), the broker's next
        heartbeat is moved to the first at or after `ts`."""
        if ts > self.until:
            # moved later, never earlier (a run restored from a checkpoint starts with `until` at
            # its start, which the state does not hold: its next heartbeat, at a boundary not run
            # yet, stays; found by an audit, moved to `ts` it was written twice), or on from inf
            # (parked by `parks`)
            due, scheduled = heartbeat_from(broker, ts), broker.next_heartbeat
            if scheduled < due or scheduled == math.inf:
                broker.next_heartbeat = due
        self.until = max(self.until, ts + self.interval_s)

    def parks(self, broker: PaperBroker | Portfolio, due: float) -> bool:
        """Whether a heartbeat due at `due`, a timer about to be stepped with no input before it,
        falls past the data (in a gap, or after its end): then it is left until the next candle
        opens (`opens` moves it; the end of the data ends the run) and True."""
        if due <= self.until or broker.next_heartbeat > due:
            return False
        broker.next_heartbeat = math.inf
        return True


class Kernel:
    """Drives a broker, a risk gate and strategies over timed inputs; `write` records an event."""

    def __init__(
        self,
        broker: PaperBroker | Portfolio,
        gate: RiskGate,
        strategies: Sequence[Strategy],
        write: Callable[[Event], None],
        *,
        intervals: Intervals | None = None,
        strategy_intervals: dict[str, float] | None = None,
    ) -> None:
        """`intervals`: the longer candles some strategies take, built from the session's;
        `strategy_intervals`: each strategy's candle interval by id (absent: the session's)."""
        self.broker = broker
        self.gate = gate
        self.strategies = list(strategies)
        self.write = write
        self.stopped: Stopped | None = None
        self.now = -math.inf
        self.intervals = intervals if intervals else None
        longer = {
            sid: s for sid, s in (strategy_intervals or {}).items() if intervals and s > intervals.base_s
        }
        # which strategies take which market event type of which symbol (each strategy declares
        # what it takes; it trades one symbol); candles of a longer interval by (symbol, interval)
        self._routes: dict[tuple[type, str], list[Strategy]] = {}
        self._longer: dict[tuple[str, float], list[Strategy]] = {}
        for strategy in self.strategies:
            for kind in strategy.subscribes:
                if kind is Candle and strategy.id in longer:
                    self._longer.setdefault((strategy.symbol, longer[strategy.id]), []).append(strategy)
                else:
                    self._routes.setdefault((kind, strategy.symbol), []).append(strategy)

    # --- steps ---------------------------------------------------------------------------------------

    def run(
        self,
        inputs: Iterable[tuple[float, MarketEvent]],
        *,
        end_ts: float = math.inf,
        end_reason: str = "data_end",
        end_detail: str = "all data delivered",
        end_inclusive: bool = False,
        record_market: Callable[[MarketEvent, float], None] | None = None,
        coverage: Coverage | None = None,
    ) -> Stopped:
        """Every input in order, each a step; then the timers due before `end_ts` (or, with no
        end, at or before the last input; `end_inclusive`: at `end_ts` too, for a replay of a
        session its data stopped in a timer's step at the instant it ended); then stop with
        `end_reason`. `record_market(event, now)`: called with each market event as its step
        begins, after the timers due before it (a replay records the market it acted on, as the
        live broker actor does). `coverage`: a backtest's (its quotes are its candles' opens):
        no heartbeat in a gap in its data."""
        broker = self.broker
        market_step = self.market_step if record_market is None else self._recorded_steps(record_market)
        next_timer = broker.next_timer
        for now, event in inputs:
            if coverage is not None and type(event) is Tick:
                coverage.opens(broker, now)
            if next_timer() <= now:
                self.timers(now)
                if self.stopped is not None:
                    return self.stopped
            market_step(event, now)
            if self.stopped is not None:
                return self.stopped
        if math.isfinite(end_ts):
            while self.stopped is None and (
                next_timer() < end_ts or (end_inclusive and next_timer() == end_ts)
            ):
                self.timers(next_timer())
        else:
            self.timers(self.now)
        if self.stopped is None:
            self.stopped = Stopped(
                end_reason, end_detail, max(self.now, end_ts) if math.isfinite(end_ts) else self.now
            )
        return self.stopped

    def run_candles(self, candles: Iterable[Candle], *, finish: bool = True) -> Stopped | None:
        """`run(candle_steps(candles))` (actors/feeds/history.py) with the steps inlined: per
        candle its open quote at its start; at its end the candle (the broker works it along its
        path and takes its close as the quote). The same steps, in the same order, without a
        generator and a dispatch per step: a backtest's hot loop (tests/test_kernel.py checks it
        against the actors, which take the steps one by one). One symbol: the broker's. A candle
        with no timer due and nothing for the broker to work takes both broker steps in one call
        (`PaperBroker.quiet_candle`, the same state after). A heartbeat due before a candle's open
        fell in a gap in the data (every one due by the candle before ran at its close): it goes
        on from the first at or after the open (`Coverage`), checked only when a timer is due."""
        broker = self.broker
        assert isinstance(broker, PaperBroker), "several symbols' candles go through run()"
        on_quote, on_candle, next_timer = broker.on_quote, broker.on_candle, broker.next_timer
        write, settle, publish, timers = self.write, self.settle, self.publish, self.timers
        symbol = broker.symbol
        quote_targets = self._routes.get((Tick, symbol))
        candle_targets = self._routes.get((Candle, symbol))
        quiet_candle = broker.quiet_candle
        due = next_timer()
        for candle in candles:
            open_ts = candle.open_ts
            close_ts = open_ts + candle.interval_s
            if due > close_ts and not quote_targets and quiet_candle(candle):
                # most candles: no timer, nothing for the broker to do but mark (`quiet_candle`)
                self.now = close_ts
                if candle_targets:  # `publish`, inlined
                    deciding = [strategy for strategy in candle_targets if strategy.update(candle)]
                    if deciding:
                        self.decide(candle, deciding, close_ts)
                if self.intervals is not None:
                    self.publish_longer(candle, close_ts)
                due = next_timer()
                continue
            # the open quote
            if due <= open_ts:
                if broker.next_heartbeat < open_ts:  # a gap in the data before this candle
                    broker.next_heartbeat = heartbeat_from(broker, open_ts)
                timers(open_ts)
                if self.stopped is not None:
                    return self.stopped
            self.now = open_ts
            tick = quote(open_ts, candle.open, candle.symbol)
            for event in on_quote(tick, open_ts):
                write(event)
            if broker.update_due or broker.closed:
                settle(open_ts)
                if self.stopped is not None:
                    return self.stopped
            if quote_targets:
                publish(tick, quote_targets, open_ts)
            due = next_timer()
            # the candle
            if due <= close_ts:
                timers(close_ts)
                if self.stopped is not None:
                    return self.stopped
            self.now = close_ts
            for event in on_candle(candle, close_ts):
                write(event)
            if broker.update_due or broker.closed:
                settle(close_ts)
                if self.stopped is not None:
                    return self.stopped
            if candle_targets:
                publish(candle, candle_targets, close_ts)
            if self.intervals is not None:
                self.publish_longer(candle, close_ts)
            due = next_timer()
        if not finish:  # more candles to come (a run resumed from a checkpoint, in tests)
            return None
        self.timers(self.now)
        if self.stopped is None:
            self.stopped = Stopped("data_end", "all data delivered", self.now)
        return self.stopped

    def timers(self, now: float) -> None:
        """The broker's timers due at or before `now`, each due time a step."""
        broker = self.broker
        while self.stopped is None:
            due = broker.next_timer()
            if due > now:
                return
            self.now = due
            for event in broker.on_timer(due):
                self.write(event)
            self.settle(due)

    def _recorded_steps(
        self, record_market: Callable[[MarketEvent, float], None]
    ) -> Callable[[MarketEvent, float], None]:
        """`market_step`, each event recorded as its step begins."""
        step = self.market_step

        def recorded(event: MarketEvent, now: float) -> None:
            record_market(event, now)
            step(event, now)

        return recorded

    def market_step(self, event: MarketEvent, now: float) -> None:
        self.now = now
        broker = self.broker
        write = self.write
        for out in broker.on_market(event, now):
            write(out)
        if broker.update_due or broker.closed:
            self.settle(now)
            if self.stopped is not None:
                return
        targets = self._routes.get((type(event), event.symbol))
        if targets:
            self.publish(event, targets, now)
        if self.intervals is not None and type(event) is Candle:
            self.publish_longer(event, now)

    def publish_longer(self, candle: Candle, now: float) -> None:
        """The longer candles `candle` completes, to the strategies that take them."""
        assert self.intervals is not None
        for longer in self.intervals.add(candle):
            targets = self._longer.get((longer.symbol, longer.interval_s))
            if targets and self.stopped is None:
                self.publish(longer, targets, now)

    def settle(self, now: float) -> None:
        """The risk gate's reactions to the account, until the broker has nothing more to report."""
        broker, gate, write = self.broker, self.gate, self.write
        while (update := broker.account_update(now)) is not None:
            commands = []
            for out in gate.on_account(update):
                if isinstance(out, Event):
                    write(out)
                else:
                    commands.append(out)
            for command in commands:
                for event in broker.handle(command, now):
                    write(event)
                if isinstance(command, StopSession):
                    self.stopped = Stopped(command.reason, command.detail, now)
            if self.stopped is not None:
                return

    def publish(self, event: MarketEvent, targets: list[Strategy], now: float) -> None:
        """The event to the strategies that take it, with the account as it is now; their intents
        through the risk gate to the broker. A candle goes in two phases: every strategy updates on
        it, then those with a decision due decide, with one snapshot built for them all (none when
        none decides: most candles)."""
        if isinstance(event, Candle):
            deciding = [strategy for strategy in targets if strategy.update(event)]
            if deciding:
                self.decide(event, deciding, now)
        elif isinstance(event, Tick):
            account = self.broker.snapshot(now, event.symbol)
            self.intents(
                [(strategy, strategy.on_quote(event, account, now)) for strategy in targets], account, now
            )

    def decide(self, candle: Candle, deciding: list[Strategy], now: float) -> None:
        """The strategies with a decision due on `candle` decide, with one snapshot for them all."""
        account = self.broker.snapshot(now, candle.symbol)
        self.intents(
            [(strategy, strategy.decide(candle, account, now)) for strategy in deciding], account, now
        )

    def intents(
        self, decisions: list[tuple[Strategy, list[StrategyOutput]]], account: AccountSnapshot, now: float
    ) -> None:
        """Each strategy's events recorded and its intents through the risk gate; the orders it
        approves go to the broker once every strategy has decided."""
        broker, gate, write = self.broker, self.gate, self.write
        orders: list[Order] = []
        for _strategy, outs in decisions:
            intents = []
            for out in outs:  # the strategy's events first, then its intents (as its actor does)
                if isinstance(out, OrderIntent):
                    intents.append(out)
                else:
                    write(out)
            for intent in intents:
                for decided in gate.on_intent(intent, account, now):
                    if isinstance(decided, Order):
                        orders.append(decided)
                    elif isinstance(decided, Event):
                        write(decided)
        for order in orders:  # the broker takes them once every strategy has decided
            for e in broker.on_order(order, now):
                write(e)
