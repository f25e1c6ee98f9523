"""Check a run folder for consistency: `python -m tools.validate_session RUN`.

RUN is a run folder (or `runs/latest`). Exit 0 when everything agrees, 1 with one line per
disagreement otherwise, 2 when RUN is not a readable run folder. Checked:

- `events.jsonl`: every line JSON, `seq` 1, 2, 3, ... with no gap or repeat, starts with
  `session.started` and (when the session finished) ends with `session.stopped`;
- every fill once (its `fill_id`, or order id, time, size and price, never repeated), and of an
  order given before it, of its side, still open, with that much left to fill (`check_orders`);
- position, realized PnL, fees and funding recomputed from the fills alone (average-cost netting
  per symbol, independent of the broker's code) equal the final report, to the cent;
- `net_pnl = ending_equity - starting_equity = realized_pnl - fees_paid - funding_paid + unrealized_pnl`;
- `funding_paid` is the sum of the `funding` events' amounts, and a report saying funding was not
  modelled (`funding_source` "none") has no `funding` event charging anything, a live one's
  `feed` names symbols whose rates market.jsonl recorded, `feed (no rates)` ones it recorded none
  of (`check_funding_source`); a backtest's
  charges at its `--funding` file's rates and at marks its data file gave (`check_funding_data`);
- the report equals the one derived again from the events;
- each record on its own (see `check_records`): every fill's fee is its size x price x its
  `fee_bps`, which is the configured taker or maker rate of its liquidity; it records its
  `requested_price`, `slippage_bps`, `latency_ms` (>= 0), `bid`, `ask` and `liquidity`; a taker's
  price is its recorded touch or worse (a buy at the ask or above, a sell at the bid or below), a
  maker's its limit or better (a liquidation's fill, `source` "bankruptcy", is at the
  bankruptcy price, where the exchange takes the position over); its `slippage_bps` is its price
  against the `requested_price`; in a live session or a replay (`check_market`) its bid and ask
  are a quote market.jsonl recorded when it filled (a taker at the touch no more than its size, a resting
  limit on a trade through its price), a fill from the book takes a level of the book then in
  force, no more than it held; in a backtest whose data file is the one it read (`check_data`)
  its bid and ask are within a candle of it, a quote's at an open or a close, its price never
  better than the candle went (a stop crossed by a gap: than the open moved by the slippage, as
  far as the candle's range goes), a fill on a candle's path (`candle`) never beyond that candle's
  own low (a sell) or high (a buy), live against market.jsonl's candle (`_check_in_range`); a liquidation is at the position's bankruptcy price; its latency is
  the time since its order (`check_orders`); a `liquidation` at the liquidation price the
  position's entry, leverage and maintenance rate give, its mark at or past it (and in a backtest a
  price its data gave then); its `realized_pnl` and `position_qty` are this file's
  own netting of the fills before it; its `levels` add up to its size; every `position.closed` is
  the round trip the fills make (side, size, average entry and exit prices, realized PnL, fees,
  time held); every heartbeat's realized PnL, fees and position are the fills' up to it, its
  unrealized PnL the position at its mark, and its equity their sum with the funding so far;
- `metrics.json`'s rows are the heartbeats, and `metrics.csv` is `metrics.json` rounded;
- `alerts.jsonl`: each alert names by its `seq` the `alert` event it was raised with (its rule,
  message and time), `memory` and `disk` (the machine's) none (`check_alerts`);
- `report.html` (the command line, not `validate()` unless asked: it rebuilds the page) shows
  the summary and statistics the page the run folder's files give shows, cell for cell;
- flat at a clean end: no position left and `open_positions` empty;
- attribution (see `check_attribution`): each fill's `allocations` sum to its signed size and its
  fee, each funding event's to its amount; a fill of no strategy's order is shared by the
  holders' positions, its fee by the shares' sizes; each strategy's virtual position, replayed from its
  allocations by this file's own netting, gives the realized PnL its allocations say, and the
  report's `strategies` and `symbols` tables equal the figures recomputed here (to the cent); the
  strategies' fees and funding sum to the account's, and their realized PnL too when every virtual
  position ends flat, as each must at a clean end (the end's flatten shares its fill among them, or
  with the net flat crosses them at the mark: `position.crossed`, checked to close each holder's
  whole position, and only the holders', at no fee, at the mark: live and in replays a quote's mid
  or the exchange's mark price in force then, in backtests a price its data file gave then). The
  strategies' trades need not sum to `trade_count` (round trips of the net
  position: overlapping trades of two strategies can make one of the account's, or opposite ones
  more); the summary line on standard error gives both. A run from before allocations counts each
  fill wholly to its `strategy_id` (or ""); a report from before the tables is not held to them.

An abandoned run (status `abandoned`: its process was killed before its first checkpoint and the
next start closed it, see actors/recording/abandon.py) need not be flat: the position it had went
with its process. Its fills after market.jsonl's last record are not checked against the market
(the kill may have cut that file's buffer before the events'). Everything else is checked as above,
and its `session.stopped` must say `abandoned` with nothing unrealized and nothing open.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import csv
import html
import json
import math
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from protocols.instruments import grid_instrument
from protocols.messages import EXCHANGE_QUOTE_SOURCES
from protocols.records import METRIC_FIELDS, ReportBuilder, iso, metric_decimals

CENT = 0.01
EPS = 1e-9
ABANDONED = "abandoned"
# Report fields added after run folders were first written: a report without them is older.
LATER_FIELDS = ("strategies", "symbols", "storage_faults", "stop_detail")  # not in older reports
FIGURES = ("fills", "trades", "wins", "losses", "realized_pnl", "fees", "funding", "net_pnl")
COUNTS = ("fills", "trades", "wins", "losses")


class Ledger:
    """Position and PnL from fills alone (average cost, netting)."""

    def __init__(self) -> None:
        self.qty = 0.0
        self.avg = 0.0
        self.realized = 0.0
        self.fees = 0.0

    def fill(self, side: str, qty: float, price: float, fee: float) -> None:
        signed = qty if side == "buy" else -qty
        self.fees += fee
        if self.qty * signed < 0:
            closing = min(abs(self.qty), qty)
            self.realized += (price - self.avg) * closing * (1 if self.qty > 0 else -1)
            self.qty += closing if self.qty < 0 else -closing
            signed += -closing if signed > 0 else closing
            if abs(self.qty) < EPS:
                self.qty, self.avg = 0.0, 0.0
        if abs(signed) > EPS:
            new = self.qty + signed
            self.avg = (self.avg * abs(self.qty) + price * abs(signed)) / abs(new)
            self.qty = new


def load_events(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    events, problems = [], []
    with path.open("rb") as f:  # orjson: the reading is most of a validation's time
        for n, line in enumerate(f, 1):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                problems.append(f"events.jsonl line {n}: not JSON (truncated write?)")
                continue
            if not isinstance(record, dict) or not all(
                isinstance(record.get(k), t) for k, t in (("seq", int), ("kind", str), ("ts", str))
            ):
                problems.append(f"events.jsonl line {n}: not an event (an object with seq, kind and ts)")
                continue
            events.append(record)
    return events, problems


# what a record missing a field, or holding a value of the wrong type, raises in the checks
MALFORMED = (KeyError, TypeError, ValueError, AttributeError, ArithmeticError)


def load_report(run: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """final_report.json (None: not written, an unfinished run), or a problem saying why not."""
    path = run / "final_report.json"
    if not path.exists():
        return None, []
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, [f"final_report.json: unreadable ({exc})"]
    if not isinstance(report, dict):
        return None, ["final_report.json: not a JSON object"]
    return report, []


def _started(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's `session.started` event ({} when there is none)."""
    return next((e for e in events if e.get("kind") == "session.started"), {})


def check_sequence(events: list[dict[str, Any]], finished: bool) -> list[str]:
    problems = []
    for expected, event in enumerate(events, 1):
        if event.get("seq") != expected:
            problems.append(f"events.jsonl: seq {event.get('seq')} where {expected} was expected")
            break
    if not events or events[0].get("kind") != "session.started":
        problems.append("events.jsonl: does not start with session.started")
    if finished and (not events or events[-1].get("kind") != "session.stopped"):
        problems.append("events.jsonl: a finished session must end with session.stopped")
    return problems


def check_fills(events: list[dict[str, Any]], report: dict[str, Any] | None) -> list[str]:
    problems = []
    ledgers: dict[str, Ledger] = {}  # one per symbol (a fill without one: the session's)
    default_symbol = report.get("symbol", "") if report else ""
    seen: Counter[str] = Counter()
    funding = 0.0
    charges = 0
    for e in events:
        if e["kind"] == "funding":
            funding += e.get("amount", 0.0)
            charges += e.get("amount", 0.0) != 0
        if e["kind"] != "order.filled":
            continue
        fill_id = str(e.get("fill_id") or f"{e['order_id']}@{e['ts']}:{e['qty']}@{e['fill_price']}")
        seen[fill_id] += 1
        if seen[fill_id] > 1:
            problems.append(f"fill {fill_id} recorded more than once (seq {e['seq']})")
        symbol = e.get("symbol") or default_symbol
        ledgers.setdefault(symbol, Ledger()).fill(e["side"], e["qty"], e["fill_price"], e["fee"])
    if report is None:
        return problems
    realized = sum(ledger.realized for ledger in ledgers.values())
    fees = sum(ledger.fees for ledger in ledgers.values())
    for key, value in (("realized_pnl", realized), ("fees_paid", fees)):
        if abs(report.get(key, 0.0) - value) > CENT:
            problems.append(f"report {key} = {report.get(key)} but the fills give {value:.6f}")
    if "funding_paid" in report and abs(report["funding_paid"] - funding) > CENT:
        problems.append(
            f"report funding_paid = {report['funding_paid']} but funding events give {funding:.6f}"
        )
    if report.get("funding_source") == "none" and charges:
        problems.append(f"report funding_source = 'none' (not modelled) but {charges} funding events charged")
    for symbol, ledger in sorted(ledgers.items()):
        if report.get("status") == "ok" and abs(ledger.qty) > EPS:
            problems.append(f"session ended ok but the fills leave a position of {ledger.qty:+.8f} {symbol}")
    return problems


def check_report(events: list[dict[str, Any]], report: dict[str, Any]) -> list[str]:
    problems = []
    start, end = report["starting_equity"], report["ending_equity"]
    net = report["net_pnl"]
    funding = report.get("funding_paid", 0.0)
    if abs(net - (end - start)) > CENT:
        problems.append(f"net_pnl {net} != ending_equity - starting_equity ({end - start:.6f})")
    parts = report["realized_pnl"] - report["fees_paid"] - funding + report["unrealized_pnl"]
    if abs(net - parts) > CENT:
        problems.append(f"net_pnl {net} != realized - fees - funding + unrealized ({parts:.6f})")
    if report.get("status") == "ok" and report.get("open_positions"):
        problems.append(f"session ended ok but open_positions = {report['open_positions']}")
    heartbeats = [
        e for e in events if e.get("kind") == "heartbeat" and isinstance(e.get("equity"), int | float)
    ]
    if report.get("status") == "ok" and not report.get("open_positions"):  # flat: nothing unrealized
        if abs(report["unrealized_pnl"]) > CENT:
            problems.append(f"session ended ok and flat but unrealized_pnl = {report['unrealized_pnl']}")
        if heartbeats and abs(end - heartbeats[-1]["equity"]) > CENT:
            problems.append(
                f"ending_equity {end} but the last heartbeat (seq {heartbeats[-1]['seq']}) says "
                f"{heartbeats[-1]['equity']}"
            )
    problems += _check_drawdowns(heartbeats, report)
    builder = ReportBuilder()
    try:
        for e in events:
            builder.add(e)
        derived = builder.report()
    except (KeyError, TypeError, ValueError) as exc:  # a malformed event, named by the other checks
        return [*problems, f"the report cannot be derived again from the events: {type(exc).__name__}: {exc}"]
    # a session.started that lists its strategies and symbols is of a version whose report has
    # their tables (found by an audit: deleting them from a current report passed as "older")
    started = _started(events)
    current = {"strategies", "symbols"} if "strategies" in started and "symbols" in started else set()
    for key, value in derived.items():
        if key in LATER_FIELDS and key not in report and key not in current:
            continue
        if report.get(key) != value:
            problems.append(f"report {key} = {report.get(key)!r} but the events give {value!r}")
    return problems


def _check_drawdowns(heartbeats: list[dict[str, Any]], report: dict[str, Any]) -> list[str]:
    """Each heartbeat's `drawdown_pct` is at least the fall of its equity from the highest a
    heartbeat before it showed (the broker's peak, marked at every price, is at least that), and
    the report's `max_drawdown_pct` at least every heartbeat's."""
    problems: list[str] = []
    peak = -math.inf
    deepest = 0.0
    for beat in heartbeats:
        equity = float(beat["equity"])
        peak = max(peak, equity)
        said = beat.get("drawdown_pct")
        if not isinstance(said, int | float):
            continue
        deepest = max(deepest, float(said))
        least = (peak - equity) / peak * 100 if peak > 0 else 0.0
        if said < least - DRAWDOWN_TOL:
            problems.append(
                f"heartbeat seq {beat['seq']}: drawdown_pct {said} but its equity is {least:.4f} % under "
                "the peak of the heartbeats before it"
            )
    worst = report.get("max_drawdown_pct")
    if isinstance(worst, int | float) and worst < deepest - DRAWDOWN_TOL:
        problems.append(f"report max_drawdown_pct {worst} but a heartbeat says {deepest}")
    return problems


# drawdowns are written to 4 decimals, equities to 6
DRAWDOWN_TOL = 2e-4


# A figure a record states against the same figure recomputed here: records keep 6 decimals of
# money (heartbeats) or full precision (fills); sums of many fills differ in the last bits.
RECORD_TOL = 1e-6


# a heartbeat's money against the fills and funding before it: its 6 decimals, and the last bits
# of sums over tens of thousands of fills (found by an audit: 1e-5, 10 cents on 10,000 USDT, let a
# heartbeat's equity be moved by 9 cents)
HEARTBEAT_TOL = (1e-6, 1e-8)  # absolute (the 6 decimals kept), relative (the sums' last bits)


def _close(a: Any, b: float, tol: float = RECORD_TOL, absolute: float = 0.0) -> bool:
    return (
        isinstance(a, int | float)
        and not isinstance(a, bool)
        and abs(a - b) <= absolute + tol * max(1.0, abs(b))
    )


