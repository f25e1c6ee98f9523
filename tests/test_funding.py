"""Funding everywhere: the rates file, the constant, the backtest's charges and `funding_source`."""

from __future__ import annotations

import gzip
import json
import socket
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from actors.feeds.funding import FundingRates
from actors.feeds.history import DataError
from actors.plan import Plan, load_recording
from actors.session import Session, run_session
from tests.conftest import TRADES_OFTEN, make_config, read_events, read_report, run_cli
from tools.validate_session import validate

H = 3600
T0 = 1_704_067_200  # 2024-01-01T00:00:00Z, a funding instant (00/08/16 UTC)
EIGHT_H = 8 * H

# --- the rates file ----------------------------------------------------------------------------------

# rows: one exactly at an instant, one between two instants, one a millisecond after an instant
ROWS = [
    (T0 * 1000 + 8 * H * 1000, 0.0001),  # 08:00 exactly: applies at 08:00
    (T0 * 1000 + 12 * H * 1000, -0.0002),  # 12:00: applies from 16:00
    (T0 * 1000 + 24 * H * 1000 + 1, 0.0003),  # a ms after the next day's 00:00: applies from 08:00
]


def _csv(rows: list[tuple[int, float]]) -> str:
    return "ts_ms,rate\n" + "".join(f"{t},{r}\n" for t, r in rows)


def write_funding(path: Path, rows: list[tuple[int, float]] = ROWS) -> Path:
    data = _csv(rows)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data.encode()))
    else:
        path.write_text(data)
    return path


def expected_rate(instant: float) -> float:
    """The fraction in force at `instant`, by hand from ROWS (0 before the first row)."""
    if instant < T0 + 8 * H:
        return 0.0
    if instant < T0 + 12 * H:
        return 0.0001
    if instant * 1000 < T0 * 1000 + 24 * H * 1000 + 1:
        return -0.0002
    return 0.0003


@pytest.mark.parametrize("name", ["funding.csv", "funding.csv.gz"])
def test_rates_file_lookup_at_between_and_before_rows(tmp_path: Path, name: str) -> None:
    rates = FundingRates.from_csv(write_funding(tmp_path / name))
    assert rates.source == f"file:{name}"
    assert len(rates) == 3
    # rates are fractions in the file, percent out of it
    cases = {
        T0: 0.0,  # before the first row
        T0 + 8 * H - 1: 0.0,
        T0 + 8 * H: 0.01,  # a row exactly at the instant applies
        T0 + 10 * H: 0.01,
        T0 + 12 * H: -0.02,
        T0 + 16 * H: -0.02,  # between rows: the last one at or before
        T0 + 24 * H: -0.02,  # the next row is a millisecond later
        T0 + 24 * H + 0.001: 0.03,
        T0 + 32 * H: 0.03,
        T0 + 1000 * H: 0.03,  # after the last row: the last row
    }
    for instant, pct in cases.items():
        assert rates.rate_pct_at(instant) == pytest.approx(pct, abs=1e-15), instant
        assert rates.rate_pct_at(instant) == pytest.approx(expected_rate(instant) * 100, abs=1e-15)


def test_rates_file_tolerates_blank_lines_spaces_and_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_text("\ufeffts_ms, rate\n\n 1704067200000 , 0.0001\n\n")
    rates = FundingRates.from_csv(path)
    assert rates.rate_pct_at(T0) == pytest.approx(0.01)


