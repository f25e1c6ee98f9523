"""`--from` and `--until`: a backtest over a window of its data file is the backtest of the file cut
to that window (the rows cut here by their open time, independently of the project's reader)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from actors.main import main
from tools.validate_session import validate

HEADER = "open_time_ms,open,high,low,close,volume"
START_MS = 1_704_067_200_000  # 2024-01-01T00:00Z


def _write(path: Path, rows: list[str]) -> Path:
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    return path


def _rows(n: int, seed: int = 5) -> list[str]:
    rng, price, rows = random.Random(seed), 60_000.0, []
    for i in range(n):
        close = round(price * (1 + rng.gauss(0, 0.002)), 1)
        high, low = max(price, close) + 5.0, min(price, close) - 5.0
        rows.append(f"{START_MS + i * 60_000},{price},{high:.1f},{low:.1f},{close},{rng.uniform(1, 9):.3f}")
        price = close
    return rows


def _events(run_dir: Path) -> list[dict[str, object]]:
    lines = (run_dir / "latest" / "events.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    for record in records:  # where the data came from and went to: not the trading
        record.pop("config", None)
        record.pop("data_source", None)
        record.pop("data_files", None)
        record.pop("run_id", None)
    return records


FAST = [
    "--set",
    "strategy.fast_period=3",
    "--set",
    "strategy.slow_period=8",
    "--set",
    "risk.max_loss_pct=100",
]


def _backtest(data: Path, run_dir: Path, *flags: str) -> int:
    argv = ["--mode", "backtest", "--data", str(data), "--run-dir", str(run_dir)]
    return main([*argv, "--set", f"session.kill_switch={run_dir}/kill.txt", *FAST, *flags], env={})


def test_a_window_is_the_backtest_of_the_file_cut_to_it(tmp_path: Path) -> None:
    rows = _rows(3000)
    whole = _write(tmp_path / "whole.csv", rows)
    start, end = "2024-01-01T10:00Z", "2024-01-02T08:30"  # no offset: UTC
    start_ms = datetime(2024, 1, 1, 10, tzinfo=UTC).timestamp() * 1000
    end_ms = datetime(2024, 1, 2, 8, 30, tzinfo=UTC).timestamp() * 1000
    kept = [row for row in rows if start_ms <= int(row.split(",")[0]) < end_ms]
    assert 0 < len(kept) < len(rows) - 500
    cut = _write(tmp_path / "cut.csv", kept)
    assert _backtest(whole, tmp_path / "windowed", "--from", start, "--until", end) == 0
    assert _backtest(cut, tmp_path / "cut") == 0
    windowed, expected = _events(tmp_path / "windowed"), _events(tmp_path / "cut")
    assert any(e["kind"] == "order.filled" for e in expected)
    assert windowed == expected


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--from", "2024-01-02", "--until", "2024-01-01"],
            "--from 2024-01-02 is not before --until 2024-01-01",
        ),
        (["--from", "yesterday"], "--from: not an ISO-8601 date"),
        (["--until", "2024-13-01"], "--until: not an ISO-8601 date"),
        (["--from", "2030-01-01"], "no candles in the --from/--until window"),
    ],
)
def test_a_bad_window_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    data = _write(tmp_path / "d.csv", _rows(100))
    assert _backtest(data, tmp_path / "runs", *flags) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_window_outside_a_backtest_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--from", "2024-01-01", "--run-dir", str(tmp_path)], env={}) == 2
    assert "--from and --until are only for --mode backtest" in capsys.readouterr().err


# --- the data's spacing must be session.interval: each row is stamped with it ---


def _spaced(n: int, step_ms: int, skip: frozenset[int] = frozenset()) -> list[str]:
    return [row for i, row in enumerate(_rows(n)) if i not in skip and not i % (step_ms // 60_000)]


@pytest.mark.parametrize(
    ("interval", "step_ms", "said"),
    [
        ("5s", 60_000, "its candles are 1m apart but session.interval is 5s"),
        ("5m", 60_000, "its candles are 1m apart but session.interval is 5m"),
        ("1m", 300_000, "its candles are 5m apart but session.interval is 1m"),
    ],
)
def test_data_of_another_spacing_than_the_interval_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], interval: str, step_ms: int, said: str
) -> None:
    """1-minute rows read as 5-second candles would close 55 s early (a signal on a close that had
    not happened; fills 55 s late): refused before anything starts, naming the fix."""
    data = _write(tmp_path / "d.csv", _spaced(600, step_ms))
    assert _backtest(data, tmp_path / "runs", "--set", f"session.interval={interval}") == 2
    err = capsys.readouterr().err
    assert said in err and "--set session.interval=" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing started


def test_gaps_in_data_of_the_interval_are_not_a_spacing_error(tmp_path: Path) -> None:
    """Missing rows (every other one of the first 150) leave the closest two a minute apart."""
    data = _write(tmp_path / "d.csv", _spaced(400, 60_000, skip=frozenset(range(1, 150, 2))))
    assert _backtest(data, tmp_path / "runs") == 0
    assert _events(tmp_path / "runs")[-1]["stop_reason"] == "data_end"


def test_the_gaps_a_backtest_ran_through_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rows 100-102 missing (a 3-minute gap) and rows 200-319 (two hours): both in the report's
    `data_gaps`, the long one warned about and in the HTML summary; with --from after the first
    gap, only the second."""
    rows = _rows(400)
    missing = set(range(100, 103)) | set(range(200, 320))
    data = _write(tmp_path / "d.csv", [row for i, row in enumerate(rows) if i not in missing])
    assert _backtest(data, tmp_path / "runs") == 0
    report = json.loads((tmp_path / "runs" / "latest" / "final_report.json").read_text())
    minute = 60.0
    gap = report["data_gaps"]["BTCUSDT"]
    assert gap == {
        "count": 2,
        "missing_s": (3 + 120) * minute,
        "longest_s": 120 * minute,
        "longest_from": datetime.fromtimestamp(START_MS / 1000 + 200 * minute, UTC).isoformat()[:19]
        + ".000Z",
        "longest_to": datetime.fromtimestamp(START_MS / 1000 + 320 * minute, UTC).isoformat()[:19] + ".000Z",
    }
    err = capsys.readouterr().err
    assert "the BTCUSDT data has 2 gap(s), 2h03m00s missing in all; the longest 2h00m00s from" in err
    assert "data gaps (BTCUSDT)" in (tmp_path / "runs" / "latest" / "report.html").read_text()
    later = datetime.fromtimestamp(START_MS / 1000 + 150 * minute, UTC).isoformat()
    assert _backtest(data, tmp_path / "runs2", "--from", later) == 0
    report = json.loads((tmp_path / "runs2" / "latest" / "final_report.json").read_text())
    assert report["data_gaps"]["BTCUSDT"]["count"] == 1
    capsys.readouterr()
    # data without gaps: an empty table, and no warning
    assert _backtest(_write(tmp_path / "e.csv", rows), tmp_path / "runs3") == 0
    assert json.loads((tmp_path / "runs3" / "latest" / "final_report.json").read_text())["data_gaps"] == {}
    assert "gap(s)" not in capsys.readouterr().err


