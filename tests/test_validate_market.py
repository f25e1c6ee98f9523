"""The validator's checks of fills against the market (tools/validate_session.py), each on a small
run folder written here by hand, so that every case is exactly the one named: a live fill against
the quotes, books and candles of market.jsonl (`check_market`), a liquidation against its
position (`check_records`), a fill's latency against its order (`check_orders`), a funding charge
booked after its instant (`_check_funding`, `Attribution`), and a backtest against its data file
(`check_data`): a symbol whose data ends first, rows the backtest skipped, a file changed since.

The real runs these checks pass (live mock and fake-exchange sessions, resumes, backtests over the
shared data) are the other tests' (tests/test_validate_session.py and every scenario test that
validates its run folder)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from protocols.records import iso
from tests.conftest import main_in_process, read_events
from tests.test_multi_symbol import THREE_STRATEGIES, write_bars
from tools.validate_session import (
    Attribution,
    check_data,
    check_fill_terms,
    check_funding_charges,
    check_market,
    check_orders,
    check_records,
    data_note,
    validate,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
SYMBOL = "BTCUSDT"


def market(tmp_path: Path, *records: dict[str, Any]) -> Path:
    """A run folder holding only market.jsonl, the records in arrival order."""
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "market.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def tick(arrival: float, bid: float, ask: float, **sizes: float) -> dict[str, Any]:
    fields = {"last": bid, "bid_qty": 0.0, "ask_qty": 0.0, "last_qty": 0.0, **sizes}
    return {
        "arrival_ts": arrival,
        "type": "tick",
        "ts": arrival,
        "bid": bid,
        "ask": ask,
        **fields,
        "symbol": SYMBOL,
    }


def filled(
    seq: int, at: float, side: str, qty: float, price: float, bid: float, ask: float, **more: Any
) -> dict[str, Any]:
    return {
        "seq": seq, "ts": iso(at), "kind": "order.filled", "order_id": f"o{seq}", "fill_id": f"f{seq}",
        "side": side, "qty": qty, "fill_price": price, "bid": bid, "ask": ask, "symbol": SYMBOL, **more,
    }  # fmt: skip


def started(**config: Any) -> dict[str, Any]:
    return {"seq": 1, "ts": iso(T0), "kind": "session.started", "symbol": SYMBOL, "config": config}


# --- live fills against market.jsonl ----------------------------------------------------------------


def test_a_fill_at_the_touch_takes_no_more_than_the_touch_showed(tmp_path: Path) -> None:
    run = market(tmp_path, tick(T0 + 1, 100.0, 100.1, bid_qty=1.0, ask_qty=0.5))
    whole = [started(), filled(2, T0 + 1.2, "buy", 0.5, 100.1, 100.0, 100.1, source="touch")]
    assert check_market(run, whole, finished=True) == []
    # two fills at the same quote: 0.3 and 0.3 of an ask of 0.5
    twice = [
        *whole[:1],
        *(filled(n, T0 + 1.2, "buy", 0.3, 100.1, 100.0, 100.1, source="touch") for n in (2, 3)),
    ]
    assert check_market(run, twice, finished=True) == [
        "fill f3 (seq 3): 0.3 at the touch, more than the quote's touch size showed (with the fills before it)"
    ]


def test_a_resting_limit_fills_only_on_a_trade_through_its_price_and_no_more_than_it_traded(
    tmp_path: Path,
) -> None:
    run = market(tmp_path, tick(T0 + 1, 99.8, 99.9, last=99.8, last_qty=0.2))
    through = filled(2, T0 + 1, "buy", 0.1, 100.0, 99.8, 99.9, source="resting")
    assert check_market(run, [started(), through], finished=True) == []
    short = filled(
        2, T0 + 1, "buy", 0.1, 99.5, 99.8, 99.9, source="resting"
    )  # the trade at 99.8 never reached it
    (problem,) = check_market(run, [started(), short], finished=True)
    assert problem.startswith(
        "fill f2 (seq 2): a resting buy at 99.5 on a quote whose last trade, 99.8 (size 0.2)"
    )
    more = [through, {**through, "seq": 3, "fill_id": "f3", "qty": 0.15}]  # 0.25 of a trade of 0.2
    assert [p[:17] for p in check_market(run, [started(), *more], finished=True)] == ["fill f3 (seq 3): "]


def test_a_fill_along_a_live_candle_is_at_that_candles_step_and_within_its_range(tmp_path: Path) -> None:
    candle = {
        "arrival_ts": T0 + 60, "type": "candle", "open_ts": T0, "interval_s": 60, "open": 100.0, "high": 101.0,
        "low": 99.0, "close": 100.5, "volume": 3.0, "backfill": False, "symbol": SYMBOL,
    }  # fmt: skip
    run = market(tmp_path, tick(T0 + 1, 100.0, 100.1), candle, tick(T0 + 61, 100.5, 100.6))
    stop = filled(2, T0 + 60, "sell", 0.1, 99.4, 99.5, 99.5, source="candle")
    assert check_market(run, [started(), stop], finished=True) == []
    # the same a second later, when that candle is no longer the step's (found by an audit: any
    # fill until the next candle passed against the last one)
    late = {**stop, "ts": iso(T0 + 60.5)}
    assert (
        "which no BTCUSDT quote in market.jsonl gave"
        in check_market(run, [started(), late], finished=True)[0]
    )
    # or at its step, a sell above the candle's high
    high = {**stop, "fill_price": 101.5, "bid": 101.0, "ask": 101.0}
    assert len(check_market(run, [started(), high], finished=True)) == 1


def test_a_fill_along_a_live_candle_is_never_beyond_its_low_or_high(tmp_path: Path) -> None:
    """Found by an audit: a stop worked along a candle filled at its trigger moved by the
    slippage, beyond the candle's low, a price nobody traded at in it, and passed: only a price
    better than the candle went was refused. The broker cuts the slippage at the low (or the
    high) and says so (`range_bound`); a fill beyond it, or cut short of it, is caught."""
    candle = {
        "arrival_ts": T0 + 60, "type": "candle", "open_ts": T0, "interval_s": 60, "open": 100.0, "high": 101.0,
        "low": 99.0, "close": 100.5, "volume": 3.0, "backfill": False, "symbol": SYMBOL,
    }  # fmt: skip
    run = market(tmp_path, tick(T0 + 1, 100.0, 100.1), candle)
    # a sell stop triggered at 99.0: at the low, its slippage cut there
    at_low = filled(2, T0 + 60, "sell", 0.1, 99.0, 99.0, 99.0, source="candle", range_bound=99.0)
    assert check_market(run, [started(), at_low], finished=True) == []
    beyond = {**at_low, "fill_price": 98.9}
    del beyond["range_bound"]
    assert check_market(run, [started(), beyond], finished=True) == [
        "fill f2 (seq 2): a sell at 98.9, beyond the candle's low 99 (market.jsonl): a price the market did not offer"
    ]
    short = {
        **at_low,
        "fill_price": 99.1,
        "range_bound": 99.1,
    }  # cut above the low: less slippage than allowed
    assert check_market(run, [started(), short], finished=True) == [
        "fill f2 (seq 2): a sell at 99.1 cut at range_bound 99.1, not the candle's low 99 (market.jsonl)"
    ]
    # a buy stop at the high, and one beyond it
    at_high = filled(2, T0 + 60, "buy", 0.1, 101.0, 101.0, 101.0, source="candle", range_bound=101.0)
    assert check_market(run, [started(), at_high], finished=True) == []
    over = {**at_high, "fill_price": 101.1, "range_bound": 101.1}
    assert len(check_market(run, [started(), over], finished=True)) == 2  # beyond, and not the high


def test_a_fill_from_a_checkpoints_quote_after_a_resume(tmp_path: Path) -> None:
    """market.jsonl is not cut back at a resume: the resumed broker holds the checkpoint's quote,
    older than the last ones the killed process recorded."""
    run = market(tmp_path, tick(T0 + 1, 100.0, 100.1), tick(T0 + 2, 101.0, 101.1), tick(T0 + 3, 102.0, 102.1))
    events = [
        started(),
        {"seq": 2, "ts": iso(T0 + 1.5), "kind": "heartbeat"},  # the last event the checkpoint kept
        {"seq": 3, "ts": iso(T0 + 10), "kind": "session.resumed"},
        filled(4, T0 + 10, "buy", 0.1, 101.1, 101.0, 101.1, source="touch_slippage"),
    ]
    assert check_market(run, events, finished=True) == []
    # without the resume that quote was long gone
    assert len(check_market(run, [events[0], events[3]], finished=True)) == 1


# --- a liquidation, a fill's latency, funding at its instant ------------------------------------------


def _taker(seq: int, at: float, side: str, qty: float, price: float, **more: Any) -> dict[str, Any]:
    fee = qty * price * 6 / 10_000
    fields = {
        "source": "touch_slippage", "liquidity": "taker", "fee": fee, "fee_bps": 6.0, "requested_price": price,
        "slippage_bps": 0.0, "latency_ms": 0.0, **more,
    }  # fmt: skip
    bid, ask = (price - 0.1, price) if side == "buy" else (price, price + 0.1)
    return filled(seq, at, side, qty, price, bid, ask, **fields)


def test_a_liquidation_is_at_the_positions_bankruptcy_price() -> None:
    """Long 1 at 100 with leverage 10: its margin is gone at 90 (found by an audit: a liquidation
    at any price passed, the bankruptcy source being exempt from the touch check)."""
    opened = _taker(2, T0 + 1, "buy", 1.0, 100.0)

    def liquidated(price: float) -> list[dict[str, Any]]:
        fill = _taker(3, T0 + 2, "sell", 1.0, price, source="bankruptcy", reason="liquidation")
        fill["bid"] = fill["ask"] = 95.0
        return [started(broker={"leverage": 10, "taker_fee_bps": 6.0}), opened, fill]

    assert not any("liquidation" in p for p in check_records(liquidated(90.0), None))
    (problem,) = [p for p in check_records(liquidated(100.0), None) if "liquidation" in p]
    assert "bankruptcy price (average entry 100.000000, leverage 10) is 90.000000" in problem


def test_a_fills_latency_is_the_time_since_its_order() -> None:
    order = {
        "seq": 2,
        "ts": iso(T0 + 1),
        "kind": "order.submitted",
        "order_id": "o3",
        "side": "buy",
        "qty": 1.0,
    }
    fill = _taker(3, T0 + 1.25, "buy", 1.0, 100.0, latency_ms=250.0)
    assert check_orders([started(), order, fill]) == []
    backdated = {**fill, "ts": iso(T0 + 0.5)}  # before its order, its latency written as any
    assert check_orders([started(), order, backdated]) == [
        "fill f3 (seq 3): latency_ms 250.0, but it is stamped -500 ms after its order o3 (2026-01-01T00:00:01.000Z)"
    ]


def test_a_charge_booked_after_its_instant_is_on_the_position_before_a_fill_stamped_at_it() -> None:
    """The broker charges an instant before any step at or after it: a fill 0.4 ms after 08:00 is
    stamped 08:00:00.000 (ts are cut to the ms) and came after the charge (found by an audit: it
    was taken for one before it)."""
    instant = T0 + 8 * 3600
    a1 = _taker(2, instant - 60, "buy", 1.0, 100.0, strategy_id="A", allocations=[["A", 1.0, 0.0, 0.06]])
    a2 = _taker(3, instant, "buy", 1.0, 100.0, strategy_id="A", allocations=[["A", 1.0, 0.0, 0.06]])
    charge = {
        "seq": 4, "ts": iso(instant + 5), "kind": "funding", "instant": iso(instant), "rate_pct": 0.01,
        "mark_price": 100.0, "position_qty": 1.0, "amount": 0.01, "allocations": [["A", 0.01]],
        "rate_settled_at": iso(instant), "symbol": SYMBOL,
    }  # fmt: skip
    events = [started(broker={"taker_fee_bps": 6.0}), a1, a2, charge]
    assert not any("funding" in p for p in check_records(events, None))
    assert Attribution(events, SYMBOL).problems == []


def test_a_live_charge_is_at_the_mark_in_force_at_its_instant_and_the_rate_the_feed_settled(
    tmp_path: Path,
) -> None:
    """Found by an audit: a live charge at half the feed's rate, of the other sign, or at a mark
    5 % off, its amount and the heartbeats made to agree, passed. A long of 0.01 at 08:00; the
    feed's last rate before it settled at 00:00 (0.01 %), so the broker holds the charge until the
    rate settled at 08:00 comes (0.03 %, at 08:00:00.5) and books it then on the mark in force at
    08:00: the exchange's 100,000.5 given at 07:59:59 (not the quote of 08:00:00.4, after it)."""
    instant = T0 + 8 * 3600
    run = market(
        tmp_path,
        tick(instant - 2, 100_000.0, 100_000.2),
        {"arrival_ts": instant - 1, "type": "funding", "ts": instant - 1, "mark_price": 100_000.5,
         "rate_pct": 0.01, "symbol": SYMBOL, "source": "ws", "settled_ts": instant - 8 * 3600},
        tick(instant + 0.4, 100_010.0, 100_010.2),
        {"arrival_ts": instant + 0.5, "type": "funding", "ts": instant + 0.5, "mark_price": 100_010.5,
         "rate_pct": 0.03, "symbol": SYMBOL, "source": "ws", "settled_ts": instant},
    )  # fmt: skip
    charge = {
        "seq": 2, "ts": iso(instant + 0.5), "kind": "funding", "instant": iso(instant), "rate_pct": 0.03,
        "mark_price": 100_000.5, "position_qty": 0.01, "amount": 0.01 * 100_000.5 * 0.0003,
        "rate_settled_at": iso(instant), "symbol": SYMBOL,
    }  # fmt: skip
    assert check_market(run, [started(), charge], finished=True) == []
    said = "funding seq 2: rate_pct {}, not a rate the feed gave settled at {} (0.03)"
    for rate in (0.01, 0.015, -0.03):  # the rate before, half of it, the other sign
        assert check_market(run, [started(), {**charge, "rate_pct": rate}], finished=True) == [
            said.format(rate, iso(instant))
        ]
    for mark in (100_010.1, 95_000.5):  # the quote after the instant, 5 % off
        assert check_market(run, [started(), {**charge, "mark_price": mark}], finished=True) == [
            f"funding seq 2: mark_price {mark}, not the mark in force at {iso(instant)} (mids and marks: "
            "100000.1, 100000.5)"
        ]


