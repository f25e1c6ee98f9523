"""The paper broker: orders -> fills; position, realized/unrealized PnL, fees, equity.

`PaperAccount` is the pure, synchronous ledger (tested directly); `run_broker` is the thin actor
loop around it. The account doubles as the read-only `AccountView` the risk gate, strategy and
watchdog read: feedback flows through it, not through a channel that could deadlock.

A market order fills at the touch at fill time (buy at the ask, sell at the bid), never at a price
the market did not offer, and pays the taker fee. Every fill records the requested (decision) price
beside the fill price.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from protocols.messages import Event, MarketEvent, Order, Side, Tick

EPS = 1e-12


@attrs.define
class OpenTrade:
    """Accumulators for the position currently open, reported when it closes."""

    side: str
    opened_ts: float
    max_qty: float = 0.0
    entry_notional: float = 0.0
    entry_qty: float = 0.0
    exit_notional: float = 0.0
    exit_qty: float = 0.0
    realized_pnl: float = 0.0
    fees: float = 0.0


class PaperAccount:
    """Linear USDT-margined perpetual, one symbol, netting position."""

    def __init__(self, starting_equity: float, taker_fee_bps: float, maker_fee_bps: float) -> None:
        self.starting_equity = starting_equity
        self.taker_fee_rate = taker_fee_bps / 10_000
        self.maker_fee_rate = maker_fee_bps / 10_000
        self.position_qty = 0.0  # signed BTC
        self.avg_price = 0.0
        self.realized_pnl = 0.0
        self.fees_paid = 0.0
        self.last_tick: Tick | None = None
        self.processed_signed_qty = 0.0  # sum of signed qty of every order filled or refused
        self.fill_count = 0
        self.trade: OpenTrade | None = None
        self.peak_equity = starting_equity
        self.max_drawdown_pct = 0.0

    # --- the view -------------------------------------------------------------------------------

    @property
    def mark_price(self) -> float | None:
        return self.last_tick.mid if self.last_tick else None

    @property
    def unrealized_pnl(self) -> float:
        mark = self.mark_price
        if mark is None or abs(self.position_qty) < EPS:
            return 0.0
        return (mark - self.avg_price) * self.position_qty

    @property
    def equity(self) -> float:
        return self.starting_equity + self.realized_pnl - self.fees_paid + self.unrealized_pnl

    @property
    def drawdown_pct(self) -> float:
        return (
            0.0
            if self.peak_equity <= 0
            else max(0.0, (self.peak_equity - self.equity) / self.peak_equity * 100)
        )

    def open_positions(self) -> list[dict[str, Any]]:
        if abs(self.position_qty) < EPS:
            return []
        return [
            {
                "side": "long" if self.position_qty > 0 else "short",
                "qty": round(abs(self.position_qty), 8),
                "avg_price": round(self.avg_price, 8),
                "unrealized_pnl": round(self.unrealized_pnl, 8),
            }
        ]

    # --- checkpoint ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "position_qty": self.position_qty,
            "avg_price": self.avg_price,
            "realized_pnl": self.realized_pnl,
            "fees_paid": self.fees_paid,
            "last_tick": attrs.asdict(self.last_tick) if self.last_tick else None,
            "processed_signed_qty": self.processed_signed_qty,
            "fill_count": self.fill_count,
            "trade": attrs.asdict(self.trade) if self.trade else None,
            "peak_equity": self.peak_equity,
            "max_drawdown_pct": self.max_drawdown_pct,
        }

    def restore(self, state: dict[str, Any]) -> None:
        for name in (
            "position_qty",
            "avg_price",
            "realized_pnl",
            "fees_paid",
            "processed_signed_qty",
            "fill_count",
            "peak_equity",
            "max_drawdown_pct",
        ):
            setattr(self, name, state[name])
        self.last_tick = Tick(**state["last_tick"]) if state["last_tick"] else None
        self.trade = OpenTrade(**state["trade"]) if state["trade"] else None

    # --- market ---------------------------------------------------------------------------------

    def on_tick(self, tick: Tick) -> None:
        self.last_tick = tick
        equity = self.equity
        self.peak_equity = max(self.peak_equity, equity)
        self.max_drawdown_pct = max(self.max_drawdown_pct, self.drawdown_pct)

    # --- orders ---------------------------------------------------------------------------------

    def execute_market(self, order: Order, ts: float) -> list[Event]:
        """Fill a market order at the touch now, or refuse it; returns the events to record."""
        tick = self.last_tick
        if tick is None:
            self.processed_signed_qty += order.signed_qty
            return [_rejected(order, ts, "no_market_data")]
        qty = order.qty
        if order.reduce_only:
            closable = abs(self.position_qty) if self.position_qty * order.signed_qty < 0 else 0.0
            if closable < EPS:
                self.processed_signed_qty += order.signed_qty
                return [_rejected(order, ts, "reduce_only_nothing_to_close")]
            qty = min(qty, closable)
            # the part that could not be used is refused, so the risk gate's pending count clears
            self.processed_signed_qty += order.signed_qty - (qty if order.side == "buy" else -qty)
        price = tick.ask if order.side == "buy" else tick.bid
        return self.apply_fill(order, qty, price, "taker", ts, tick)

    def apply_fill(
        self, order: Order, qty: float, price: float, liquidity: str, ts: float, tick: Tick
    ) -> list[Event]:
        """Book one fill: fee, position, realized PnL; returns order.filled and position.closed events."""
        rate = self.taker_fee_rate if liquidity == "taker" else self.maker_fee_rate
        fee = qty * price * rate
        signed = qty if order.side == "buy" else -qty
        self.processed_signed_qty += signed
        self.fill_count += 1
        self.fees_paid += fee
        events: list[Event] = []
        realized = 0.0
        pos = self.position_qty
        remaining = signed
        if pos * signed < 0:  # reduces (and maybe flips) the position
            closing = min(abs(pos), abs(signed))
            realized = (price - self.avg_price) * closing * (1 if pos > 0 else -1)
            closing_fee = fee * closing / qty
            self.realized_pnl += realized
            trade = self._trade(ts, pos)
            trade.realized_pnl += realized
            trade.fees += closing_fee
            trade.exit_notional += closing * price
            trade.exit_qty += closing
            self.position_qty = pos + (closing if pos < 0 else -closing)
            remaining = signed + (closing if signed < 0 else -closing)
            if abs(self.position_qty) < EPS:
                self.position_qty = 0.0
                self.avg_price = 0.0
                events.append(self._closed_event(trade, ts))
                self.trade = None
        if abs(remaining) > EPS:  # opens or adds
            new_qty = self.position_qty + remaining
            self.avg_price = (self.avg_price * abs(self.position_qty) + price * abs(remaining)) / abs(new_qty)
            self.position_qty = new_qty
            trade = self._trade(ts, new_qty)
            trade.fees += fee * abs(remaining) / qty
            trade.entry_notional += abs(remaining) * price
            trade.entry_qty += abs(remaining)
            trade.max_qty = max(trade.max_qty, abs(new_qty))
        fill = Event(
            ts,
            "order.filled",
            {
                "order_id": order.id,
                "side": order.side,
                "qty": round(qty, 8),
                "requested_price": order.decision_price,
                "fill_price": price,
                "bid": tick.bid,
                "ask": tick.ask,
                "liquidity": liquidity,
                "fee": fee,
                "fee_bps": rate * 10_000,
                "slippage_bps": _slippage_bps(order.side, order.decision_price, price),
                "realized_pnl": realized,
                "position_qty": round(self.position_qty, 8),
                "reason": order.reason,
            },
        )
        self.on_tick(tick)
        return [fill, *events]

    def _trade(self, ts: float, signed_pos: float) -> OpenTrade:
        if self.trade is None:
            self.trade = OpenTrade(side="long" if signed_pos > 0 else "short", opened_ts=ts)
        return self.trade

    def _closed_event(self, trade: OpenTrade, ts: float) -> Event:
        return Event(
            ts,
            "position.closed",
            {
                "side": trade.side,
                "qty": round(trade.max_qty, 8),
                "entry_price": trade.entry_notional / trade.entry_qty if trade.entry_qty else 0.0,
                "exit_price": trade.exit_notional / trade.exit_qty if trade.exit_qty else 0.0,
                "realized_pnl": trade.realized_pnl,
                "fees": trade.fees,
                "net_pnl": trade.realized_pnl - trade.fees,
                "opened_ts": trade.opened_ts,
                "held_s": round(ts - trade.opened_ts, 3),
            },
        )

    def flatten_order(self, ts: float, order_id: str) -> Order | None:
        """The market order that closes the open position, or None when flat."""
        if abs(self.position_qty) < EPS:
            return None
        side: Side = "sell" if self.position_qty > 0 else "buy"
        tick = self.last_tick
        price = 0.0 if tick is None else tick.bid if side == "sell" else tick.ask
        return Order(
            id=order_id,
            ts=ts,
            side=side,
            qty=abs(self.position_qty),
            decision_price=price,
            reason="flatten_on_exit",
            reduce_only=True,
        )


def _slippage_bps(side: str, decision: float, fill: float) -> float:
    """Positive when the fill is worse for us than the decision price."""
    if decision <= 0:
        return 0.0
    diff = fill - decision if side == "buy" else decision - fill
    return diff / decision * 10_000


def _rejected(order: Order, ts: float, reason: str) -> Event:
    return Event(
        ts,
        "order.rejected",
        {"order_id": order.id, "side": order.side, "qty": order.qty, "reason": reason, "stage": "broker"},
    )


async def run_broker(
    account: PaperAccount,
    market_rx: trio.MemoryReceiveChannel[MarketEvent],
    orders_rx: trio.MemoryReceiveChannel[Order],
    events_tx: trio.MemorySendChannel[Event],
    now: Any,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Actor: keeps the account marked to market and fills the orders the risk gate approves."""

    async def market_loop() -> None:
        with market_rx:
            async for event in market_rx:
                if isinstance(event, Tick):
                    account.on_tick(event)

    async def order_loop() -> None:
        with orders_rx:
            async for order in orders_rx:
                for event in account.execute_market(order, now()):
                    await events_tx.send(event)

    with events_tx:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(market_loop)
            nursery.start_soon(order_loop)
            task_status.started()