class TradeLedger(Ledger):
    """`Ledger` with the round trip of its position (flat to flat; a flip closes one, opens the
    next): what each `position.closed` must say."""

    def __init__(self) -> None:
        super().__init__()
        self.trade: dict[str, float] | None = None
        self.closed: list[dict[str, float | str]] = []
        self.history: list[tuple[float, float]] = []  # (the fill's time, the position after it)

    def trade_fill(self, side: str, qty: float, price: float, fee: float, ts: float) -> float:
        """Book the fill; returns its realized PnL."""
        before_qty, before_realized = self.qty, self.realized
        signed = qty if side == "buy" else -qty
        closing = min(abs(before_qty), qty) if before_qty * signed < 0 else 0.0
        self.fill(side, qty, price, fee)
        self.history.append((ts, self.qty))
        realized = self.realized - before_realized
        if closing > 0:
            trade = self.trade or self._open(before_qty, ts)
            trade["realized"] += realized
            trade["fees"] += fee * closing / qty
            trade["exit_notional"] += closing * price
            trade["exit_qty"] += closing
            if abs(before_qty) - closing < EPS:  # flat (and maybe opening the other way)
                self.closed.append(
                    {
                        "side": "long" if before_qty > 0 else "short",
                        "qty": trade["max_qty"],
                        "entry_price": trade["entry_notional"] / trade["entry_qty"],
                        "exit_price": trade["exit_notional"] / trade["exit_qty"],
                        "realized_pnl": trade["realized"],
                        "fees": trade["fees"],
                        "net_pnl": trade["realized"] - trade["fees"],
                        "held_s": ts - trade["opened_ts"],
                    }
                )
                self.trade = None
        opening = qty - closing
        if opening > EPS:
            trade = self.trade or self._open(self.qty, ts)
            trade["fees"] += fee * opening / qty
            trade["entry_notional"] += opening * price
            trade["entry_qty"] += opening
            trade["max_qty"] = max(trade["max_qty"], abs(self.qty))
        return realized

    def _open(self, signed_qty: float, ts: float) -> dict[str, float]:
        self.trade = dict.fromkeys(
            ("realized", "fees", "entry_notional", "entry_qty", "exit_notional", "exit_qty", "max_qty"), 0.0
        )
        self.trade["opened_ts"] = ts
        return self.trade

    def unrealized(self, mark: float | None) -> float:
        return 0.0 if mark is None or abs(self.qty) < EPS else (mark - self.avg) * self.qty


