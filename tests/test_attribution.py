"""Per-strategy attribution: the report's `strategies` and `symbols` tables, replayed from the
fills' and funding events' `allocations`, and the validator's independent check of them.

The synthetic run folders below are written by hand (prices, sizes and fees chosen so that every
figure can be worked out on paper); their final reports are built by the recorder's ReportBuilder,
as the recorder builds them from the events it writes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import trio

from protocols.records import REPORT_FIELDS, ReportBuilder
from tools.validate_session import Attribution, main, validate

SYMBOL = "BTCUSDT"
ABANDONED = "abandoned"


def started() -> dict[str, Any]:
    return {
        "kind": "session.started",
        "run_id": "synthetic",
        "planned_duration_s": 3600,
        "symbol": SYMBOL,
        "interval": "1m",
        "data_source": "synthetic",
        "seed": 1,
        "starting_equity": 10_000.0,
        "config": {},
        "version": "test",
    }


def stopped() -> dict[str, Any]:
    return {
        "kind": "session.stopped",
        "status": "ok",
        "stop_reason": "duration",
        "elapsed_s": 3600.0,
        "unrealized_pnl": 0.0,
        "open_positions": [],
    }


def fill(
    n: int,
    side: str,
    qty: float,
    price: float,
    fee: float,
    realized: float,
    position: float,
    strategy_id: str | None = None,
    allocations: list[list[Any]] | None = None,
    reason: str = "entry",
) -> dict[str, Any]:
    """An order.filled as the broker writes it (the fields the report and validator read)."""
    event: dict[str, Any] = {
        "kind": "order.filled",
        "order_id": f"o{n}",
        "fill_id": f"f{n}",
        "side": side,
        "qty": qty,
        "fill_price": price,
        "requested_price": price,
        "liquidity": "taker",
        "bid": price,
        "ask": price,
        "latency_ms": 0.0,
        "fee": fee,
        "slippage_bps": 0.0,
        "realized_pnl": realized,
        "position_qty": position,
        "reason": reason,
    }
    if strategy_id is not None:
        event["strategy_id"] = strategy_id
    if allocations is not None:
        event["allocations"] = allocations
    return event


def closed(side: str, qty: float, realized: float, fees: float) -> dict[str, Any]:
    """The account's position.closed (its net position back to flat)."""
    return {
        "kind": "position.closed",
        "side": side,
        "qty": qty,
        "realized_pnl": realized,
        "fees": fees,
        "net_pnl": realized - fees,
    }


def funding(amount: float, position: float, allocations: list[list[Any]] | None = None) -> dict[str, Any]:
    """A funding charge at a mark of 100: its rate the one that makes `amount` of `position`."""
    event: dict[str, Any] = {
        "kind": "funding",
        "instant": "2024-01-01T08:00:00Z",
        "rate_pct": amount / (position * 100.0) * 100 if position else 1.0,
        "mark_price": 100.0,
        "position_qty": position,
        "amount": amount,
    }
    if allocations is not None:
        event["allocations"] = allocations
    return event