def test_a_charge_booked_on_a_quote_at_its_instant_is_at_the_mark_before_it(tmp_path: Path) -> None:
    """Found by the determinism audit: the broker books an instant on the first market event at or
    after it, on the mark in force before that event (the mock's ticks fall on whole seconds, one
    at 08:00:00.000 itself); the validator took only the quote at the instant for the one in force
    and refused the charge of a mock session with broker.funding = "constant". A long of 0.01, a
    quote at 07:59:59.5 (mid 100,000.1) and one at 08:00:00.000 (mid 100,010.1): either is the
    mark at the instant; the quote of 07:59:59 before them is not."""
    instant = T0 + 8 * 3600
    run = market(
        tmp_path,
        tick(instant - 1, 99_000.0, 99_000.2),
        tick(instant - 0.5, 100_000.0, 100_000.2),
        tick(instant, 100_010.0, 100_010.2),
    )
    charge = {
        "seq": 2, "ts": iso(instant), "kind": "funding", "instant": iso(instant), "rate_pct": 0.01,
        "mark_price": 100_000.1, "position_qty": 0.01, "amount": 0.01 * 100_000.1 * 0.0001, "symbol": SYMBOL,
    }  # fmt: skip
    assert check_market(run, [started(), charge], finished=True) == []
    at = {**charge, "mark_price": 100_010.1, "amount": 0.01 * 100_010.1 * 0.0001}
    assert check_market(run, [started(), at], finished=True) == []
    earlier = {**charge, "mark_price": 99_000.1, "amount": 0.01 * 99_000.1 * 0.0001}
    assert check_market(run, [started(), earlier], finished=True) == [
        f"funding seq 2: mark_price 99000.1, not the mark in force at {iso(instant)} (mids and marks: "
        "100000.1, 100010.1)"
    ]


