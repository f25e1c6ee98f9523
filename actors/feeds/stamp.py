"""What a feed sends the broker: `(arrival time, market event)` pairs.

Live feeds were written against send channels of bare market events; `Stamper` is such a channel
that stamps each event with the session clock's time as it is handed over (its arrival time, the
time the session acts on it and records it in market.jsonl) and passes the pair on.
"""

from __future__ import annotations

from typing import Self

import trio

from actors.clock import SessionClock
from protocols.messages import MarketEvent

Stamped = tuple[float, MarketEvent]


class Stamper:
    def __init__(self, tx: trio.MemorySendChannel[Stamped], clock: SessionClock) -> None:
        self.tx = tx
        self.clock = clock

    async def send(self, event: MarketEvent) -> None:
        await self.tx.send((self.clock.now(), event))

    def send_nowait(self, event: MarketEvent) -> None:
        self.tx.send_nowait((self.clock.now(), event))

    def clone(self) -> Stamper:
        return Stamper(self.tx.clone(), self.clock)

    def close(self) -> None:
        self.tx.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