def _epoch(iso: str) -> float:
    """An event's `ts` (ISO-8601 UTC, milliseconds, 'Z') as seconds since the epoch."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _positions_since(ledger: TradeLedger, instant: float) -> list[float]:
    """The positions the fills gave from `instant` on: the one at it, then after each later fill."""
    since = [ledger.qty]
    for ts, qty in reversed(ledger.history):
        since.append(qty)
        # a fill stamped at the instant itself came after its charge (the broker charges an
        # instant before any step at or after it; a ts is cut to the ms: found by an audit)
        if ts < instant:
            return since
    return [*since, 0.0]  # flat before the first fill


def check_records(events: list[dict[str, Any]], report: dict[str, Any] | None) -> list[str]:
    """Each fill, closed trade and heartbeat against its own figures recomputed from the fills
    before it (found by an audit: a fill price moved by one tick, or a closed trade's entry price
    by 100, passed, as only the totals were compared, to the cent)."""
    problems: list[str] = []
    started = _started(events)
    broker = (started.get("config") or {}).get("broker") or {}
    rates = {"taker": broker.get("taker_fee_bps"), "maker": broker.get("maker_fee_bps")}
    default_symbol = (report or {}).get("symbol") or started.get("symbol", "")
    starting = started.get("starting_equity", broker.get("starting_equity"))
    ledgers: dict[str, TradeLedger] = {}
    closed_seen: dict[str, int] = {}
    funding = 0.0

    def ledger(symbol: str) -> TradeLedger:
        return ledgers.setdefault(symbol, TradeLedger())

    for e in events:
        kind = e["kind"]
        if kind == "funding":
            funding += e.get("amount", 0.0)
            problems += _check_funding(e, ledger(e.get("symbol") or default_symbol))
        elif kind == "order.filled":
            problems += _check_fill(
                e, rates, ledger(e.get("symbol") or default_symbol), broker.get("leverage")
            )
        elif kind == "liquidation":
            problems += _check_liquidation(
                e, ledger(e.get("symbol") or default_symbol), broker.get("leverage")
            )
        elif kind == "position.closed":
            symbol = e.get("symbol") or default_symbol
            n = closed_seen[symbol] = closed_seen.get(symbol, 0) + 1
            trades = ledger(symbol).closed
            name = f"position.closed seq {e['seq']}"
            if n > len(trades):
                problems.append(f"{name}: the fills before it close no position of {symbol}")
                continue
            want = trades[n - 1]
            for key, value in want.items():
                if key not in e:  # a record of an older version
                    continue
                if key == "held_s":  # its close's time less its opening fill's: events keep ms
                    if not _close(e.get(key), float(value), 0.002):
                        problems.append(f"{name}: held_s = {e.get(key)!r} but its fills give {value:.3f}")
                elif key == "side":
                    if e.get(key) != value:
                        problems.append(f"{name}: side = {e.get(key)!r} but its fills give {value!r}")
                elif not _close(e.get(key), float(value)):
                    problems.append(f"{name}: {key} = {e.get(key)!r} but its fills give {value:.6f}")
        elif kind == "heartbeat" and isinstance(starting, int | float):
            problems += _check_heartbeat(e, ledgers, default_symbol, starting, funding)
    for symbol, led in sorted(ledgers.items()):
        missing = len(led.closed) - closed_seen.get(symbol, 0)
        if missing > 0:
            problems.append(f"{symbol}: the fills close {missing} more position(s) than position.closed says")
    return problems


def _check_liquidation(e: dict[str, Any], ledger: TradeLedger, leverage: Any) -> list[str]:
    """A `liquidation` is of the position the fills before it leave, at the liquidation price its
    average entry, `broker.leverage` and the maintenance rate it records give (long: entry x (1 -
    1/leverage + rate); short: x (1 + 1/leverage - rate)), and its mark is at or past that price
    (found by an audit: a long bought at a backtest candle's gapped open was liquidated with its
    mark, the open, above its liquidation price, which only the gap it never held had crossed)."""
    name = f"liquidation seq {e['seq']}"
    keys = ("position_qty", "mark_price", "liquidation_price", "maintenance_margin_rate")
    if not all(isinstance(e.get(k), int | float) for k in keys):
        return [f"{name}: records no {', '.join(keys[:-1])} or {keys[-1]}"]
    qty, mark, liq, rate = (float(e[k]) for k in keys)
    problems = []
    if abs(qty - ledger.qty) > 1e-8:
        problems.append(f"{name}: position_qty {qty!r} but the fills before it give {ledger.qty:+.8f}")
    if isinstance(leverage, int | float) and leverage > 0 and not -EPS < ledger.qty < EPS:
        want = (
            ledger.avg * (1 - 1 / leverage + rate)
            if ledger.qty > 0
            else ledger.avg * (1 + 1 / leverage - rate)
        )
        if not _close(liq, want, 1e-9):
            problems.append(
                f"{name}: liquidation_price {liq!r}, but the position's average entry {ledger.avg:.6f}, "
                f"leverage {leverage:g} and maintenance rate {rate:g} give {want:.6f}"
            )
    if (mark > liq * (1 + _EPS)) if qty > 0 else (mark < liq * (1 - _EPS)):
        problems.append(
            f"{name}: the {'long' if qty > 0 else 'short'}'s mark {mark} has not reached its liquidation price {liq}"
        )
    return problems


def _check_bankruptcy(e: dict[str, Any], name: str, ledger: TradeLedger, leverage: float) -> list[str]:
    """A liquidation fills the whole position at its bankruptcy price, where its margin is gone:
    the average entry x (1 - 1/leverage) for a long, x (1 + 1/leverage) for a short (on the price
    grid toward the position; a tick's rounding and 0.01 % allowed) (found by an audit: a
    liquidation at any price passed, `bankruptcy` being exempt from the touch check)."""
    qty, avg = ledger.qty, ledger.avg
    if -EPS < qty < EPS:
        return [f"{name}: a liquidation with no position to liquidate"]
    want = avg * (1 - 1 / leverage) if qty > 0 else avg * (1 + 1 / leverage)
    tick = grid_instrument(e.get("symbol") or "").tick_size
    if abs(e["fill_price"] - want) > want * 1e-4 + tick + 1e-9:
        return [
            f"{name}: a liquidation at {e['fill_price']}, but the position's bankruptcy price (average "
            f"entry {avg:.6f}, leverage {leverage:g}) is {want:.6f}"
        ]
    if abs(e["qty"] - abs(qty)) > 1e-8:
        return [f"{name}: a liquidation of {e['qty']}, but the position is {qty:+.8f}"]
    return []


def _check_fill(
    e: dict[str, Any], rates: dict[str, Any], ledger: TradeLedger, leverage: Any = None
) -> list[str]:
    problems: list[str] = []
    name = f"fill {e.get('fill_id') or e.get('order_id')} (seq {e['seq']})"
    qty, price, fee, side = e["qty"], e["fill_price"], e["fee"], e["side"]
    bps = e.get("fee_bps")
    if bps is not None:
        if not _close(fee, qty * price * bps / 10_000, 1e-9):
            problems.append(
                f"{name}: fee {fee!r} but qty x price x fee_bps gives {qty * price * bps / 10_000:.10f}"
            )
        configured = rates.get(e.get("liquidity", ""))
        if isinstance(configured, int | float) and not _close(bps, configured, 1e-9):
            problems.append(
                f"{name}: fee_bps {bps!r} but the configured {e.get('liquidity')} fee is {configured}"
            )
    problems += _check_touch(e, name)
    if e.get("source") == "bankruptcy" and isinstance(leverage, int | float) and leverage > 0:
        problems += _check_bankruptcy(e, name, ledger, leverage)
    requested = e.get("requested_price")
    if "slippage_bps" in e and isinstance(requested, int | float) and requested > 0:
        diff = price - requested if side == "buy" else requested - price
        if not _close(e["slippage_bps"], diff / requested * 10_000, 1e-6):
            problems.append(
                f"{name}: slippage_bps {e['slippage_bps']!r} but its price against the requested "
                f"{requested} gives {diff / requested * 10_000:.6f}"
            )
    levels = e.get("levels")
    if isinstance(levels, list) and levels:
        taken = sum(level[1] for level in levels)
        if abs(taken - qty) > EPS:
            problems.append(f"{name}: its levels add up to {taken:.10f} but its size is {qty}")
    realized = ledger.trade_fill(side, qty, price, fee, _epoch(e["ts"]))
    if "realized_pnl" in e and not _close(e["realized_pnl"], realized):
        problems.append(
            f"{name}: realized_pnl {e['realized_pnl']!r} but netting the fills gives {realized:.8f}"
        )
    if "position_qty" in e and abs(e["position_qty"] - ledger.qty) > 1e-8:
        problems.append(f"{name}: position_qty {e['position_qty']!r} but the fills give {ledger.qty:+.8f}")
    return problems


# what every fill records beside its price (README, order.filled): a fill without them cannot be
# checked against the market it says it took, and honest numbers are always recorded
FILL_RECORD = ("requested_price", "slippage_bps", "latency_ms", "bid", "ask", "liquidity")


def _check_touch(e: dict[str, Any], name: str) -> list[str]:
    """A fill against the market it recorded: a taker's price at its touch or worse (a buy at the
    ask or above, a sell at the bid or below: slippage only ever costs), a maker's at its limit
    (the requested price) or better; the bid never above the ask; the latency a time, >= 0."""
    missing = [k for k in FILL_RECORD if not isinstance(e.get(k), int | float | str)]
    if missing:
        return [f"{name}: records no {', '.join(missing)}"]
    price, side, bid, ask = e["fill_price"], e["side"], e["bid"], e["ask"]
    problems = []
    if not (isinstance(bid, int | float) and isinstance(ask, int | float) and 0 < bid <= ask + EPS):
        problems.append(f"{name}: bid {bid!r} and ask {ask!r} are not a market")
    elif (
        e["liquidity"] == "taker"
        and e.get("source") != "bankruptcy"  # a liquidation: the exchange takes it at that price
        and (price < ask - EPS if side == "buy" else price > bid + EPS)
    ):
        touch = f"ask {ask}" if side == "buy" else f"bid {bid}"
        problems.append(f"{name}: a taker {side} at {price}, better than the {touch} it recorded")
    requested = e["requested_price"]
    if e["liquidity"] == "maker" and (price > requested + EPS if side == "buy" else price < requested - EPS):
        problems.append(f"{name}: a maker {side} at {price}, worse than its limit {requested}")
    latency = e["latency_ms"]
    if not (isinstance(latency, int | float) and 0 <= latency < math.inf):
        problems.append(f"{name}: latency_ms {latency!r} is not a time >= 0")
    return problems


def _check_funding(e: dict[str, Any], ledger: TradeLedger) -> list[str]:
    """A funding charge is the net position at its instant x the mark x the rate (each strategy
    pays its virtual share, and the shares sum to the net's). A live charge booked after its
    instant (its rate came later: `rate_settled_at`) is on the position of the instant, which
    later fills may have changed by the time it is written."""
    problems: list[str] = []
    name = f"funding seq {e['seq']}"
    qty, mark, rate = e.get("position_qty"), e.get("mark_price"), e.get("rate_pct")
    if qty is None or mark is None or rate is None:
        return problems
    held = [ledger.qty]
    if "rate_settled_at" in e and isinstance(e.get("instant"), str):
        held = _positions_since(ledger, _epoch(e["instant"]))
    if all(abs(qty - h) > 1e-8 for h in held):
        problems.append(f"{name}: position_qty {qty!r} but the fills before it give {ledger.qty:+.8f}")
    if not _close(e.get("amount"), qty * mark * rate / 100, 1e-9):
        problems.append(
            f"{name}: amount {e.get('amount')!r} but position x mark x rate gives {qty * mark * rate / 100:.10f}"
        )
    return problems


def _check_heartbeat(
    e: dict[str, Any], ledgers: dict[str, TradeLedger], symbol: str, starting: float, funding: float
) -> list[str]:
    problems: list[str] = []
    name = f"heartbeat seq {e['seq']}"
    realized = sum(led.realized for led in ledgers.values())
    fees = sum(led.fees for led in ledgers.values())
    prices: dict[str, Any] = e["prices"] if isinstance(e.get("prices"), dict) else {symbol: e.get("price")}
    unrealized = sum((led.unrealized(prices.get(sym)) for sym, led in ledgers.items()), 0.0)
    own = ledgers.get(symbol)
    want = {
        "realized_pnl": realized,
        "fees_paid": fees,
        "funding_paid": funding,
        "unrealized_pnl": unrealized,
        "position_qty": own.qty if own else 0.0,
        "equity": starting + realized - fees - funding + unrealized,
    }
    for key, value in want.items():
        absolute, tol = (0.0, 1e-8) if key == "position_qty" else HEARTBEAT_TOL
        if key in e and not _close(e[key], value, tol, absolute):
            problems.append(
                f"{name}: {key} = {e[key]!r} but the fills and funding before it give {value:.6f}"
            )
    return problems


# the trading columns of a metrics row (the rest is the process's health, not in the heartbeat)
METRICS_FIGURES = METRIC_FIELDS  # every figure of a heartbeat is its metrics row's
METRICS_MONEY = ("equity", "realized_pnl", "unrealized_pnl", "fees_paid", "funding_paid")


def check_metrics(run: Path, events: list[dict[str, Any]]) -> list[str]:
    """`metrics.json`'s rows are the heartbeats, one each, in order; `metrics.csv`'s the same
    rows rounded (money to the cent). Missing files are not problems (a run killed before them)."""
    problems: list[str] = []
    heartbeats = [e for e in events if e.get("kind") == "heartbeat"]
    path = run / "metrics.json"
    if not path.exists():
        return problems
    started = _started(events)
    price_dp, qty_dp = metric_decimals(str(started.get("symbol") or ""))
    rounded = {
        "elapsed_s": 0.0005 + EPS,
        "price": 0.5 * 10.0**-price_dp + EPS,
        "position_qty": 0.5 * 10.0**-qty_dp + EPS,
        "drawdown_pct": 0.005 + EPS,
    }
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        return [f"metrics.json: unreadable ({type(exc).__name__}: {exc})"]
    if len(rows) != len(heartbeats):
        problems.append(f"metrics.json: {len(rows)} rows but {len(heartbeats)} heartbeats in events.jsonl")
    for i, (row, beat) in enumerate(zip(rows, heartbeats, strict=False), 1):
        wrong = [k for k in METRICS_FIGURES if k in beat and row.get(k) != beat[k]]
        if wrong:
            problems.append(
                f"metrics.json row {i}: {', '.join(f'{k} = {row.get(k)!r}' for k in wrong)} but heartbeat "
                f"seq {beat['seq']} says {', '.join(repr(beat[k]) for k in wrong)}"
            )
    csv_path = run / "metrics.csv"
    if csv_path.exists():
        with csv_path.open(encoding="utf-8", newline="") as f:
            table = list(csv.DictReader(f))
        if len(table) != len(rows):
            problems.append(f"metrics.csv: {len(table)} rows but metrics.json has {len(rows)}")
        for i, (line, row) in enumerate(zip(table, rows, strict=False), 1):
            for key in METRICS_MONEY:
                if row.get(key) is None and not line.get(key):
                    continue  # a column the run's version did not write (funding_paid before it)
                try:
                    same = abs(float(line[key]) - float(row[key])) <= 0.005 + EPS
                except (KeyError, TypeError, ValueError):
                    same = False
                if not same:
                    problems.append(
                        f"metrics.csv row {i}: {key} = {line.get(key)!r} but metrics.json says {row.get(key)!r}"
                    )
            for key in ("ts", "mark_source"):
                if key in line and (line.get(key) or None) != (row.get(key) or None):
                    problems.append(
                        f"metrics.csv row {i}: {key} {line.get(key)!r} but metrics.json says {row.get(key)!r}"
                    )
            for key, half in rounded.items():  # rounded for people: within half their last digit
                want, got = row.get(key), line.get(key)
                try:
                    same = (want is None and not got) or abs(float(got or "nan") - float(want)) <= half
                except (TypeError, ValueError):
                    same = False
                if not same:
                    problems.append(f"metrics.csv row {i}: {key} = {got!r} but metrics.json says {want!r}")
    return problems


def check_page(run: Path) -> list[str]:
    """What `report.html` shows of the run, its summary and every statistic's cell (its exact
    `data-value` and the text shown), is what the page the run folder's files give shows (rebuilt
    here; found by an audit: a page with its net PnL's sign flipped passed). The rest of the page
    (its definitions, layout, scripts) may differ between versions of the program."""
    from actors.recording.html_report import REPORT_NAME, build_report  # only here: the page's code

    page = run / REPORT_NAME
    if not page.exists():
        return []
    # a summary row (its label, its text) or a statistic's cell (its id, its text; its exact value)
    shown = re.compile(
        r'<tr><th>([^<]*)</th><td class="text">([^<]*)</td></tr>|<td id="([^"]+)" data-value="([^"]*)"[^>]*>([^<]*)</td>'
    )

    def figures(text: str) -> list[tuple[str, str]]:
        return [
            (html.unescape(m[0] or m[2]), html.unescape(m[1] or f"{m[4]} (exactly {m[3] or 'none'})"))
            for m in shown.findall(text)
        ]

    with tempfile.TemporaryDirectory() as tmp:
        try:
            rebuilt = build_report(run, Path(tmp) / REPORT_NAME).read_text(encoding="utf-8")
        except Exception as exc:  # a page that cannot be rebuilt is the finding
            return [f"{REPORT_NAME}: cannot be rebuilt from the run folder ({type(exc).__name__}: {exc})"]
    try:
        text = page.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{REPORT_NAME}: unreadable ({exc})"]
    written = figures(text)
    want = figures(rebuilt)
    differ = [
        f"{got[0]} {got[1]!r} where the events give {should[0]} {should[1]!r}"
        for got, should in zip(written, want, strict=False)
        if got != should
    ]
    if len(written) != len(want):
        differ.append(f"{len(written)} figures where the events give {len(want)}")
    differ += _table_differences(text, rebuilt)
    if differ:
        return [
            f"{REPORT_NAME}: shows {differ[0]}" + (f" and {len(differ) - 1} more" if len(differ) > 1 else "")
        ]
    return []


_TABLE = re.compile(r'<table[^>]*\bid="([^"]+)"[^>]*>(.*?)</table>', re.S)
_CELL = re.compile(r"<t([dh])\b[^>]*>(.*?)</t[dh]>", re.S)
_TAG = re.compile(r"<[^>]+>")
_H3 = re.compile(r"<h3[^>]*>(.*?)</h3>", re.S)


def _table_differences(written: str, rebuilt: str) -> list[str]:
    """The page's tables (trades, entries, by strategy and symbol, risk, feed) cell by cell against
    the rebuilt page's, each table whose headings are the same in both (a table a later version
    lays out otherwise is not compared) (found by an audit: a trade's net PnL flipped, an exit
    reason changed, a strategy's fills or the breaker trips edited, passed)."""

    def tables(text: str) -> dict[str, list[tuple[str, str]]]:
        return {
            tid: [(kind, html.unescape(_TAG.sub("", body)).strip()) for kind, body in _CELL.findall(inner)]
            for tid, inner in _TABLE.findall(text)
        }

    got, want = tables(written), tables(rebuilt)
    differ = []
    titles = [_H3.findall(text) for text in (written, rebuilt)]
    if len(titles[0]) == len(titles[1]):  # the sections' titles, their counts ("Breaker trips (5)")
        differ += [
            f"the title {a!r} where the events give {b!r}" for a, b in zip(*titles, strict=True) if a != b
        ][:1]
    for tid, cells in want.items():
        shown = got.get(tid)
        if shown is None or [c for c in shown if c[0] == "h"] != [c for c in cells if c[0] == "h"]:
            continue
        if len(shown) != len(cells):
            differ.append(f"table {tid} with {len(shown)} cells where the events give {len(cells)}")
            continue
        for n, (a, b) in enumerate(zip(shown, cells, strict=True)):
            if a != b:
                differ.append(f"table {tid} cell {n} {a[1]!r} where the events give {b[1]!r}")
                break
    return differ


class StrategyLedger:
    """One strategy's virtual position in one symbol, from its allocations: netted by `Ledger`
    at the fills' prices (a check on the realized PnL the allocations state), its totals, and its
    trades (flat back to flat; a flip closes one and opens the next). A trade's result is its
    allocations' realized PnL less its fees (a flip's fee split by size) and the funding charged
    while it was open."""

    def __init__(self) -> None:
        self.ledger = Ledger()
        self.fills = 0
        self.stated_realized = 0.0
        self.fees = 0.0
        self.funding = 0.0
        self.results: list[float] = []  # the closed trades' results
        self.current = 0.0  # the open trade's result so far

    def fill(self, signed: float, price: float, realized: float, fee: float, *, counted: bool = True) -> None:
        """A fill's allocation (`counted=False`: a cross's, no fill of the strategy's own)."""
        before = self.ledger.qty
        if abs(signed) > EPS:
            self.ledger.fill("buy" if signed > 0 else "sell", abs(signed), price, fee)
        after = self.ledger.qty
        self.fills += counted
        self.stated_realized += realized
        self.fees += fee
        was_open, is_open = abs(before) > EPS, abs(after) > EPS
        flipped = was_open and is_open and before * after < 0
        if not was_open:
            if is_open:
                self.current = realized - fee
        elif flipped:
            share = abs(before) / abs(signed)
            self.results.append(self.current + realized - fee * share)
            self.current = -fee * (1 - share)
        else:
            self.current += realized - fee
            if not is_open:
                self.results.append(self.current)
                self.current = 0.0

    def fund(self, amount: float) -> None:
        self.funding += amount
        if abs(self.ledger.qty) > EPS:
            self.current -= amount

    @staticmethod
    def figures(ledgers: list[StrategyLedger], fills: int) -> dict[str, float]:
        results = [r for s in ledgers for r in s.results]
        realized = sum(s.stated_realized for s in ledgers)
        fees = sum(s.fees for s in ledgers)
        funding = sum(s.funding for s in ledgers)
        return {
            "fills": fills,
            "trades": len(results),
            "wins": sum(1 for r in results if r > 0),
            "losses": sum(1 for r in results if r < 0),
            "realized_pnl": realized,
            "fees": fees,
            "funding": funding,
            "net_pnl": realized - fees - funding,
        }


# what a fill's (and a cross's) allocations hold, each
FILL_ALLOCATION = "strategy_id, signed_qty, realized_pnl, fee"


class Attribution:
    """The strategies' figures recomputed from the allocations, and the problems met on the way."""

    def __init__(self, events: list[dict[str, Any]], symbol: str) -> None:
        self.symbol = symbol
        self.ledgers: dict[tuple[str, str], StrategyLedger] = {}
        self.symbol_fills: Counter[str] = Counter()
        self.problems: list[str] = []
        # the session's strategies and symbols: a row each in the tables, traded or not
        started = _started(events)
        self.strategy_ids: list[str] = list(started.get("strategies", []))
        self.symbol_names: list[str] = list(started.get("symbols", []))
        # each symbol's virtual positions after each of its fills: (the fill's time, {strategy: qty})
        self.held_after: dict[str, list[tuple[float, dict[str, float]]]] = {}
        for e in events:
            if e.get("kind") == "order.filled":
                self._fill(e)
            elif e.get("kind") == "funding":
                self._funding(e)
            elif e.get("kind") == "position.crossed":
                self._cross(e)

    def _ledger(self, symbol: str, strategy_id: str) -> StrategyLedger:
        return self.ledgers.setdefault((symbol, strategy_id), StrategyLedger())

    def _fill(self, e: dict[str, Any]) -> None:
        symbol = e.get("symbol") or self.symbol
        self.symbol_fills[symbol] += 1
        signed = e["qty"] if e["side"] == "buy" else -e["qty"]
        name = f"fill {e.get('fill_id') or e.get('order_id')} (seq {e.get('seq')})"
        if "allocations" not in e:
            self._ledger(symbol, e.get("strategy_id", "")).fill(
                signed, e["fill_price"], e["realized_pnl"], e["fee"]
            )
            return
        allocations = e["allocations"]
        well_formed, _ = self._well_formed(name, allocations, FILL_ALLOCATION)
        qty_sum = sum(a[1] for a in well_formed)
        fee_sum = sum(a[3] for a in well_formed)
        if abs(qty_sum - signed) > EPS:
            self.problems.append(
                f"{name}: allocations sum to qty {qty_sum:+.10f} but the fill is {signed:+.10f}"
            )
        if abs(fee_sum - e["fee"]) > EPS:
            self.problems.append(
                f"{name}: allocations sum to fee {fee_sum:.10f} but the fill's is {e['fee']:.10f}"
            )
        owner = e.get("strategy_id") or ""
        if owner and [a[0] for a in well_formed] != [owner]:
            # an order of a strategy's is wholly its own (found by an audit: a fill booked to
            # another strategy passed, its report rebuilt to match)
            self.problems.append(
                f"{name}: an order of strategy {owner!r} allocated to {[a[0] for a in well_formed]}"
            )
        elif not owner and len(well_formed) > 1:
            # a fill of no strategy's (a flatten, a liquidation) closes each holder's share of its
            # own position: never adds to one, never more than it holds
            for strategy_id, qty, _, _ in well_formed:
                held = self._ledger(symbol, strategy_id).ledger.qty
                if held * qty > EPS * EPS or abs(qty) > abs(held) + EPS:
                    self.problems.append(
                        f"{name}: {strategy_id!r} allocated {qty:+.10f} against its position {held:+.10f} "
                        "(a fill of no strategy's only closes each holder's share)"
                    )
            self.problems += self._shares(name, symbol, signed, e["fee"], well_formed)
        for strategy_id, qty, realized, fee in well_formed:
            self._ledger(symbol, strategy_id).fill(qty, e["fill_price"], realized, fee)
        self.held_after.setdefault(symbol, []).append((_epoch(e["ts"]), self.held(symbol)))

    def _cross(self, e: dict[str, Any]) -> None:
        """`position.crossed`: with the net flat, the strategies' virtual positions closed against
        each other at one price, no fee: each holder's whole position, and only the holders'."""
        symbol = e.get("symbol") or self.symbol
        name = f"cross (seq {e.get('seq')})"
        allocations, price = e.get("allocations"), e.get("price")
        well_formed, _ = self._well_formed(name, allocations, FILL_ALLOCATION)
        if not (isinstance(price, int | float) and math.isfinite(price) and price > 0):
            self.problems.append(f"{name}: price {price!r} is not a price")
            return
        held = self.held(symbol)
        given = {a[0]: a[1] for a in well_formed}
        if set(given) != set(held) or any(abs(given[sid] + qty) > EPS for sid, qty in held.items()):
            self.problems.append(
                f"{name}: crosses {given} where the strategies held {held} (each closes its whole position)"
            )
        if abs(sum(held.values())) > EPS:
            self.problems.append(f"{name}: the strategies' positions {held} do not net to 0")
        if any(a[3] != 0 for a in well_formed):
            self.problems.append(f"{name}: a cross pays no fee ({[a[3] for a in well_formed]})")
        for strategy_id, qty, realized, fee in well_formed:
            self._ledger(symbol, strategy_id).fill(qty, price, realized, fee, counted=False)
        self.held_after.setdefault(symbol, []).append((_epoch(e["ts"]), self.held(symbol)))

    def _well_formed(self, name: str, allocations: Any, fields: str) -> tuple[list[list[Any]], bool]:
        """The allocations of the form `[fields]` (a strategy id, then numbers), and whether all
        are; a problem named `name` when not."""
        size = fields.count(",") + 1
        well_formed = (
            [a for a in allocations if _is_allocation(a, size)] if isinstance(allocations, list) else []
        )
        whole = isinstance(allocations, list) and len(well_formed) == len(allocations)
        if not whole:
            self.problems.append(f"{name}: allocations {allocations!r} are not [{fields}] each")
        return well_formed, whole

    def held(self, symbol: str) -> dict[str, float]:
        """The strategies' virtual positions in `symbol` now (those not flat)."""
        return {
            sid: led.ledger.qty
            for (sym, sid), led in self.ledgers.items()
            if sym == symbol and not -EPS < led.ledger.qty < EPS
        }

    def _shares(
        self, name: str, symbol: str, signed: float, fee: float, allocations: list[list[Any]]
    ) -> list[str]:
        """A fill of no strategy's shared among the holders (README, Per-strategy attribution):
        each holder's share of its size in proportion to its position, of the fee in proportion to
        its share's size (found by an audit: a split moved between two strategies, their report
        rows moved to match, passed on its sums)."""
        holders = {
            sid: ledger.ledger.qty
            for (sym, sid), ledger in self.ledgers.items()
            if sym == symbol and not -EPS < ledger.ledger.qty < EPS
        }
        total = sum(holders.values())
        if not holders or abs(total) <= EPS:
            return []
        problems = []
        given = {a[0]: a for a in allocations}
        if set(given) != set(holders):
            problems.append(f"{name}: shared among {sorted(given)} but {sorted(holders)} held positions")
            return problems
        gross = sum(abs(a[1]) for a in allocations)
        for sid, held in holders.items():
            _, qty, _, share_fee = given[sid]
            if abs(qty - signed * held / total) > 1e-9:
                problems.append(
                    f"{name}: {sid!r}'s share {qty:+.10f} is not its position's {held:+.10f} of "
                    f"{total:+.10f} held ({signed * held / total:+.10f})"
                )
            if gross > 0 and abs(share_fee - fee * abs(qty) / gross) > 1e-9:
                problems.append(
                    f"{name}: {sid!r}'s fee {share_fee:.10f} is not its share's of the fee "
                    f"({fee * abs(qty) / gross:.10f})"
                )
        return problems

    def _funding(self, e: dict[str, Any]) -> None:
        symbol = e.get("symbol") or self.symbol
        amount = e.get("amount", 0.0)
        if "allocations" not in e:  # split as the broker does: by the virtual positions held
            held = {
                sid: led.ledger.qty
                for (sym, sid), led in self.ledgers.items()
                if sym == symbol and abs(led.ledger.qty) > EPS
            }
            net = sum(held.values())
            if not held or abs(net) <= EPS:
                held, net = {"": 1.0}, 1.0
            for sid, qty in held.items():
                self._ledger(symbol, sid).fund(amount * qty / net)
            return
        allocations = e["allocations"]
        name = f"funding at {e.get('instant', e.get('ts'))} (seq {e.get('seq')})"
        well_formed, whole = self._well_formed(name, allocations, "strategy_id, amount")
        total = sum(a[1] for a in well_formed)
        if abs(total - amount) > EPS:
            self.problems.append(f"{name}: allocations sum to {total:.10f} but the amount is {amount:.10f}")
        elif whole:
            self.problems += self._funding_split(e, name, symbol, dict((a[0], a[1]) for a in well_formed))
        for strategy_id, share in well_formed:
            self._ledger(symbol, strategy_id).fund(share)

    def _funding_split(self, e: dict[str, Any], name: str, symbol: str, given: dict[str, float]) -> list[str]:
        """A funding charge shared as the strategies' virtual positions at its instant would pay it
        (README, Per-strategy attribution): each holder its position's part of the amount; with
        the net flat, each its own position x mark x rate (found by an audit: only the sum was
        checked, so a charge moved from one strategy to another passed). A live charge booked after
        its instant (`rate_settled_at`) is on the positions of the instant, which fills since may
        have changed: any of the positions from its instant on will do."""
        qty, mark, rate, amount = e.get("position_qty"), e.get("mark_price"), e.get("rate_pct"), e["amount"]
        if not (
            isinstance(qty, int | float) and isinstance(mark, int | float) and isinstance(rate, int | float)
        ):
            return []
        candidates = [self.held(symbol)]
        if "rate_settled_at" in e and isinstance(e.get("instant"), str):
            instant = _epoch(e["instant"])
            history = self.held_after.get(symbol, [])
            since = [held for ts, held in history if ts >= instant]  # see `_positions_since`
            before = [held for ts, held in history if ts < instant]
            candidates = [before[-1] if before else {}, *since]
        expected: dict[str, float] = {}
        for holders in candidates:
            total = sum(holders.values())
            if abs(qty) < EPS:
                expected = {sid: q * mark * rate / 100 for sid, q in holders.items()}
            elif len(holders) > 1 and abs(total) > EPS:
                expected = {sid: amount * q / total for sid, q in holders.items()}
            else:
                expected = {next(iter(holders), ""): amount}
            if set(expected) == set(given) and all(_close(given[s], x, 1e-9) for s, x in expected.items()):
                return []
        shown = {sid: round(x, 10) for sid, x in expected.items()}
        return [f"{name}: shared {given} but the strategies' positions then give {shown}"]

    def strategies(self) -> dict[str, dict[str, float]]:
        ids = sorted({*self.strategy_ids, *(sid for _, sid in self.ledgers)})
        return {
            sid: StrategyLedger.figures(
                [led for (_, s), led in self.ledgers.items() if s == sid],
                sum(led.fills for (_, s), led in self.ledgers.items() if s == sid),
            )
            for sid in ids
        }

    def symbols(self) -> dict[str, dict[str, float]]:
        names = sorted({self.symbol, *self.symbol_names, *(sym for sym, _ in self.ledgers)})
        return {
            sym: StrategyLedger.figures(
                [led for (s, _), led in self.ledgers.items() if s == sym], self.symbol_fills[sym]
            )
            for sym in names
        }

    def flat(self) -> bool:
        return all(abs(led.ledger.qty) <= EPS for led in self.ledgers.values())


def _is_allocation(a: Any, size: int) -> bool:
    return (
        isinstance(a, list)
        and len(a) == size
        and isinstance(a[0], str)
        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in a[1:])
    )