# --- a backtest against its data file ------------------------------------------------------------------


def _backtest(tmp_path: Path, *data: str, config: str | None = None) -> Path:
    args = [
        "--mode",
        "backtest",
        "--run-dir",
        str(tmp_path / "runs"),
        "--set",
        f"session.kill_switch={tmp_path}/k",
    ]
    if config is not None:
        (tmp_path / "c.toml").write_text(config)
        args += ["--config", str(tmp_path / "c.toml")]
    for d in data:
        args += ["--data", d]
    code, _, err = main_in_process(args, {})
    assert code == 0, err
    return (tmp_path / "runs" / "latest").resolve()


def test_a_symbol_whose_data_ends_first_is_flattened_at_its_last_close(tmp_path: Path) -> None:
    write_bars(tmp_path / "btc.csv", 900, 1, 60_000.0, 1)
    write_bars(tmp_path / "eth.csv", 900, 2, 3_000.0, 2)
    lines = (tmp_path / "eth.csv").read_text().splitlines()
    (tmp_path / "eth.csv").write_text("\n".join(lines[:-200]) + "\n")  # ETH's data ends 200 minutes early
    run = _backtest(
        tmp_path,
        f"BTCUSDT={tmp_path / 'btc.csv'}",
        f"ETHUSDT={tmp_path / 'eth.csv'}",
        config=THREE_STRATEGIES,
    )
    assert any(e["kind"] == "order.filled" and e["symbol"] == "ETHUSDT" for e in read_events(run))
    assert validate(run) == []