def test_a_candle_sources_gaps_are_reported_as_the_files_are(tmp_path: Path) -> None:
    """A sweep's trials hand the session their candles (`candle_source`) instead of a file: the
    gaps they ran through are in the report all the same (they were not: a trial was not
    "exactly the CLI backtest" across a gap)."""
    from actors.feeds.history import read_candles_csv
    from actors.plan import Plan
    from actors.session import Session
    from tests.conftest import make_config

    rows = [row for i, row in enumerate(_rows(400)) if not 200 <= i < 320]
    data = _write(tmp_path / "d.csv", rows)
    config = make_config(tmp_path, *(a for a in FAST if a != "--set"))
    by_file = Session(config, Plan(mode="backtest", data=str(data))).run_kernel()
    by_source = Session(
        config,
        Plan(mode="backtest", data=str(data)),
        candle_source=lambda path, symbol: read_candles_csv(Path(path), 60.0, symbol=symbol),
    ).run_kernel()
    assert by_file.report["data_gaps"]["BTCUSDT"]["count"] == 1
    assert by_source.report["data_gaps"] == by_file.report["data_gaps"]


# --- no metrics row in a gap in the data (found by an audit) ---

HOUR_S = 3600.0


def _beats(run_dir: Path) -> list[float]:
    """The heartbeats' `elapsed_s` (the metrics rows' times from the first candle's open), the
    last one the final row at the end."""
    return [e["elapsed_s"] for e in _events(run_dir) if e["kind"] == "heartbeat"]  # type: ignore[misc]


