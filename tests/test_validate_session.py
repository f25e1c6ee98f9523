"""The validator passes a real session's run folder and catches each kind of tampering."""

from __future__ import annotations

import csv
import gzip
import json
import math
import random
import re
import shutil
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors.config import load
from actors.recording.abandon import close_abandoned
from actors.session import run_session
from tests.conftest import REPO, TRADES_OFTEN, main_in_process, make_config, read_events
from tests.test_crash_resume import write_killed_run
from tools.validate_session import main, validate


@pytest.fixture(scope="module")
def _trading_run_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real 5-minute session that trades (on an autojump clock), for every test to copy."""
    tmp_path = tmp_path_factory.mktemp("trading")
    config = make_config(tmp_path, *TRADES_OFTEN, duration_min=5)
    result = trio.run(
        partial(run_session, config, handle_signals=False, progress_mode="off"),
        clock=trio.testing.MockClock(autojump_threshold=0),
    )
    assert any(e["kind"] == "order.filled" for e in read_events(result.run_path))
    return result.run_path


@pytest.fixture
def trading_run(_trading_run_once: Path, tmp_path: Path) -> Path:
    """A copy of the real session's run folder, to tamper with."""
    return Path(shutil.copytree(_trading_run_once, tmp_path / _trading_run_once.name))


def test_real_session_validates(trading_run: Path) -> None:
    assert validate(trading_run) == []
    assert main([str(trading_run)]) == 0


def test_tampered_report_is_caught(trading_run: Path) -> None:
    run = trading_run
    report = json.loads((run / "final_report.json").read_text())
    report["net_pnl"] += 1.0
    (run / "final_report.json").write_text(json.dumps(report))
    problems = validate(run)
    assert any("net_pnl" in p for p in problems)
    assert main([str(run)]) == 1


@pytest.mark.parametrize("table", ["strategies", "symbols"])
def test_a_current_report_without_an_attribution_table_is_caught(trading_run: Path, table: str) -> None:
    """Found by an audit: a report without `strategies` or `symbols` passed as one from before
    the tables; a session.started listing its strategies and symbols is of a version that has them."""
    report = json.loads((trading_run / "final_report.json").read_text())
    del report[table]
    (trading_run / "final_report.json").write_text(json.dumps(report))
    assert any(p.startswith(f"report {table} = None but the events give") for p in validate(trading_run))


def test_missing_event_and_doubled_fill_are_caught(trading_run: Path) -> None:
    run = trading_run
    lines = (run / "events.jsonl").read_text().splitlines()
    fill_at = next(i for i, line in enumerate(lines) if '"order.filled"' in line)
    doubled = [*lines[: fill_at + 1], lines[fill_at], *lines[fill_at + 1 :]]
    (run / "events.jsonl").write_text("\n".join(doubled) + "\n")
    problems = validate(run)
    assert any("seq" in p for p in problems)
    assert any("more than once" in p for p in problems)