def test_the_rows_a_backtest_skips_are_skipped_here_and_a_changed_file_is_not_taken_for_it(
    tmp_path: Path,
) -> None:
    write_bars(tmp_path / "bars.csv", 600, 3, 60_000.0, 1)
    lines = (tmp_path / "bars.csv").read_text().splitlines()
    # before a row, a malformed twin of it (its volume negative, its range elsewhere): the backtest
    # skips the twin and takes the row (found by an audit: a reader of the validator's own kept the
    # twin and dropped the row as repeated)
    for k in range(300, 100, -50):
        t = lines[k].split(",")[0]
        lines.insert(k, f"{t},1000.0,1001.0,999.0,1000.5,-1")
    (tmp_path / "bars.csv").write_text("\n".join(lines) + "\n")
    run = _backtest(tmp_path, str(tmp_path / "bars.csv"))
    (recorded,) = read_events(run)[0]["data_files"]
    assert recorded["path"] == str((tmp_path / "bars.csv").resolve())
    assert validate(run) == []
    # the file changed since the run: not the market the run met, so not checked against, and said
    os.utime(tmp_path / "bars.csv", ns=(recorded["mtime_ns"] + 10**9, recorded["mtime_ns"] + 10**9))
    assert (
        data_note(read_events(run))
        == f"fills not checked against the data: {recorded['path']} changed since the run"
    )


