"""The risk gate actor: a thin loop around the gate component.

The broker asks it about each account update (the gate's watch fired, or trades closed) and with
each market view some strategy subscribes to. It records the gate's events, sends its commands
and the orders it approves to the broker (a channel the broker drains after each ask: it never
fills, see `orders_capacity`), and asks the strategies that take the view for their intents.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import trio

from actors.mailbox import Answerer, Asker
from actors.recording.actor import EventSink
from actors.risk.gate import RiskGate
from protocols.messages import AccountUpdate, BrokerInput, Candle, Event, MarketView, OrderIntent


def orders_capacity(max_orders_per_minute: int) -> int:
    """The risk gate -> broker channel's size. The broker drains it after every ask, and in one
    ask the gate approves at most `max_orders_per_minute` orders (its sliding window) and gives a
    handful of commands per account update: it can never fill, so the gate never waits on it."""
    return max_orders_per_minute + 64


@attrs.define
class StrategyLink:
    """The gate's way to one strategy actor: what it takes, and the ask channel."""

    subscribes: tuple[type, ...]
    asker: Asker[MarketView, list[OrderIntent]]
    symbol: str = ""  # the symbol it trades ("": every symbol's events)
    interval_s: float = 0.0  # the candles it takes (0: any)


async def run_risk(
    gate: RiskGate,
    inbox: Answerer[AccountUpdate | MarketView, None],
    strategies: Sequence[StrategyLink],
    to_broker: trio.MemorySendChannel[BrokerInput],
    sink: EventSink,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    def send(out: BrokerInput | Event) -> None:
        if isinstance(out, Event):
            sink.send_nowait(out)
        else:
            to_broker.send_nowait(out)  # never full (orders_capacity); WouldBlock would be a bug

    with inbox, to_broker:
        try:
            task_status.started()
            async for request in inbox.requests:
                if isinstance(request, AccountUpdate):
                    outs = gate.on_account(request)
                    for out in outs:  # the gate's events first, then its commands (the kernel's order)
                        if isinstance(out, Event):
                            send(out)
                    for out in outs:
                        if not isinstance(out, Event):
                            send(out)
                else:
                    account, now = request.account, request.account.ts
                    for link in strategies:
                        event = request.event
                        if (
                            isinstance(event, link.subscribes)
                            and link.symbol in ("", event.symbol)
                            and (
                                link.interval_s == 0
                                or type(event) is not Candle
                                or event.interval_s == link.interval_s
                            )
                        ):
                            for intent in await link.asker.ask(request):
                                for decided in gate.on_intent(intent, account, now):
                                    send(decided)
                await inbox.reply(None)
        finally:
            for link in strategies:
                link.asker.close()