def numbered(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`seq` and `ts` in front, as events.jsonl has them; each fill's order submitted just before
    it (a fill of an order never given is a problem of its own: `check_orders`)."""
    given: list[dict[str, Any]] = []
    for e in events:
        if e.get("kind") == "order.filled":
            submitted = {
                "kind": "order.submitted",
                "order_id": e["order_id"],
                "side": e["side"],
                "qty": e["qty"],
            }
            given.append(submitted)
        given.append(e)
    records = [
        {"seq": n, "ts": f"2024-01-01T{n // 60:02d}:{n % 60:02d}:00.000Z", **e}
        for n, e in enumerate([started(), *given, stopped()], 1)
    ]
    for order, fill in itertools.pairwise(records):  # each fill at its order's time (latency_ms 0)
        if order["kind"] == "order.submitted" and fill["kind"] == "order.filled":
            order["ts"] = fill["ts"]
    return records


def build_report(records: list[dict[str, Any]]) -> dict[str, Any]:
    builder = ReportBuilder()
    for record in records:
        builder.add(record)
    return builder.report()


def write_run(tmp_path: Path, events: list[dict[str, Any]], report: dict[str, Any] | None = None) -> Path:
    records = numbered(events)
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "final_report.json").write_text(json.dumps(report or build_report(records)))
    return run


def row(
    fills: int, trades: int, wins: int, losses: int, realized: float, fees: float, funding: float
) -> dict[str, Any]:
    return {
        "fills": fills,
        "trades": trades,
        "wins": wins,
        "losses": losses,
        "realized_pnl": pytest.approx(realized, abs=1e-9),
        "fees": pytest.approx(fees, abs=1e-9),
        "funding": pytest.approx(funding, abs=1e-9),
        "net_pnl": pytest.approx(realized - fees - funding, abs=1e-9),
    }


# --- two strategies holding opposite positions, funding split, then a flatten shared by both ---

# A buys 2 @ 100 (fee 0.2). B sells 1 @ 110 (fee 0.11): its own short, though the account's long
# only shrinks to 1 and books (110 - 100) x 1 = 10. Funding at mark 100, 1 %: the account's +1
# pays 1, A's +2 pays 2 and B's -1 receives 1. The flatten sells the account's 1 @ 120 (fee 0.12):
# the broker shares it by the virtual positions (+2 and -1 of a net +1), so A sells 2 (realized
# (120 - 100) x 2 = 40) and B buys 1 (realized (110 - 120) x 1 = -10), the fee by size, 0.08 and
# 0.04. The account: realized 10 + 20 = 30, fees 0.43, funding 1, one round trip (a win).
OPPOSITE = [
    fill(1, "buy", 2.0, 100.0, 0.2, 0.0, 2.0, "A", [["A", 2.0, 0.0, 0.2]]),
    fill(2, "sell", 1.0, 110.0, 0.11, 10.0, 1.0, "B", [["B", -1.0, 0.0, 0.11]]),
    funding(1.0, 1.0, [["A", 2.0], ["B", -1.0]]),
    fill(3, "sell", 1.0, 120.0, 0.12, 20.0, 0.0, "", [["A", -2.0, 40.0, 0.08], ["B", 1.0, -10.0, 0.04]], "flatten_on_exit"),
    closed("long", 2.0, 30.0, 0.43),
]  # fmt: skip
OPPOSITE_STRATEGIES = {
    # 40 - 0.28 - 2 = 37.72: a win
    "A": row(fills=2, trades=1, wins=1, losses=0, realized=40.0, fees=0.28, funding=2.0),
    # -10 - 0.15 + 1 = -8.15: a loss
    "B": row(fills=2, trades=1, wins=0, losses=1, realized=-10.0, fees=0.15, funding=-1.0),
}
OPPOSITE_SYMBOLS = {SYMBOL: row(fills=3, trades=2, wins=1, losses=1, realized=30.0, fees=0.43, funding=1.0)}


def test_opposite_positions_then_a_shared_flatten() -> None:
    report = build_report(numbered(OPPOSITE))
    assert list(report)[-2:] == ["strategies", "symbols"] == list(REPORT_FIELDS[-2:])
    assert report["strategies"] == OPPOSITE_STRATEGIES
    assert report["symbols"] == OPPOSITE_SYMBOLS
    # the account: one round trip of the net position where the strategies made two
    assert (report["trade_count"], report["wins"], report["losses"]) == (1, 1, 0)
    assert (report["realized_pnl"], report["fees_paid"], report["funding_paid"]) == (30.0, 0.43, 1.0)
    assert report["net_pnl"] == pytest.approx(30.0 - 0.43 - 1.0)
    recomputed = Attribution(numbered(OPPOSITE), SYMBOL)
    assert recomputed.problems == []
    assert recomputed.strategies() == OPPOSITE_STRATEGIES
    assert recomputed.symbols() == OPPOSITE_SYMBOLS


def test_while_opposite_the_strategies_realized_is_not_the_accounts(tmp_path: Path) -> None:
    """Before the flatten, A is long 2 and B short 1: the account has booked 10 that no strategy
    has (it is in their unrealized PnL). The validator does not hold the sums to the account's
    then, but fees and funding still add up."""
    events = OPPOSITE[:3]
    records = numbered(events)
    report = build_report(records)
    assert report["realized_pnl"] == 10.0
    assert sum(r["realized_pnl"] for r in report["strategies"].values()) == 0.0
    assert report["strategies"]["A"]["trades"] == report["strategies"]["B"]["trades"] == 0
    stop = records[-1]
    stop.update(status=ABANDONED, stop_reason=ABANDONED)  # not flat: as an abandoned run ends
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "final_report.json").write_text(json.dumps(build_report(records)))
    assert validate(run) == []


def test_opposite_positions_run_folder_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_run(tmp_path, OPPOSITE)
    assert validate(run) == []
    assert main([str(run)]) == 0
    err = capsys.readouterr().err
    assert "trades: 1 of the net position; 2 of the strategies' virtual positions (A 1, B 1)" in err


# --- opposite positions netting to 0 at the end: crossed at the mark ---


# A buys 1 @ 100 (fee 0.1); B sells 1 @ 110 (fee 0.11): the account is flat again, having booked
# (110 - 100) x 1 = 10 in one round trip. Neither strategy has realized anything. The end's
# flatten trades nothing (the net is flat) and crosses them at the mark, 105: A sells its 1
# (realized 105 - 100 = 5), B buys its 1 back (realized 110 - 105 = 5), no fee. A's trade: 5 - 0.1
# = 4.9, B's: 5 - 0.11 = 4.89, both wins; their realized PnL sums to the account's 10.
def cross(allocations: list[list[Any]], price: float = 105.0) -> dict[str, Any]:
    return {
        "kind": "position.crossed",
        "symbol": SYMBOL,
        "price": price,
        "reason": "flatten_on_exit",
        "allocations": allocations,
    }


NETTED = [
    fill(1, "buy", 1.0, 100.0, 0.1, 0.0, 1.0, "A", [["A", 1.0, 0.0, 0.1]]),
    fill(2, "sell", 1.0, 110.0, 0.11, 10.0, 0.0, "B", [["B", -1.0, 0.0, 0.11]]),
    closed("long", 1.0, 10.0, 0.21),
]  # fmt: skip
CROSSED = [*NETTED, cross([["A", -1.0, 5.0, 0.0], ["B", 1.0, 5.0, 0.0]])]


def test_opposite_positions_crossed_at_the_end_sum_to_the_account(tmp_path: Path) -> None:
    report = build_report(numbered(CROSSED))
    assert report["strategies"] == {
        "A": row(fills=1, trades=1, wins=1, losses=0, realized=5.0, fees=0.1, funding=0.0),
        "B": row(fills=1, trades=1, wins=1, losses=0, realized=5.0, fees=0.11, funding=0.0),
    }
    assert report["symbols"] == {SYMBOL: row(2, 2, 2, 0, realized=10.0, fees=0.21, funding=0.0)}
    assert (report["realized_pnl"], report["trade_count"]) == (10.0, 1)
    assert validate(write_run(tmp_path, CROSSED)) == []


@pytest.mark.parametrize(
    ("allocations", "price", "problem"),
    [
        ([["A", -0.5, 2.5, 0.0], ["B", 0.5, 2.5, 0.0]], 105.0, "each closes its whole position"),
        ([["A", -1.0, 5.0, 0.0]], 105.0, "each closes its whole position"),
        ([["A", -1.0, 5.0, 0.01], ["B", 1.0, 5.0, 0.0]], 105.0, "a cross pays no fee"),
        ([["A", -1.0, 5.0, 0.0], ["B", 1.0, 5.0, 0.0]], 0.0, "is not a price"),
        # realized as if crossed at 108 while the price says 105: A's ledger nets 5, not 8
        ([["A", -1.0, 8.0, 0.0], ["B", 1.0, 2.0, 0.0]], 105.0, "netting its virtual position"),
    ],
)
def test_a_wrong_cross_is_refused(
    tmp_path: Path, allocations: list[list[Any]], price: float, problem: str
) -> None:
    events = [*NETTED, cross(allocations, price)]
    problems = validate(write_run(tmp_path, events))
    assert any(problem in p for p in problems), problems


def test_opposite_positions_left_open_at_a_clean_end_are_refused(tmp_path: Path) -> None:
    """Before crosses, the end left them open: the strategies' realized PnL (0) was not the
    account's (10), and nothing said so."""
    problems = validate(write_run(tmp_path, NETTED))
    assert any("left open at a clean end" in p for p in problems), problems


# --- funding in a trade's result, a flip ---

# A and B each buy 1 @ 100 (fee 0.1 each); funding 4 (2 each); A sells 1 @ 101.5 (fee 0.1015),
# B sells 1 @ 103 (fee 0.103). A's trade: 1.5 - 0.2015 - 2 = -0.7015, a loss that would be a win
# without its funding; B's: 3 - 0.203 - 2 = 0.797, a win. The account's one round trip: realized
# 4.5 less fees 0.4045 (its wins and losses leave funding out).
FUNDED = [
    fill(1, "buy", 1.0, 100.0, 0.1, 0.0, 1.0, "A", [["A", 1.0, 0.0, 0.1]]),
    fill(2, "buy", 1.0, 100.0, 0.1, 0.0, 2.0, "B", [["B", 1.0, 0.0, 0.1]]),
    funding(4.0, 2.0, [["A", 2.0], ["B", 2.0]]),
    fill(3, "sell", 1.0, 101.5, 0.1015, 1.5, 1.0, "A", [["A", -1.0, 1.5, 0.1015]], "exit"),
    fill(4, "sell", 1.0, 103.0, 0.103, 3.0, 0.0, "B", [["B", -1.0, 3.0, 0.103]], "exit"),
    closed("long", 2.0, 4.5, 0.4045),
]


def test_funding_counts_in_the_trade_it_was_charged_to(tmp_path: Path) -> None:
    report = build_report(numbered(FUNDED))
    assert report["strategies"] == {
        "A": row(fills=2, trades=1, wins=0, losses=1, realized=1.5, fees=0.2015, funding=2.0),
        "B": row(fills=2, trades=1, wins=1, losses=0, realized=3.0, fees=0.203, funding=2.0),
    }
    assert report["symbols"] == {SYMBOL: row(4, 2, 1, 1, realized=4.5, fees=0.4045, funding=4.0)}
    assert (report["trade_count"], report["wins"], report["losses"]) == (1, 1, 0)
    assert validate(write_run(tmp_path, FUNDED)) == []


# A buys 1 @ 100 (fee 0.1), sells 3 @ 110 (fee 0.3: a flip, closing 1 for +10 and opening a short
# of 2), buys 2 @ 105 (fee 0.2, +10). Trade 1: 10 - 0.1 - 0.3/3 = 9.8; trade 2: -0.2 + 10 - 0.2.
FLIP = [
    fill(1, "buy", 1.0, 100.0, 0.1, 0.0, 1.0, "A", [["A", 1.0, 0.0, 0.1]]),
    fill(2, "sell", 3.0, 110.0, 0.3, 10.0, -2.0, "A", [["A", -3.0, 10.0, 0.3]]),
    closed("long", 1.0, 10.0, 0.2),
    fill(3, "buy", 2.0, 105.0, 0.2, 10.0, 0.0, "A", [["A", 2.0, 10.0, 0.2]]),
    closed("short", 2.0, 10.0, 0.4),
]


def test_a_flip_closes_one_trade_and_opens_the_next(tmp_path: Path) -> None:
    report = build_report(numbered(FLIP))
    assert report["strategies"] == {"A": row(3, 2, 2, 0, realized=20.0, fees=0.6, funding=0.0)}
    assert report["trade_count"] == 2
    assert validate(write_run(tmp_path, FLIP)) == []


def test_a_flip_whose_closing_part_loses_after_its_fee_share() -> None:
    """Trade 1: +0.05 realized less 0.1 and a third of 0.3: a loss; trade 2 gets 0.2 of the fee."""
    events = [
        fill(1, "buy", 1.0, 100.0, 0.1, 0.0, 1.0, "A", [["A", 1.0, 0.0, 0.1]]),
        fill(2, "sell", 3.0, 100.05, 0.3, 0.05, -2.0, "A", [["A", -3.0, 0.05, 0.3]]),
        fill(3, "buy", 2.0, 90.0, 0.2, 20.1, 0.0, "A", [["A", 2.0, 20.1, 0.2]]),
    ]
    want = {"A": row(3, 2, 1, 1, realized=20.15, fees=0.6, funding=0.0)}
    assert build_report(numbered(events))["strategies"] == want
    assert Attribution(numbered(events), SYMBOL).strategies() == want


# --- old run folders: no allocations ---

OLD_STYLE = [
    fill(1, "buy", 1.0, 100.0, 0.1, 0.0, 1.0),
    funding(1.0, 1.0),
    fill(2, "sell", 1.0, 105.0, 0.105, 5.0, 0.0, reason="exit"),
    closed("long", 1.0, 5.0, 0.205),
]


def test_a_log_without_allocations_counts_wholly_to_nobody(tmp_path: Path) -> None:
    report = build_report(numbered(OLD_STYLE))
    # 5 - 0.205 - 1 = 3.795: a win
    assert report["strategies"] == {"": row(2, 1, 1, 0, realized=5.0, fees=0.205, funding=1.0)}
    assert report["symbols"] == {SYMBOL: report["strategies"][""]}
    assert validate(write_run(tmp_path, OLD_STYLE)) == []


def test_an_old_report_without_the_tables_still_validates(tmp_path: Path) -> None:
    report = build_report(numbered(OLD_STYLE))
    del report["strategies"], report["symbols"]
    assert validate(write_run(tmp_path, OLD_STYLE, report)) == []


def test_tagged_fills_without_allocations_and_their_funding() -> None:
    """Fills of A and B without allocations count wholly to their strategy_id; a funding event
    without them is split by the virtual positions held, as the broker splits it."""
    events = [
        fill(1, "buy", 3.0, 100.0, 0.3, 0.0, 3.0, "A"),
        fill(2, "sell", 1.0, 100.0, 0.1, 0.0, 2.0, "B"),
        funding(4.0, 2.0),  # A's +3 pays 6, B's -1 receives 2
    ]
    want = {
        "A": row(1, 0, 0, 0, realized=0.0, fees=0.3, funding=6.0),
        "B": row(1, 0, 0, 0, realized=0.0, fees=0.1, funding=-2.0),
    }
    assert build_report(numbered(events))["strategies"] == want
    assert Attribution(numbered(events), SYMBOL).strategies() == want


def test_no_fills_gives_an_empty_strategies_table(tmp_path: Path) -> None:
    report = build_report(numbered([]))
    assert report["strategies"] == {}
    assert report["symbols"] == {SYMBOL: row(0, 0, 0, 0, 0.0, 0.0, 0.0)}
    assert validate(write_run(tmp_path, [])) == []


# --- tampering: the validator names what is wrong ---


def tampered(events: list[dict[str, Any]], n: int, **change: Any) -> list[dict[str, Any]]:
    events = json.loads(json.dumps(events))
    events[n].update(change)
    return events


def test_an_allocation_not_summing_to_its_fill_is_named(tmp_path: Path) -> None:
    # B's share of the flatten: +0.9 where +1 was allocated; the report rebuilt from the same events
    events = tampered(OPPOSITE, 3, allocations=[["A", -2.0, 40.0, 0.08], ["B", 0.9, -10.0, 0.04]])
    problems = validate(write_run(tmp_path, events))
    assert "fill f3 (seq 8): allocations sum to qty -1.1000000000 but the fill is -1.0000000000" in problems
    # B is left short 0.1, so the realized PnL is not held to the account's
    assert not any("the strategies' realized_pnl" in p for p in problems)


def test_an_allocated_fee_not_summing_to_its_fill_is_named(tmp_path: Path) -> None:
    events = tampered(OPPOSITE, 3, allocations=[["A", -2.0, 40.0, 0.08], ["B", 1.0, -10.0, 0.05]])
    problems = validate(write_run(tmp_path, events))
    assert "fill f3 (seq 8): allocations sum to fee 0.1300000000 but the fill's is 0.1200000000" in problems
    assert "the strategies' fees sum to 0.440000 but the report's fees_paid is 0.43" in problems


def test_a_shared_fill_split_otherwise_than_by_the_positions_is_named(tmp_path: Path) -> None:
    """Found by an audit: a shared fill's fee moved between two strategies (sums kept, their
    report rows rebuilt to match) passed. A's share of the flatten's fee is 2/3 of 0.12 (its 2 of
    the 3 closed), B's 1/3; its size in proportion to the positions, +2 and -1 of +1."""
    events = tampered(OPPOSITE, 3, allocations=[["A", -2.0, 40.0, 0.03], ["B", 1.0, -10.0, 0.09]])
    problems = validate(write_run(tmp_path, events))
    assert "fill f3 (seq 8): 'A''s fee 0.0300000000 is not its share's of the fee (0.0800000000)" in problems
    assert "fill f3 (seq 8): 'B''s fee 0.0900000000 is not its share's of the fee (0.0400000000)" in problems


def test_a_funding_split_not_summing_to_its_amount_is_named(tmp_path: Path) -> None:
    events = tampered(OPPOSITE, 2, allocations=[["A", 2.0], ["B", -0.5]])
    problems = validate(write_run(tmp_path, events))
    assert (
        "funding at 2024-01-01T08:00:00Z (seq 6): allocations sum to 1.5000000000 but the amount is 1.0000000000"
        in problems
    )
    assert "the strategies' funding sum to 1.500000 but the report's funding_paid is 1.0" in problems


def test_a_funding_split_otherwise_than_by_the_positions_is_named(tmp_path: Path) -> None:
    """Found by an audit: a funding charge moved between two strategies (its sum kept, their
    report rows rebuilt to match) passed. At the instant A holds +2 and B -1 of the net +1, so of
    the 1 charged A pays 2 and B receives 1."""
    events = tampered(OPPOSITE, 2, allocations=[["A", 1.5], ["B", -0.5]])
    problems = validate(write_run(tmp_path, events))
    assert problems == [
        "funding at 2024-01-01T08:00:00Z (seq 6): shared {'A': 1.5, 'B': -0.5} but the strategies' "
        "positions then give {'A': 2.0, 'B': -1.0}"
    ]
    # with the net flat each pays on its own position: A +1 and B -1 at mark 100 and 1 %
    flat = [
        fill(1, "buy", 1.0, 100.0, 0.1, 0.0, 1.0, "A", [["A", 1.0, 0.0, 0.1]]),
        fill(2, "sell", 1.0, 100.0, 0.1, 0.0, 0.0, "B", [["B", -1.0, 0.0, 0.1]]),
        closed("long", 1.0, 0.0, 0.2),
        {**funding(0.0, 0.0, [["A", 1.0], ["B", -1.0]]), "rate_pct": 1.0},
        cross([["A", -1.0, 0.0, 0.0], ["B", 1.0, 0.0, 0.0]], price=100.0),  # the end's flatten
    ]
    for name in ("flat", "wrong"):
        (tmp_path / name).mkdir()
    assert validate(write_run(tmp_path / "flat", flat)) == [], "each its own position x mark x rate"
    wrong = tampered(flat, 3, allocations=[["A", 0.5], ["B", -0.5]])
    assert any("shared {'A': 0.5, 'B': -0.5}" in p for p in validate(write_run(tmp_path / "wrong", wrong)))


def test_an_allocated_realized_pnl_not_the_virtual_positions_is_named(tmp_path: Path) -> None:
    events = tampered(OPPOSITE, 3, allocations=[["A", -2.0, 45.0, 0.08], ["B", 1.0, -10.0, 0.04]])
    problems = validate(write_run(tmp_path, events))
    assert (
        "strategy 'A': its allocations' realized_pnl sum to 45.000000 but netting its virtual "
        "position at the fills' prices gives 40.000000"
    ) in problems
    assert "the strategies' realized_pnl sum to 35.000000 but the report's realized_pnl is 30.0" in problems


def test_a_malformed_allocation_is_named(tmp_path: Path) -> None:
    events = tampered(OPPOSITE, 0, allocations=[["A", 2.0, 0.0]])
    problems = validate(write_run(tmp_path, events, build_report(numbered(OPPOSITE))))
    assert (
        "fill f1 (seq 3): allocations [['A', 2.0, 0.0]] are not [strategy_id, signed_qty, realized_pnl, fee] each"
        in problems
    )
    assert any(
        p.startswith("the report cannot be derived again from the events: ValueError") for p in problems
    )


def test_a_tampered_strategies_table_is_named(tmp_path: Path) -> None:
    report = build_report(numbered(OPPOSITE))
    report["strategies"]["B"]["wins"] = 1
    report["strategies"]["A"]["fees"] = 0.3
    report["symbols"][SYMBOL]["net_pnl"] += 0.02
    report["strategies"]["C"] = report["strategies"]["B"]
    problems = validate(write_run(tmp_path, OPPOSITE, report))
    assert "report strategies['B'].wins = 1 but the allocations give 0" in problems
    assert "report strategies['A'].fees = 0.3 but the allocations give 0.280000" in problems
    assert "report strategies has 'C' but the allocations give it nothing" in problems
    assert any(p.startswith(f"report symbols['{SYMBOL}'].net_pnl = 28.59") for p in problems)
    assert main([str(tmp_path / "run")]) == 1


def test_a_cent_is_tolerated_a_count_is_not(tmp_path: Path) -> None:
    report = build_report(numbered(OPPOSITE))
    report["strategies"]["A"]["realized_pnl"] += 0.004
    run = write_run(tmp_path, OPPOSITE, report)
    problems = validate(run)
    # the recomputation tolerates it; the exact re-derivation of the whole report does not
    assert [p for p in problems if "allocations give" in p] == []
    assert [p for p in problems if p.startswith("report strategies = ")] != []


# --- a backtest of the one [strategy] form: the broker's allocations, end to end ---


async def test_backtest_strategies_table_equals_the_account(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    from actors.config import load
    from actors.plan import Plan
    from actors.session import run_session
    from tests.conftest import read_events, read_report
    from tests.test_replay_backtest import write_bars

    data = tmp_path / "bars.csv"
    write_bars(data, 3000)
    sets = [
        f"session.run_dir={tmp_path / 'runs'}",
        "session.interval=1m",
        "strategy.fast_period=5",
        "strategy.slow_period=13",
        "risk.max_consecutive_losses=0",
        "risk.max_daily_drawdown_pct=100",
        "risk.max_loss_pct=100",
        "broker.funding=constant",
        "broker.funding_rate_pct=0.05",
    ]
    config = load(None, {}, sets)
    result = await run_session(config, plan=Plan(mode="backtest", data=str(data)), handle_signals=False)
    report = read_report(result.run_path)
    events = read_events(result.run_path)
    fills = [e for e in events if e["kind"] == "order.filled"]
    assert report["stop_reason"] == "data_end" and report["trade_count"] >= 5
    assert all("allocations" in f for f in fills)
    assert sum(1 for e in events if e["kind"] == "funding") >= 3 and report["funding_paid"] != 0
    assert validate(result.run_path) == []
    # the one strategy's virtual position is the account's: its figures are the account's
    (strategy_id,) = report["strategies"]
    assert strategy_id == config.strategy.name
    row = report["strategies"][strategy_id]
    assert row["fills"] == report["fills"] == len(fills)
    assert row["trades"] == report["trade_count"]
    for figure, total in (
        ("realized_pnl", "realized_pnl"),
        ("fees", "fees_paid"),
        ("funding", "funding_paid"),
    ):
        assert row[figure] == pytest.approx(report[total], abs=0.01)
    assert row["net_pnl"] == pytest.approx(report["net_pnl"], abs=0.01)  # it ends flat
    assert report["symbols"] == {report["symbol"]: row}


# --- three strategies on one symbol, end to end ---


@pytest.mark.slow  # both runtimes over 6,000 candles (nox -s tests runs it)
async def test_three_strategies_on_one_symbol_attribute_every_figure(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """ema_cross, trend_pullback and liquidity_sweep side by side ([[strategies]]) over generated
    candles with constant funding: every fill and funding charge is attributed, the validator
    passes, the strategies' realized PnL, fees and funding sum to the account's to the cent (it ends
    flat), every strategy traded, and the live Trio actors write the same events as the kernel."""
    from actors.config import load
    from actors.plan import Plan
    from actors.session import run_session
    from tests.conftest import read_events, read_report
    from tests.test_replay_backtest import write_bars

    data = tmp_path / "bars.csv"
    write_bars(data, 6000)
    config_file = tmp_path / "three.toml"
    config_file.write_text(
        "[session]\ninterval = '1m'\n"
        "[risk]\nmax_consecutive_losses = 0\nmax_daily_drawdown_pct = 100\nmax_loss_pct = 100\n"
        "max_position_size = 0.05\nmax_orders_per_minute = 60\n"
        "[broker]\nfunding = 'constant'\nfunding_rate_pct = 0.02\n"
        "[[strategies]]\nid = 'fast'\nkind = 'ema_cross'\nfast_period = 5\nslow_period = 13\n"
        "[[strategies]]\nid = 'trend'\nkind = 'trend_pullback'\n"
        "[[strategies]]\nid = 'sweep'\nkind = 'liquidity_sweep'\nmin_vol_ratio = 0.0\n"
    )
    runs = {}
    for runtime in ("kernel", "actors"):
        config = load(config_file, {}, [f"session.run_dir={tmp_path / runtime}"])
        result = await run_session(
            config, plan=Plan(mode="backtest", data=str(data), runtime=runtime), handle_signals=False
        )
        runs[runtime] = result.run_path
    report = read_report(runs["kernel"])
    events = read_events(runs["kernel"])
    assert report["stop_reason"] == "data_end" and report["open_positions"] == []
    assert validate(runs["kernel"]) == []
    rows = report["strategies"]
    assert {"fast", "trend", "sweep"} <= set(rows)
    assert all(rows[sid]["trades"] > 0 for sid in ("fast", "trend", "sweep")), rows
    for figure, total in (
        ("realized_pnl", "realized_pnl"),
        ("fees", "fees_paid"),
        ("funding", "funding_paid"),
    ):
        assert sum(row[figure] for row in rows.values()) == pytest.approx(report[total], abs=0.01)
    # every order of a strategy's carries its id; the fills of no strategy's are the flatten's
    fills = [e for e in events if e["kind"] == "order.filled"]
    assert {f["strategy_id"] for f in fills} <= {"fast", "trend", "sweep", ""}
    assert all(f["reason"] == "flatten_on_exit" for f in fills if f["strategy_id"] == "")

    # the same events on both runtimes, but for the run id and the run's start
    def body(run: Path) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in e.items() if k not in ("run_id", "config")}
            for e in read_events(run)
            if e["kind"] not in ("session.started", "session.stopped")
        ]

    assert body(runs["kernel"]) == body(runs["actors"])


def test_every_configured_strategy_and_symbol_has_a_row_traded_or_not(tmp_path: Path) -> None:
    """A session of three strategies on two symbols where only A traded (on BTCUSDT): the tables
    hold a zero row for B, C and ETHUSDT ("did nothing", not "not configured"), in the report and
    in the validator's recomputation alike."""
    records = numbered(
        [
            *OPPOSITE[:1],
            fill(2, "sell", 2.0, 100.0, 0.2, 0.0, 0.0, "A", [["A", -2.0, 0.0, 0.2]]),
            closed("long", 2.0, 0.0, 0.4),
        ]
    )
    records[0].update(strategies=["A", "B", "C"], symbols=[SYMBOL, "ETHUSDT"])
    report = build_report(records)
    zero = row(fills=0, trades=0, wins=0, losses=0, realized=0.0, fees=0.0, funding=0.0)
    assert report["strategies"] == {
        "A": row(fills=2, trades=1, wins=0, losses=1, realized=0.0, fees=0.4, funding=0.0),
        "B": zero,
        "C": zero,
    }
    assert report["symbols"] == {
        SYMBOL: row(fills=2, trades=1, wins=0, losses=1, realized=0.0, fees=0.4, funding=0.0),
        "ETHUSDT": zero,
    }
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "final_report.json").write_text(json.dumps(report))
    assert validate(run) == []
    (run / "final_report.json").write_text(
        json.dumps({**report, "strategies": {"A": report["strategies"]["A"]}})
    )
    assert any("strategies" in p for p in validate(run))  # a configured strategy's row left out: named