def test_every_instant_a_position_was_open_at_is_charged_at_the_configured_rate() -> None:
    """Found by an audit: a broker charging a tenth of the constant rate, or skipping a charge,
    passed (only each charge's own arithmetic was checked)."""
    instant = T0 + 8 * 3600
    begin = {**started(broker={"funding": "constant", "funding_rate_pct": 0.01}), "started_ts": T0}
    opened = _taker(2, T0 + 60, "buy", 1.0, 100.0)
    charge = {
        "seq": 3, "ts": iso(instant), "kind": "funding", "instant": iso(instant)[:19] + "Z", "rate_pct": 0.01,
        "mark_price": 100.0, "position_qty": 1.0, "amount": 0.01, "symbol": SYMBOL,
    }  # fmt: skip
    end = {"seq": 4, "ts": iso(instant + 3600), "kind": "session.stopped"}
    report = {"status": "ok", "funding_source": "constant"}
    assert check_funding_charges([begin, opened, charge, end], report) == []
    assert check_funding_charges([begin, opened, {**charge, "rate_pct": 0.001}, end], report) == [
        "funding seq 3: rate_pct 0.001, not the configured broker.funding_rate_pct 0.01"
    ]
    assert check_funding_charges([begin, opened, end], report) == [
        "BTCUSDT: no funding charge at 2026-01-01T08:00:00Z, with the net position +1.00000000 open at it"
    ]
    # flat at the instant (closed before it), or funding not modelled: nothing to charge
    closed = _taker(3, instant - 1, "sell", 1.0, 100.0)
    assert check_funding_charges([begin, opened, closed, end], report) == []
    assert check_funding_charges([begin, opened, end], {**report, "funding_source": "none"}) == []