@pytest.mark.parametrize("damage", ["no_kind", "null_fill_fields", "not_an_object", "report_garbled"])
def test_malformed_records_are_problems_not_tracebacks(
    trading_run: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by an audit: `{"seq":999}` or a fill with null fields crashed the validator (and the
    monitor) with a KeyError/TypeError traceback."""
    from tools.monitor import SessionView

    run = trading_run
    lines = (run / "events.jsonl").read_text().splitlines()
    fill_at = next(i for i, line in enumerate(lines) if '"order.filled"' in line)
    if damage == "no_kind":
        lines.append(json.dumps({"seq": len(lines) + 1}))
    elif damage == "null_fill_fields":
        fill = json.loads(lines[fill_at])
        lines[fill_at] = json.dumps({**fill, "order_id": None, "qty": None, "fill_price": None})
        del fill["order_id"]
        lines.append(json.dumps(fill))
    elif damage == "not_an_object":
        lines.append("[1, 2]")
    else:
        (run / "final_report.json").write_text('{"net_pnl": ')
    (run / "events.jsonl").write_text("\n".join(lines) + "\n")
    problems = validate(run)
    assert problems
    assert main([str(run)]) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    view = SessionView(run)
    for line in lines:
        record = json.loads(line)
        view.fold(record if isinstance(record, dict) else {"seq": 0})  # no exception


def test_an_unfinished_run_is_said_to_be_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_killed_run(tmp_path, trades=True)
    whole = [line for line in (run / "events.jsonl").read_text().splitlines() if line.endswith("}")]
    (run / "events.jsonl").write_text("\n".join(whole) + "\n")  # without its torn last line
    assert main([str(run)]) == 0
    assert "OK (unfinished: no final_report.json yet" in capsys.readouterr().err


def test_not_a_run_folder_exits_2(tmp_path: Path) -> None:
    assert main([str(tmp_path)]) == 2


# --- abandoned runs (killed before their first checkpoint, closed by the next start) ---


def _abandoned_run(tmp_path: Path) -> Path:
    run = write_killed_run(tmp_path, trades=True)  # a long open when the process died
    close_abandoned(run)
    return run


def _rewrite(run: Path, name: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Apply `change` to the final report, or to the last event (the session.stopped)."""
    if name == "final_report.json":
        report = json.loads((run / name).read_text())
        change(report)
        (run / name).write_text(json.dumps(report))
        return
    lines = (run / name).read_text().splitlines()
    last = json.loads(lines[-1])
    change(last)
    (run / name).write_text("\n".join([*lines[:-1], json.dumps(last)]) + "\n")


def test_abandoned_run_validates_though_not_flat(tmp_path: Path) -> None:
    run = _abandoned_run(tmp_path)
    assert read_events(run)[-1]["status"] == "abandoned"
    assert validate(run) == []
    assert main([str(run)]) == 0


def test_abandoned_run_with_something_open_is_caught(tmp_path: Path) -> None:
    run = _abandoned_run(tmp_path)
    open_position = [{"side": "long", "qty": 0.01}]
    for name in ("events.jsonl", "final_report.json"):  # consistent with each other, still wrong
        _rewrite(run, name, lambda record: record.update(open_positions=open_position))
    problems = validate(run)
    assert problems == [f"abandoned run: unrealized_pnl 0.0 and open_positions {open_position} "
                        "(nothing can be open after its process died)"]  # fmt: skip


def test_abandoned_run_with_another_stop_reason_is_caught(tmp_path: Path) -> None:
    run = _abandoned_run(tmp_path)
    for name in ("events.jsonl", "final_report.json"):
        _rewrite(run, name, lambda record: record.update(stop_reason="duration"))
    assert validate(run) == ["abandoned run: stop_reason 'duration', not 'abandoned'"]


def test_a_clean_end_must_still_be_flat(tmp_path: Path) -> None:
    run = _abandoned_run(tmp_path)  # the fills leave a long
    for name in ("events.jsonl", "final_report.json"):
        _rewrite(run, name, lambda record: record.update(status="ok", stop_reason="duration"))
    problems = validate(run)
    assert problems == [
        "session ended ok but the fills leave a position of +0.01000000 BTCUSDT",
        # and its ending equity is not the last heartbeat's, whose long was 10.80 under water
        "ending_equity 9999.91892 but the last heartbeat (seq 11) says 9989.11892",
    ]


def test_a_fill_allocated_to_another_strategy_than_its_orders_is_caught(trading_run: Path) -> None:
    """An order of a strategy's is wholly its own (found by an audit: a fill booked to another
    strategy passed once the report was rebuilt from the same events)."""
    lines = (trading_run / "events.jsonl").read_text().splitlines()
    at = next(
        i for i, line in enumerate(lines) if '"order.filled"' in line and '"strategy_id":"ema_cross"' in line
    )
    fill = json.loads(lines[at])
    fill["allocations"] = [["someone_else", *fill["allocations"][0][1:]]]
    lines[at] = json.dumps(fill)
    (trading_run / "events.jsonl").write_text("\n".join(lines) + "\n")
    assert any(
        "an order of strategy 'ema_cross' allocated to ['someone_else']" in p for p in validate(trading_run)
    )


def test_a_fill_at_a_market_the_session_never_saw_is_caught(trading_run: Path) -> None:
    """A fill's bid and ask are a quote the session recorded in market.jsonl when it filled (found
    by an audit: a broker that made its own market up, its fills consistent with it, passed)."""

    def elsewhere(fill: dict[str, Any]) -> None:
        # the whole market 5 USDT against the trader, the fill still at its (moved) touch or worse
        shift = -5.0 if fill["side"] == "buy" else 5.0
        fill.update(bid=fill["bid"] + shift, ask=fill["ask"] + shift)
        fill["reference_price"] = fill["ask"] if fill["side"] == "buy" else fill["bid"]

    fill = _edit_event(trading_run, "order.filled", elsewhere)
    assert fill["liquidity"] == "taker"
    problems = validate(trading_run)
    # nothing else tells: the fill agrees with the market it says it met
    assert len(problems) == 1, problems
    assert (
        f"fill {fill['fill_id']} (seq {fill['seq']}): bid/ask {fill['bid']}/{fill['ask']}, which no "
        in problems[0]
    )

    # and with market.jsonl gone (a backtest records none) there is nothing to check it against
    (trading_run / "market.jsonl").write_text("")
    assert validate(trading_run) == []


def test_a_resting_limit_filled_by_a_trade_that_never_reached_it_is_caught(tmp_path: Path) -> None:
    """A resting limit fills on a quote whose last trade went through its price (found by an
    audit: the fill's bid and ask were checked against market.jsonl, not that its trade reached it).
    config/live.toml's setups on the mock source, seed 0: trend_pullback's limit entry rests, then
    fills."""
    config = load(
        REPO / "config" / "live.toml",
        {},
        [
            "feed.source=mock",
            "session.seed=0",
            f"session.run_dir={tmp_path}",
            f"session.kill_switch={tmp_path}/k",
        ],
        {},
    )
    result = trio.run(
        partial(run_session, config, handle_signals=False, progress_mode="off"),
        clock=trio.testing.MockClock(autojump_threshold=0),
    )
    trading_run = result.run_path
    assert validate(trading_run) == []
    events = read_events(trading_run)
    fills = [e for e in events if e["kind"] == "order.filled"]
    resting = next(e for e in fills if e["source"] == "resting" and e["bid"] != e["ask"])

    def beyond(fill: dict[str, Any]) -> None:
        # 50 USDT better for the trader, at the same quote: its figures made to agree
        price = fill["fill_price"] + (50.0 if fill["side"] == "sell" else -50.0)
        fill.update(fill_price=price, requested_price=price, levels=[[price, fill["qty"]]])
        fill.update(fee=fill["qty"] * price * fill["fee_bps"] / 10_000, slippage_bps=0.0)

    fill = _edit_event(trading_run, "order.filled", beyond, nth=fills.index(resting))
    problems = validate(trading_run)
    assert any(
        f"fill {fill['fill_id']} (seq {fill['seq']}): a resting {fill['side']} at {fill['fill_price']} on a "
        "quote whose last trade" in p
        for p in problems
    ), problems


# --- each record on its own (found by an audit: only totals were compared, to the cent) -----------


def _edit_event(
    run: Path, kind: str, change: Callable[[dict[str, Any]], None], nth: int = 0
) -> dict[str, Any]:
    """Apply `change` to the `nth` event of `kind` in events.jsonl; the event as changed."""
    lines = (run / "events.jsonl").read_text().splitlines()
    at = [i for i, line in enumerate(lines) if f'"kind":"{kind}"' in line.replace(" ", "")][nth]
    event = json.loads(lines[at])
    change(event)
    lines[at] = json.dumps(event)
    (run / "events.jsonl").write_text("\n".join(lines) + "\n")
    return event


def _nudge_price(fill: dict[str, Any]) -> None:
    """One tick (0.1) in the trader's favour: a buy cheaper, a sell dearer."""
    fill["fill_price"] = round(fill["fill_price"] + (-0.1 if fill["side"] == "buy" else 0.1), 1)


def _inside_the_touch(fill: dict[str, Any]) -> None:
    """A taker fill 5 USDT better than its recorded touch, its fee and slippage made to agree."""
    assert fill["liquidity"] == "taker"
    price = fill["ask"] - 5 if fill["side"] == "buy" else fill["bid"] + 5
    fill.update(
        fill_price=price, fee=fill["qty"] * price * fill["fee_bps"] / 10_000, levels=[[price, fill["qty"]]]
    )
    requested = fill["requested_price"]
    fill["slippage_bps"] = (
        (price - requested if fill["side"] == "buy" else requested - price) / requested * 10_000
    )


@pytest.mark.parametrize(
    ("kind", "nth", "change", "said"),
    [
        # a fill one tick better for the trader, everything else as recorded
        ("order.filled", 0, _nudge_price, "but qty x price x fee_bps gives"),
        (
            "order.filled",
            0,
            lambda e: e.update(fee_bps=e["fee_bps"] / 2, fee=e["fee"] / 2),
            "but the configured",
        ),
        ("order.filled", 0, lambda e: e.update(slippage_bps=0.0), "slippage_bps 0.0 but its price against"),
        ("order.filled", 0, lambda e: e.update(position_qty=e["position_qty"] * 3), "position_qty"),
        (
            "order.filled",
            0,
            lambda e: e.update(levels=[[e["fill_price"], e["qty"] / 2]]),
            "its levels add up to",
        ),
        # a fill better than the market it recorded (found by an audit: a broker filling takers
        # inside the spread passed), or without the figures beside its price
        ("order.filled", 0, _inside_the_touch, "better than the"),
        ("order.filled", 0, lambda e: e.update(bid=e["ask"] + 1), "are not a market"),
        ("order.filled", 0, lambda e: e.pop("latency_ms"), "records no latency_ms"),
        ("order.filled", 0, lambda e: e.update(latency_ms=-1e6), "latency_ms -1000000.0 is not a time"),
        ("order.filled", 0, lambda e: e.pop("requested_price"), "records no requested_price"),
        # a fill of no order, or more than its order (found by an audit: both passed)
        ("order.filled", 0, lambda e: e.update(order_id="o999"), "its order o999 was not submitted"),
        ("order.filled", 0, lambda e: e.update(qty=e["qty"] * 2), "left to fill"),
        (
            "order.filled",
            0,
            lambda e: e.update(
                liquidity="maker", requested_price=e["fill_price"] + (-5 if e["side"] == "buy" else 5)
            ),
            "worse than its limit",
        ),
        ("position.closed", 0, lambda e: e.update(entry_price=e["entry_price"] + 100), "entry_price ="),
        ("position.closed", 0, lambda e: e.update(exit_price=e["exit_price"] - 100), "exit_price ="),
        ("position.closed", 0, lambda e: e.update(held_s=e["held_s"] * 50), "held_s ="),
        ("position.closed", 0, lambda e: e.update(realized_pnl=e["realized_pnl"] + 3), "realized_pnl ="),
        ("heartbeat", -1, lambda e: e.update(equity=e["equity"] + 500), "equity = "),
        # under a cent (found by an audit: 9 cents passed)
        ("heartbeat", 1, lambda e: e.update(equity=round(e["equity"] + 0.009, 6)), "equity = "),
        ("heartbeat", -1, lambda e: e.update(fees_paid=e["fees_paid"] - 1), "fees_paid = "),
    ],
)
def test_a_record_changed_on_its_own_is_caught(
    trading_run: Path, kind: str, nth: int, change: Callable[[dict[str, Any]], None], said: str
) -> None:
    """Each change leaves the totals within a cent or keeps the report consistent: only the
    record's own figures, recomputed from the fills before it, can tell."""
    event = _edit_event(trading_run, kind, change, nth)
    problems = validate(trading_run)
    assert any(f"seq {event['seq']}" in p and said in p for p in problems), problems


def test_a_funding_charge_is_the_position_times_the_mark_times_the_rate() -> None:
    """Hand-built records: 0.01 BTC long at 100,000 and funding at 0.01 % on a mark of 101,000 is
    0.01 x 101,000 x 0.0001 = 0.101 USDT paid; a charge at another mark than it says is caught."""
    from tools.validate_session import check_records

    started = {
        "seq": 1,
        "kind": "session.started",
        "ts": "2024-01-01T00:00:00.000Z",
        "symbol": "BTCUSDT",
        "starting_equity": 10_000.0,
        "config": {"broker": {"taker_fee_bps": 6.0, "maker_fee_bps": 2.0}},
    }
    fill = {
        "seq": 2, "kind": "order.filled", "ts": "2024-01-01T07:00:00.000Z", "side": "buy", "qty": 0.01,
        "fill_price": 100_000.0, "fee": 0.6, "fee_bps": 6.0, "liquidity": "taker", "realized_pnl": 0.0,
        "position_qty": 0.01, "symbol": "BTCUSDT", "requested_price": 100_000.0, "slippage_bps": 0.0,
        "latency_ms": 0.0, "bid": 99_999.9, "ask": 100_000.0,
    }  # fmt: skip
    funding = {
        "seq": 3, "kind": "funding", "ts": "2024-01-01T08:00:00.000Z", "rate_pct": 0.01,
        "mark_price": 101_000.0, "position_qty": 0.01, "amount": 0.101, "symbol": "BTCUSDT",
    }  # fmt: skip
    assert check_records([started, fill, funding], None) == []
    assert check_records([started, fill, {**funding, "mark_price": 202_000.0}], None) == [
        "funding seq 3: amount 0.101 but position x mark x rate gives 0.2020000000"
    ]
    assert check_records([started, fill, {**funding, "position_qty": 0.02, "amount": 0.202}], None) == [
        "funding seq 3: position_qty 0.02 but the fills before it give +0.01000000"
    ]
    # live, a charge booked when its rate came (`rate_settled_at`), after a fill that doubled the
    # position: on the position of its instant, 08:00, which the fills before 08:00 give
    close = {
        **fill, "seq": 3, "ts": "2024-01-01T08:00:00.400Z", "fill_price": 101_000.0, "fee": 0.606,
        "position_qty": 0.02, "requested_price": 101_000.0, "bid": 100_999.9, "ask": 101_000.0,
    }  # fmt: skip
    late = {
        **funding, "seq": 4, "ts": "2024-01-01T08:00:00.900Z", "instant": "2024-01-01T08:00:00Z",
        "rate_settled_at": "2024-01-01T08:00:00Z",
    }  # fmt: skip
    assert check_records([started, fill, close, late], None) == []
    assert check_records([started, fill, close, {**late, "position_qty": 0.03, "amount": 0.303}], None) == [
        "funding seq 4: position_qty 0.03 but the fills before it give +0.02000000"
    ]
    # one booked at its instant is on the position the fills before it give
    assert check_records(
        [started, fill, close, {k: v for k, v in late.items() if k != "rate_settled_at"}], None
    ) == ["funding seq 4: position_qty 0.01 but the fills before it give +0.02000000"]


def test_the_metrics_files_are_the_heartbeats(trading_run: Path) -> None:
    metrics = json.loads((trading_run / "metrics.json").read_text())
    metrics["rows"][1]["equity"] += 500
    (trading_run / "metrics.json").write_text(json.dumps(metrics))
    problems = validate(trading_run)
    assert any(p.startswith("metrics.json row 2: equity =") for p in problems), problems
    assert any(p.startswith("metrics.csv row 2: equity =") for p in problems), problems


def test_a_page_showing_other_figures_than_the_events_is_caught(trading_run: Path) -> None:
    """The command line rebuilds report.html and compares what it shows (`validate()` only when
    asked): a net PnL with its sign flipped, as a page edited by hand would show it."""
    page = trading_run / "report.html"
    text = page.read_text()
    cell = re.search(r'<td id="stat-net_pnl" data-value="(-?)([^"]+)"[^>]*>([^<]*)</td>', text)
    assert cell is not None
    sign = "" if cell[1] else "-"
    page.write_text(
        text.replace(cell[0], f'<td id="stat-net_pnl" data-value="{sign}{cell[2]}">{cell[3]}</td>')
    )
    assert validate(trading_run) == []
    problems = validate(trading_run, page=True)
    assert problems and problems[0].startswith("report.html: shows stat-net_pnl"), problems
    assert main([str(trading_run)]) == 1


# --- found by a review: corruptions the validator let through ----------------------------------------


def test_a_flat_ending_with_something_unrealized_is_caught(trading_run: Path) -> None:
    """A report (and its session.stopped) saying 500 unrealized at a clean, flat end."""

    def unrealized(record: dict[str, Any]) -> None:
        record["unrealized_pnl"] = 500.0
        record["ending_equity"] += 500.0
        if "net_pnl" in record:
            record["net_pnl"] += 500.0

    _rewrite(trading_run, "final_report.json", unrealized)
    problems = validate(trading_run)
    assert any("flat but unrealized_pnl = 500.0" in p for p in problems)
    assert any(p.startswith("ending_equity ") and "the last heartbeat" in p for p in problems)


def test_heartbeats_saying_no_drawdown_under_their_peak_are_caught(trading_run: Path) -> None:
    """Every heartbeat's drawdown zeroed (events, metrics and report untouched otherwise)."""
    beats = [e for e in read_events(trading_run) if e["kind"] == "heartbeat"]
    peak, fallen = -1.0, []
    for i, beat in enumerate(beats):
        peak = max(peak, beat["equity"])
        if (peak - beat["equity"]) / peak * 100 > 0.001:
            fallen.append(i)
    assert fallen, "the session never fell under its peak at a heartbeat"
    for i in fallen:
        _edit_event(trading_run, "heartbeat", lambda e: e.update(drawdown_pct=0.0), nth=i)
    problems = validate(trading_run)
    assert any("drawdown_pct 0.0 but its equity is" in p for p in problems)
    assert any("metrics.json row" in p and "drawdown_pct" in p for p in problems)


@pytest.mark.parametrize(
    ("column", "value"), [("price", "1.0"), ("position_qty", "9.999"), ("drawdown_pct", "99.00")]
)
def test_a_metrics_csv_column_off_its_row_is_caught(trading_run: Path, column: str, value: str) -> None:
    path = trading_run / "metrics.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    fields = list(rows[0])
    rows[0][column] = value
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    assert any(p.startswith(f"metrics.csv row 1: {column} = {value!r}") for p in validate(trading_run))


# --- a backtest's fills against its data file ---------------------------------------------------


@pytest.fixture(scope="module")
def _backtest_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A backtest over 600 generated 1m candles that trades often, with stops and targets (maker
    fills at their limits), gzipped as the real data is."""
    tmp = tmp_path_factory.mktemp("backtest")
    rows = _random_walk_rows(600)
    with gzip.open(tmp / "bars.csv.gz", "wt") as f:
        f.write("open_time_ms,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    argv = ["--mode", "backtest", "--data", str(tmp / "bars.csv.gz"), "--run-dir", str(tmp / "runs")]
    sets = [
        "strategy.fast_period=3",
        "strategy.slow_period=8",
        "strategy.take_profit_pct=0.2",
        "risk.max_loss_pct=100",
    ]
    code, _, err = main_in_process(
        [*argv, "--set", f"session.kill_switch={tmp}/kill.txt", *(x for s in sets for x in ("--set", s))], {}
    )
    assert code == 0, err
    return (tmp / "runs" / "latest").resolve()


def _random_walk_rows(n: int) -> list[str]:
    rng, price, rows = random.Random(11), 60_000.0, []
    for i in range(n):
        close = round(price * (1 + rng.gauss(0, 0.002)), 1)
        high, low = (
            round(max(price, close) + rng.uniform(0, 30), 1),
            round(min(price, close) - rng.uniform(0, 30), 1),
        )
        rows.append(f"{1_704_067_200_000 + i * 60_000},{price},{high},{low},{close},{rng.uniform(1, 9):.3f}")
        price = close
    return rows


def test_a_backtests_fill_at_a_market_its_data_never_gave_is_caught(
    _backtest_once: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by an audit: a backtest's fill at a price the data never reached, consistent with the
    bid and ask it recorded, passed (market.jsonl is empty in a backtest)."""
    run = Path(shutil.copytree(_backtest_once, tmp_path / "run"))
    events = read_events(run)
    makers = [e for e in events if e["kind"] == "order.filled" and e["liquidity"] == "maker"]
    assert makers and len(makers) < sum(e["kind"] == "order.filled" for e in events), "takers and makers"
    assert validate(run) == []

    def away(fill: dict[str, Any]) -> None:
        # a take-profit 300 USDT further on, filled there, its market moved with it: every figure
        # of the record agrees with the others
        price = fill["fill_price"] + (300.0 if fill["side"] == "sell" else -300.0)
        fill.update(
            fill_price=price, requested_price=price, bid=price - 0.1, ask=price, levels=[[price, fill["qty"]]]
        )
        fill.update(fee=fill["qty"] * price * fill["fee_bps"] / 10_000, slippage_bps=0.0)

    fills = [e for e in events if e["kind"] == "order.filled"]
    fill = _edit_event(run, "order.filled", away, nth=fills.index(makers[0]))
    problems = [p for p in validate(run) if f"(seq {fill['seq']})" in p and "its data file gave then" in p]
    assert [p.split(": ", 1)[1].split(" ")[:2] for p in problems] == [
        ["its", "bid"],
        ["its", "ask"],
        ["a", fill["side"]],
    ], problems

    # without its data file at the recorded path, nothing to check it against, and the CLI says so
    data = Path(read_events(run)[0]["data_source"].removeprefix("backtest: "))
    data.rename(data.with_suffix(".moved"))
    try:
        assert not any("its data file gave then" in p for p in validate(run))
        main([str(run)])
        assert f"fills not checked against the data: {data} not found" in capsys.readouterr().err
    finally:
        data.with_suffix(".moved").rename(data)


def _alert_line(run: Path, seq: int | None, rule: str, ts: str, message: str = "m") -> str:
    fields = {"ts": ts, "run_id": run.name, "seq": seq, "rule": rule, "severity": "warning"}
    return json.dumps({**fields, "message": message, "details": {}}) + "\n"


def test_an_alert_that_names_no_alert_event_is_caught(trading_run: Path) -> None:
    """alerts.jsonl against events.jsonl (found by the crash audit: a resume left the alerts of
    the events it discarded there, naming seqs given since to other events): an alert naming by
    its seq an event that is not its alert event, one of an event's rule with no seq, a line that
    is not an alert. A health alert (memory, disk) has no seq."""
    events = read_events(trading_run)
    heartbeat = next(e for e in events if e["kind"] == "heartbeat")
    (trading_run / "alerts.jsonl").write_text(
        _alert_line(trading_run, None, "memory", heartbeat["ts"])
        + _alert_line(trading_run, heartbeat["seq"], "breaker", heartbeat["ts"])
        + _alert_line(trading_run, None, "breaker", heartbeat["ts"])
        + _alert_line(trading_run, len(events) + 1, "fallback", heartbeat["ts"])
        + "not an alert\n"
    )
    problems = validate(trading_run)
    assert [p.split(":")[0] for p in problems] == [f"alerts.jsonl line {n}" for n in (2, 3, 4, 5)]
    assert (
        f"the breaker alert of seq {heartbeat['seq']}" in problems[0] and "a heartbeat event" in problems[0]
    )
    assert "names no event" in problems[2]


def test_closing_a_killed_run_moves_aside_the_alerts_of_events_it_lost(tmp_path: Path) -> None:
    """A process killed before its first checkpoint may have written an alert (alerts.jsonl is
    written at once) whose events were still in its buffer: the close gives their seq to its
    `session.stopped`, and the alert named it (found by the crash audit). The close moves it to
    alerts.discarded.jsonl; the folder validates."""
    run = write_killed_run(tmp_path)  # events 1 and 2 whole, a third torn
    line = _alert_line(run, 3, "fallback", read_events_lines(run)[-1]["ts"], "no live market data")
    (run / "alerts.jsonl").write_text(line)
    close_abandoned(run)
    assert read_events(run)[2]["kind"] == "session.stopped"  # seq 3
    assert (run / "alerts.jsonl").read_text() == ""
    aside = [json.loads(x) for x in (run / "alerts.discarded.jsonl").read_text().splitlines()]
    assert aside == [{"after_seq": 2, "alert": json.loads(line)}]
    assert validate(run) == []


def read_events_lines(run: Path) -> list[dict[str, Any]]:
    """The whole events of a killed run's events.jsonl (its torn last line left out)."""
    out = []
    for raw in (run / "events.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue
    return out


# --- a backtest over data with gaps, and funding from a file -------------------------------------


def _gappy_rows(n: int) -> list[tuple[int, float, float, float, float, float]]:
    """`n` 1m candles of a seeded walk whose open jumps away from the close before 1 time in 8
    (0.3 to 1 %): gaps for stops to be crossed by."""
    rng, close, rows = random.Random(5), 60_000.0, []
    for i in range(n):
        open_ = close
        if rng.random() < 0.125:
            open_ = round(open_ * (1 + rng.choice((-1, 1)) * rng.uniform(0.003, 0.01)), 1)
        close = round(open_ * (1 + rng.gauss(0, 0.0015)), 1)
        high = round(max(open_, close) + rng.uniform(0, 40), 1)
        low = round(min(open_, close) - rng.uniform(0, 40), 1)
        rows.append((1_704_067_200_000 + i * 60_000, open_, high, low, close, round(rng.uniform(1, 9), 3)))
    return rows


@pytest.fixture(scope="module")
def _gappy_backtest_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A backtest of ema_cross (stops 0.2 % away) over 1,440 gappy candles, funding from a file."""
    tmp = tmp_path_factory.mktemp("gappy")
    rows = _gappy_rows(1440)
    (tmp / "bars.csv").write_text(
        "open_time_ms,open,high,low,close,volume\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)
    )
    # a rate at each 8-hour instant, both signs
    (tmp / "funding.csv").write_text(
        "ts_ms,rate\n"
        + "".join(f"{1_704_067_200_000 + k * 28_800_000},{(-1) ** k * 0.0003 * (k + 1)}\n" for k in range(4))
    )
    sets = [
        "strategy.fast_period=3",
        "strategy.slow_period=8",
        "strategy.stop_loss_pct=0.2",
        "strategy.take_profit_pct=0.4",
        "risk.max_loss_pct=100",
        "risk.max_daily_drawdown_pct=100",
        "risk.max_consecutive_losses=1000",
    ]
    argv = ["--mode", "backtest", "--data", str(tmp / "bars.csv"), "--funding", str(tmp / "funding.csv")]
    argv += ["--run-dir", str(tmp / "runs"), "--set", f"session.kill_switch={tmp}/kill.txt"]
    code, _, err = main_in_process([*argv, *(x for s in sets for x in ("--set", s))], {})
    assert code == 0, err
    return (tmp / "runs" / "latest").resolve()


def test_a_stop_crossed_by_a_gap_filled_at_its_trigger_is_caught(
    _gappy_backtest_once: Path, tmp_path: Path
) -> None:
    """Found by an audit: a stop whose candle opened past its trigger filled at its trigger moved
    by the slippage (better than the open it gapped to), every figure of the record agreeing,
    passed: the range the data check allows a path fill runs through the gap from the close
    before, and the trigger lies in it."""
    run = Path(shutil.copytree(_gappy_backtest_once, tmp_path / "run"))
    assert validate(run) == []
    rows = {r[0] / 1000 + 60: r for r in _gappy_rows(1440)}  # by the candle's end
    events = read_events(run)
    placed = {}
    for e in events:
        if e["kind"] in ("order.submitted", "order.working"):
            placed.setdefault(e["order_id"], e)
    fills = [e for e in events if e["kind"] == "order.filled"]
    gapped = []
    for n, e in enumerate(fills):
        order = placed[e["order_id"]]
        end = datetime.fromisoformat(e["ts"]).timestamp()
        candle = rows.get(end)
        if e["type"] != "stop_market" or e["source"] != "candle" or candle is None:
            continue
        trigger, open_ = order["trigger_price"], candle[1]
        if datetime.fromisoformat(order["ts"]).timestamp() < end and (
            open_ < trigger if e["side"] == "sell" else open_ > trigger
        ):
            gapped.append((n, e, trigger, open_))
    assert gapped, "a stop crossed by a gap"
    n, fill, trigger, open_ = gapped[0]
    # the broker filled it at the open moved 2 bps against, on the tick grid away from the trader
    sell = fill["side"] == "sell"
    assert fill["fill_price"] == (
        math.floor(open_ * (1 - 0.0002) * 10) / 10 if sell else math.ceil(open_ * (1 + 0.0002) * 10) / 10
    )

    def at_trigger(e: dict[str, Any]) -> None:
        price = math.floor(trigger * 0.9998 * 10) / 10 if sell else math.ceil(trigger * 1.0002 * 10) / 10
        e.update(fill_price=price, bid=trigger, ask=trigger, levels=[[price, e["qty"]]])
        e.update(fee=e["qty"] * price * e["fee_bps"] / 10_000)
        e["slippage_bps"] = ((price - trigger) if not sell else (trigger - price)) / trigger * 10_000

    _edit_event(run, "order.filled", at_trigger, nth=n)
    assert any(
        f"(seq {fill['seq']}): a stop {fill['side']}" in p and f"opened at {open_:g}" in p
        for p in validate(run)
    )


def test_a_backtests_funding_at_another_rate_or_mark_than_its_files_is_caught(
    _gappy_backtest_once: Path, tmp_path: Path
) -> None:
    """Found by an audit: a backtest's funding charge at half its file's rate, of the other sign,
    or at a mark 5 % off its data, each charge's amount and the heartbeats and report made to
    agree, passed: only a constant rate was checked, and each charge's own arithmetic."""
    run = Path(shutil.copytree(_gappy_backtest_once, tmp_path / "run"))
    assert validate(run) == []
    closes = {r[0] / 1000 + 60: r[4] for r in _gappy_rows(1440)}  # by the candle's end
    t0 = 1_704_067_200
    charges = [e for e in read_events(run) if e["kind"] == "funding"]
    assert charges, "a position open at a funding instant"
    for e in charges:  # the file's rate at the instant (a fraction; the events say percent), the close then
        k = (datetime.fromisoformat(e["instant"]).timestamp() - t0) // 28_800
        assert e["rate_pct"] == pytest.approx((-1) ** k * 0.03 * (k + 1))
        assert e["mark_price"] == closes[datetime.fromisoformat(e["instant"]).timestamp()]
    started = read_events(run)[0]
    assert [f["symbol"] for f in started["funding_files"]] == ["BTCUSDT"]

    def scaled(rate: float = 1.0, mark: float = 1.0) -> Callable[[dict[str, Any]], None]:
        def change(e: dict[str, Any]) -> None:
            old = e["amount"]
            e["rate_pct"] *= rate
            e["mark_price"] = round(e["mark_price"] * mark, 1)
            e["amount"] = e["position_qty"] * e["mark_price"] * e["rate_pct"] / 100
            for allocation in e["allocations"]:
                allocation[1] *= e["amount"] / old

        return change

    for change, said in (
        (scaled(rate=0.5), "but its funding file has"),
        (scaled(rate=-1.0), "but its funding file has"),
        (scaled(mark=0.95), "not a price its data file gave"),
    ):
        shutil.rmtree(run)
        shutil.copytree(_gappy_backtest_once, run)
        charge = _edit_event(run, "funding", change)
        assert any(p.startswith(f"funding seq {charge['seq']}: ") and said in p for p in validate(run)), said


def test_an_order_the_record_leaves_working_after_the_end_is_caught(
    _backtest_once: Path, tmp_path: Path
) -> None:
    """Found by an audit: an `order.cancelled` taken out of events.jsonl (the sequence renumbered)
    passed, and so did a broker's exit rest cut at its fill without a record: a session's end
    leaves no order working, each filled, cancelled, rejected or cut to what it filled."""
    run = Path(shutil.copytree(_backtest_once, tmp_path / "run"))
    assert validate(run) == []
    events = read_events(run)
    at = next(i for i, e in enumerate(events) if e["kind"] == "order.cancelled")
    gone = events.pop(at)
    for seq, e in enumerate(events, 1):
        e["seq"] = seq
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    problems = validate(run)
    assert (
        f"order {gone['order_id']}: {gone['remaining']:.10g} of it neither filled, cancelled nor rejected by the session's end"
        in problems
    )


def test_a_liquidation_whose_mark_never_reached_its_price_is_caught() -> None:
    """Hand-built records (found by an audit: a backtest's long bought at a gapped open, 100x, was
    liquidated by the gap it never held, its mark the open above its liquidation price, and the
    validator passed it). 0.01 BTC long at 101,000 at 100x, maintenance 0.5 %: liquidation price
    101,000 x (1 - 0.01 + 0.005) = 100,495; a mark of 100,495 or under liquidates it, 101,000 does not."""
    from tools.validate_session import check_records

    started = {
        "seq": 1, "kind": "session.started", "ts": "2024-01-01T00:00:00.000Z", "symbol": "BTCUSDT",
        "starting_equity": 10_000.0,
        "config": {"broker": {"taker_fee_bps": 6.0, "maker_fee_bps": 2.0, "leverage": 100.0}},
    }  # fmt: skip
    fill = {
        "seq": 2, "kind": "order.filled", "ts": "2024-01-01T00:01:00.000Z", "side": "buy", "qty": 0.01,
        "fill_price": 101_000.0, "fee": 0.606, "fee_bps": 6.0, "liquidity": "taker", "realized_pnl": 0.0,
        "position_qty": 0.01, "symbol": "BTCUSDT", "requested_price": 101_000.0, "slippage_bps": 0.0,
        "latency_ms": 0.0, "bid": 100_999.9, "ask": 101_000.0,
    }  # fmt: skip
    liquidation = {
        "seq": 3, "kind": "liquidation", "ts": "2024-01-01T00:02:00.000Z", "mark_price": 100_495.0,
        "liquidation_price": 100_495.0, "bankruptcy_price": 99_990.0, "position_qty": 0.01,
        "margin": 10.1, "maintenance_margin_rate": 0.005, "symbol": "BTCUSDT",
    }  # fmt: skip
    assert check_records([started, fill, liquidation], None) == []
    assert check_records([started, fill, {**liquidation, "mark_price": 101_000.0}], None) == [
        "liquidation seq 3: the long's mark 101000.0 has not reached its liquidation price 100495.0"
    ]
    assert check_records(
        [started, fill, {**liquidation, "liquidation_price": 100_000.0, "mark_price": 100_000.0}], None
    ) == [
        "liquidation seq 3: liquidation_price 100000.0, but the position's average entry 101000.000000, "
        "leverage 100 and maintenance rate 0.005 give 100495.000000"
    ]


def test_a_path_fill_beyond_its_candles_low_or_high_is_caught(
    _gappy_backtest_once: Path, tmp_path: Path
) -> None:
    """Found by an audit: a stop filled at its trigger (or the open it gapped to) moved
    `broker.slippage_bps` against, beyond the candle's low (a sell) or high (a buy), a price
    nobody traded at in that candle, passed: the data check held a fill only to be no better than
    the candle went. The broker now cuts the slippage at the candle's extreme (`range_bound`);
    such a fill moved back to the whole slippage, beyond the extreme, is caught, and so is one
    claiming a cut short of the extreme (less slippage than the candle allowed)."""
    run = Path(shutil.copytree(_gappy_backtest_once, tmp_path / "run"))
    assert validate(run) == []
    rows = {r[0] / 1000 + 60: r for r in _gappy_rows(1440)}  # by the candle's end
    fills = [e for e in read_events(run) if e["kind"] == "order.filled"]
    cut = [(n, e) for n, e in enumerate(fills) if "range_bound" in e]
    assert cut, "a path fill whose slippage the candle's range cut"
    n, fill = cut[0]
    _, open_, high, low, _, _ = rows[datetime.fromisoformat(fill["ts"]).timestamp()]
    sell = fill["side"] == "sell"
    assert fill["fill_price"] == fill["range_bound"] == (low if sell else high)
    requested = fill["requested_price"]
    # where the whole 2 bps would have put it: from its trigger, or the open it gapped to
    at = min(requested, open_) if sell else max(requested, open_)
    whole = math.floor(at * 0.9998 * 10) / 10 if sell else math.ceil(at * 1.0002 * 10) / 10
    assert (whole < low) if sell else (whole > high)

    def set_price(price: float, bound: float | None) -> Callable[[dict[str, Any]], None]:
        def change(e: dict[str, Any]) -> None:
            e.update(
                fill_price=price, levels=[[price, e["qty"]]], fee=e["qty"] * price * e["fee_bps"] / 10_000
            )
            e["slippage_bps"] = ((requested - price) if sell else (price - requested)) / requested * 10_000
            if bound is None:
                e.pop("range_bound")
            else:
                e["range_bound"] = bound

        return change

    beyond = Path(shutil.copytree(_gappy_backtest_once, tmp_path / "beyond"))
    _edit_event(beyond, "order.filled", set_price(whole, None), nth=n)
    extreme = f"beyond the candle's {'low' if sell else 'high'} {low if sell else high:g}"
    assert any(f"(seq {fill['seq']}): a {fill['side']} at {whole}, {extreme}" in p for p in validate(beyond))

    short = Path(shutil.copytree(_gappy_backtest_once, tmp_path / "short"))
    better = round(fill["fill_price"] + (0.1 if sell else -0.1), 1)
    _edit_event(short, "order.filled", set_price(better, better), nth=n)
    assert any(
        f"(seq {fill['seq']}): a {fill['side']} at {better} cut at range_bound" in p for p in validate(short)
    )