def check_attribution(events: list[dict[str, Any]], report: dict[str, Any] | None) -> list[str]:
    """The allocations add up, each strategy's realized PnL is its virtual position's, and the
    report's `strategies` and `symbols` tables and account totals agree with them."""
    symbol = report.get("symbol", "") if report else ""
    if not symbol:
        symbol = _started(events).get("symbol", "")
    attribution = Attribution(events, symbol)
    problems = attribution.problems
    strategies = attribution.strategies()
    for (sym, sid), led in sorted(attribution.ledgers.items()):
        if abs(led.stated_realized - led.ledger.realized) > CENT:
            where = f"strategy {sid!r}" + (f" on {sym}" if sym != symbol else "")
            problems.append(
                f"{where}: its allocations' realized_pnl sum to {led.stated_realized:.6f} but netting "
                f"its virtual position at the fills' prices gives {led.ledger.realized:.6f}"
            )
    if report is None:
        return problems
    for field, table in (("strategies", strategies), ("symbols", attribution.symbols())):
        if field in report:
            problems += _compare_table(field, report[field], table)
    sums = {key: sum(row[key] for row in strategies.values()) for key in ("realized_pnl", "fees", "funding")}
    totals = [("fees", "fees_paid"), ("funding", "funding_paid")]
    if attribution.flat():
        totals.insert(0, ("realized_pnl", "realized_pnl"))
    elif report.get("status") == "ok":
        # the end's flatten crosses opposite ones (a net position left open: check_fills says it)
        for sym in sorted({sym for sym, _ in attribution.ledgers}):
            held = attribution.held(sym)
            if held and abs(sum(held.values())) <= EPS:
                problems.append(f"{sym}: virtual positions {held} (net flat) left open at a clean end")
    for key, account in totals:
        if account in report and abs(sums[key] - report[account]) > CENT:
            problems.append(
                f"the strategies' {key} sum to {sums[key]:.6f} but the report's {account} is {report[account]}"
            )
    return problems


def _compare_table(field: str, reported: Any, recomputed: dict[str, dict[str, float]]) -> list[str]:
    if not isinstance(reported, dict):
        return [f"report {field} = {reported!r} is not a table"]
    problems = []
    for key in sorted(reported.keys() - recomputed.keys()):
        problems.append(f"report {field} has {key!r} but the allocations give it nothing")
    for key in sorted(recomputed.keys() - reported.keys()):
        problems.append(f"report {field} lacks {key!r}, which the allocations give {recomputed[key]}")
    for key in sorted(reported.keys() & recomputed.keys()):
        row, want = reported[key], recomputed[key]
        for figure in FIGURES:
            got = row.get(figure) if isinstance(row, dict) else None
            if figure in COUNTS:
                same = got == want[figure]
            else:
                same = isinstance(got, int | float) and abs(got - want[figure]) <= CENT
            if not same:
                shown = want[figure] if figure in COUNTS else f"{want[figure]:.6f}"
                problems.append(
                    f"report {field}[{key!r}].{figure} = {got!r} but the allocations give {shown}"
                )
    return problems


def trades_note(events: list[dict[str, Any]], report: dict[str, Any] | None) -> str:
    """The account's round trips beside the strategies' (they need not be equal)."""
    symbol = report.get("symbol", "") if report else ""
    strategies = Attribution(events, symbol).strategies()
    account = sum(1 for e in events if e.get("kind") == "position.closed")
    each = ", ".join(f"{sid or '(none)'} {row['trades']}" for sid, row in strategies.items())
    total = sum(row["trades"] for row in strategies.values())
    return f"trades: {account} of the net position; {total} of the strategies' virtual positions ({each})"


def check_orders(events: list[dict[str, Any]], ended: bool = False) -> list[str]:
    """Every fill belongs to an order given before it (`order.submitted`, or `order.working` for
    the protective orders the broker attaches to a fill), of its side, its `latency_ms` the time
    from that order to it, still open (not cancelled
    or rejected), with that much left to fill (its size, less its fills, reset by each
    `order.amended`); a liquidation's fill (`liq-...`) to the `liquidation` event before it (found
    by an audit: a fill of an unknown order, one moved before its order, one larger than its
    order passed)."""
    problems: list[str] = []
    orders: dict[str, dict[str, Any]] = {}
    liquidated = False
    for e in events:
        kind, oid = e.get("kind"), e.get("order_id")
        if kind == "liquidation":
            liquidated = True
        if not isinstance(oid, str):
            continue
        order = orders.get(oid)
        if kind in ("order.submitted", "order.working"):
            if order is None:
                orders[oid] = {"side": e.get("side"), "left": e.get("qty"), "done": None, "ts": e["ts"]}
        elif kind == "order.amended" and order is not None:
            order["left"] = e.get("qty")
        elif kind in ("order.cancelled", "order.rejected") and order is not None:
            order["done"] = (kind.split(".")[1], e["seq"])
        elif kind == "order.filled":
            name = f"fill {e.get('fill_id') or oid} (seq {e['seq']})"
            if order is None:
                if not (e.get("reason") == "liquidation" and liquidated):
                    problems.append(f"{name}: its order {oid} was not submitted (nor working) before it")
                continue
            if e.get("side") != order["side"]:
                problems.append(f"{name}: a {e.get('side')} of {oid}, a {order['side']} order")
            if order["done"] is not None:
                problems.append(
                    f"{name}: its order {oid} was {order['done'][0]} before it (seq {order['done'][1]})"
                )
            # its latency is the time from its order to it (found by an audit: fills stamped
            # before their order, their latency_ms written as any, passed); both times cut to the ms
            latency, since = e.get("latency_ms"), (_epoch(e["ts"]) - _epoch(order["ts"])) * 1000
            if isinstance(latency, int | float) and abs(latency - since) > 1.0 + 1e-6:
                problems.append(
                    f"{name}: latency_ms {latency!r}, but it is stamped {since:.0f} ms after its order "
                    f"{oid} ({order['ts']})"
                )
            left, qty = order["left"], e.get("qty")
            if isinstance(left, int | float) and isinstance(qty, int | float):
                if qty > left + 1e-9:
                    problems.append(f"{name}: fills {qty} of {oid}, which had {left:.10g} left to fill")
                order["left"] = left - qty
    if ended:
        # a session's end (its flatten) leaves no order working: each one filled, cancelled,
        # rejected or cut to what it filled (`order.amended`) (found by an audit: an exit's rest
        # the broker cut to the position at its fill went unrecorded, and an order.cancelled
        # taken out of the file passed)
        for oid, order in orders.items():
            left = order["left"]
            if order["done"] is None and isinstance(left, int | float) and left > 1e-9:
                problems.append(
                    f"order {oid}: {left:.10g} of it neither filled, cancelled nor rejected by the session's end"
                )
    return problems


_EPS = 1e-9  # relative: float arithmetic's