def test_a_backtest_stop_filled_on_the_candle_ending_at_an_instant_was_flat_at_it() -> None:
    """Found by an audit: a backtest works the candle that ends at a funding instant along its
    path, then charges the instant on its close: a stop filled on that path (stamped at the
    candle's end, the instant) closed the position before it, and no charge was due. A fill at
    the instant at a quote (the next candle's open, a market order) comes after it."""
    instant = T0 + 8 * 3600
    begin = {**started(broker={"funding": "constant", "funding_rate_pct": 0.01}), "started_ts": T0}
    opened = _taker(2, T0 + 60, "buy", 1.0, 100.0)
    stopped = {**_taker(3, instant, "sell", 1.0, 99.0), "source": "candle"}
    end = {"seq": 4, "ts": iso(instant + 3600), "kind": "session.stopped"}
    report = {"status": "ok", "funding_source": "constant", "data_source": "backtest: bars.csv"}
    assert check_funding_charges([begin, opened, stopped, end], report) == []
    missing = [
        "BTCUSDT: no funding charge at 2026-01-01T08:00:00Z, with the net position +1.00000000 open at it"
    ]
    at_the_quote = {**stopped, "source": "touch_slippage"}
    assert check_funding_charges([begin, opened, at_the_quote, end], report) == missing
    # live, every fill stamped at the instant came after the charge
    live = {**report, "data_source": "bitunix"}
    assert check_funding_charges([begin, opened, stopped, end], live) == missing


def test_a_stop_fills_first_on_a_trade_that_reached_its_trigger(tmp_path: Path) -> None:
    """Found by an audit: a stop filled with the market short of its trigger passed (its bid and
    ask a real quote). Its rest, once triggered, fills on later quotes without a trigger."""
    run = market(tmp_path, tick(T0 + 1, 99.0, 99.1, last=99.0), tick(T0 + 2, 99.5, 99.6, last=99.5))
    stop = {"type": "stop_market", "requested_price": 99.2, "source": "touch_slippage"}
    first = filled(2, T0 + 1, "sell", 0.1, 98.9, 99.0, 99.1, order_id="p1", **stop)
    rest = filled(3, T0 + 2, "sell", 0.1, 99.4, 99.5, 99.6, order_id="p1", **stop)
    assert check_market(run, [started(), first, rest], finished=True) == []
    # triggered on the second quote, whose last trade (99.5) never came down to 99.2
    early = filled(3, T0 + 2, "sell", 0.1, 99.4, 99.5, 99.6, order_id="p2", **stop)
    assert check_market(run, [started(), early], finished=True) == [
        "fill f3 (seq 3): a stop sell triggered at 99.2, but its quote's last trade (99.5) did not reach it"
    ]