def test_constant_rates() -> None:
    rates = FundingRates.constant(0.01)
    assert rates.source == "constant"
    assert rates.rate_pct_at(0.0) == 0.01
    assert rates.rate_pct_at(T0) == 0.01
    with pytest.raises(ValueError):
        FundingRates.constant(float("nan"))


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("", 1, "expected the header ts_ms,rate"),
        ("time,rate\n1,0.0001\n", 1, "expected the header ts_ms,rate"),
        ("ts_ms,rate\n", None, "has a header but no rows"),
        ("ts_ms,rate\n1704067200000,0.0001\n1704096000000\n", 3, "expected 2 fields"),
        ("ts_ms,rate\n1704067200000,0.0001,7\n", 2, "expected 2 fields"),
        ("ts_ms,rate\n2024-01-01,0.0001\n", 2, "is not an integer"),
        ("ts_ms,rate\n1704067200000.5,0.0001\n", 2, "is not an integer"),
        ("ts_ms,rate\n1704067200000,abc\n", 2, "is not a number"),
        ("ts_ms,rate\n1704067200000,nan\n", 2, "expected a fraction per 8 h interval"),
        ("ts_ms,rate\n1704067200000,0.5\n", 2, "expected a fraction per 8 h interval"),
        ("ts_ms,rate\n1704096000000,0.0001\n\n1704067200000,0.0001\n", 4, "increasing time order"),
        ("ts_ms,rate\n1704067200000,0.0001\n1704067200000,0.0002\n", 3, "increasing time order"),
    ],
)
def test_rates_file_refuses_bad_rows_naming_file_and_line(
    tmp_path: Path, text: str, line: int | None, words: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        FundingRates.from_csv(path)
    message = str(info.value)
    assert str(path) in message and words in message
    if line is not None:
        assert f"line {line}:" in message


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("x" * 3_000_000 + ",rate\n1,0.0001\n", 1, "expected the header"),
        ("ts_ms,rate\n1704067200000,0.0001\n" + "x" * 3_000_000 + "\n", 3, "expected 2 fields"),
        ("ts_ms,rate\n" + "9" * 100_000 + ",0.0001\n", 2, "is not an integer"),
        ("ts_ms,rate\n1704067200000," + "7" * 100_000 + "\n", 2, "expected a fraction per 8 h interval"),
        ("ts_ms,rate,interval_h\n1704067200000,0.0001," + "8" * 100_000 + "\n", 2, "is not allowed"),
    ],
)
def test_an_enormous_line_or_value_is_quoted_cut_short(
    tmp_path: Path, text: str, line: int, words: str
) -> None:
    """Found by an audit: the error quoted the whole line or value, a 3 MB line 3 MB of stderr."""
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        FundingRates.from_csv(path)
    message = str(info.value)
    assert f"line {line}:" in message and words in message
    assert len(message) < 400 + len(str(path)), len(message)
    assert "characters)" in message  # says how long the value cut short was


def test_rates_file_unreadable(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cannot read funding file .*missing\.csv"):
        FundingRates.from_csv(tmp_path / "missing.csv")
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"cannot read funding file .*broken\.csv\.gz"):
        FundingRates.from_csv(broken)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"ts_ms,rate\n1704067200000,0.0001 \xe9\n")
    with pytest.raises(DataError, match="not UTF-8"):
        FundingRates.from_csv(latin)


# --- a backtest holding a position across funding instants -------------------------------------------

START = T0 - 10 * H  # 2023-12-31T14:00Z
CANDLES = 48  # to T0 + 38 h: the instants T0, +8, +16, +24, +32 h pass inside the data
HOLD = [
    "session.interval=1h",
    "strategy.fast_period=2",
    "strategy.slow_period=3",
    "risk.sizing=fixed",
    "strategy.order_qty=0.01",
    "strategy.stop_loss_pct=0",  # no stop, no target: the long is held to the end
    "strategy.take_profit_pct=0",
    "broker.latency_jitter_ms=0",
]
QTY = 0.01


def candle_prices() -> list[float]:
    """Flat hourly candles: down for 4 hours (the fast EMA below the slow), then up 50 USDT an
    hour, never down again (one cross up: long to the end). The price does not change across a
    funding instant: the candles either side of it have one price, the mark at the instant."""
    prices: list[float] = []
    for i in range(CANDLES):
        open_ts = START + i * H
        if i < 4:
            prices.append(60_000.0 - 100 * i)
        elif open_ts % EIGHT_H == 0:
            prices.append(prices[-1])
        else:
            prices.append(prices[-1] + 50)
    return prices


def write_candles(path: Path) -> list[float]:
    prices = candle_prices()
    lines = ["open_time_ms,open,high,low,close,volume"]
    for i, p in enumerate(prices):
        lines.append(f"{(START + i * H) * 1000},{p},{p},{p},{p},100")
    path.write_text("\n".join(lines) + "\n")
    return prices