def check_fill_terms(events: list[dict[str, Any]]) -> list[str]:
    """Each fill on its order's terms (found by an audit: a broker that filled every resting limit at
    the candle's best price, triggered stops early with no slippage, filled market orders at the
    touch with none, or wrote its fill price as the price asked for, passed): of its order's
    `type` and `requested_price`; a maker fill only of a limit order, at that limit; a taker at a
    candle-built quote (`touch_slippage`) the touch moved `broker.slippage_bps` against (a
    marketable limit: no further than its limit), and a stop's first fill on a candle's path
    (`candle`) its trigger moved so, or worse (an open it gapped to), unless its slippage was cut
    at the candle's extreme (`range_bound`, held to the candle's by `check_data` and
    `check_market`): then never better than its trigger: the broker puts a moved price on the
    grid away from the trader, so no tolerance but float's."""
    started = _started(events)
    broker = (started.get("config") or {}).get("broker") or {}
    slip = broker.get("slippage_bps")
    problems: list[str] = []
    orders: dict[str, dict[str, Any]] = {}
    filled: set[str] = set()
    for e in events:
        kind, oid = e.get("kind"), e.get("order_id")
        if not isinstance(oid, str):
            continue
        if kind == "order.submitted":
            orders.setdefault(oid, e)
        elif kind == "order.working":
            orders.setdefault(oid, {**e, "requested_price": e.get("trigger_price") or e.get("limit_price")})
        if kind != "order.filled" or oid not in orders:
            continue
        order = orders[oid]
        name = f"fill {e.get('fill_id') or oid} (seq {e['seq']})"
        first = oid not in filled
        filled.add(oid)
        kind_, price, buy = order.get("type"), e["fill_price"], e["side"] == "buy"
        if e.get("type") != kind_:
            problems.append(f"{name}: a {e.get('type')} fill of {oid}, a {kind_} order")
        asked = order.get("requested_price")
        if isinstance(asked, int | float) and not _same_price(e.get("requested_price"), asked):
            problems.append(
                f"{name}: requested_price {e.get('requested_price')!r}, but its order {oid} asked {asked}"
            )
        limit = order.get("limit_price")
        if e.get("liquidity") == "maker":
            if kind_ != "limit" or not _same_price(price, limit):
                problems.append(
                    f"{name}: a maker fill at {price} of a {kind_} order (limit {limit}): a maker fills at its limit"
                )
            continue
        if not isinstance(slip, int | float):
            continue
        move = slip / 10_000
        source = e.get("source")
        if source == "touch_slippage" and isinstance(e.get("reference_price"), int | float):
            touch = e["reference_price"]
            least = touch * (1 + move) if buy else touch * (1 - move)
            if kind_ == "limit" and isinstance(limit, int | float):
                least = min(least, limit) if buy else max(least, limit)
            if (price < least - _EPS * least) if buy else (price > least + _EPS * least):
                problems.append(
                    f"{name}: a {e['side']} at {price}, better than its touch {touch} moved "
                    f"broker.slippage_bps ({slip:g}) against it ({least:.10g})"
                )
        elif source == "candle" and kind_ == "stop_market" and first:
            trigger = order.get("trigger_price")
            if isinstance(trigger, int | float):
                least = trigger * (1 + move) if buy else trigger * (1 - move)
                bound = e.get("range_bound")
                if isinstance(bound, int | float) and _same_price(price, bound):
                    # its slippage cut at the candle's extreme (`check_data`, `check_market` hold
                    # it to the candle's): never better than the trigger itself
                    least = trigger
                if (price < least - _EPS * least) if buy else (price > least + _EPS * least):
                    problems.append(
                        f"{name}: a stop {e['side']} at {price}, cut at its range_bound, better than its "
                        f"trigger {trigger}"
                        if least == trigger
                        else f"{name}: a stop {e['side']} at {price}, better than its trigger {trigger} moved "
                        f"broker.slippage_bps ({slip:g}) against it ({least:.10g})"
                    )
    return problems


def _same_price(a: Any, b: Any) -> bool:
    return isinstance(a, int | float) and isinstance(b, int | float) and abs(a - b) <= _EPS * max(abs(b), 1.0)


# --- fills against the market the session recorded (live sessions) -----------------------------

# an event's ts is cut to the millisecond (protocols/records.py `iso`): the market event a fill met
# arrived at or before the fill, at most this long after the ts it is stamped with
TS_CUT_S = 0.001
TIME_EPS = 1e-6


# a quote as the checks read it: bid, ask, last trade (None: not given), its size, bid size, ask size
# (sizes 0: not known), its source (None: a book's top)
Quote = tuple[float, float, float | None, float, float, float, str | None]


class SymbolMarket:
    """One symbol's market events from `market.jsonl`, in arrival order, each series (arrival
    times, items): its quotes (`Quote`), books (bids, asks), live candles (low, high) and marks;
    its price tick (its `instrument` record's, or the shipped table's)."""

    def __init__(self, symbol: str) -> None:
        self.tick_size = grid_instrument(symbol).tick_size
        self.quotes: tuple[list[float], list[Quote]] = ([], [])
        self.books: tuple[list[float], list[tuple[Any, Any]]] = ([], [])
        self.candles: tuple[list[float], list[tuple[float, float]]] = ([], [])
        self.marks: tuple[list[float], list[float]] = ([], [])
        # the funding records' (rate_pct, settled_ts: the instant the rate settled, None unknown)
        self.rates: tuple[list[float], list[tuple[float, Any]]] = ([], [])

    @staticmethod
    def at(series: tuple[list[float], list[Any]], ts: float) -> list[Any]:
        """Those that arrived within the millisecond a fill stamped `ts` happened in (its step's)."""
        arrivals, items = series
        first = bisect.bisect_left(arrivals, ts - TIME_EPS)
        return items[first : bisect.bisect_right(arrivals, ts + TS_CUT_S + TIME_EPS)]

    @staticmethod
    def near(
        series: tuple[list[float], list[Any]], ts: float, resumed: tuple[float, float] | None = None
    ) -> list[tuple[int, Any]]:
        """What was in force at a fill stamped `ts`: the last one that arrived at or before it,
        and any arriving within the millisecond `ts` was cut to (the fill may have come after them).
        `resumed`: the last resume before the fill, (the ts of the last event kept before it, its
        ts): with nothing arrived since, the broker holds what its checkpoint held, one of those
        that arrived from the one in force at that last event on (market.jsonl is not cut back to
        the checkpoint at a resume)."""
        arrivals, items = series
        last = bisect.bisect_right(arrivals, ts + TIME_EPS) - 1
        end = bisect.bisect_right(arrivals, ts + TS_CUT_S + TIME_EPS)
        first = max(last, 0)
        if resumed is not None and (last < 0 or arrivals[last] <= resumed[1] + TIME_EPS):
            first = max(bisect.bisect_right(arrivals, resumed[0] + TIME_EPS) - 1, 0)
        return [(i, items[i]) for i in range(first, end)]


def load_market(run: Path) -> tuple[dict[str, SymbolMarket], float | None, list[str]]:
    """market.jsonl by symbol, the last arrival in it (None: nothing recorded: a backtest, an older
    version's replay), and a problem for each line that cannot be read."""
    markets: dict[str, SymbolMarket] = {}
    last: float | None = None
    problems: list[str] = []
    path = run / "market.jsonl"
    if not path.exists():
        return markets, last, problems
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            try:
                r = orjson.loads(line)
                arrival, kind, symbol = float(r["arrival_ts"]), r["type"], r.get("symbol", "")
            except (orjson.JSONDecodeError, *MALFORMED):
                problems.append(f"market.jsonl line {n}: not a market record (truncated write?)")
                continue
            last = arrival
            m = markets.get(symbol)
            if m is None:
                m = markets[symbol] = SymbolMarket(symbol)
            if kind == "tick":
                series: tuple[list[float], list[Any]] = m.quotes
                item: Any = (
                    r["bid"],
                    r["ask"],
                    r.get("last"),
                    r.get("last_qty") or 0.0,
                    r.get("bid_qty") or 0.0,
                    r.get("ask_qty") or 0.0,
                    r.get("source"),
                )
            elif kind == "book":
                series, item = m.books, (r["bids"], r["asks"])
                if r["bids"] and r["asks"]:  # its best bid and ask are the broker's quote too
                    (bid, bid_qty), (ask, ask_qty) = r["bids"][0], r["asks"][0]
                    m.quotes[0].append(arrival)
                    m.quotes[1].append((bid, ask, None, 0.0, bid_qty, ask_qty, None))
            elif kind == "candle" and not r.get("backfill"):
                series, item = m.candles, (r["low"], r["high"])
            elif kind == "funding":
                series, item = m.marks, r["mark_price"]
                if isinstance(r.get("rate_pct"), int | float):
                    m.rates[0].append(arrival)
                    m.rates[1].append((r["rate_pct"], r.get("settled_ts")))
            else:
                if kind == "instrument" and isinstance(r.get("price_decimals"), int):
                    m.tick_size = 10.0 ** -r["price_decimals"]
                continue
            series[0].append(arrival)
            series[1].append(item)
    return markets, last, problems


HEALTH_RULES = frozenset({"memory", "disk"})  # alerts of the machine, not of an event: no seq


def check_alerts(run: Path, events: list[dict[str, Any]], finished: bool) -> list[str]:
    """alerts.jsonl: every line an alert; a health alert (`memory`, `disk`) with no seq, any other
    naming by its seq the `alert` event it was raised with, of its rule, message and time (found by
    the crash audit: a resume took the events after its checkpoint out of events.jsonl and gave
    their seqs to others, and their alerts stayed: actors/recording/alerts.py `set_aside`). An
    unfinished run's alert may name an event not on disk yet (written before the events' buffer)."""
    path = run / "alerts.jsonl"
    try:
        raws = path.read_bytes().splitlines()
    except FileNotFoundError:
        return []
    by_seq = {e["seq"]: e for e in events}
    last = max(by_seq, default=0)
    problems: list[str] = []
    for n, raw in enumerate(raws, 1):
        try:
            alert = orjson.loads(raw)
        except orjson.JSONDecodeError:
            alert = None
        if not isinstance(alert, dict) or not isinstance(alert.get("rule"), str):
            problems.append(f"alerts.jsonl line {n}: not an alert")
            continue
        seq, rule = alert.get("seq"), alert["rule"]
        if seq is None:
            if rule not in HEALTH_RULES:
                problems.append(
                    f"alerts.jsonl line {n}: a {rule} alert with no seq (only memory and disk have none)"
                )
            continue
        if not isinstance(seq, int) or (not finished and seq > last):
            if not isinstance(seq, int):
                problems.append(f"alerts.jsonl line {n}: seq {seq!r} is not an event's")
            continue
        event = by_seq.get(seq)
        if (
            event is None
            or event["kind"] != "alert"
            or (event.get("rule"), event.get("message"), event["ts"])
            != (rule, alert.get("message"), alert.get("ts"))
        ):
            what = "no event" if event is None else f"a {event['kind']} event"
            if event is not None and event["kind"] == "alert":
                what = f"the alert event {event.get('rule')}: {event.get('message')!r} at {event['ts']}"
            problems.append(
                f"alerts.jsonl line {n}: the {rule} alert of seq {seq} at {alert.get('ts')} names {what} "
                "in events.jsonl (an alert of an event a resume discarded?)"
            )
    return problems


def check_market(run: Path, events: list[dict[str, Any]], finished: bool) -> list[str]:
    """A live session's or a replay's fills against the market it recorded (`market.jsonl`; a
    backtest records none, and an older version's replay none: nothing to check) (found by an
    audit: only each fill against its own recorded bid and ask was checked, so a broker that made
    its market up passed):
    - its bid and ask are a quote in force when it filled (`_check_quote`): the symbol's last
      before it, or one within its millisecond; after a resume, with nothing arrived since, one of
      the checkpoint's; a taker at the touch takes no more than the touch showed, a resting limit
      fills on a trade through its price and no more than that trade; a fill worked along a live
      candle (bid = ask) is at that candle's step, within its range; a liquidation before any
      quote at its mark;
    - a stop's first fill is on a trade that reached its trigger (`_check_stop`);
    - a funding charge is at the mark in force at its instant and at a rate the feed gave
      (`_check_funding_market`);
    - a fill from the book takes a level of the book in force, never more than the level's size
      over all the fills that book met; one beyond it is no better than its last level
      (`_check_book`).
    An unfinished (or abandoned) run's fills after the market's last record are left out: a kill
    can cut market.jsonl's buffer before events.jsonl's."""
    markets, last, problems = load_market(run)
    if last is None:
        return problems
    default_symbol = _started(events).get("symbol", "")
    taken: dict[tuple[str, int, str, float], float] = {}  # (symbol, book, side, price): taken of it
    # (symbol, quote): what resting limits took of its trade, and takers of its touch
    used = Used({}, {})
    resumed: tuple[float, float] | None = None
    triggered: set[Any] = set()  # the stops that have filled (their rest fills without a trigger)
    for i, e in enumerate(events):
        if e.get("kind") == "session.resumed" and i > 0:
            resumed = (_epoch(events[i - 1]["ts"]), _epoch(e["ts"]))
        if e.get("kind") == "position.crossed":
            problems += _check_cross_mark(e, markets, default_symbol, resumed, finished, last)
        if e.get("kind") == "funding" and isinstance(e.get("instant"), str):
            problems += _check_funding_market(e, markets, default_symbol, resumed, finished, last)
        if e.get("kind") != "order.filled":
            continue
        ts = _epoch(e["ts"])
        if not finished and ts > last + TS_CUT_S:
            continue
        name = f"fill {e.get('fill_id') or e.get('order_id')} (seq {e['seq']})"
        symbol = e.get("symbol") or default_symbol
        m = markets.get(symbol) or SymbolMarket(symbol)
        quotes = m.near(m.quotes, ts, resumed)
        met = [(k, q) for k, q in quotes if q[:2] == (e["bid"], e["ask"])]
        fill = MarketFill(e, m, ts, resumed, name, symbol, quotes, met)
        problems += _check_quote(fill, used)
        problems += _check_stop(fill, triggered)
        if e.get("source") in ("book", "beyond_book"):
            problems += _check_book(fill, taken)
    return problems


def _check_cross_mark(
    e: dict[str, Any],
    markets: dict[str, SymbolMarket],
    default_symbol: str,
    resumed: tuple[float, float] | None,
    finished: bool,
    last: float,
) -> list[str]:
    """A cross is at the mark in force (found by an audit: one at any price moved PnL between the
    strategies, the account's figures unchanged, and passed): a quote's mid or the exchange's
    mark price, the last of either before it (or within its millisecond)."""
    ts, price = _epoch(e["ts"]), e.get("price")
    if not isinstance(price, int | float) or (not finished and ts > last + TS_CUT_S):
        return []
    symbol = e.get("symbol") or default_symbol
    m = markets.get(symbol) or SymbolMarket(symbol)
    mids = [(q[0] + q[1]) / 2 for _, q in m.near(m.quotes, ts, resumed)]
    marks = [mark for _, mark in m.near(m.marks, ts, resumed)]
    if any(abs(price - x) <= 1e-9 * max(1.0, abs(x)) for x in mids + marks):
        return []
    shown = ", ".join(f"{x:g}" for x in mids + marks) or "none"
    return [f"cross (seq {e.get('seq')}): at {price}, not the mark in force then (mids and marks: {shown})"]