def test_a_stop_along_a_live_candle_fills_first_on_a_candle_that_reached_its_trigger(tmp_path: Path) -> None:
    """A stop worked along a live candle was checked against the candle's range only: one filled
    at the step of a candle that never came to its trigger passed."""
    candle = {
        "arrival_ts": T0 + 60, "type": "candle", "open_ts": T0, "interval_s": 60, "open": 100.0, "high": 101.0,
        "low": 99.0, "close": 100.5, "volume": 3.0, "backfill": False, "symbol": SYMBOL,
    }  # fmt: skip
    run = market(tmp_path, tick(T0 + 1, 100.0, 100.1), candle)
    stop = {"type": "stop_market", "source": "candle"}
    reached = filled(2, T0 + 60, "sell", 0.1, 99.2, 99.2, 99.2, order_id="p1", requested_price=99.2, **stop)
    assert check_market(run, [started(), reached], finished=True) == []
    # a buy stop at 101 on a candle whose high is 101: reached
    bought = filled(2, T0 + 60, "buy", 0.1, 101.0, 101.0, 101.0, order_id="p1", requested_price=101.0, **stop)
    assert check_market(run, [started(), bought], finished=True) == []
    # a sell stop at 98.5, filled within the range: the candle's low (99) never came down to it
    short = filled(2, T0 + 60, "sell", 0.1, 99.2, 99.2, 99.2, order_id="p2", requested_price=98.5, **stop)
    assert check_market(run, [started(), short], finished=True) == [
        "fill f2 (seq 2): a stop sell triggered at 98.5 along a candle (99.0-101.0) that did not reach it"
    ]
    # and a buy stop at 101.5 over a high of 101
    over = filled(2, T0 + 60, "buy", 0.1, 100.9, 100.9, 100.9, order_id="p3", requested_price=101.5, **stop)
    assert len(check_market(run, [started(), over], finished=True)) == 1


def test_each_fill_is_on_its_orders_terms() -> None:
    """Found by an audit: a broker that filled resting limits at the candle's best price, triggered
    stops early without slippage, filled market orders at the touch with none, or wrote its fill
    price as the price asked for, passed the validator. Each is said now; honest fills pass."""
    begin = started(broker={"slippage_bps": 2.0})

    def submitted(seq: int, oid: str, kind: str, side: str, asked: float, **prices: Any) -> dict[str, Any]:
        return {
            "seq": seq, "ts": iso(T0), "kind": "order.submitted", "order_id": oid, "side": side, "qty": 1.0,
            "type": kind, "requested_price": asked, "limit_price": prices.get("limit"),
            "trigger_price": prices.get("trigger"), "symbol": SYMBOL,
        }  # fmt: skip

    def fill(seq: int, oid: str, kind: str, side: str, price: float, **more: Any) -> dict[str, Any]:
        fields = {"order_id": oid, "type": kind, "liquidity": "taker", **more}
        return filled(seq, T0 + 60, side, 1.0, price, price, price, **fields)

    limit = submitted(2, "o1", "limit", "buy", 100.0, limit=100.0)
    market_ = submitted(3, "o2", "market", "buy", 100.0)
    stop = {**submitted(4, "p1", "stop_market", "sell", 98.0, trigger=98.0), "kind": "order.working"}
    honest = [
        begin, limit, market_, stop,
        fill(5, "o1", "limit", "buy", 100.0, liquidity="maker", requested_price=100.0, source="resting"),
        # 100 moved 2 bp against a buyer: 100.02, on the 0.1 grid up: 100.1
        fill(6, "o2", "market", "buy", 100.1, requested_price=100.0, reference_price=100.0, source="touch_slippage"),
        # 98 moved 2 bp against a seller: 97.9804, down: 97.9; a gap's open below it: worse, fine
        fill(7, "p1", "stop_market", "sell", 97.9, requested_price=98.0, source="candle"),
    ]  # fmt: skip
    assert check_fill_terms(honest) == []
    # its slippage cut at the candle's low (`range_bound`, held to the candle by check_data and
    # check_market): less than 2 bp, never better than the trigger
    cut = fill(
        7, "p1", "stop_market", "sell", 97.99, requested_price=98.0, source="candle", range_bound=97.99
    )
    assert check_fill_terms([*honest[:4], cut]) == []
    above = fill(
        7, "p1", "stop_market", "sell", 98.1, requested_price=98.0, source="candle", range_bound=98.1
    )
    assert check_fill_terms([*honest[:4], above]) == [
        "fill f7 (seq 7): a stop sell at 98.1, cut at its range_bound, better than its trigger 98.0"
    ]
    dishonest = [
        begin, limit, market_, stop,
        fill(5, "o1", "limit", "buy", 99.5, liquidity="maker", requested_price=100.0, source="resting"),
        fill(6, "o2", "market", "buy", 100.0, requested_price=100.0, reference_price=100.0, source="touch_slippage"),
        fill(7, "p1", "stop_market", "sell", 98.0, requested_price=98.0, source="candle"),
        fill(8, "o2", "market", "buy", 100.1, requested_price=100.1, reference_price=100.0, source="touch_slippage"),
        fill(9, "o2", "market", "buy", 100.1, liquidity="maker", requested_price=100.0, source="resting"),
    ]  # fmt: skip
    assert check_fill_terms(dishonest) == [
        "fill f5 (seq 5): a maker fill at 99.5 of a limit order (limit 100.0): a maker fills at its limit",
        "fill f6 (seq 6): a buy at 100.0, better than its touch 100.0 moved broker.slippage_bps (2) "
        "against it (100.02)",
        "fill f7 (seq 7): a stop sell at 98.0, better than its trigger 98.0 moved broker.slippage_bps (2) "
        "against it (97.9804)",
        "fill f8 (seq 8): requested_price 100.1, but its order o2 asked 100.0",
        "fill f9 (seq 9): a maker fill at 100.1 of a market order (limit None): a maker fills at its limit",
    ]