def test_fees_paid_is_the_sum_of_the_maker_and_taker_figures_shown() -> None:
    """Each rounded to 6 decimals on its own, 0.1234564 + 0.1234564 gave fees_paid 0.246913 beside
    0.123456 and 0.123456: the README says fees_paid = fees_maker + fees_taker."""
    maker = {**fill(1, "buy", 1.0, 100.0, 0.1234564, 0.0, 1.0), "liquidity": "maker"}
    taker = fill(2, "sell", 1.0, 100.0, 0.1234564, 0.0, 0.0)
    report = build_report(numbered([maker, taker, closed("long", 1.0, 0.0, 0.2469128)]))
    assert (report["fees_maker"], report["fees_taker"]) == (0.123456, 0.123456)
    assert report["fees_paid"] == report["fees_maker"] + report["fees_taker"] == 0.246912


# --- a breaker's flatten with the net flat, end to end ---

THREE_CROSSES = """
[session]
run_dir = "runs"

[risk]
sizing = "fixed"
max_position_size = 10
max_consecutive_losses = 2
on_breaker = "halt"
loss_streak_cooldown_min = 5

[[strategies]]
id = "fast"
kind = "ema_cross"
fast_period = 3
slow_period = 8
stop_loss_pct = 0
take_profit_pct = 0

[[strategies]]
id = "mid"
kind = "ema_cross"
fast_period = 5
slow_period = 13
stop_loss_pct = 0
take_profit_pct = 0

[[strategies]]
id = "slow"
kind = "ema_cross"
stop_loss_pct = 0
take_profit_pct = 0
"""