def _check_funding_market(
    e: dict[str, Any],
    markets: dict[str, SymbolMarket],
    default_symbol: str,
    resumed: tuple[float, float] | None,
    finished: bool,
    last: float,
) -> list[str]:
    """A live charge against the market it recorded (found by an audit: one at half the
    exchange's rate, of the other sign, or at a mark 5 % off, its amount and the heartbeats made
    to agree, passed: only its arithmetic was checked): its mark the one in force at its instant
    (a quote's mid or the exchange's mark price, the last of either before it, or within its
    millisecond), and, when the feed gave rates, its rate one the feed had given when it was
    booked (the last before it, or the one before that: a charge booked on a rate's arrival is at
    the rate before it, unless that one settled it)."""
    ts, instant = _epoch(e["ts"]), _epoch(e["instant"])
    if not finished and ts > last + TS_CUT_S:
        return []
    symbol = e.get("symbol") or default_symbol
    m = markets.get(symbol) or SymbolMarket(symbol)
    problems: list[str] = []
    mark = e.get("mark_price")
    # the broker books an instant on the first market event at or after it, on the mark before
    # that event's: one arriving at the instant itself may be the one after it, and the one before
    # in force (found by the determinism audit: mock ticks fall on whole seconds, and a mock
    # session with broker.funding = "constant" long over 08:00 was refused its charge at the mark
    # of 07:59:59.5)
    before = instant - 2 * TIME_EPS
    mids = [(q[0] + q[1]) / 2 for _, q in m.near(m.quotes, before, resumed)]
    marks = [x for _, x in m.near(m.marks, before, resumed)]
    if (
        isinstance(mark, int | float)
        and (mids or marks)
        and not any(abs(mark - x) <= 1e-9 * max(1.0, abs(x)) for x in mids + marks)
    ):
        shown = ", ".join(f"{x:.10g}" for x in mids + marks)
        problems.append(
            f"funding seq {e['seq']}: mark_price {mark}, not the mark in force at {e['instant']} "
            f"(mids and marks: {shown})"
        )
    rate = e.get("rate_pct")
    near = m.near(m.rates, ts, resumed)
    if near and isinstance(rate, int | float):
        settled = e.get("rate_settled_at")
        if isinstance(settled, str):  # the rate that settled then, given by the time it was booked
            at = _epoch(settled)
            end = bisect.bisect_right(m.rates[0], ts + TS_CUT_S + TIME_EPS)
            given = [
                x for x, when in m.rates[1][:end] if isinstance(when, int | float) and abs(when - at) <= 1.0
            ]
        else:
            given = [x for _, (x, _) in near]
            if near[0][0] > 0:
                given.append(m.rates[1][near[0][0] - 1][0])
        if not any(abs(rate - x) <= 1e-12 for x in given):
            what = f"settled at {settled}" if isinstance(settled, str) else "in force when it was booked"
            problems.append(
                f"funding seq {e['seq']}: rate_pct {rate}, not a rate the feed gave {what} "
                f"({', '.join(f'{x:.10g}' for x in given) or 'none'})"
            )
    return problems


class MarketFill(NamedTuple):
    """A fill of a live session and the market it is checked against: its symbol's records, its
    time, the last resume before it (`SymbolMarket.near`), its name in a problem's line."""

    e: dict[str, Any]
    m: SymbolMarket
    ts: float
    resumed: tuple[float, float] | None
    name: str
    symbol: str
    quotes: list[tuple[int, Quote]]  # the quotes in force then (`SymbolMarket.near`), by index
    met: list[tuple[int, Quote]]  # those with the fill's bid and ask


class Used(NamedTuple):
    """What the fills so far took of each quote, by (symbol, quote index)."""

    traded: dict[tuple[str, int], float]  # of its last trade: resting limits
    touched: dict[tuple[str, int], float]  # of its touch: takers at it


def _check_quote(fill: MarketFill, used: Used) -> list[str]:
    e, m, ts, _, name, symbol, quotes, met = fill
    bid, ask, source = e["bid"], e["ask"], e.get("source")
    if met and source == "touch":
        # at most what the touch showed, over the fills that took it (found by an audit: 5 BTC
        # filled at a touch of 0.2 passed)
        qty, buy = e["qty"], e["side"] == "buy"
        touched = used.touched
        for i, q in met:
            size = q[5] if buy else q[4]
            if touched.get((symbol, i), 0.0) + qty <= size + 1e-9:
                touched[(symbol, i)] = touched.get((symbol, i), 0.0) + qty
                return []
        return [
            f"{name}: {qty} at the touch, more than the quote's touch size showed (with the fills before it)"
        ]
    if met and source != "resting":
        return []
    if met:
        # a resting limit fills on a quote whose last trade went through its price (or touched
        # it), no more than that trade's size over the limits it filled (found by an audit: only
        # the bid and ask were compared, so a limit filled by a trade that never reached it passed)
        price, qty, buy = e["fill_price"], e["qty"], e["side"] == "buy"
        traded = used.traded
        for i, (_, _, last, size, _, _, src) in met:
            if not isinstance(last, int | float) or (last > price + EPS if buy else last < price - EPS):
                continue
            if size <= 0 and src in EXCHANGE_QUOTE_SOURCES:
                continue  # the exchange's quote with no trade since the last (its last an old print)
            if size > 0 and traded.get((symbol, i), 0.0) + qty > size + 1e-9:
                continue
            traded[(symbol, i)] = traded.get((symbol, i), 0.0) + qty
            return []
        lasts = " or ".join(f"{q[2]} (size {q[3]:g})" for _, q in met)
        return [
            f"{name}: a resting {e['side']} at {price} on a quote whose last trade, {lasts}, did not "
            "go through it (or traded less than the limits filled on it)"
        ]
    half = m.tick_size / 2 + EPS
    if bid == ask:
        # worked along a live candle's range, at that candle's step (found by an audit: any fill
        # until the next candle passed against the last one), never better than the range: a buy
        # not under its low, a sell not over its high
        price, buy = e["fill_price"], e["side"] == "buy"
        ranges = [
            (low, high)
            for low, high in m.at(m.candles, ts)
            if low - half <= bid <= high + half and (price >= low - half if buy else price <= high + half)
        ]
        if source == "resting" and ranges:
            return []
        if source == "candle" and ranges:
            # and never beyond it: a sell not under its low, a buy not over its high
            found = [_check_in_range(e, name, r, m.tick_size, "market.jsonl") for r in ranges]
            return min(found, key=len)
        if (
            source == "bankruptcy"
            and not quotes
            and any(abs(mark - bid) <= half for _, mark in m.near(m.marks, ts))
        ):
            return []
    there = " or ".join(f"{q[0]}/{q[1]}" for _, q in quotes) or "none"
    return [
        f"{name}: bid/ask {bid}/{ask}, which no {symbol} quote in market.jsonl gave when it "
        f"filled (the quotes in force then: {there})"
    ]


def _check_stop(fill: MarketFill, triggered: set[Any]) -> list[str]:
    """A stop's first fill from a quote: on one whose last trade reached its trigger (its
    `requested_price`) (found by an audit: a stop filled with the market short of its trigger
    passed, its bid and ask a real quote); one worked along a live candle, on a candle at its step
    that went as far as the trigger (a gap from the last close to the open included: the open is
    within the candle). The rest of a triggered stop fills without a new trigger."""
    e, name, met = fill.e, fill.name, fill.met
    oid = e.get("order_id")
    first = oid not in triggered
    triggered.add(oid)
    trigger, buy = e.get("requested_price"), e["side"] == "buy"
    if e.get("type") != "stop_market" or not first or e.get("source") == "bankruptcy":
        return []
    if not isinstance(trigger, int | float):
        return []
    if e.get("source") == "candle":
        m, half = fill.m, fill.m.tick_size / 2 + EPS
        candles = m.at(m.candles, fill.ts)
        if not candles or any(
            (high >= trigger - half) if buy else (low <= trigger + half) for low, high in candles
        ):
            return []  # no such candle: `_check_quote` says so
        shown = " or ".join(f"{low}-{high}" for low, high in candles)
        return [
            f"{name}: a stop {e['side']} triggered at {trigger} along a candle ({shown}) that did not reach it"
        ]
    if not met:
        return []  # no such quote: `_check_quote` says so
    lasts = [q[2] for _, q in met if isinstance(q[2], int | float)]
    if any((last >= trigger - EPS) if buy else (last <= trigger + EPS) for last in lasts):
        return []
    shown = " or ".join(f"{last}" for last in lasts) or "none"
    return [
        f"{name}: a stop {e['side']} triggered at {trigger}, but its quote's last trade ({shown}) did not reach it"
    ]


def _check_book(fill: MarketFill, taken: dict[tuple[str, int, str, float], float]) -> list[str]:
    e, m, ts, resumed, name, symbol, _, _ = fill
    side, price, qty = e["side"], e["fill_price"], e["qty"]
    books = m.near(m.books, ts, resumed)
    if not books:
        return [f"{name}: a fill from the book, but market.jsonl has no {symbol} book before it"]
    if e["source"] == "beyond_book":
        for _, (bids, asks) in books:
            levels = asks if side == "buy" else bids
            if levels and (price >= levels[-1][0] - EPS if side == "buy" else price <= levels[-1][0] + EPS):
                return []
        return [f"{name}: a {side} at {price} beyond the book, better than the book's last level"]
    for i, (bids, asks) in books:
        size = next((s for p, s in (asks if side == "buy" else bids) if p == price), None)
        key = (symbol, i, side, price)
        if size is not None and taken.get(key, 0.0) + qty <= size + 1e-9:
            taken[key] = taken.get(key, 0.0) + qty
            return []
    return [
        f"{name}: a {side} of {qty} at {price} from the book, which no {symbol} book in force "
        "offered (or not that much, with the fills before it)"
    ]


# --- a backtest's fills against its data -----------------------------------------------------------

BACKTEST_PREFIX = "backtest: "
UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def data_files(events: list[dict[str, Any]]) -> dict[str, tuple[Path, str]]:
    """A backtest's data files by symbol, each with why it cannot be checked ("" when it can):
    its session.started's `data_files` (absolute paths, with their size and time, so that a file
    changed since is not taken for it); a run from before them: its `data_source` ("backtest:
    FILE", or "backtest: SYMBOL=FILE, SYMBOL=FILE"), a relative path taken from here. {} for any
    other run."""
    started = _started(events)
    recorded = started.get("data_files")
    if isinstance(recorded, list):
        return _recorded_files(recorded)
    source = started.get("data_source")
    if not isinstance(source, str) or not source.startswith(BACKTEST_PREFIX):
        return {}
    text = source[len(BACKTEST_PREFIX) :]
    parts = text.split(", ")
    named = {started.get("symbol", ""): text}
    if all(re.fullmatch(r"[A-Z0-9]+=.+", p) for p in parts):
        named = dict(p.split("=", 1) for p in parts)
    return {s: (Path(f), "" if Path(f).is_file() else "not found") for s, f in named.items()}


def _recorded_files(recorded: list[dict[str, Any]]) -> dict[str, tuple[Path, str]]:
    """Files a session.started records ({symbol, path, bytes, mtime_ns} each) by symbol, each
    with why it cannot be checked ("" when it can: there, with the size and time it had)."""
    files = {}
    for f in recorded:
        path = Path(f["path"])
        try:
            st = path.stat()
        except OSError:
            files[f["symbol"]] = (path, "not found")
            continue
        changed = (st.st_size, st.st_mtime_ns) != (f.get("bytes"), f.get("mtime_ns"))
        files[f["symbol"]] = (path, "changed since the run" if changed else "")
    return files


def funding_files(events: list[dict[str, Any]]) -> dict[str, tuple[Path, str]]:
    """A backtest's `--funding` files by symbol (session.started's `funding_files`), each with why
    it cannot be checked ("" when it can); {} for a run without them."""
    recorded = _started(events).get("funding_files")
    return _recorded_files(recorded) if isinstance(recorded, list) else {}


class DataCandles:
    """One symbol's candles as its backtest read them (the project's reader, `read_candles_csv`:
    the same rows skipped), those within [first, last] (seconds): what the market offered around
    a time (found by an audit: a reader of its own here kept rows the backtest skipped)."""

    def __init__(
        self, path: Path, symbol: str, first: float, last: float, interval_s: int, tick: float
    ) -> None:
        from actors.feeds.history import read_candles_csv

        self.opens: list[float] = []
        # each candle's own low and high (the gap before it left out): the worst prices anyone
        # traded at in it, which a fill worked along it never goes beyond
        self.ranges: list[tuple[float, float]] = []
        # (low, high) with the previous close (a gap from it to the open is passed through: a
        # resting limit crossed by it fills at its own price), open, close, previous close
        self.candles: list[tuple[float, float, float, float, float]] = []
        self.tick = tick
        self.interval_s = interval_s
        previous = math.nan
        earlier: tuple[float, tuple[float, float, float, float, float], tuple[float, float]] | None = None
        for c in read_candles_csv(path, interval_s, symbol=symbol):
            before = c.open if previous != previous else previous
            candle = (min(c.low, before), max(c.high, before), c.open, c.close, before)
            if first - 2 * interval_s <= c.open_ts <= last + interval_s:
                if earlier is not None and not self.opens:  # the last one before: a gap may end the window
                    self.opens.append(earlier[0])
                    self.candles.append(earlier[1])
                    self.ranges.append(earlier[2])
                self.opens.append(c.open_ts)
                self.candles.append(candle)
                self.ranges.append((c.low, c.high))
            elif c.open_ts < first - 2 * interval_s:
                earlier = (c.open_ts, candle, (c.low, c.high))
            previous = c.close

    def ending_at(self, ts: float) -> tuple[float, float, float, float, float] | None:
        """The candle that ends at `ts` (to the ms events keep), if the data has one."""
        i = bisect.bisect_right(self.opens, ts - self.interval_s + TS_CUT_S) - 1
        if i >= 0 and abs(self.opens[i] + self.interval_s - ts) <= TS_CUT_S:
            return self.candles[i]
        return None

    def range_ending_at(self, ts: float) -> tuple[float, float] | None:
        """The own low and high (no gap) of the candle that ends at `ts`, if the data has one."""
        i = bisect.bisect_right(self.opens, ts - self.interval_s + TS_CUT_S) - 1
        if i >= 0 and abs(self.opens[i] + self.interval_s - ts) <= TS_CUT_S:
            return self.ranges[i]
        return None

    def marks_at(self, instant: float) -> list[float]:
        """The prices a backtest may mark a funding instant at: the close of the last candle ended
        by it (the candle ending at it; in a gap, the last before), and of a candle spanning it."""
        marks = []
        ended = bisect.bisect_right(self.opens, instant - self.interval_s + TS_CUT_S) - 1
        if ended >= 0:
            marks.append(self.candles[ended][3])
        spanning = bisect.bisect_right(self.opens, instant - TS_CUT_S) - 1
        if (
            spanning >= 0
            and spanning != ended
            and self.opens[spanning] + self.interval_s > instant + TS_CUT_S
        ):
            marks.append(self.candles[spanning][3])
        return marks

    def around(self, ts: float) -> list[tuple[float, float, float, float, float]]:
        """What a fill stamped `ts` may have met: the whole path of a candle ending at it (fills
        along a candle are stamped with its end); while a candle is open, only its open (its
        quote: found by an audit, the whole candle it fell in passed, a look into its future);
        after a candle's end, in a gap in the data or past its end, that candle's close (the last
        quote: found by an audit, a symbol whose data ended before the session's other ones was
        flattened at its last close after it)."""
        i = bisect.bisect_right(self.opens, ts + TS_CUT_S) - 1
        if i < 0:
            return []
        found = [
            self.candles[k]
            for k in (i - 1, i)
            if k >= 0 and abs(self.opens[k] + self.interval_s - ts) <= TS_CUT_S
        ]
        _, _, open_, close, _ = self.candles[i]
        end = self.opens[i] + self.interval_s
        if ts < end - TS_CUT_S:
            found.append((open_, open_, open_, open_, open_))
        elif ts > end + TS_CUT_S:
            found.append((close, close, close, close, close))
        return found


