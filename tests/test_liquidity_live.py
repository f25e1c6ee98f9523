"""Liquidity and instruments, live side (issue 11): the live feed gives the broker the exchange's
15-level book (a `Book` per push) and the symbol's `Instrument` (trading_pairs, at start); a market
order larger than the touch walks the book, its fills record the levels they took, and a replay of
the run reproduces the fills exactly.

The session runs against the project's fake exchange on 127.0.0.1 (real sockets, real clock), as
in tests/test_feed_bitunix.py. The fake's book sizes are bounded per level (tools/fake_bitunix,
`book_size_bounds`): an order of more than `BOOK_TOUCH_MAX` and at most `BOOK15_MIN` BTC always
walks two levels or more and fits in the 15 levels the feed sees, whatever the moment.
"""

from __future__ import annotations

import bisect
import json
import math
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from protocols.instruments import Instrument, from_trading_pair, table_instrument
from protocols.messages import Book
from protocols.records import dumps_line, market_from_record, market_record
from tests.conftest import read_events, read_report
from tests.test_feed_bitunix import FEED_HEALTH, live_session, offset_for_close_in, replay_cli
from tests.test_replay_backtest import NOT_COMPARED
from tools.fake_bitunix import FakeBitunix
from tools.fake_bitunix.server import BOOK15_MIN, BOOK_TOUCH_MAX
from tools.validate_session import validate

ORDER_QTY = 5.0  # BTC: more than the touch ever shows, less than 15 levels always hold
assert BOOK_TOUCH_MAX < ORDER_QTY <= BOOK15_MIN

# EMA 2/3 on the fake's zigzag path: an entry at the first candle close; fixed size; market orders
# only (no stop or target: a resting limit fills at its own price, not at the book's).
LARGE_ORDERS = [
    "strategy.fast_period=2",
    "strategy.slow_period=3",
    "strategy.history=30",
    "strategy.stop_loss_pct=0",
    "strategy.take_profit_pct=0",
    "risk.sizing=fixed",
    f"strategy.order_qty={ORDER_QTY}",
    "risk.max_position_size=20",
    "risk.max_notional=1000000",
    "risk.max_leverage=20",
    "risk.max_loss_pct=50",
    "risk.max_daily_drawdown_pct=50",
    "risk.max_consecutive_losses=0",
]


# --- market.jsonl: books and instruments round-trip --------------------------------------------------


def test_books_and_instruments_round_trip_through_market_jsonl() -> None:
    book = Book(
        1790126515.693,
        tuple((86699.6 - i / 10, 0.5 + i) for i in range(15)),
        tuple((86699.7 + i / 10, 2.5 - i / 10) for i in range(15)),
        "BTCUSDT",
    )
    table = table_instrument("BTCUSDT")
    assert table is not None
    # the exchange's row leaving the caps out: unbounded (infinite), written as null
    live = from_trading_pair(
        {"symbol": "BTCUSDT", "basePrecision": 4, "quotePrecision": 1, "minTradeVolume": "0.0001"}
    )
    assert math.isinf(live.max_market_qty) and math.isinf(live.tiers[-1].max_notional)
    for event in (book, table, live):
        line = dumps_line(market_record(12.5, event))
        record = json.loads(line)  # what a replay reads (read_market_log: the json module)
        assert record["arrival_ts"] == 12.5
        assert market_from_record(record) == event
        assert market_from_record(orjson.loads(line)) == event
    assert json.loads(dumps_line(market_record(1.0, live)))["type"] == "instrument"


# --- a live session walking the book, and its replay ----------------------------------------------------


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _books_at(books: list[dict[str, Any]], arrivals: list[float], iso: str) -> list[dict[str, Any]]:
    """The book the broker held at an event of time `iso` (ms): the last one to arrive by then; the
    one before it too when that last one arrived within the event's millisecond (either may be it)."""
    i = bisect.bisect_left(arrivals, _epoch(iso) + 0.001)
    assert i > 0, f"no book before {iso}"
    return books[max(0, i - 2) : i][::-1] if arrivals[i - 1] >= _epoch(iso) else [books[i - 1]]


def _walk_matches(book: dict[str, Any], side: str, taken: list[list[float]]) -> bool:
    """`taken` is the book's `side` from its first level on, in order: each level taken whole but
    the last, which is taken in part or whole."""
    levels = book["asks" if side == "buy" else "bids"]
    if len(taken) > len(levels):
        return False
    for k, (price, qty) in enumerate(taken):
        level_price, level_qty = levels[k]
        if price != level_price or qty > level_qty + 1e-9:
            return False
        if k < len(taken) - 1 and abs(qty - level_qty) > 1e-9:
            return False
    return True


