"""One account over several symbols: a `PaperBroker` per symbol (a *leg*: its position, orders,
book, marks, funding, instrument, liquidation) under one wallet.

The legs keep every fill rule of actors/broker/paper.py; what belongs to the account is here:

- **equity** is the starting equity plus every leg's realized PnL, less every leg's fees and
  funding, plus every leg's unrealized PnL at its own mark; the peak, the deepest drawdown, the
  heartbeats (one metrics row for the account) and the risk gate's watch (`RiskWatch`: the
  equity floor, the next check time) are the account's;
- **margin**: isolated per position, as on Bitunix; a new position's initial margin must fit in
  the account's equity less the margin the other symbols' positions hold (each leg asks
  `margin_equity`), so the symbols together never use more margin than the account has;
- **routing**: a market event goes to its symbol's leg; an order to its `symbol`'s leg; a cancel
  to the leg that holds the order (working or on its way); the risk gate's commands to every leg
  (`Flatten` closes every symbol's position, `HaltEntries` and `StopSession` hold for all);
- **snapshots**: `snapshot(now, symbol)` is the account as one symbol's strategies see it: the
  account's equity, PnL, fees and drawdown; that symbol's mark, staleness and funding rate; every
  leg's net and virtual positions; and each symbol's mark (`marks`, for the account-wide limits).

Orders of different symbols travel on their own legs' queues (each keeps its own order of
arrival). With one symbol the session uses a `PaperBroker` itself: this class is for several.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from actors.broker.paper import EPS, BrokerMessage, FundingSchedule, PaperBroker, next_heartbeat, route
from actors.config import BrokerConfig
from protocols.instruments import Instrument
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
    Position,
    RiskWatch,
    StopSession,
)


class Portfolio:
    """The account over `symbols` (the first is the session's: the report's `symbol`, the
    metrics row's `price`). Takes and gives what a `PaperBroker` does (the runtimes drive either)."""

    def __init__(
        self,
        config: BrokerConfig,
        rng: random.Random | None = None,
        *,
        symbols: Sequence[str],
        heartbeat_s: float = math.inf,
        started_ts: float = 0.0,
        end_ts: float = math.inf,
        defer_to_next_quote: bool = False,
        bars: bool = False,
        instruments: dict[str, Instrument] | None = None,
        funding: Mapping[str, FundingSchedule] | None = None,
        funding_modelled: bool = True,
    ) -> None:
        if not symbols:
            raise ValueError("a portfolio needs at least one symbol")
        self.config = config
        funding = funding or {}
        self.rng = rng or random.Random(0)
        self.symbol = symbols[0]
        self.starting_equity = config.starting_equity
        self.legs: dict[str, PaperBroker] = {
            symbol: PaperBroker(
                config,
                self.rng,  # one stream: latency draws in the order orders are sent, whatever the symbol
                symbol=symbol,
                defer_to_next_quote=defer_to_next_quote,
                bars=bars,
                instrument=(instruments or {}).get(symbol),
                funding=funding.get(symbol),
                margin_equity=self._margin_equity,
                funding_modelled=funding_modelled or symbol in funding,
            )
            for symbol in symbols
        }
        for symbol, leg in self.legs.items():
            leg.watch_at = math.inf  # the account watches; a leg never reports on its own
            leg.id_prefix = f"{symbol}-"  # fill, protective and liquidation ids unique in the account
            leg.path_equities = []  # a backtest candle's extremes, for the account's drawdown
        self.peak_equity = self.starting_equity
        self.max_drawdown_pct = 0.0
        self.heartbeat_s = heartbeat_s
        self.started_ts = started_ts
        self.end_ts = end_ts
        self.next_heartbeat = math.inf
        self.schedule_heartbeats(started_ts)
        self.watch_floor = -math.inf
        self.watch_at = -math.inf
        self.update_due = False
        self.path_low = math.inf  # as PaperBroker's, the account's

    def schedule_heartbeats(self, now: float) -> None:
        self.next_heartbeat = next_heartbeat(self.started_ts, self.heartbeat_s, now, self.end_ts)

    # --- the account ---------------------------------------------------------------------------------

    def _legs_sum(self, name: str) -> float:
        return sum(getattr(leg, name) for leg in self.legs.values())

    @property
    def realized_pnl(self) -> float:
        return self._legs_sum("realized_pnl")

    @property
    def fees_paid(self) -> float:
        return self._legs_sum("fees_paid")

    @property
    def funding_paid(self) -> float:
        return self._legs_sum("funding_paid")

    @property
    def unrealized_pnl(self) -> float:
        return self._legs_sum("unrealized_pnl")

    @property
    def equity(self) -> float:
        """The starting equity plus each leg's change (a leg's equity is the same starting
        equity plus its own realized, fees, funding and unrealized)."""
        return self.starting_equity + sum(leg.equity - leg.starting_equity for leg in self.legs.values())

    @property
    def drawdown_pct(self) -> float:
        peak = self.peak_equity
        return 0.0 if peak <= 0 else max(0.0, (peak - self.equity) / peak * 100)

    @property
    def position_qty(self) -> float:
        """The session symbol's net position (the metrics row's column)."""
        return self.legs[self.symbol].position_qty

    @property
    def mark_price(self) -> float | None:
        return self.legs[self.symbol].mark_price

    @property
    def closed(self) -> list[ClosedTrade]:
        return [trade for leg in self.legs.values() for trade in leg.closed]

    def _margin_equity(self, leg: PaperBroker) -> float:
        """What `leg` may put up as a new position's margin: the account's equity less the
        initial margin the other legs' positions hold (isolated, at their entry prices)."""
        held = sum(
            abs(other.position_qty) * other.avg_price / other.config.leverage
            for other in self.legs.values()
            if other is not leg
        )
        return self.equity - held

    def open_positions(self) -> list[dict[str, Any]]:
        return [
            {"symbol": symbol, **position}
            for symbol, leg in self.legs.items()
            for position in leg.open_positions()
        ]

    def _after(self, events: list[Event], ts: float) -> list[Event]:
        """After anything that moved the account: the peak, the deepest drawdown, and whether the
        risk gate's watch fired."""
        equity = self.equity
        self._drawdown(equity)
        if equity <= self.watch_floor or ts >= self.watch_at:
            self.update_due = True
        return events

    def _drawdown(self, equity: float) -> None:
        if equity > self.peak_equity:
            self.peak_equity = equity
        peak = self.peak_equity
        if peak > 0:
            drawdown = (peak - equity) / peak * 100
            if drawdown > self.max_drawdown_pct:
                self.max_drawdown_pct = drawdown

    # --- checkpoint ----------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        def finite(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {
            "legs": {symbol: leg.state() for symbol, leg in self.legs.items()},
            "peak_equity": self.peak_equity,
            "max_drawdown_pct": self.max_drawdown_pct,
            "watch_floor": finite(self.watch_floor),
            "watch_at": finite(self.watch_at),
            "next_heartbeat": finite(self.next_heartbeat),
        }

    def skip_ids(self, ids: Iterable[str]) -> None:
        for leg in self.legs.values():
            leg.skip_ids(ids)

    def restore(self, state: dict[str, Any]) -> None:
        for symbol, leg_state in state["legs"].items():
            leg = self.legs.get(symbol)
            if leg is None:
                raise ValueError(f"the checkpoint has {symbol}, which this session does not trade")
            leg.restore(leg_state)
            leg.watch_floor, leg.watch_at = -math.inf, math.inf
        self.peak_equity = state["peak_equity"]
        self.max_drawdown_pct = state["max_drawdown_pct"]
        self.watch_floor = -math.inf  # report every mark until the gate says again
        self.watch_at = -math.inf
        nxt = state.get("next_heartbeat")
        self.next_heartbeat = math.inf if nxt is None else nxt

    # --- inputs --------------------------------------------------------------------------------------

    def _leg(self, symbol: str) -> PaperBroker:
        leg = self.legs.get(symbol)
        if leg is None:
            raise ValueError(f"{symbol}: not a symbol of this session ({', '.join(self.legs)})")
        return leg

    def on_market(self, event: MarketEvent, ts: float) -> list[Event]:
        leg = self.legs.get(event.symbol)
        if leg is None:
            return []  # a symbol no strategy trades: nothing to do with it
        events = leg.on_market(event, ts)
        path = leg.path_equities
        if path:  # the account's equity at the leg's extremes along a backtest candle's path
            others = self.equity - leg.equity
            for equity in path:
                self._drawdown(others + equity)
                if others + equity <= self.watch_floor:  # to the gate (`PaperBroker._mark_equity`)
                    self.update_due = True
                    self.path_low = min(self.path_low, others + equity)
            path.clear()
        return self._after(events, ts)

    def handle(self, message: BrokerMessage, now: float) -> list[Event]:
        return route(self, message, now)

    def on_order(self, order: Order, now: float) -> list[Event]:
        return self._leg(order.symbol).on_order(order, now)

    def _holder(self, order_id: str) -> PaperBroker:
        """The leg holding the order (working, or on its way); the first when none does (it
        answers `not_working`)."""
        for leg in self.legs.values():
            if order_id in leg.working or any(
                isinstance(f.message, Order) and f.message.id == order_id for f in leg.in_flight
            ):
                return leg
        return self.legs[self.symbol]

    def on_cancel(self, cancel: Cancel, now: float) -> list[Event]:
        return self._holder(cancel.order_id).on_cancel(cancel, now)

    def on_command(self, command: Flatten | HaltEntries | StopSession | RiskWatch, now: float) -> list[Event]:
        if isinstance(command, Flatten):
            return self.flatten(now, command.reason, command.order_id)
        if isinstance(command, RiskWatch):
            self.watch_floor, self.watch_at = command.equity_floor, command.check_at
            if self.equity <= self.watch_floor or now >= self.watch_at:
                self.update_due = True
            return []
        events: list[Event] = []
        for leg in self.legs.values():
            events += leg.on_command(command, now)
        return events

    def flatten(self, ts: float, reason: str, order_id: str) -> list[Event]:
        """Every symbol's working orders cancelled and its position closed (order ids
        `<order_id>-<SYMBOL>`)."""
        events: list[Event] = []
        for symbol, leg in self.legs.items():
            events += leg.flatten(ts, reason, f"{order_id}-{symbol}")
        return self._after(events, ts)

    def settle_funding(self, ts: float) -> list[Event]:
        events: list[Event] = []
        for leg in self.legs.values():
            events += leg.settle_funding(ts)
        return events

    def abandon_in_flight(self, now: float, reason: str = "lost_at_restart") -> list[Event]:
        events: list[Event] = []
        for leg in self.legs.values():
            events += leg.abandon_in_flight(now, reason)
        return events

    # --- timers --------------------------------------------------------------------------------------

    def next_timer(self) -> float:
        due = self.next_heartbeat
        for leg in self.legs.values():
            leg_due = leg.next_timer()
            if leg_due < due:
                due = leg_due
        return due

    def on_timer(self, now: float) -> list[Event]:
        """The earliest timer due at or before `now`: a leg's (an order reaching the market; the
        first symbol's first at the same instant) before a heartbeat at the same instant."""
        due = self.next_timer()
        if due > now:
            return []
        for leg in self.legs.values():
            if leg.next_timer() == due:
                return self._after(leg.on_timer(due), due)
        self.schedule_heartbeats(due)
        return [Event(due, "heartbeat", self.heartbeat_fields(due))]

    def heartbeat_fields(self, ts: float) -> dict[str, Any]:
        """One metrics row for the account: `price`, `mark_source` and `position_qty` are the
        session symbol's, `prices`, `mark_sources` and `positions` every symbol's."""
        return {
            "elapsed_s": round(ts - self.started_ts, 3),
            "price": self.mark_price,
            "mark_source": self.legs[self.symbol].mark_source,
            "equity": round(self.equity, 6),
            "realized_pnl": round(self.realized_pnl, 6),
            "unrealized_pnl": round(self.unrealized_pnl, 6),
            "fees_paid": round(self.fees_paid, 6),
            "funding_paid": round(self.funding_paid, 6),
            "position_qty": round(self.position_qty, 8),
            "drawdown_pct": round(self.drawdown_pct, 4),
            "prices": {symbol: leg.mark_price for symbol, leg in self.legs.items()},
            "mark_sources": {symbol: leg.mark_source for symbol, leg in self.legs.items()},
            "positions": {symbol: round(leg.position_qty, 8) for symbol, leg in self.legs.items()},
        }

    # --- the view ------------------------------------------------------------------------------------

    def snapshot(self, now: float, symbol: str | None = None) -> AccountSnapshot:
        """The account as `symbol`'s strategies see it (default: the session's symbol)."""
        view = self._leg(symbol or self.symbol)
        own = view.snapshot(now)
        positions: list[Position] = list(own.positions)
        marks: list[tuple[str, float]] = []
        open_orders = 0
        by_strategy: dict[str, int] = {}
        limit_orders: list[tuple[str, str, float, float, float, float]] = []
        realized = fees = funding = unrealized = 0.0
        for leg in self.legs.values():
            snap = own if leg is view else leg.snapshot(now)
            if leg is not view:
                positions += snap.positions
            if snap.mark_price is not None:
                marks.append((leg.symbol, snap.mark_price))
            open_orders += snap.open_orders
            for sid, count in snap.strategy_orders:
                by_strategy[sid] = by_strategy.get(sid, 0) + count
            if leg.working or leg.in_flight:
                limit_orders += leg.limit_orders()
            realized += snap.realized_pnl
            fees += snap.fees_paid
            funding += snap.funding_paid
            unrealized += snap.unrealized_pnl
        equity = self.starting_equity + realized - fees - funding + unrealized
        peak = self.peak_equity
        return own._replace(
            equity=equity,
            realized_pnl=realized,
            unrealized_pnl=unrealized,
            fees_paid=fees,
            funding_paid=funding,
            drawdown_pct=0.0 if peak <= 0 else max(0.0, (peak - equity) / peak * 100),
            positions=tuple(positions),
            open_orders=open_orders,
            marks=tuple(marks),
            strategy_orders=tuple(sorted(by_strategy.items())),
            limit_orders=tuple(limit_orders),
        )

    def account_update(self, now: float) -> AccountUpdate | None:
        closed = self.closed
        if not self.update_due and not closed:
            return None
        for leg in self.legs.values():
            leg.closed = []
        self.update_due = False
        low, self.path_low = self.path_low, math.inf
        return AccountUpdate(now, self.snapshot(now), tuple(closed), low if low < math.inf else None)


__all__ = ["EPS", "Portfolio"]