def check_data(events: list[dict[str, Any]]) -> list[str]:
    """A backtest's fills against its data file, when it is the file the run read (`data_note`
    says when it is not): each fill's bid and ask within the range of a candle it met (at a
    candle's end, its path: its low to its high, through the gap from the candle before; inside a
    candle, its open; after it, in a gap, its close: `DataCandles.around`), to a tick (a quote between two ticks is bid
    at the tick below and asked at the one above); a fill at a quote (`touch_slippage`) at one a
    backtest has, a candle's open or close, to half a tick; and its price never better than the
    market went: a buy not under the candle's low, a sell not over its high (a limit's rest held
    back by the participation cap may fill at its limit when the market has moved past it: worse,
    never better; a liquidation at its bankruptcy price is the exchange's) (found by an audit: a
    fill at a market the data never showed, consistent with its own bid and ask, passed; and one
    at the candle's best price for the trader, a look into the candle, still passes the range);
    a fill on a candle's path (`candle`) within that candle's own range (`_check_in_range`)."""
    files = {s: p for s, (p, why) in data_files(events).items() if not why}
    fills = [e for e in events if e.get("kind") == "order.filled"]
    gapped = _gapped_stops(events)
    crosses = [e for e in events if e.get("kind") == "position.crossed"]
    if not files or not (fills or crosses):
        return []
    started = _started(events)
    m = re.fullmatch(
        r"([1-9][0-9]*)([smhd])", str((started.get("config") or {}).get("session", {}).get("interval"))
    )
    interval_s = int(m.group(1)) * UNITS_S[m.group(2)] if m else 60
    times = [_epoch(e["ts"]) for e in fills]
    cross_times = [_epoch(e["ts"]) for e in crosses]
    default_symbol = started.get("symbol", "")
    data = {
        s: DataCandles(
            p, s, min(times + cross_times), max(times + cross_times), interval_s, grid_instrument(s).tick_size
        )
        for s, p in files.items()
    }
    problems = []
    for e in events:
        # a liquidation's mark is where the market went (found by an audit: see _check_liquidation)
        if e.get("kind") != "liquidation" or not isinstance(e.get("mark_price"), int | float):
            continue
        candles = data.get(e.get("symbol") or default_symbol)
        if candles is None:
            continue
        met = candles.around(_epoch(e["ts"]))
        if not any(c[0] - candles.tick - EPS <= e["mark_price"] <= c[1] + candles.tick + EPS for c in met):
            shown = " or ".join(f"{c[0]:g}..{c[1]:g}" for c in met) or "no candle"
            problems.append(
                f"liquidation seq {e['seq']}: its mark {e['mark_price']} is outside the market its data file "
                f"gave then ({shown})"
            )
    for e, ts in zip(crosses, cross_times, strict=True):
        # a cross is at the mark: a price the data gave then (found by an audit: one at any price
        # moved PnL between the strategies, the account's figures unchanged, and passed)
        candles = data.get(e.get("symbol") or default_symbol)
        price = e.get("price")
        if candles is None or not isinstance(price, int | float):
            continue
        met = candles.around(ts)
        if not any(c[0] - candles.tick - EPS <= price <= c[1] + candles.tick + EPS for c in met):
            shown = " or ".join(f"{c[0]:g}..{c[1]:g}" for c in met) or "no candle"
            problems.append(
                f"cross (seq {e.get('seq')}): at {price}, outside the market its data file gave then ({shown})"
            )
    for e, ts in zip(fills, times, strict=True):
        candles = data.get(e.get("symbol") or default_symbol)
        if candles is None:
            continue
        name = f"fill {e.get('fill_id') or e.get('order_id')} (seq {e['seq']})"
        met = candles.around(ts)
        if not met:
            problems.append(f"{name}: at {e['ts']}, when its data file has no candle")
            continue
        tick = candles.tick + EPS
        shown = " or ".join(f"{c[0]:g}..{c[1]:g}" for c in met)
        for what in ("bid", "ask"):
            if not any(c[0] - tick <= e[what] <= c[1] + tick for c in met):
                problems.append(
                    f"{name}: its {what} {e[what]} is outside the market its data file gave then ({shown})"
                )
        if e.get("source") in ("touch_slippage", "touch", "impact"):
            mid = (e["bid"] + e["ask"]) / 2
            if not any(abs(mid - q) <= candles.tick / 2 + EPS for c in met for q in c[2:]):
                quotes = " or ".join(f"{q:g}" for c in met for q in c[2:])
                problems.append(
                    f"{name}: at the quote {e['bid']}/{e['ask']}, which no candle's open or close gave then ({quotes})"
                )
        price, buy = e["fill_price"], e["side"] == "buy"
        if e.get("source") == "candle":
            problems += _check_in_range(e, name, candles.range_ending_at(ts), candles.tick)
        stop = gapped.get(e["seq"])
        if stop is not None:
            problems += _check_gapped_stop(e, name, stop, candles, ts)
        if e.get("source") != "bankruptcy" and not any(
            (price >= c[0] - tick) if buy else (price <= c[1] + tick) for c in met
        ):
            problems.append(
                f"{name}: a {e['side']} at {price}, better than any price its data file gave then ({shown})"
            )
    return problems


def _grid(price: float, tick: float, up: bool) -> float:
    """`price` on a grid of `tick`: up or down to a whole tick (itself when on it)."""
    units = price / tick
    whole = round(units)
    if abs(units - whole) < 1e-6:
        return whole * tick
    return (math.ceil(units) if up else math.floor(units)) * tick


def _check_in_range(
    e: dict[str, Any], name: str, own: tuple[float, float] | None, tick: float, where: str = "its data file"
) -> list[str]:
    """A market fill worked along a candle (`candle`: a stop, the rest of a stop or of a capped
    order) is within that candle's own range: a sell not under its low, a buy not over its high,
    the worst prices anyone traded at in it (docs/fills.md; found by an audit: a stop whose
    trigger lay within the slippage of the low filled below it, 1,715 of 9,700 fills of
    trend_pullback over the real data); prices finer than the tick to the grid point beyond the
    extreme. A fill whose slippage was cut there says so (`range_bound`), at that extreme: never
    cut short of it, which would take less slippage than the candle allowed."""
    if own is None:
        return []  # no candle ends then: `check_data` / `_check_quote` say so
    low, high = own
    price, buy = e["fill_price"], e["side"] == "buy"
    extreme = high if buy else low
    problems = []
    if (price > _grid(high, tick, up=True) + EPS) if buy else (price < _grid(low, tick, up=False) - EPS):
        problems.append(
            f"{name}: a {e['side']} at {price}, beyond the candle's {'high' if buy else 'low'} {extreme:g} "
            f"({where}): a price the market did not offer"
        )
    bound = e.get("range_bound")
    if bound is not None and (
        not isinstance(bound, int | float)
        or abs(bound - extreme) >= tick - EPS
        or not _same_price(price, bound)
    ):
        problems.append(
            f"{name}: a {e['side']} at {price} cut at range_bound {bound!r}, not the candle's "
            f"{'high' if buy else 'low'} {extreme:g} ({where})"
        )
    return problems


class StopOrder(NamedTuple):
    """A stop-market order's first fill along a candle's path: its trigger, when it went to the
    market (its first record) and the configured slippage."""

    trigger: float
    placed: float
    slippage_bps: float


def _gapped_stops(events: list[dict[str, Any]]) -> dict[int, StopOrder]:
    """The first fill (by seq) of each stop-market order on a backtest candle's path (`candle`)."""
    broker = (_started(events).get("config") or {}).get("broker") or {}
    slip = broker.get("slippage_bps")
    if not isinstance(slip, int | float):
        return {}
    placed: dict[str, tuple[float, Any]] = {}
    found: dict[int, StopOrder] = {}
    for e in events:
        kind, oid = e.get("kind"), e.get("order_id")
        if not isinstance(oid, str):
            continue
        if kind in ("order.submitted", "order.working") and oid not in placed:
            placed[oid] = (_epoch(e["ts"]), e.get("trigger_price"))
        elif kind == "order.filled" and oid in placed:
            at, trigger = placed.pop(oid)  # its first fill only: a rest is worked otherwise
            if (
                e.get("type") == "stop_market"
                and e.get("source") == "candle"
                and isinstance(trigger, int | float)
            ):
                found[e["seq"]] = StopOrder(float(trigger), at, float(slip))
    return found


def _check_gapped_stop(
    e: dict[str, Any], name: str, stop: StopOrder, candles: DataCandles, ts: float
) -> list[str]:
    """A stop working before the candle it fills on (the one ending at its time) opened, whose
    open was already past its trigger (a gap from the close before, or an order that reached the
    market at the open), fills at that open moved by the slippage, or worse, never at its better
    trigger (docs/fills.md, Gaps) (found by an audit: such a fill at its trigger moved by the
    slippage, every figure made to agree, passed: the candle's range with the gap holds the trigger)."""
    candle = candles.ending_at(ts)
    if (
        candle is None or stop.placed >= ts - TS_CUT_S
    ):  # placed on the path itself (a bracket of a fill there)
        return []
    open_ = candle[2]
    buy = e["side"] == "buy"
    if (open_ <= stop.trigger) if buy else (open_ >= stop.trigger):
        return []
    move = stop.slippage_bps / 10_000
    least = open_ * (1 + move) if buy else open_ * (1 - move)
    own = candles.range_ending_at(ts)
    if own is not None:  # the slippage stops at the candle's high (a buy) or low (a sell): `_check_in_range`
        tick = candles.tick
        if buy:
            least = min(least, max(_grid(own[1], tick, up=False), _grid(open_, tick, up=True)))
        else:
            least = max(least, min(_grid(own[0], tick, up=True), _grid(open_, tick, up=False)))
    price = e["fill_price"]
    if (price < least - _EPS * least) if buy else (price > least + _EPS * least):
        return [
            f"{name}: a stop {e['side']} at {price}, but its candle opened at {open_:g}, past its trigger "
            f"{stop.trigger:g}: a stop crossed by a gap fills at the open moved broker.slippage_bps "
            f"({stop.slippage_bps:g}) against it, as far as the candle's range goes ({least:.10g}), or worse"
        ]
    return []


def data_note(events: list[dict[str, Any]]) -> str:
    """What `check_data` and `check_funding_data` could not check: a backtest's data or funding
    file not found, or changed since."""
    missing = [f"{p} {why}" for p, why in data_files(events).values() if why]
    note = f"fills not checked against the data: {', '.join(missing)}" if missing else ""
    unread = [f"{p} {why}" for p, why in funding_files(events).values() if why]
    if unread:
        note += ("; " if note else "") + f"funding rates not checked against their file: {', '.join(unread)}"
    return note


def check_funding_data(events: list[dict[str, Any]]) -> list[str]:
    """A backtest's funding charges against its files, when they are the ones it read: each
    charge's `mark_price` a price the data file gave at its instant (the close of the candle that
    ends at or spans it, on the tick grid; in a gap in the data, the last close before it), and
    its `rate_pct` the rate its `--funding` file has in force at the instant (the project's
    reader, `FundingRates`) (found by an audit: a charge at half its rate, of the other sign, or at
    a mark 5 % off, the heartbeats and report made to agree, passed: only a constant rate was
    checked, and only each charge's own arithmetic)."""
    charges = [e for e in events if e.get("kind") == "funding" and isinstance(e.get("instant"), str)]
    if not charges:
        return []
    started = _started(events)
    default_symbol = started.get("symbol", "")
    problems: list[str] = []
    rate_files = {s: p for s, (p, why) in funding_files(events).items() if not why}
    if rate_files:
        from actors.feeds.funding import FundingRates

        rates = {s: FundingRates.from_csv(p) for s, p in rate_files.items()}
        for e in charges:
            schedule = rates.get(e.get("symbol") or default_symbol)
            if schedule is None:
                continue
            want = schedule.rate_pct_at(_epoch(e["instant"]))
            if not _close(e.get("rate_pct"), want, 1e-9):
                problems.append(
                    f"funding seq {e['seq']}: rate_pct {e.get('rate_pct')!r}, but its funding file has "
                    f"{want:.10g} % in force at {e['instant']}"
                )
    files = {s: p for s, (p, why) in data_files(events).items() if not why}
    if not files:
        return problems
    m = re.fullmatch(
        r"([1-9][0-9]*)([smhd])", str((started.get("config") or {}).get("session", {}).get("interval"))
    )
    interval_s = int(m.group(1)) * UNITS_S[m.group(2)] if m else 60
    instants = [_epoch(e["instant"]) for e in charges]
    data = {
        s: DataCandles(p, s, min(instants), max(instants), interval_s, grid_instrument(s).tick_size)
        for s, p in files.items()
    }
    for e, instant in zip(charges, instants, strict=True):
        candles = data.get(e.get("symbol") or default_symbol)
        mark = e.get("mark_price")
        if candles is None or not isinstance(mark, int | float):
            continue
        marks = candles.marks_at(instant)
        if not any(abs(mark - q) <= candles.tick / 2 + EPS for q in marks):
            shown = " or ".join(f"{q:g}" for q in marks) or "no candle"
            problems.append(
                f"funding seq {e['seq']}: mark_price {mark}, not a price its data file gave at "
                f"{e['instant']} ({shown})"
            )
    return problems


