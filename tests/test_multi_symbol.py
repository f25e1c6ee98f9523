"""Several symbols in one account (actors/broker/portfolio.py): a backtest over two symbols' data
(`--data SYMBOL=FILE`) end to end, the same events on both runtimes, the account-wide limits
(`risk.max_total_notional`, `risk.max_total_leverage`) checked against an independent replay of
the fills, the shared margin, the routing of commands, and a checkpoint in the middle of a run.

The data is generated here, seeded (a geometric random walk per symbol at its own level and on
its own price grid), so the expected values come from the events and this file's own arithmetic,
never from the broker's."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from actors.broker.paper import PaperBroker
from actors.broker.portfolio import Portfolio
from actors.config import BrokerConfig, RiskConfig
from actors.kernel import Kernel
from actors.main import main
from actors.plan import Plan
from actors.risk.gate import Rejection, RiskGate
from actors.session import Session, Timeline, build_parts
from protocols.instruments import table_instrument
from protocols.messages import Candle, Event, Flatten, HaltEntries, Order, OrderIntent, quote
from tests.conftest import make_config, read_events, read_report, run_cli
from tools.validate_session import validate

T0_MS = 1_704_067_200_000


def write_bars(path: Path, n: int, seed: int, price: float, decimals: int) -> None:
    """Seeded GBM 1-minute bars at `price`, on a grid of `decimals` price decimals."""
    rng = random.Random(seed)
    step = 10.0**-decimals
    lines = ["open_time_ms,open,high,low,close,volume"]
    for i in range(n):
        o = round(price * math.exp(rng.gauss(0, 0.0002)), decimals)
        c = round(o * math.exp(rng.gauss(0, 0.0008)), decimals)
        h = round(max(o, c) * (1 + abs(rng.gauss(0, 0.0004))) + step, decimals)
        lo = round(min(o, c) * (1 - abs(rng.gauss(0, 0.0004))) - step, decimals)
        lines.append(f"{T0_MS + i * 60_000},{o},{h},{lo},{c},{round(rng.uniform(1, 5), 3)}")
        price = c
    path.write_text("\n".join(lines) + "\n")


THREE_STRATEGIES = """
[session]
run_dir = "runs"

[risk]
max_position_size = 10
max_notional = 1000
max_total_notional = 1500
max_loss_pct = 50
max_daily_drawdown_pct = 50
max_consecutive_losses = 0

[[strategies]]
id = "btc_x"
kind = "ema_cross"

[[strategies]]
id = "eth_x"
kind = "ema_cross"
symbol = "ETHUSDT"

[[strategies]]
id = "eth_trend"
kind = "trend_pullback"
symbol = "ETHUSDT"
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bars")
    files = {"BTCUSDT": folder / "btc.csv", "ETHUSDT": folder / "eth.csv"}
    write_bars(files["BTCUSDT"], 2000, 1, 60_000.0, 1)
    write_bars(files["ETHUSDT"], 2000, 2, 3_000.0, 2)
    return files