def price_at(prices: list[float], instant: float) -> float:
    """The price of the candle starting at `instant` (= the one ending there)."""
    i = int((instant - START) // H)
    assert prices[i] == prices[i - 1]
    return prices[i]


def run_backtest(tmp_path: Path, *sets: str, funding: FundingRates | None = None) -> tuple[Path, list[float]]:
    data = tmp_path / "candles.csv"
    prices = write_candles(data)
    config = make_config(tmp_path, *HOLD, *sets)
    result = Session(config, Plan(mode="backtest", data=str(data), funding=funding)).run_kernel()
    assert result.report["status"] == "ok", result.report["error_messages"]
    return result.run_path, prices


def held_instants(events: list[dict]) -> list[float]:
    """The funding instants between the entry's fill and the end of the data."""
    from datetime import datetime

    fills = [e for e in events if e["kind"] == "order.filled"]
    entry = datetime.fromisoformat(fills[0]["ts"].replace("Z", "+00:00")).timestamp()
    assert fills[0]["side"] == "buy" and fills[0]["qty"] == QTY
    assert entry % EIGHT_H != 0  # never at an instant: no question which comes first
    assert entry < T0  # the long is open at every instant of the data
    end = START + CANDLES * H
    first = (int(entry) // EIGHT_H + 1) * EIGHT_H
    return [float(t) for t in range(first, int(end) + 1, EIGHT_H)]


def _instant(event: dict) -> float:
    from datetime import datetime

    return datetime.fromisoformat(event["instant"].replace("Z", "+00:00")).timestamp()


def test_backtest_charges_the_files_rate_on_the_held_position(tmp_path: Path) -> None:
    funding = FundingRates.from_csv(write_funding(tmp_path / "funding.csv"))
    run_path, prices = run_backtest(tmp_path, funding=funding)
    events = read_events(run_path)
    instants = held_instants(events)
    assert instants == [T0 + k * EIGHT_H for k in range(5)]
    charged = {_instant(e): e for e in events if e["kind"] == "funding"}
    expected = {t: QTY * price_at(prices, t) * expected_rate(t) for t in instants}
    # by hand: 0.01 BTC x the price at the instant x the rate in force
    assert expected[T0] == 0.0  # before the file's first row
    assert expected[T0 + 8 * H] == pytest.approx(0.01 * 60_350 * 0.0001)  # the row at 08:00
    assert expected[T0 + 16 * H] == pytest.approx(0.01 * 60_700 * -0.0002)  # the 12:00 row
    assert expected[T0 + 24 * H] == pytest.approx(0.01 * 61_050 * -0.0002)  # next row is 1 ms late
    assert expected[T0 + 32 * H] == pytest.approx(0.01 * 61_400 * 0.0003)
    nonzero = {t: a for t, a in expected.items() if a != 0}
    assert {t for t, e in charged.items() if e["amount"] != 0} == set(nonzero)
    assert set(charged) <= set(instants)
    for t, amount in nonzero.items():
        event = charged[t]
        assert event["amount"] == pytest.approx(amount, rel=1e-12)
        assert event["rate_pct"] == pytest.approx(expected_rate(t) * 100, rel=1e-12)
        assert event["mark_price"] == price_at(prices, t)
        assert event["position_qty"] == QTY
    report = read_report(run_path)
    assert report["funding_source"] == "file:funding.csv"
    assert report["funding_paid"] == pytest.approx(sum(expected.values()), abs=1e-6)
    assert validate(run_path) == []
    started = next(e for e in events if e["kind"] == "session.started")
    assert started["funding_source"] == "file:funding.csv"


def test_backtest_with_the_constant(tmp_path: Path) -> None:
    run_path, prices = run_backtest(tmp_path, "broker.funding=constant", "broker.funding_rate_pct=-0.02")
    events = read_events(run_path)
    instants = held_instants(events)
    charged = {_instant(e): e["amount"] for e in events if e["kind"] == "funding"}
    assert set(charged) == set(instants)
    for t in instants:  # -0.02 % of 0.01 BTC at the instant's price: the long receives it
        assert charged[t] == pytest.approx(-QTY * price_at(prices, t) * 0.0002, rel=1e-12)
    report = read_report(run_path)
    assert report["funding_source"] == "constant"
    assert report["funding_paid"] == pytest.approx(sum(charged.values()), abs=1e-6)
    assert report["funding_paid"] < 0
    assert validate(run_path) == []


def test_backtest_file_takes_precedence_over_the_constant(tmp_path: Path) -> None:
    funding = FundingRates.from_csv(write_funding(tmp_path / "funding.csv"))
    run_path, _ = run_backtest(tmp_path, "broker.funding=constant", funding=funding)
    assert read_report(run_path)["funding_source"] == "file:funding.csv"


def test_backtest_without_funding_says_none(tmp_path: Path) -> None:
    run_path, _ = run_backtest(tmp_path)
    events = read_events(run_path)
    assert held_instants(events)  # a position was held across instants ...
    # ... and nothing is recorded for them: no `funding` event saying "rate 0" where none was known
    assert not [e for e in events if e["kind"] == "funding"]
    report = read_report(run_path)
    assert report["funding_source"] == "none"
    assert report["funding_paid"] == 0
    assert validate(run_path) == []


def test_validator_catches_funding_that_disagrees(tmp_path: Path) -> None:
    import json

    funding = FundingRates.from_csv(write_funding(tmp_path / "funding.csv"))
    run_path, _ = run_backtest(tmp_path, funding=funding)
    report_path = run_path / "final_report.json"
    report = json.loads(report_path.read_text())
    report["funding_paid"] = round(report["funding_paid"] + 1.0, 6)
    report_path.write_text(json.dumps(report))
    assert any("funding_paid" in p for p in validate(run_path))
    report["funding_paid"] -= 1.0
    report["funding_source"] = "none"
    report_path.write_text(json.dumps(report))
    assert any("funding_source = 'none'" in p for p in validate(run_path))


# --- where a session's funding comes from ------------------------------------------------------------


def test_mock_sessions_charge_the_constant_else_none(tmp_path: Path) -> None:
    session = Session(make_config(tmp_path, "feed.source=mock"))
    assert session.funding == {} and session.funding_source == "none"
    session = Session(make_config(tmp_path, "feed.source=mock", "broker.funding=constant"))
    assert session.funding_source == "constant"
    parts = session.parts(session.timeline(float(T0)))
    assert parts.broker.funding is session.funding["BTCUSDT"]
    assert session.funding["BTCUSDT"].rate_pct_at(T0) == 0.01


def test_live_bitunix_sessions_take_the_feeds_rate(tmp_path: Path) -> None:
    session = Session(make_config(tmp_path, "feed.source=bitunix", "broker.funding=constant"))
    assert session.funding == {} and session.funding_source == "feed"


# --- the CLI -----------------------------------------------------------------------------------------


BACKTEST = ["--mode", "backtest", "--data", "candles.csv", "--set", "session.interval=1h"]


def _cli(tmp_path: Path, *args: str) -> tuple[int, str]:
    run = run_cli("--run-dir", str(tmp_path / "runs"), *args, cwd=tmp_path)
    assert "Traceback" not in run.stderr, run.stderr
    return run.returncode, run.stderr


def test_cli_refuses_a_missing_funding_file(tmp_path: Path) -> None:
    write_candles(tmp_path / "candles.csv")
    code, err = _cli(tmp_path, *BACKTEST, "--funding", "nope.csv")
    assert code == 2
    assert err.strip() == "error: --funding: file not found: nope.csv"
    assert not (tmp_path / "runs").exists()  # nothing started


def test_cli_refuses_a_bad_funding_file_naming_the_line(tmp_path: Path) -> None:
    write_candles(tmp_path / "candles.csv")
    (tmp_path / "bad.csv").write_text("ts_ms,rate\n1704067200000,0.0001\n1704096000000,1%\n")
    code, err = _cli(tmp_path, *BACKTEST, "--funding", "bad.csv")
    assert code == 2
    assert "error: --funding: funding file bad.csv, line 3: rate '1%' is not a number" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("mode", ["live", "replay"])
def test_cli_refuses_funding_outside_backtests(tmp_path: Path, mode: str) -> None:
    write_funding(tmp_path / "funding.csv")
    if mode == "replay":  # a finished live run to replay: a replay re-delivers its own funding
        config = make_config(tmp_path / "recorded", duration_min=0.1)
        result = trio.run(
            partial(run_session, config, handle_signals=False, progress_mode="off"),
            clock=trio.testing.MockClock(autojump_threshold=0),
        )
        args = ["--replay", str(result.run_path)]
    else:
        args = ["--source", "mock"]
    code, err = _cli(tmp_path, *args, "--funding", "funding.csv")
    assert code == 2
    assert "error: --funding is only for --mode backtest" in err
    assert not (tmp_path / "runs").exists()


def test_cli_backtest_says_where_funding_came_from(tmp_path: Path) -> None:
    write_candles(tmp_path / "candles.csv")
    write_funding(tmp_path / "funding.csv.gz")
    base = ["--mode", "backtest", "--data", "candles.csv", *(a for s in HOLD for a in ("--set", s))]
    code, err = _cli(tmp_path, *base, "--funding", "funding.csv.gz")
    assert code == 0, err
    assert "funding from the rates in funding.csv.gz" in err
    assert read_report(tmp_path / "runs" / "latest")["funding_source"] == "file:funding.csv.gz"
    code, err = _cli(tmp_path, *base)
    assert code == 0, err
    assert "funding NOT modelled" in err


# --- a file that says its contract's own schedule (`interval_h`) --------------------------------------


def test_a_file_with_interval_h_gives_its_instants_and_a_rate_per_interval(tmp_path: Path) -> None:
    """Rows at 00:00 and 04:00 every 4 h, none at 08:00, then one at 12:00 every 8 h: the instants
    are the rows' times and every interval after each until the next row (08:00 from the 04:00
    row, at its rate), 00/08/16 UTC before the first row; a strategy sees each rate per 8 h."""
    path = tmp_path / "four.csv"
    path.write_text(
        f"ts_ms,rate,interval_h\n{T0 * 1000},0.0001,4\n{(T0 + 4 * H) * 1000},-0.0002,4\n{(T0 + 12 * H) * 1000},0.0003,8\n"
    )
    rates = FundingRates.from_csv(path)
    assert rates.scheduled
    instants, t = [], T0 - 9 * H
    while (t := rates.next_instant(t)) <= T0 + 30 * H:
        instants.append(t)
    assert instants == [T0 - 8 * H, T0, T0 + 4 * H, T0 + 8 * H, T0 + 12 * H, T0 + 20 * H, T0 + 28 * H]
    assert [rates.rate_pct_at(t) for t in instants] == pytest.approx(
        [0, 0.01, -0.02, -0.02, 0.03, 0.03, 0.03]
    )
    assert [rates.interval_s_at(t) / H for t in (T0 - H, T0 + H, T0 + 9 * H, T0 + 13 * H)] == [8, 4, 4, 8]
    # a file without the column: 00/08/16 UTC, whatever its rows' times
    plain = FundingRates.from_csv(write_funding(tmp_path / "plain.csv"))
    assert not plain.scheduled and plain.next_instant(T0 + H) == T0 + 8 * H
    for body, line, said in [
        (
            "ts_ms,rate,interval_h\n1704067200000,0.0001,3\n",
            2,
            "interval_h '3' is not allowed; expected one of 1, 2, 4, 8",
        ),
        (
            "ts_ms,rate,interval_h\n1704067200000,0.0001\n",
            2,
            "expected 3 fields (ts_ms,rate,interval_h), got 2",
        ),
        ("ts_ms,rate,interval_h\n1704067200000,0.5,4\n", 2, "expected a fraction per interval"),
    ]:
        path.write_text(body)
        with pytest.raises(DataError, match=f"line {line}: .*{said}".replace("(", r"\(").replace(")", r"\)")):
            FundingRates.from_csv(path)


def test_backtest_of_a_4h_contract_is_charged_at_its_files_settlements(tmp_path: Path) -> None:
    """A file of a contract settled every 4 h (`interval_h` 4, a row every 4 h from T0): the long
    held from before T0 is charged at every row, each at its own rate per 4 h (by hand: 0.01 BTC x
    the close of the candle ending at the instant x the rate), and the validator passes it, while
    it names the 4 h instants against the 8 h schedule."""
    from tools.validate_session import check_funding_charges

    rows = [(T0 + 4 * H * k, 0.0001 * (k + 1) * (-1) ** k) for k in range(10)]
    path = tmp_path / "four.csv"
    path.write_text("ts_ms,rate,interval_h\n" + "".join(f"{t * 1000},{r},4\n" for t, r in rows))
    run_path, prices = run_backtest(tmp_path, funding=FundingRates.from_csv(path))
    events = read_events(run_path)
    held_instants(events)  # the long is open from before T0 to the end (T0 + 38 h)
    charged = [e for e in events if e["kind"] == "funding"]
    assert [_instant(e) for e in charged] == [float(t) for t, _ in rows]
    for e, (t, rate) in zip(charged, rows, strict=True):
        close = prices[int((t - START) // H) - 1]  # the candle ending at the instant
        assert e["mark_price"] == close
        assert e["rate_pct"] == pytest.approx(rate * 100, rel=1e-12)
        assert e["amount"] == pytest.approx(QTY * close * rate, rel=1e-12)
    assert validate(run_path) == []
    report = read_report(run_path)
    problems = check_funding_charges(events, report)  # without the file: the 8 h schedule
    assert problems == [
        f"BTCUSDT: a funding charge at {h}Z, not one of its funding instants (00:00, 08:00 or 16:00 UTC)"
        for h in (
            "2024-01-01T04:00:00",
            "2024-01-01T12:00:00",
            "2024-01-01T20:00:00",
            "2024-01-02T04:00:00",
            "2024-01-02T12:00:00",
        )
    ]


def test_a_backtest_strategy_sees_a_4h_files_rate_per_8h(tmp_path: Path) -> None:
    """The funding gates' thresholds are per 8 h: 0.01 % settled per 4 h is 0.02 % per 8 h."""
    import random

    import attrs

    from actors.broker.paper import PaperBroker
    from actors.config import BrokerConfig

    path = tmp_path / "four.csv"
    path.write_text(f"ts_ms,rate,interval_h\n{T0 * 1000},0.0001,4\n")
    broker = PaperBroker(attrs.evolve(BrokerConfig()), random.Random(1), funding=FundingRates.from_csv(path))
    assert broker.snapshot(T0 + H).funding_rate_pct == pytest.approx(0.02)
    assert broker.snapshot(T0 - H).funding_rate_pct == 0.0  # before the file: no rate


async def test_a_live_session_that_fell_back_to_the_mock_charges_no_funding(
    tmp_path: Path, autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the determinism audit: a live session whose feed fell back to the mock source (its
    report: funding_source none, 'funding is not modelled') long at 08:00 UTC recorded a funding
    charge at rate 0, on the mark of its last quote before the one at the instant, which the README
    says it does not and the validator refused. It now charges none, as a mock session; and its
    replay neither."""
    instant = T0 + EIGHT_H
    monkeypatch.setattr("actors.clock.time", SimpleNamespace(time=lambda: instant - 120.25))
    with socket.socket() as closed:  # bound, not listening: refused at once; falls back after 15 s
        closed.bind(("127.0.0.1", 0))
        unreachable = f"127.0.0.1:{closed.getsockname()[1]}"
        sets = [
            *TRADES_OFTEN,
            "session.interval=1m",
            "session.seed=1",
            "feed.source=bitunix",
            f"feed.ws_url=ws://{unreachable}/public/",
            f"feed.rest_url=http://{unreachable}",
        ]
        result = await run_session(make_config(tmp_path, *sets, duration_min=4), handle_signals=False)
    events = read_events(result.run_path)
    assert any(e["kind"] == "feed.fallback" for e in events)
    assert events[-1]["funding_source"] == "none"
    # the precondition: a position open at the instant (the last heartbeat before it)
    before = [e for e in events if e["kind"] == "heartbeat" and e["ts"] < "2024-01-01T08:00:00"]
    assert before and before[-1]["position_qty"] != 0
    assert [e for e in events if e["kind"] == "funding"] == []
    assert validate(result.run_path) == []
    replayed = await run_session(
        make_config(tmp_path / "replay", *sets, duration_min=4),
        plan=Plan(mode="replay", recording=load_recording(result.run_path)),
        handle_signals=False,
    )
    assert [e for e in read_events(replayed.run_path) if e["kind"] == "funding"] == []


async def test_a_live_session_that_no_rate_came_to_says_so(
    tmp_path: Path, autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a report audit: a Bitunix session that never connected (`feed.fallback = "none"`,
    the exchange unreachable, stopped by its duration) reported funding_source `feed`, "funding
    from the exchange's price channel (live rates)", though no rate ever came. It now reports
    `feed (no rates)`, said as such; the validator holds the word to market.jsonl's rates."""
    from actors.feeds.funding import describe

    monkeypatch.setattr("actors.clock.time", SimpleNamespace(time=lambda: T0 + 3600.0))
    with socket.socket() as closed:  # bound, not listening: refused at once
        closed.bind(("127.0.0.1", 0))
        unreachable = f"127.0.0.1:{closed.getsockname()[1]}"
        sets = [
            "feed.source=bitunix",
            "feed.fallback=none",
            f"feed.ws_url=ws://{unreachable}/public/",
            f"feed.rest_url=http://{unreachable}",
        ]
        result = await run_session(make_config(tmp_path, *sets, duration_min=1), handle_signals=False)
    report = read_report(result.run_path)
    events = read_events(result.run_path)
    assert not any(e["kind"] in ("feed.connected", "feed.fallback") for e in events)
    assert report["stop_reason"] == "duration"
    assert report["funding_source"] == "feed (no rates)"
    assert "live rates" not in describe(report["funding_source"])
    assert "no rate came" in describe(report["funding_source"])
    assert validate(result.run_path) == []
    # the old word, `feed`, is refused: market.jsonl has no rate
    path = result.run_path / "final_report.json"
    path.write_text(json.dumps({**report, "funding_source": "feed"}))
    said = [p for p in validate(result.run_path) if "market.jsonl has none" in p]
    assert said, validate(result.run_path)
