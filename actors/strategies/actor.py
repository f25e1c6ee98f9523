"""The strategy actor: a thin loop around one strategy component.

The risk gate asks it with each market view the strategy subscribes to; it records the
strategy's events (its `signal`) and answers with the strategy's intents, which the gate checks.
"""

from __future__ import annotations

import trio

from actors.mailbox import Answerer
from actors.recording.actor import EventSink
from actors.strategies.base import Strategy, handle
from protocols.messages import Event, MarketView, OrderIntent


async def run_strategy(
    strategy: Strategy,
    inbox: Answerer[MarketView, list[OrderIntent]],
    sink: EventSink,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with inbox:
        task_status.started()
        async for view in inbox.requests:
            intents: list[OrderIntent] = []
            for out in handle(strategy, view, view.account.ts):
                if isinstance(out, Event):
                    sink.send_nowait(out)
                else:
                    intents.append(out)
            await inbox.reply(intents)