def backtest(tmp_path: Path, data: dict[str, Path], *extra: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "three.toml"
    config.write_text(THREE_STRATEGIES)
    args = ["--config", str(config), "--mode", "backtest", "--set", f"session.run_dir={tmp_path / 'runs'}"]
    for symbol, path in data.items():
        args += ["--data", f"{symbol}={path}"]
    assert main([*args, *extra]) == 0
    return (tmp_path / "runs" / "latest").resolve()


def _comparable(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keep = []
    for e in events:
        if e["kind"] in ("session.started", "session.stopped"):
            continue
        keep.append({k: v for k, v in e.items() if k != "seq"})
    return keep


@pytest.mark.slow  # CLI backtests on both runtimes (2-3 s of CPU): nox -s tests runs it, nox -s quick leaves it out
def test_two_symbols_three_strategies_backtest_passes_the_validator_on_both_runtimes(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    kernel_run = backtest(tmp_path / "k", data)
    actors_run = backtest(tmp_path / "a", data, "--runtime", "actors")
    assert validate(kernel_run) == []
    assert validate(actors_run) == []
    assert _comparable(read_events(kernel_run)) == _comparable(read_events(actors_run))

    report = read_report(kernel_run)
    assert report["status"] == "ok" and report["open_positions"] == []
    assert set(report["symbols"]) == {"BTCUSDT", "ETHUSDT"}
    assert set(report["strategies"]) == {"btc_x", "eth_x", "eth_trend"}
    assert all(report["symbols"][s]["fills"] > 0 for s in ("BTCUSDT", "ETHUSDT"))
    # each strategy trades only its own symbol; every fill says which
    events = read_events(kernel_run)
    own = {"btc_x": "BTCUSDT", "eth_x": "ETHUSDT", "eth_trend": "ETHUSDT"}
    fills = [e for e in events if e["kind"] == "order.filled"]
    for fill in fills:
        for strategy_id, *_ in fill["allocations"]:
            if strategy_id:
                assert own[strategy_id] == fill["symbol"], fill
    # the fill ids are unique across the symbols (the validator checks it too)
    assert len({f["fill_id"] for f in fills}) == len(fills)
    # the per-symbol sums are the account's
    for field in ("realized_pnl", "fees"):
        total = sum(row[field] for row in report["symbols"].values())
        assert total == pytest.approx(
            report["realized_pnl" if field == "realized_pnl" else "fees_paid"], abs=0.01
        )


def test_account_wide_notional_cap_holds_across_symbols(tmp_path: Path, data: dict[str, Path]) -> None:
    """Replayed from the fills alone: the two symbols' positions, valued at each fill's price
    and each symbol's last fill price, never exceed max_total_notional (1500) beyond the price
    moves between decision and fill, while together they do exceed one symbol's max_notional
    (1000): both symbols are held at once and the cap binds."""
    run = backtest(tmp_path, data)
    positions = {"BTCUSDT": 0.0, "ETHUSDT": 0.0}
    last_price: dict[str, float] = {}
    peak_total = 0.0
    for e in read_events(run):
        if e["kind"] != "order.filled":
            continue
        symbol = e["symbol"]
        positions[symbol] += e["qty"] if e["side"] == "buy" else -e["qty"]
        last_price[symbol] = e["fill_price"]
        total = sum(abs(q) * last_price.get(s, 0.0) for s, q in positions.items())
        peak_total = max(peak_total, total)
        assert total <= 1500 * 1.01, (e, positions)
    assert peak_total > 1000
    assert read_report(run)["orders_rejected"].get("max_total_notional", 0) > 0


@pytest.mark.slow  # CLI backtests on both runtimes (2-3 s of CPU): nox -s tests runs it, nox -s quick leaves it out
def test_more_data_arguments_are_checked_against_the_strategies_symbols(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    config = tmp_path / "three.toml"
    config.write_text(THREE_STRATEGIES)
    base = ["--config", str(config), "--mode", "backtest"]
    cases = [
        (["--data", str(data["BTCUSDT"])], "expected SYMBOL=FILE once for each symbol the strategies trade"),
        (["--data", f"BTCUSDT={data['BTCUSDT']}"], "--data: no data for ETHUSDT"),
        (
            ["--data", f"BTCUSDT={data['BTCUSDT']}", "--data", f"SOLUSDT={data['ETHUSDT']}"],
            "no strategy trades SOLUSDT; expected one of BTCUSDT, ETHUSDT",
        ),
        (
            ["--data", f"BTCUSDT={data['BTCUSDT']}", "--data", f"ETHUSDT={tmp_path / 'nope.csv'}"],
            "--data: file not found",
        ),
        # found by an audit: "no strategy trades ; expected..." and ". is a directory"
        (["--data", f"={data['BTCUSDT']}"], "no symbol before '='; expected SYMBOL=FILE, e.g. BTCUSDT="),
        (["--data", f"BTCUSDT={data['BTCUSDT']}", "--data", "ETHUSDT="], "--data 'ETHUSDT=': no file named"),
    ]
    for args, fragment in cases:
        result = run_cli(*base, *args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert fragment in result.stderr
        assert "Traceback" not in result.stderr


def test_each_symbol_is_charged_its_own_funding_rates(tmp_path: Path, data: dict[str, Path]) -> None:
    # a contract's funding is its own: --funding BTCUSDT=FILE charges the BTC positions at the
    # file's rate and nothing else; ETHUSDT, with no file and broker.funding = "none", is not modelled
    rates = tmp_path / "btc_funding.csv"
    rates.write_text(f"ts_ms,rate\n{T0_MS},0.0001\n")  # 0.01 % per 8 h from the start
    run = backtest(tmp_path, data, "--funding", f"BTCUSDT={rates}")
    assert validate(run) == []
    report = read_report(run)
    assert report["funding_source"] == "per symbol: BTCUSDT=file:btc_funding.csv, ETHUSDT=none"
    events = read_events(run)
    charges = [e for e in events if e["kind"] == "funding"]
    assert charges and {e["symbol"] for e in charges} == {"BTCUSDT"}
    # each charge, recomputed from the fills before it: the BTC position then, at the file's rate
    for charge in charges:
        held = sum(
            (e["qty"] if e["side"] == "buy" else -e["qty"])
            for e in events
            if e["kind"] == "order.filled" and e["symbol"] == "BTCUSDT" and e["seq"] < charge["seq"]
        )
        assert charge["position_qty"] == pytest.approx(held, abs=1e-9)
        assert charge["rate_pct"] == pytest.approx(0.01)
        assert charge["amount"] == pytest.approx(held * charge["mark_price"] * 0.0001, abs=1e-9)
    assert any(c["position_qty"] != 0 for c in charges), "no BTC position was open at any instant"
    assert report["symbols"]["ETHUSDT"]["funding"] == 0
    assert report["symbols"]["BTCUSDT"]["funding"] == pytest.approx(
        sum(c["amount"] for c in charges), abs=0.01
    )
    assert report["funding_paid"] == pytest.approx(sum(c["amount"] for c in charges), abs=0.01)

    # one file for several symbols is refused: which symbol's rates would it be?
    config = tmp_path / "three.toml"
    base = ["--config", str(config), "--mode", "backtest"]
    base += [a for symbol, path in data.items() for a in ("--data", f"{symbol}={path}")]
    for args, fragment in [
        (
            [str(rates)],
            "--funding " + str(rates) + ": expected SYMBOL=FILE for each symbol it has the rates of",
        ),
        ([f"SOLUSDT={rates}"], "no strategy trades SOLUSDT; expected one of BTCUSDT, ETHUSDT"),
        ([f"BTCUSDT={rates}", "--funding", f"btcusdt={rates}"], "BTCUSDT is given twice"),
    ]:
        result = run_cli(*base, "--funding", *args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert fragment in result.stderr and "Traceback" not in result.stderr


# --- the portfolio as a component ---------------------------------------------------------------


def portfolio(equity: float = 1000.0, **broker: Any) -> Portfolio:
    config = BrokerConfig(
        starting_equity=equity, latency_ms=0, latency_jitter_ms=0, leverage=2.0, slippage_bps=0.0, **broker
    )
    return Portfolio(config, random.Random(1), symbols=("BTCUSDT", "ETHUSDT"))


def order(oid: str, symbol: str, side: str, qty: float, price: float, **kw: Any) -> Order:
    return Order(
        id=oid, ts=0.0, side=side, qty=qty, decision_price=price, reason="entry", symbol=symbol, **kw
    )  # type: ignore[arg-type]


def run_timers(p: Portfolio, now: float) -> list[Event]:
    events: list[Event] = []
    while p.next_timer() <= now:
        events += p.on_timer(p.next_timer())
    return events


def test_the_account_drawdown_counts_one_symbols_wick_beside_the_others_marks() -> None:
    """A backtest candle's wick on one leg is the account's drawdown at that instant: the other
    leg's equity at its own mark beside it (found by an audit: only opens and closes counted)."""
    p = Portfolio(
        BrokerConfig(starting_equity=10_000.0, latency_ms=0, latency_jitter_ms=0, slippage_bps=0.0),
        random.Random(1),
        symbols=("BTCUSDT", "ETHUSDT"),
        bars=True,
    )
    p.on_market(quote(0.0, 40_000.0, "BTCUSDT"), 0.0)
    p.on_market(quote(0.0, 2_000.0, "ETHUSDT"), 0.0)
    p.on_order(order("b", "BTCUSDT", "buy", 0.1, 40_000.0), 0.0)
    p.on_order(order("e", "ETHUSDT", "sell", 1.0, 2_000.0), 0.0)
    run_timers(p, 0.0)
    fees = 0.1 * 40_000.0 * 0.0006 + 1.0 * 2_000.0 * 0.0006  # 2.4 + 1.2
    assert p.equity == pytest.approx(10_000.0 - fees, abs=1e-9)
    # ETH up 20 (its short loses 20) at its candle's close; then a BTC candle with a wick to 38,000
    p.on_market(Candle(0.0, 60.0, 2_000.0, 2_020.0, 2_000.0, 2_020.0, 10.0, symbol="ETHUSDT"), 60.0)
    p.on_market(Candle(0.0, 60.0, 40_000.0, 40_000.0, 38_000.0, 40_000.0, 10.0, symbol="BTCUSDT"), 60.0)
    deepest = fees + 20.0 + 0.1 * 2_000.0  # the account at BTC's low, ETH at its mark of 2,020
    assert p.max_drawdown_pct == pytest.approx(deepest / 10_000.0 * 100, rel=1e-6)
    assert p.legs["BTCUSDT"].path_equities == []  # read and cleared


def test_the_symbols_share_the_account_margin() -> None:
    """1,000 USDT at 2x leverage: a 1,600 USDT BTC position holds 800 of margin, so an ETH entry
    needing 300 more is refused (insufficient_margin), though alone it would fit."""
    p = portfolio()
    p.on_market(quote(1.0, 40_000.0, "BTCUSDT"), 1.0)
    p.on_market(quote(1.0, 3_000.0, "ETHUSDT"), 1.0)
    p.on_order(order("o1", "BTCUSDT", "buy", 0.04, 40_000.0), 1.0)
    events = run_timers(p, 1.0)
    assert [e.kind for e in events if e.kind == "order.filled"] == ["order.filled"]
    p.on_order(order("o2", "ETHUSDT", "buy", 0.2, 3_000.0), 2.0)
    refused = [e for e in run_timers(p, 2.0) if e.kind == "order.rejected"]
    assert [e.fields["reason"] for e in refused] == ["insufficient_margin"]

    alone = portfolio()
    alone.on_market(quote(1.0, 3_000.0, "ETHUSDT"), 1.0)
    alone.on_order(order("o2", "ETHUSDT", "buy", 0.2, 3_000.0), 2.0)
    assert [e.kind for e in run_timers(alone, 2.0) if e.kind == "order.filled"] == ["order.filled"]


def test_account_figures_are_the_sum_of_the_symbols_and_each_view_has_its_own_mark() -> None:
    p = portfolio(equity=10_000.0)
    p.on_market(quote(1.0, 40_000.0, "BTCUSDT"), 1.0)
    p.on_market(quote(1.0, 3_000.0, "ETHUSDT"), 1.0)
    p.on_order(order("o1", "BTCUSDT", "buy", 0.01, 40_000.0), 1.0)
    p.on_order(order("o2", "ETHUSDT", "sell", 0.1, 3_000.0), 1.0)
    run_timers(p, 1.0)
    fees = 0.01 * 40_000 * p.config.taker_fee_bps / 10_000 + 0.1 * 3_000 * p.config.taker_fee_bps / 10_000
    p.on_market(quote(2.0, 40_100.0, "BTCUSDT"), 2.0)  # +1.0 on BTC
    p.on_market(quote(2.0, 3_010.0, "ETHUSDT"), 2.0)  # -1.0 on ETH
    eth = p.snapshot(2.0, "ETHUSDT")
    btc = p.snapshot(2.0, "BTCUSDT")
    assert eth.mark_price == 3_010.0 and btc.mark_price == 40_100.0
    assert eth.equity == pytest.approx(10_000.0 + 1.0 - 1.0 - fees)
    assert eth.equity == btc.equity
    assert eth.position().qty == pytest.approx(-0.1) and btc.position().qty == pytest.approx(0.01)
    assert eth.position("BTCUSDT").qty == pytest.approx(0.01)
    assert dict(eth.marks) == {"BTCUSDT": 40_100.0, "ETHUSDT": 3_010.0}
    assert p.fees_paid == pytest.approx(fees)


def test_flatten_and_halts_reach_every_symbol() -> None:
    p = portfolio(equity=10_000.0)
    for symbol, price in (("BTCUSDT", 40_000.0), ("ETHUSDT", 3_000.0)):
        p.on_market(quote(1.0, price, symbol), 1.0)
    p.on_order(order("o1", "BTCUSDT", "buy", 0.01, 40_000.0), 1.0)
    p.on_order(order("o2", "ETHUSDT", "sell", 0.1, 3_000.0), 1.0)
    run_timers(p, 1.0)
    events = p.handle(Flatten(2.0, "breaker", "breaker-1"), 2.0)
    closing = {e.fields["order_id"]: e.fields["symbol"] for e in events if e.kind == "order.filled"}
    assert closing == {"breaker-1-BTCUSDT": "BTCUSDT", "breaker-1-ETHUSDT": "ETHUSDT"}
    assert {symbol: leg.position_qty for symbol, leg in p.legs.items()} == {"BTCUSDT": 0.0, "ETHUSDT": 0.0}
    p.handle(HaltEntries(2.0, 100.0, "test"), 2.0)
    p.on_order(order("o3", "ETHUSDT", "buy", 0.1, 3_000.0), 3.0)
    refused = [e.fields["reason"] for e in run_timers(p, 3.0) if e.kind == "order.rejected"]
    assert refused == ["breaker_halt"]


def test_the_gate_holds_total_leverage_across_symbols() -> None:
    """Equity 10,000, max_total_leverage 1: with 8,000 USDT of BTC held, an ETH entry may add at
    most 2,000 USDT (0.8 ETH at 3,000 is refused; under a cap of 3 it is approved)."""
    instruments = {s: i for s in ("BTCUSDT", "ETHUSDT") if (i := table_instrument(s)) is not None}
    caps = {"max_position_size": 100.0, "max_notional": 1e9, "max_leverage": 100.0, "sizing": "fixed"}
    for cap, approved in ((1.0, False), (3.0, True)):
        gate = RiskGate(RiskConfig(**caps, max_total_leverage=cap), 10_000.0, instruments=instruments)
        p = portfolio(equity=10_000.0)
        for symbol, price in (("BTCUSDT", 40_000.0), ("ETHUSDT", 3_000.0)):
            p.on_market(quote(1.0, price, symbol), 1.0)

        def intent(symbol: str, qty: float, price: float, sid: str) -> OrderIntent:
            return OrderIntent(
                ts=1.0,
                side="buy",
                qty=qty,
                decision_price=price,
                reason="entry",
                symbol=symbol,
                strategy_id=sid,
            )

        btc = gate.check(intent("BTCUSDT", 0.2, 40_000.0, "b"), p.snapshot(1.0, "BTCUSDT"), 1.0)
        assert isinstance(btc, Order)
        p.on_order(btc, 1.0)
        run_timers(p, 1.0)
        eth = gate.check(intent("ETHUSDT", 0.8, 3_000.0, "e"), p.snapshot(2.0, "ETHUSDT"), 2.0)
        if approved:
            assert isinstance(eth, Order) and eth.qty == 0.8
        else:
            assert isinstance(eth, Rejection) and eth.reason == "max_total_leverage", eth
            # 0.6 ETH (1,800 USDT) still fits beside the 8,000 of BTC
            assert isinstance(
                gate.check(intent("ETHUSDT", 0.6, 3_000.0, "e"), p.snapshot(2.0, "ETHUSDT"), 2.0), Order
            )


@pytest.mark.parametrize(
    ("side", "limit", "eth_qty", "approved"),
    [
        # a BTC buy limit of 0.2 at 30,000 takes 6,000 of the 10,000 (at the mark, 8,000): 1.3 ETH
        # (3,900 USDT) fits beside it
        ("buy", 30_000.0, 1.3, True),
        ("buy", 30_000.0, 1.4, False),  # 4,200
        # a sell limit at 45,000 takes 9,000 (at the mark 8,000): 0.4 ETH (1,200) no longer fits
        ("sell", 45_000.0, 0.3, True),
        ("sell", 45_000.0, 0.4, False),
    ],
)
def test_the_account_wide_cap_values_another_symbols_resting_limit_at_its_price(
    side: str, limit: float, eth_qty: float, approved: bool
) -> None:
    """Found by an audit: `max_total_notional` valued another symbol's resting limit entry at that
    symbol's mark, not at its limit price, as the gate sizes an entry of its own; a buy limit
    under the mark held back more, a sell limit above it less, than it can fill for."""
    instruments = {s: i for s in ("BTCUSDT", "ETHUSDT") if (i := table_instrument(s)) is not None}
    caps = {"max_position_size": 100.0, "max_notional": 1e9, "max_leverage": 100.0, "sizing": "fixed"}
    gate = RiskGate(RiskConfig(**caps, max_total_notional=10_000.0), 10_000.0, instruments=instruments)
    p = portfolio(equity=10_000.0)
    for symbol, price in (("BTCUSDT", 40_000.0), ("ETHUSDT", 3_000.0)):
        p.on_market(quote(1.0, price, symbol), 1.0)

    def intent(symbol: str, side: str, qty: float, price: float, sid: str, **kw: Any) -> OrderIntent:
        return OrderIntent(
            ts=1.0,
            side=side,
            qty=qty,
            decision_price=price,
            reason="entry",
            symbol=symbol,
            strategy_id=sid,
            **kw,
        )  # type: ignore[arg-type]

    resting = intent("BTCUSDT", side, 0.2, 40_000.0, "b", order_type="limit", limit_price=limit)
    btc = gate.check(resting, p.snapshot(1.0, "BTCUSDT"), 1.0)
    assert isinstance(btc, Order) and btc.qty == 0.2
    p.on_order(btc, 1.0)
    run_timers(p, 1.0)
    account = p.snapshot(2.0, "ETHUSDT")
    assert account.position("BTCUSDT").qty == 0.0 and account.open_orders_of("b") == 1  # resting
    eth = gate.check(intent("ETHUSDT", "buy", eth_qty, 3_000.0, "e"), account, 2.0)
    if approved:
        assert isinstance(eth, Order) and eth.qty == eth_qty, eth
    else:
        assert isinstance(eth, Rejection) and eth.reason == "max_total_notional", eth


def test_a_checkpoint_in_the_middle_of_a_two_symbol_run_continues_identically(
    tmp_path: Path, data: dict[str, Path]
) -> None:
    config_path = tmp_path / "three.toml"
    config_path.write_text(THREE_STRATEGIES)
    from actors.config import load

    config = load(config_path, {}, [f"session.run_dir={tmp_path / 'runs'}"])
    plan = Plan(
        mode="backtest", data=str(data["BTCUSDT"]), data_by_symbol=tuple((s, str(p)) for s, p in data.items())
    )
    session = Session(config, plan)

    def fresh() -> tuple[Any, list[tuple[float, Any]]]:
        started, steps = session.backtest_steps()
        timeline = Timeline(started, math.inf, "test")
        parts = build_parts(
            config, timeline, heartbeat_s=3600.0, defer_to_next_quote=True, live=False, bars=True
        )
        return parts, list(steps)

    parts, steps = fresh()
    whole: list[Event] = []
    Kernel(parts.broker, parts.gate, parts.strategies, whole.append).run(steps)

    first, steps = fresh()
    half = len(steps) // 2
    before: list[Event] = []
    Kernel(first.broker, first.gate, first.strategies, before.append).run(steps[:half], end_ts=steps[half][0])
    saved = json.loads(json.dumps(first.state()))
    second, _ = fresh()
    second.restore(saved, steps[half][0])
    after: list[Event] = []
    Kernel(second.broker, second.gate, second.strategies, after.append).run(steps[half:])
    assert isinstance(second.broker, Portfolio)
    assert [(e.ts, e.kind, e.fields) for e in before + after] == [(e.ts, e.kind, e.fields) for e in whole]
    assert any(e.kind == "order.filled" for e in after)


def test_a_checkpoint_around_a_gap_in_the_data_continues_with_the_same_heartbeats(tmp_path: Path) -> None:
    """Two symbols, both without rows 200-399 (3 h 20 min): heartbeats every hour from the start
    but none within the gap (`Coverage`). A run restored from a checkpoint starts its coverage
    anew; restored at an hour's boundary its next heartbeat was moved back onto it and written
    twice (found by an audit: 3600, 7200, 7200, ...). Split anywhere, the events are the whole
    run's."""
    from actors.config import load
    from actors.kernel import Coverage

    files = {"BTCUSDT": tmp_path / "btc.csv", "ETHUSDT": tmp_path / "eth.csv"}
    write_bars(files["BTCUSDT"], 600, 1, 60_000.0, 1)
    write_bars(files["ETHUSDT"], 600, 2, 3_000.0, 2)
    for path in files.values():
        header, *rows = path.read_text().splitlines()
        path.write_text("\n".join([header] + [r for i, r in enumerate(rows) if not 200 <= i < 400]) + "\n")
    config_path = tmp_path / "three.toml"
    config_path.write_text(THREE_STRATEGIES)
    config = load(config_path, {}, [f"session.run_dir={tmp_path / 'runs'}"])
    plan = Plan(
        mode="backtest",
        data=str(files["BTCUSDT"]),
        data_by_symbol=tuple((s, str(p)) for s, p in files.items()),
    )
    session = Session(config, plan)

    def fresh() -> tuple[float, Any, list[tuple[float, Any]]]:
        started, steps = session.backtest_steps()
        timeline = Timeline(started, math.inf, "test")
        parts = build_parts(
            config, timeline, heartbeat_s=3600.0, defer_to_next_quote=True, live=False, bars=True
        )
        return started, parts, list(steps)

    started, parts, steps = fresh()
    whole: list[Event] = []
    Kernel(parts.broker, parts.gate, parts.strategies, whole.append).run(
        steps, coverage=Coverage(60.0, started)
    )
    beats = [round(e.ts - started) for e in whole if e.kind == "heartbeat"]
    # rows 0-199 (to 3 h 20 min), then from 6 h 40 min: 1 h, 2 h, 3 h, then 7 h on
    assert beats[:5] == [3600, 7200, 10800, 25200, 28800]

    def index_at(ts: float) -> int:
        return next(i for i, (t, _) in enumerate(steps) if t >= ts)

    splits = {
        "mid-gap": index_at(started + 400 * 60),
        "at 2 h, before its inputs": index_at(started + 2 * 3600),
        "at 2 h, after one input": index_at(started + 2 * 3600) + 1,
        "mid-hour": index_at(started + 2 * 3600) + 20,
    }
    for name, half in splits.items():
        _, first, _ = fresh()
        before: list[Event] = []
        Kernel(first.broker, first.gate, first.strategies, before.append).run(
            steps[:half], end_ts=steps[half - 1][0], end_inclusive=True, coverage=Coverage(60.0, started)
        )
        saved = json.loads(json.dumps(first.state()))
        _, second, _ = fresh()
        second.restore(saved, steps[half - 1][0])
        after: list[Event] = []
        Kernel(second.broker, second.gate, second.strategies, after.append).run(
            steps[half:], coverage=Coverage(60.0, started)
        )
        got = [(e.ts, e.kind, e.fields) for e in before + after]
        assert got == [(e.ts, e.kind, e.fields) for e in whole], name


def test_one_symbol_sessions_keep_the_plain_broker(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    parts = build_parts(
        config, Timeline(0.0, 60.0, "test"), heartbeat_s=1.0, defer_to_next_quote=False, live=False
    )
    assert isinstance(parts.broker, PaperBroker)