def test_a_breaker_with_the_net_flat_crosses_the_strategies_and_nothing_trades_while_halted(
    tmp_path: Path,
) -> None:
    """Three always-in-market EMA crosses of one size on one symbol: a loss streak trips the
    breaker when one strategy's losing exit leaves the net flat between two opposite others.
    Before, the flatten traded nothing and left them open; their own exits (allowed while entries
    are halted) then reopened the account's exposure during the halt. Now they are crossed at the
    mark: nothing fills from a trip to its reset, and both runtimes' runs validate."""
    from actors.main import main as cli
    from tests.conftest import read_events
    from tests.test_multi_symbol import write_bars

    bars = tmp_path / "btc.csv"
    write_bars(bars, 600, 1, 60_000.0, 1)
    config = tmp_path / "three.toml"
    config.write_text(THREE_CROSSES)
    runs = {}
    for runtime in ("kernel", "actors"):
        args = ["--config", str(config), "--mode", "backtest", "--data", f"BTCUSDT={bars}"]
        assert cli([*args, "--set", f"session.run_dir={tmp_path / runtime}", "--runtime", runtime]) == 0
        runs[runtime] = (tmp_path / runtime / "latest").resolve()
        assert validate(runs[runtime]) == []
    events = read_events(runs["kernel"])
    assert [e for e in events if e["kind"] != "session.started"] == [
        e for e in read_events(runs["actors"]) if e["kind"] != "session.started"
    ]
    crosses = [e for e in events if e["kind"] == "position.crossed"]
    assert len(crosses) >= 3 and {c["reason"] for c in crosses} == {"breaker"}
    assert "outside the market its data file gave" in _forge_a_cross(runs["kernel"])
    halted = False
    for e in events:
        if e["kind"] == "breaker.tripped":
            halted = True
        elif e["kind"] == "breaker.reset":
            halted = False
        elif e["kind"] == "order.filled" and halted:
            assert e["reason"] == "breaker", e  # only the trip's own flatten


