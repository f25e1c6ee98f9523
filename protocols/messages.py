"""The frozen types actors exchange over channels. Names say who sends them.

Times are session-clock seconds since the Unix epoch (floats); prices in USDT; sizes in BTC.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Literal, Protocol

import attrs

Side = Literal["buy", "sell"]


def _positive(_inst: object, attribute: attrs.Attribute, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen
class Tick:
    """Feed -> strategy, broker: best bid/ask and last price at `ts`."""

    ts: float
    bid: float = attrs.field(validator=_positive)
    ask: float = attrs.field(validator=_positive)
    last: float = attrs.field(validator=_positive)

    @property
    def mid(self) -> float:
        return (self.bid + self.ask) / 2


@attrs.frozen
class Candle:
    """Feed -> strategy, broker: a closed candle covering [open_ts, open_ts + interval_s)."""

    open_ts: float
    interval_s: float
    open: float = attrs.field(validator=_positive)
    high: float = attrs.field(validator=_positive)
    low: float = attrs.field(validator=_positive)
    close: float = attrs.field(validator=_positive)
    volume: float = 0.0

    @property
    def close_ts(self) -> float:
        return self.open_ts + self.interval_s


MarketEvent = Tick | Candle


@attrs.frozen
class OrderIntent:
    """Strategy -> risk: what the strategy wants; the risk gate decides whether and how much."""

    ts: float
    side: Side
    qty: float = attrs.field(validator=_positive)
    decision_price: float
    reason: str
    reduce_only: bool = False


@attrs.frozen
class Order:
    """Risk -> broker: an approved market order."""

    id: str
    ts: float
    side: Side
    qty: float = attrs.field(validator=_positive)
    decision_price: float
    reason: str
    reduce_only: bool = False

    @property
    def signed_qty(self) -> float:
        return self.qty if self.side == "buy" else -self.qty


@attrs.frozen
class Event:
    """Any actor -> recorder: one line of events.jsonl (the recorder adds `seq`)."""

    ts: float
    kind: str
    fields: dict[str, Any] = attrs.field(factory=dict)


class EventSender(Protocol):
    """How actors hand events to the recorder (a trio send channel, or the recorder's EventSink)."""

    async def send(self, value: Event, /) -> None: ...

    def clone(self) -> EventSender: ...

    def __enter__(self) -> EventSender: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None, /
    ) -> None: ...