def _fills(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (e["order_id"], e["side"], e["qty"], e["fill_price"], e["fee"], e.get("levels"))
        for e in events
        if e["kind"] == "order.filled"
    ]


@pytest.mark.slow
async def test_a_large_market_order_walks_the_live_book_and_a_replay_takes_the_same_levels(
    tmp_path: Path,
) -> None:
    fake = FakeBitunix(seed=21, zigzag_pct=0.2, start_price=1000.0, time_offset_s=offset_for_close_in(3))
    result, events = await live_session(tmp_path, fake, *LARGE_ORDERS, duration_s=9)
    report = result.report
    assert (report["status"], report["stop_reason"], report["errors"]) == ("ok", "duration", 0), report
    assert report["open_positions"] == []

    # the feed's side: the instrument first, then a 15-level book and its tick per push
    records = [json.loads(line) for line in (result.run_path / "market.jsonl").open()]
    types = [r["type"] for r in records]
    assert types.count("instrument") == 1
    assert types.index("instrument") < min(types.index(t) for t in ("book", "tick", "candle"))
    instrument = market_from_record(records[types.index("instrument")])
    assert isinstance(instrument, Instrument) and instrument.source == "exchange"
    books = [r for r in records if r["type"] == "book"]
    assert len(books) >= 10 and all(len(b["bids"]) == len(b["asks"]) == 15 for b in books)
    arrivals = [b["arrival_ts"] for b in books]
    assert arrivals == sorted(arrivals)

    # the broker's side: every order's fills took the book's levels, in order, as much as it asked
    submitted = {e["order_id"]: e for e in events if e["kind"] == "order.submitted"}
    by_order: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e["kind"] == "order.filled":
            by_order[e["order_id"]].append(e)
    reasons = {fills[0]["reason"] for fills in by_order.values()}
    assert any(r.startswith("entry") for r in reasons), "the strategy's large order was filled"
    assert "flatten_on_exit" in reasons, "and flatten-on-exit closed the position through the book"
    for order_id, fills in by_order.items():
        side = fills[0]["side"]
        assert all(f["liquidity"] == "taker" and f["side"] == side for f in fills)
        taken: list[list[float]] = []
        for f in fills:
            assert "levels" in f, "order.filled records the levels it took"
            levels = f["levels"]
            assert levels and sum(q for _, q in levels) == pytest.approx(f["qty"], abs=1e-9)
            prices = [p for p, _ in levels]
            assert min(prices) - 1e-9 <= f["fill_price"] <= max(prices) + 1e-9
            taken += levels
        qty = sum(q for _, q in taken)
        assert qty == pytest.approx(sum(f["qty"] for f in fills), abs=1e-9)
        assert qty == pytest.approx(ORDER_QTY, abs=1e-9), (order_id, taken)
        if order_id in submitted:
            assert submitted[order_id]["qty"] == pytest.approx(ORDER_QTY)
        assert len(taken) >= 2, f"{order_id}: {ORDER_QTY} BTC walks more than the touch"
        candidates = _books_at(books, arrivals, fills[0]["ts"])
        assert any(_walk_matches(book, side, taken) for book in candidates), (
            order_id,
            taken,
            [b["asks" if side == "buy" else "bids"] for b in candidates],
        )

    # the validator checks the same against market.jsonl: it passes the run, and catches a fill
    # from a level the book in force did not have, or more of a level than it held
    assert validate(result.run_path) == []
    lines = (result.run_path / "events.jsonl").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if '"source":"book"' in line.replace(" ", ""))
    fill = json.loads(lines[at])
    for change, said in (
        # half a tick off: no level of any book (a whole tick could be the next level)
        (
            {"fill_price": fill["fill_price"] + (0.05 if fill["side"] == "buy" else -0.05)},
            "from the book, which no",
        ),
        ({"qty": fill["qty"] + 100.0}, "(or not that much"),
    ):
        forged = tmp_path / f"forged-{len(said)}"
        forged.mkdir()
        (forged / "market.jsonl").write_bytes((result.run_path / "market.jsonl").read_bytes())
        changed = [*lines]
        changed[at] = json.dumps({**fill, **change})
        (forged / "events.jsonl").write_text("\n".join(changed) + "\n")
        assert any(f"seq {fill['seq']}" in p and said in p for p in validate(forged)), change

    # and replaying the recorded session takes the same levels at the same prices
    replayed = await replay_cli(result.run_path, tmp_path)
    assert _fills(read_events(replayed)) == _fills(events)
    second = read_report(replayed)
    for key in report.keys() - NOT_COMPARED - FEED_HEALTH:
        assert report[key] == second[key], key