def test_a_fill_inside_a_candle_meets_its_open_not_its_later_prices(tmp_path: Path) -> None:
    """Found by an audit: a fill stamped inside a candle was checked against the whole candle, its
    close included: a broker filling a market order at the close its quote could not yet know
    passed. Inside a candle a fill meets its open (the quote); a candle's path, at its end."""
    write_bars(tmp_path / "bars.csv", 600, 3, 60_000.0, 1)
    run = _backtest(tmp_path, str(tmp_path / "bars.csv"))
    events = read_events(run)
    assert check_data(events) == []
    rows = {
        round(float(t) / 1000): (float(o), float(c))
        for t, o, _, _, c, _ in (
            line.split(",") for line in (tmp_path / "bars.csv").read_text().splitlines()[1:]
        )
    }
    fill = next(
        e
        for e in events
        if e["kind"] == "order.filled" and e["source"] == "touch_slippage" and _epoch(e["ts"]) % 60 > 0.01
    )
    open_, close = rows[int(_epoch(fill["ts"]) // 60 * 60)]
    assert abs((fill["bid"] + fill["ask"]) / 2 - open_) <= 0.05  # honest: at the open's quote
    fill.update(bid=close, ask=close, fill_price=close)  # the candle's close, a minute early
    problems = check_data(events)
    assert problems and all(f"seq {fill['seq']}" in p for p in problems), problems


def _epoch(ts: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def test_each_metrics_row_adds_up_to_its_equity_funding_included(tmp_path: Path) -> None:
    """Found by an audit: the metrics rows had no funding column, so with funding charged a row's
    figures did not add up to its equity (the gap the report's funding_paid)."""
    write_bars(tmp_path / "bars.csv", 3000, 4, 60_000.0, 1)  # two days: funding instants in it
    run = _backtest(tmp_path, str(tmp_path / "bars.csv"), config='[broker]\nfunding = "constant"\n')
    rows = json.loads((run / "metrics.json").read_text())["rows"]
    start = read_events(run)[0]["starting_equity"]
    assert rows[-1]["funding_paid"] != 0
    for row in rows:
        parts = start + row["realized_pnl"] - row["fees_paid"] - row["funding_paid"] + row["unrealized_pnl"]
        assert abs(row["equity"] - parts) < 1e-5, row
    assert validate(run) == []