def _forge_a_cross(run: Path) -> str:
    """The run's first cross moved to half its price, its allocations' realized PnL moved with it
    (each -qty x the move: still the netting of each virtual position at the new price) and the
    report rebuilt from the events: the account's figures do not change, only who won. The
    validator's problems, joined (found by an audit: such a run passed)."""
    from tests.conftest import read_events

    events = read_events(run)
    cross = next(e for e in events if e["kind"] == "position.crossed")
    move = -cross["price"] / 2
    cross["price"] += move
    cross["allocations"] = [
        [sid, qty, realized - qty * move, fee] for sid, qty, realized, fee in cross["allocations"]
    ]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run / "final_report.json").write_text(json.dumps(build_report(events)))
    problems = validate(run)
    assert not [p for p in problems if "netting" in p or "sum to" in p], problems  # consistent otherwise
    return "\n".join(problems)


def _live_three_crosses(tmp_path: Path, *sets: str, resume: Path | None = None) -> Path:
    """The three EMA crosses on the mock source, 5 s candles, on a virtual clock: its run folder."""
    from functools import partial

    import trio.testing

    from actors.config import load
    from actors.plan import Plan
    from actors.session import run_session

    config_path = tmp_path / "three.toml"
    config_path.write_text(THREE_CROSSES)
    base = [
        f"session.run_dir={tmp_path / 'runs'}",
        f"session.kill_switch={tmp_path / 'kill.txt'}",
        "feed.source=mock",
        "session.interval=5s",
        "feed.mock_history_candles=30",
    ]
    config = load(config_path, {}, [*base, *sets], {})
    plan = Plan() if resume is None else Plan(resume=resume)
    session = partial(run_session, config, plan=plan, handle_signals=False, progress_mode="off")
    return trio.run(session, clock=trio.testing.MockClock(autojump_threshold=0)).run_path