FUNDING_EVERY_S = 8 * 3600  # 00:00, 08:00, 16:00 UTC
# a funding record's schedule as the feed gave it: (arrival, next instant (`nft`), interval)
ScheduleChange = tuple[float, float | None, float | None]


def funding_schedules(run: Path) -> dict[str, list[ScheduleChange]]:
    """Each symbol's funding schedule as the exchange said it, from market.jsonl's `funding`
    records that carry one (`next_ts`: its `nft`; `interval_s`: `nft - ft`), in arrival order;
    empty for a run without them (a backtest, the mock, an older version's record)."""
    path = run / "market.jsonl"
    schedules: dict[str, list[ScheduleChange]] = {}
    if not path.exists():
        return schedules
    with path.open("rb") as f:
        for line in f:
            if b'"funding"' not in line:
                continue
            try:
                r = orjson.loads(line)
                arrival, kind, symbol = float(r["arrival_ts"]), r["type"], r.get("symbol", "")
            except (orjson.JSONDecodeError, *MALFORMED):
                continue  # named by check_market
            nxt, every = r.get("next_ts"), r.get("interval_s")
            nxt = float(nxt) if isinstance(nxt, int | float) else None
            # the feed's bounds (actors/feeds/funding.py): 1 h to a day, else the interval before
            every = float(every) if isinstance(every, int | float) and 3600 <= every <= 86400 else None
            if kind == "funding" and (nxt is not None or every is not None):
                schedules.setdefault(symbol, []).append((arrival, nxt, every))
    return schedules


FEED_NO_RATES = "feed (no rates)"  # a live feed's funding_source when no rate came (actors/feeds/funding.py)


def check_funding_source(run: Path, events: list[dict[str, Any]], report: dict[str, Any] | None) -> list[str]:
    """A live session's (or replay's) report says its rates came from the feed (`feed`) for a
    symbol whose rate market.jsonl recorded, and `feed (no rates)` for one it recorded none of
    (found by a report audit: a session that never connected said "live rates"). Not checked
    without market.jsonl, or for an unfinished or abandoned run."""
    source = (report or {}).get("funding_source")
    path = run / "market.jsonl"
    if (
        report is None
        or report.get("status") == ABANDONED
        or not isinstance(source, str)
        or not path.exists()
    ):
        return []
    started = _started(events)
    symbols = started.get("symbols") or [started.get("symbol", "")]
    sources = {symbol: source for symbol in symbols}
    if source.startswith("per symbol: "):
        sources = dict(part.split("=", 1) for part in source.removeprefix("per symbol: ").split(", "))
    said = {symbol: s for symbol, s in sources.items() if s in ("feed", FEED_NO_RATES)}
    if not said:
        return []
    came: Counter[str] = Counter()
    default_symbol = started.get("symbol", "")
    with path.open("rb") as f:
        for line in f:
            if b'"funding"' not in line:
                continue
            try:
                r = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # named by check_market
            if isinstance(r, dict) and r.get("type") == "funding":
                came[r.get("symbol") or default_symbol] += 1
    problems = []
    for symbol, s in sorted(said.items()):
        if s == "feed" and not came[symbol]:
            problems.append(
                f"report funding_source says {symbol}'s rates came from the feed, but market.jsonl has none"
            )
        elif s == FEED_NO_RATES and came[symbol]:
            problems.append(
                f"report funding_source says no rate of {symbol} came from the feed, but market.jsonl has {came[symbol]}"
            )
    return problems


def funding_instants(start: float, end: float, changes: Sequence[ScheduleChange] = ()) -> list[float]:
    """The funding instants in (start, end]: every 8 h from 00:00 UTC until the exchange says the
    symbol's schedule (`changes`, in arrival order: from each arrival on, its next instant and
    every interval from it; an instant reached at the arrival itself is the schedule's before)."""
    anchor, every = 0.0, float(FUNDING_EVERY_S)
    instants: list[float] = []
    t, i = start, 0
    while True:
        instant = anchor + (math.floor((t - anchor) / every) + 1) * every
        if i < len(changes) and changes[i][0] < instant:
            t, nxt, interval = changes[i]
            every = interval if interval is not None else every
            anchor = nxt if nxt is not None else anchor
            i += 1
            continue
        if instant > end:
            return instants
        if instant > start:
            instants.append(instant)
        t = instant


# the `source` of a backtest's fills along a candle's path (actors/broker/paper.py `_walk`)
PATH_SOURCES = frozenset({"candle", "resting", "bankruptcy"})


def funding_file_schedules(events: list[dict[str, Any]]) -> dict[str, Any]:
    """A backtest's `--funding` files read as it read them (`FundingRates`: their instants, 00/08/16
    UTC or a file's own settlements with `interval_h`), by symbol; None for one that cannot be
    read now (missing, changed since the run)."""
    from actors.feeds.funding import FundingRates
    from actors.feeds.history import DataError

    read: dict[str, Any] = {}
    for symbol, (path, why) in funding_files(events).items():
        try:
            read[symbol] = None if why else FundingRates.from_csv(path)
        except DataError:
            read[symbol] = None
    return read


def check_funding_charges(
    events: list[dict[str, Any]],
    report: dict[str, Any] | None,
    schedules: dict[str, list[ScheduleChange]] | None = None,
    files: dict[str, Any] | None = None,
) -> list[str]:
    """A finished run that models funding charges every instant its net position in a symbol was
    open at (a fill stamped at the instant came after it, but a backtest's fill along the path of
    the candle ending there came before): one `funding` event of that symbol and instant; with
    `broker.funding = "constant"`, at the configured rate (found by an audit: a broker charging a
    tenth of the rate, or skipping a charge, passed: only each charge's own arithmetic was
    checked). The instants are 00/08/16 UTC, or live the symbol's as the exchange said them
    (`schedules`: market.jsonl's, `funding_schedules`; a symbol on 4 h or 1 h funding), or in a
    backtest its funding file's (`files`: `funding_file_schedules`; a file with `interval_h`), and
    a charge at any other instant is named (found by an audit: a 4 h symbol charged at the 8 h
    instants only passed). A file that cannot be read now: its symbol's charges are not held to
    instants, and its instants with a position open are asked for at 00/08/16 UTC."""
    source = (report or {}).get("funding_source")
    if report is None or report.get("status") == ABANDONED or not isinstance(source, str):
        return []
    started = _started(events)
    default_symbol = started.get("symbol", "")
    # one source for every symbol, or "per symbol: BTCUSDT=file:NAME, ETHUSDT=none"
    sources: dict[str, str] = {}
    if source.startswith("per symbol: "):
        sources = dict(part.split("=", 1) for part in source.removeprefix("per symbol: ").split(", "))
    rate = ((started.get("config") or {}).get("broker") or {}).get("funding_rate_pct")
    # a backtest works the candle that ends at an instant along its path before it charges the
    # instant (its close): those fills, stamped at the candle's end, came before it (found by an
    # audit: a stop filled on the 07:59 candle was taken for open at 08:00, an honest run refused)
    backtest = str(report.get("data_source", "")).startswith(BACKTEST_PREFIX)
    problems: list[str] = []
    # symbol: (fill time, net position after it, a backtest's path fill)
    held: dict[str, list[tuple[float, float, bool]]] = {}
    charged: set[tuple[str, float]] = set()
    for e in events:
        kind = e.get("kind")
        if kind == "order.filled":
            symbol = e.get("symbol") or default_symbol
            history = held.setdefault(symbol, [])
            qty = (history[-1][1] if history else 0.0) + (e["qty"] if e["side"] == "buy" else -e["qty"])
            history.append((_epoch(e["ts"]), qty, backtest and e.get("source") in PATH_SOURCES))
        elif kind == "funding" and isinstance(e.get("instant"), str):
            charged.add((e.get("symbol") or default_symbol, _epoch(e["instant"])))
            constant = sources.get(e.get("symbol") or default_symbol, source) == "constant"
            if constant and isinstance(rate, int | float) and e.get("rate_pct") != rate:
                problems.append(
                    f"funding seq {e['seq']}: rate_pct {e.get('rate_pct')!r}, not the configured "
                    f"broker.funding_rate_pct {rate}"
                )
    start = started.get("started_ts")
    end = _epoch(events[-1]["ts"])
    if not isinstance(start, int | float):
        return problems
    schedules, files = schedules or {}, files or {}

    def instants_of(symbol: str) -> list[float]:
        rates = files.get(symbol)
        if rates is None:
            return funding_instants(start, end, schedules.get(symbol, ()))
        instants, instant = [], rates.next_instant(start)
        while instant <= end:
            instants.append(instant)
            instant = rates.next_instant(instant)
        return instants

    times = {symbol: [t for t, _, _ in history] for symbol, history in held.items()}
    due = {s: instants_of(s) for s in {*held, *(s for s, _ in charged)}}
    due_ms = {s: {round(x * 1000) for x in instants} for s, instants in due.items()}
    charged_ms = {(s, round(x * 1000)) for s, x in charged}
    for symbol, instant in sorted(charged):
        if symbol in files and files[symbol] is None:
            continue  # its file's schedule is unknown now (said by the funding data check)
        if round(instant * 1000) not in due_ms[symbol]:
            if schedules.get(symbol):
                said = "the exchange's schedule"
            elif files.get(symbol) is not None and files[symbol].scheduled:
                said = "its funding file's settlements"
            else:
                said = "00:00, 08:00 or 16:00 UTC"
            problems.append(
                f"{symbol}: a funding charge at {iso(instant)[:19]}Z, not one of its funding instants ({said})"
            )
    for symbol, history in held.items():
        if sources.get(symbol, source) == "none":
            continue
        for instant in due[symbol]:
            k = bisect.bisect_left(times[symbol], instant) - 1
            while k + 1 < len(history) and history[k + 1][0] == instant and history[k + 1][2]:
                k += 1  # a path fill at the instant: before it
            if k >= 0 and abs(history[k][1]) > 1e-8 and (symbol, round(instant * 1000)) not in charged_ms:
                problems.append(
                    f"{symbol}: no funding charge at {iso(instant)[:19]}Z, with the net position "
                    f"{history[k][1]:+.8f} open at it"
                )
    return problems


def check_abandoned(events: list[dict[str, Any]], report: dict[str, Any]) -> list[str]:
    """An abandoned run is closed by one session.stopped that says so, with nothing left open."""
    if report.get("status") != ABANDONED:
        return []
    problems = []
    stops = [e for e in events if e.get("kind") == "session.stopped"]
    if len(stops) != 1:
        problems.append(f"abandoned run: {len(stops)} session.stopped events where 1 was expected")
    if report.get("stop_reason") != ABANDONED:
        problems.append(f"abandoned run: stop_reason {report.get('stop_reason')!r}, not 'abandoned'")
    if report.get("unrealized_pnl") != 0.0 or report.get("open_positions") != []:
        problems.append(
            f"abandoned run: unrealized_pnl {report.get('unrealized_pnl')} and open_positions "
            f"{report.get('open_positions')} (nothing can be open after its process died)"
        )
    return problems


def validate(run: Path, page: bool = False) -> list[str]:
    """All problems found in the run folder; an empty list means it is consistent. `page`: also
    rebuild report.html and compare (the command line does; it takes about as long as writing it)."""
    events, problems = load_events(run / "events.jsonl")
    report, unreadable = load_report(run)
    problems += unreadable
    finished = report is not None or bool(unreadable)
    abandoned = report is not None and report.get("status") == ABANDONED
    checks: list[tuple[str, Callable[[], list[str]]]] = [
        ("sequence", lambda: check_sequence(events, finished=finished)),
        ("fills", lambda: check_fills(events, report)),
        (
            "orders",
            lambda: check_orders(
                events,
                ended=finished
                and not abandoned
                and bool(events)
                and events[-1].get("kind") == "session.stopped",
            ),
        ),
        ("fill terms", lambda: check_fill_terms(events)),
        ("attribution", lambda: check_attribution(events, report)),
        ("records", lambda: check_records(events, report)),
        ("metrics", lambda: check_metrics(run, events)),
        # an abandoned run (killed, closed by the next start) is finished, but its market.jsonl
        # was cut by the kill as an unfinished one's (its own buffer, flushed apart from the events)
        ("market", lambda: check_market(run, events, finished and not abandoned)),
        ("data", lambda: check_data(events)),
        (
            "funding",
            lambda: check_funding_charges(
                events, report, funding_schedules(run), funding_file_schedules(events)
            ),
        ),
        ("alerts", lambda: check_alerts(run, events, finished)),
        ("funding data", lambda: check_funding_data(events)),
        ("funding source", lambda: check_funding_source(run, events, report)),
    ]
    if page:
        checks.append(("page", lambda: check_page(run)))
    if report is not None:
        checks += [
            ("report", lambda: check_report(events, report)),
            ("abandoned", lambda: check_abandoned(events, report)),
        ]
    for name, check in checks:
        try:
            problems += check()
        except MALFORMED as exc:
            # a record missing a field or holding a value of the wrong type: one line, not a traceback
            problems.append(f"{name}: cannot be checked, a malformed record ({type(exc).__name__}: {exc})")
    return problems


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.validate_session", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run", type=Path, help="run folder (e.g. runs/latest)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.run / "events.jsonl").is_file():
        # found by a CLI audit: a path that is not there was said to be "not a run folder"
        what = "does not exist" if not args.run.exists() else "is not a run folder (no events.jsonl)"
        print(f"error: {args.run} {what}", file=sys.stderr)
        return 2
    problems = validate(args.run, page=True)
    for problem in problems:
        print(problem)
    events, _ = load_events(args.run / "events.jsonl")
    report, _ = load_report(args.run)
    with contextlib.suppress(*MALFORMED):  # a malformed record: said above
        print(f"{args.run}: {trades_note(events, report)}", file=sys.stderr)
        if note := data_note(events):
            print(f"{args.run}: {note}", file=sys.stderr)
    unfinished = (
        ""
        if (args.run / "final_report.json").exists()
        else " (unfinished: no final_report.json yet; the events so far are consistent. A killed "
        "session's next start resumes it or closes it as abandoned)"
    )
    print(
        f"{args.run}: {'OK' + unfinished if not problems else f'{len(problems)} problem(s)'}", file=sys.stderr
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
