"""Drivers for the synchronous components in unit tests: the paper broker alone over a timed
script, and a broker with a risk gate wired the way a session's step wires them (actors/kernel.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import attrs

from actors.broker.paper import PaperBroker
from actors.kernel import Kernel
from actors.risk.gate import Rejection, RiskGate
from protocols.messages import (
    AccountSnapshot,
    AccountUpdate,
    Cancel,
    ClosedTrade,
    Event,
    Flatten,
    HaltEntries,
    MarketEvent,
    Order,
    OrderIntent,
    RiskWatch,
    StopSession,
)

RiskCommand = Flatten | HaltEntries | StopSession | RiskWatch
Scripted = MarketEvent | Order | Cancel


def drive(
    broker: PaperBroker, script: Iterable[tuple[float, Scripted]], *, tail_s: float = 5.0
) -> list[Event]:
    """Each item at its session time, stamped with it (an order or cancel is *sent* then and
    reaches the market after the broker's latency): first the broker's timers due at or before
    that time, each at its own due time, then the item; after the last item, the timers due
    within `tail_s`. Returns the broker's events."""
    events: list[Event] = []
    now = -math.inf
    for now, item in script:
        events += _timers(broker, now)
        stamped = item._replace(ts=now) if isinstance(item, tuple) else attrs.evolve(item, ts=now)
        events += broker.handle(stamped, now)  # type: ignore[arg-type]
    if math.isfinite(now):
        events += _timers(broker, now + tail_s)
    return events


def _timers(broker: PaperBroker, now: float) -> list[Event]:
    """Every timer due at or before `now`, one at a time (as the runtimes take them)."""
    events: list[Event] = []
    while broker.next_timer() <= now:
        events += broker.on_timer(now)
    return events


class RecordingBroker(PaperBroker):
    """A paper broker that also keeps every risk command it is given, in order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: list[RiskCommand] = []

    def on_command(self, command: RiskCommand, now: float) -> list[Event]:
        self.commands.append(command)
        return super().on_command(command, now)


class Desk:
    """A broker and a risk gate driven by the kernel's steps (no strategies): after each broker
    step the account updates go to the gate and its commands back to the broker (`Kernel.settle`).
    Every event is kept in `events`; each method returns the events of its own step."""

    def __init__(self, broker: RecordingBroker, gate: RiskGate) -> None:
        self.broker = broker
        self.gate = gate
        self.events: list[Event] = []
        self.kernel = Kernel(broker, gate, [], self.events.append)

    def _since(self, n: int) -> list[Event]:
        return self.events[n:]

    def mark(self, event: MarketEvent, ts: float) -> list[Event]:
        """A market event at `ts`: the broker marks, the gate hears what its watch asked for."""
        n = len(self.events)
        self.kernel.market_step(event, ts)
        return self._since(n)

    def arrive(self, order: Order, ts: float) -> list[Event]:
        """`order` reaches the market at `ts` (no latency), then the gate hears of closed trades."""
        n = len(self.events)
        self.events += self.broker.on_arrival(order, ts)
        self.kernel.settle(ts)
        return self._since(n)

    def account(self, now: float) -> AccountSnapshot:
        return self.broker.snapshot(now)

    def check(self, intent: OrderIntent, now: float) -> Order | Rejection:
        """The gate's decision on `intent` with the account as it is at `now`."""
        return self.gate.check(intent, self.broker.snapshot(now), now)

    @property
    def commands(self) -> list[RiskCommand]:
        return self.broker.commands

    @property
    def stops(self) -> list[StopSession]:
        return [c for c in self.broker.commands if isinstance(c, StopSession)]

    @property
    def stop_reasons(self) -> list[str]:
        return [s.reason for s in self.stops]


def trade_closed(gate: RiskGate, account: AccountSnapshot, net_pnl: float, ts: float) -> list[Any]:
    """The gate told that one trade closed with `net_pnl`; its answer without the `RiskWatch`
    it gives whenever what it wants watched changes."""
    update = AccountUpdate(ts, account, (ClosedTrade(account.symbol, net_pnl),))
    return [out for out in gate.on_account(update) if not isinstance(out, RiskWatch)]