def test_a_live_sessions_cross_is_at_the_mark(tmp_path: Path) -> None:
    """Ten minutes: a breaker's flatten crosses them at the mark, which the validator holds to the
    quotes the session recorded (market.jsonl)."""
    from tests.conftest import read_events

    run = _live_three_crosses(tmp_path, "session.duration_min=10", "session.seed=1")
    assert validate(run) == []
    assert [e["reason"] for e in read_events(run) if e["kind"] == "position.crossed"] == ["breaker"]
    assert "not the mark in force then" in _forge_a_cross(run)


def test_a_cross_a_resume_discards_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by an audit: a cross the console printed just before a crash, written after the last
    checkpoint, went at the resume with no word (the UNDONE lines and the resume alert said only
    fills). The crash: a two-minute session (no breaker) whose end's flatten crossed the
    strategies, its folder as at its last checkpoint (the end's events come after it)."""
    from actors.config import AlertsConfig
    from actors.console import discarded_cross_line
    from actors.recording import checkpoint
    from actors.recording.alerts import AlertRules
    from tests.conftest import read_events

    sets = ("session.duration_min=2", "session.seed=1", "risk.max_consecutive_losses=0")
    run = _live_three_crosses(tmp_path, *sets)
    before = read_events(run)
    (cross,) = [e for e in before if e["kind"] == "position.crossed"]
    assert cross["reason"] == "flatten_on_exit" and cross["seq"] > checkpoint.load(run).state["seq"]
    for name in ("final_report.json", "metrics.json", "report.html"):
        (run / name).unlink()
    # restarted five minutes later (the first ran its two minutes on a virtual clock, in a moment)
    import time

    wall = time.time
    monkeypatch.setattr(time, "time", lambda: wall() + 300)
    _live_three_crosses(tmp_path, *sets, resume=run)
    monkeypatch.undo()
    (resumed,) = [e for e in read_events(run) if e["kind"] == "session.resumed"]
    fields = ("ts", "symbol", "price", "reason", "allocations")
    assert resumed["discarded_crosses"] == [{k: cross[k] for k in fields}]
    line = discarded_cross_line(resumed["discarded_crosses"][0])
    ids = ", ".join(a[0] for a in cross["allocations"])
    assert line.startswith("UNDONE ") and f"cross of {ids} @" in line and "last checkpoint" in line
    (alert,) = AlertRules(AlertsConfig()).on_event("session.resumed", 0.0, resumed)
    assert "1 cross of strategies' positions not kept" in alert.message
    assert validate(run) == []