@pytest.mark.parametrize("runtime", ["kernel", "actors"])
@pytest.mark.parametrize(
    ("resume_row", "beats"),
    [
        # 90 one-minute candles (data to 1.5 h), then from 5.5 h 60 more (to 6.5 h): the rows at
        # 2, 3, 4 and 5 h fall in the gap; the next whole hour at or after 5.5 h is 6 h
        (330, [1.0, 6.0, 6.5]),
        # from 5 h, 90 more (to 6.5 h): the candle after the gap opens on a whole hour, its row
        (300, [1.0, 5.0, 6.0, 6.5]),
    ],
)
def test_a_gap_in_the_data_gets_no_metrics_rows(
    tmp_path: Path, runtime: str, resume_row: int, beats: list[float]
) -> None:
    """A heartbeat (a metrics row, every 60 candles: an hour here) only where the data is: a gap
    in it gets none, and the rows go on from the first whole hour from the start at or after the
    candle that ends it. The last row is the final, flat account at the end of the data (6.5 h).
    Found by an audit: a row per hour of every gap, a placeholder row of 1970 before data of 2024
    wrote 470,000 of them. Both runtimes alike."""
    rows = [row for i, row in enumerate(_rows(390)) if i < 90 or i >= resume_row]
    data = _write(tmp_path / "d.csv", rows)
    assert _backtest(data, tmp_path / "runs", "--runtime", runtime) == 0
    assert _beats(tmp_path / "runs") == [h * HOUR_S for h in beats]
    report = json.loads((tmp_path / "runs" / "latest" / "final_report.json").read_text())
    assert report["data_gaps"]["BTCUSDT"]["count"] == 1
    assert validate(tmp_path / "runs" / "latest") == []


def test_a_placeholder_row_decades_before_the_data_writes_no_row_for_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A placeholder row at 1 ms (1970-01-01, `csv_bad_time` takes it: it is above 0), then two
    days of 2024 candles, a row a day (1,440 candles): the rows of the 19,723 days between are not
    written (found by an audit: with a row an hour, 473,000 rows, 367 MB in 10 s). The start is the
    placeholder's open, 0.001 s; days from it: 0.001 + 86,400 k; the first at or after 2024-01-01
    (1,704,067,200 s, day 19,723 exactly) is 2024-01-01T00:00:00.001, the next a day later; the
    data ends at 2024-01-03 (the final row, 0.001 s before the third day's row)."""
    rows = ["1,60000,60001,59999,60000,1", *_rows(2 * 1440)]
    data = _write(tmp_path / "d.csv", rows)
    flags = ("--set", "observability.backtest_heartbeat_candles=1440")
    assert _backtest(data, tmp_path / "runs", *flags) == 0
    # elapsed from the start: 1,704,067,200 s and a day later; the end, 2024-01-03, less 0.001 s
    assert _beats(tmp_path / "runs") == [1_704_067_200.0, 1_704_153_600.0, 1_704_239_999.999]
    report = json.loads((tmp_path / "runs" / "latest" / "final_report.json").read_text())
    assert report["data_gaps"]["BTCUSDT"]["count"] == 1
    assert "the BTCUSDT data has 1 gap(s)" in capsys.readouterr().err
    assert validate(tmp_path / "runs" / "latest") == []


TWO_SYMBOLS = """
[[strategies]]
id = "btc"
kind = "ema_cross"
fast_period = 3
slow_period = 8

[[strategies]]
id = "eth"
kind = "ema_cross"
symbol = "ETHUSDT"
fast_period = 3
slow_period = 8
"""


@pytest.mark.parametrize("runtime", ["kernel", "actors"])
@pytest.mark.parametrize(
    ("eth_gap", "beats"),
    [
        # both symbols' data stop at 1.5 h and come back at 5.5 h: no row in between
        (True, [1.0, 6.0, 6.5]),
        # ETHUSDT's goes on through BTCUSDT's gap: the session has data, every hour has its row
        (False, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 6.5]),
    ],
)
def test_a_gap_of_one_symbol_is_no_gap_while_another_has_data(
    tmp_path: Path, runtime: str, eth_gap: bool, beats: list[float]
) -> None:
    """Several symbols: a gap in the data is a time when no symbol has a candle."""
    gap = range(90, 330)
    btc = _write(tmp_path / "btc.csv", [row for i, row in enumerate(_rows(390)) if i not in gap])
    eth_rows = [row for i, row in enumerate(_rows(390, seed=6)) if not (eth_gap and i in gap)]
    eth = _write(tmp_path / "eth.csv", eth_rows)
    config = tmp_path / "two.toml"
    config.write_text(TWO_SYMBOLS)
    run_dir = tmp_path / "runs"
    argv = ["--config", str(config), "--mode", "backtest", "--run-dir", str(run_dir), "--runtime", runtime]
    argv += ["--data", f"BTCUSDT={btc}", "--data", f"ETHUSDT={eth}"]
    assert main(argv, env={}) == 0
    assert _beats(run_dir) == [h * HOUR_S for h in beats]
    assert validate(run_dir / "latest") == []
