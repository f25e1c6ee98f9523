"""Candle files for backtests: parsed lazily, bad rows skipped and counted, never passed on."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.feeds.history import DataError, candle_ticks, read_candles_csv
from tests.conftest import read_report, run_cli
from tools.validate_session import validate

HEADER = "open_time_ms,open,high,low,close,volume\n"


def test_reads_plain_and_gzipped_files(tmp_path: Path) -> None:
    rows = "60000,100,110,90,105,1.5\n120000,105,106,100,101,2\n"
    plain = tmp_path / "c.csv"
    plain.write_text(HEADER + rows)
    zipped = tmp_path / "c.csv.gz"
    zipped.write_bytes(gzip.compress((HEADER + rows).encode()))
    for path in (plain, zipped):
        candles = list(read_candles_csv(path, 60))
        assert [c.open_ts for c in candles] == [60.0, 120.0]
        assert candles[0].close == 105 and candles[1].volume == 2


def test_bad_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    rows = [
        "60000,100,110,90,105,1",  # good
        "120000,100,99,90,95,1",  # high below open
        "180000,100,110,90,nan,1",  # not finite
        "240000,100,110,90",  # truncated
        "60000,100,110,90,105,1",  # repeated time
        "300000,-1,110,90,105,1",  # negative price
        "360000,abc,110,90,105,1",  # not a number
        "420000,100,110,90,105,1",  # good
    ]
    path = tmp_path / "c.csv"
    path.write_text(HEADER + "\n".join(rows) + "\n")
    stats: dict[str, int] = {}
    candles = list(read_candles_csv(path, 60, stats))
    assert [c.open_ts for c in candles] == [60.0, 420.0]
    assert stats == {"candles": 2, "skipped": 6}


def test_wrong_header_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("time,o,h,l,c\n1,2,3,4,5\n")
    with pytest.raises(DataError, match="must start with the header"):
        list(read_candles_csv(path, 60))


def test_an_enormous_wrong_header_is_quoted_cut_short(tmp_path: Path) -> None:
    """Found by an audit: a data file whose first line was 20 MB (no header) had it all quoted in
    the error, 20 MB on stderr."""
    path = tmp_path / "c.csv"
    path.write_text("x," * 1_000_000 + "\n1,2,3,4,5,6\n")
    with pytest.raises(DataError, match="must start with the header") as info:
        list(read_candles_csv(path, 60))
    assert len(str(info.value)) < 300 + len(str(path)), len(str(info.value))
    assert "(2,000,000 characters)" in str(info.value)


def test_a_byte_order_mark_before_the_header_is_read_past(tmp_path: Path) -> None:
    """Found by an audit: a CSV saved with a UTF-8 byte order mark (a spreadsheet's) was refused,
    'must start with the header ..., got ['\\ufeffopen_time_ms', ...]', the mark invisible in an
    editor; the funding file reader reads past it (utf-8-sig) already."""
    path = tmp_path / "c.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + "60000,100,110,90,105,1\n").encode())
    assert [c.open_ts for c in read_candles_csv(path, 60)] == [60.0]


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        list(read_candles_csv(tmp_path / "nope.csv", 60))


def test_candle_ticks_are_prices_the_candle_offered(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(HEADER + "60000,100,110,90,105,1\n")
    (candle,) = read_candles_csv(path, 60)
    first, last = candle_ticks(candle)
    assert (first.ts, first.bid, first.ask) == (60.0, 100, 100)
    assert last.ts < candle.close_ts and last.bid == last.ask == 105


def test_shared_real_data_parses_cleanly(shared_data: Path) -> None:
    stats: dict[str, int] = {}
    n = sum(
        1
        for _ in zip(
            range(50_000), read_candles_csv(shared_data / "btcusdt_perp_1m.csv.gz", 60, stats), strict=False
        )
    )
    assert n == 50_000
    assert stats.get("skipped", 0) == 0


def _reference_rows(text: bytes, interval_s: float) -> tuple[list[tuple[float, ...]], int]:
    """An independent reading of the rules (the docstring of read_candles_csv): each line after the
    header split on commas; six numbers, finite, prices > 0, volume >= 0, open and close within
    [low, high], a whole number of milliseconds, later than the last candle kept."""
    kept: list[tuple[float, ...]] = []
    skipped = 0
    last = float("-inf")
    lines = text.split(b"\n")[1:]
    if lines and lines[-1] == b"":
        lines.pop()
    for line in lines:
        try:
            t, o, h, lo, c, v = (float(x) for x in line.split(b","))
        except ValueError:
            skipped += 1
            continue
        finite = all(abs(x) < float("inf") for x in (t, o, h, lo, c, v))
        if (
            finite
            and min(o, h, lo, c) > 0
            and v >= 0
            and lo <= min(o, c)
            and max(o, c) <= h
            and t == int(t)
            and 0 < t < 4_102_444_800_000  # above 0, before 2100
            and t / 1000 >= last + interval_s - 1e-6  # an interval after the last at least
        ):
            last = t / 1000
            kept.append((t / 1000, interval_s, o, h, lo, c, v))
        else:
            skipped += 1
    return kept, skipped


_FIELD = st.one_of(
    st.sampled_from(
        ["100", "100.5", "105", "90", "110", "1.5", "0", "-0", "1e2", ".5", "5.", "nan", "x", "", " 7"]
    ),
    st.integers(1, 10**6).map(str),
)
_LINE = st.one_of(
    st.builds(
        lambda t, p: f"{t * 60000},{p},{p + 10},{max(p - 10, 1)},{p + 1},2",
        st.integers(0, 50),
        st.integers(20, 99),
    ),
    st.lists(_FIELD, min_size=0, max_size=8).map(",".join),
)


@pytest.mark.slow  # 300 examples
@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(_LINE, max_size=40),
    crlf=st.booleans(),
    final_newline=st.booleans(),
    chunk=st.integers(1, 200),
)
def test_rows_read_in_chunks_equal_a_line_by_line_reading(
    lines: list[str], crlf: bool, final_newline: bool, chunk: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Whatever the chunk boundaries (a chunk is parsed at once when every line has six fields):
    the candles and the count of skipped rows of a line-by-line reading."""
    end = "\r\n" if crlf else "\n"
    text = (HEADER.rstrip("\n") + end + end.join(lines) + (end if final_newline and lines else "")).encode()
    path = tmp_path_factory.mktemp("csv") / "c.csv"
    path.write_bytes(text)
    expected, skipped = _reference_rows(text.replace(b"\r\n", b"\n"), 60.0)
    import actors.feeds.history as history

    size, history._CHUNK_BYTES = history._CHUNK_BYTES, chunk
    try:
        stats: dict[str, int] = {}
        candles = list(read_candles_csv(path, 60, stats))
    finally:
        history._CHUNK_BYTES = size
    assert [tuple(c)[:7] for c in candles] == expected
    assert all(type(x) is float for c in candles for x in tuple(c)[2:7])
    assert stats.get("candles", 0) == len(expected) and stats.get("skipped", 0) == skipped


def test_each_skipped_row_is_counted_by_its_reason(tmp_path: Path) -> None:
    rows = [
        "60000,100,110,90,105,1",  # good
        "120000,100,99,90,95,1",  # high below the open: prices
        "180000,100,110,90,nan,1",  # prices
        "240000,100,110,90",  # five fields
        "60000,100,110,90,105,1",  # the time of the row kept before it
        "30000,100,110,90,105,1",  # earlier
        "300000,100,110,90,105,-1",  # volume
        "360000.5,100,110,90,105,1",  # not a whole ms
        "420000,100,110,90,105,1",  # good
    ]
    path = tmp_path / "c.csv"
    path.write_text(HEADER + "\n".join(rows) + "\n")
    stats: dict[str, int] = {}
    by: dict[str, int] = {}
    assert [c.open_ts for c in read_candles_csv(path, 60, stats, skipped_by=by)] == [60.0, 420.0]
    assert stats == {"candles": 2, "skipped": 7}
    assert by == {
        "csv_bad_prices": 2,
        "csv_not_six_numbers": 1,
        "csv_repeated_time": 1,
        "csv_time_backwards": 1,
        "csv_bad_volume": 1,
        "csv_bad_time": 1,
    }


def _read(tmp_path: Path, rows: list[str]) -> tuple[list[tuple[float, ...]], dict[str, int], dict[str, int]]:
    path = tmp_path / "c.csv"
    path.write_text(HEADER + "\n".join(rows) + "\n")
    stats: dict[str, int] = {}
    by: dict[str, int] = {}
    candles = list(read_candles_csv(path, 60, stats, skipped_by=by))
    assert all(type(x) is float for c in candles for x in tuple(c)[2:7])
    return [tuple(c)[:7] for c in candles], stats, by


def test_six_fields_that_are_not_all_numbers_are_skipped_not_read_as_json(tmp_path: Path) -> None:
    # a chunk of lines is first read as one JSON array of an array per line: a `null` once stopped
    # the reader with a TypeError, a `true` was read as the price 1.0; they are refused as `float`
    # refuses them, and the rows beside them, and an int where a float is written, read as before
    rows = [
        "60000,100,110,90,105,1",
        "120000,null,110,90,105,1",
        "180000,true,110,90,105,1",
        '240000,"100",110,90,105,1',
        "270000,100,110,90,105",
        "300000,100.5,110,90,105.25,2.5",
    ]
    candles, stats, by = _read(tmp_path, rows)
    assert candles == [
        (60.0, 60.0, 100.0, 110.0, 90.0, 105.0, 1.0),
        (300.0, 60.0, 100.5, 110.0, 90.0, 105.25, 2.5),
    ]
    assert stats == {"candles": 2, "skipped": 4} and by == {"csv_not_six_numbers": 4}
    # each line's own numbers, whatever JSON could make of the lines together: a string across
    # lines (one array of two lines), brackets that would split or join the per-line arrays
    good = "320000,100,110,90,105,1"
    split_and_join = ["330000,100,110,90,105,1],[340000,100,110,90,105,1", '1,"x', 'y",2,3,4,5,6']
    for odd in (['310000,"1', '2",110,90,105,1'], split_and_join, ["[340000,1,1,1,1,1", "1,1]"]):
        candles, stats, by = _read(tmp_path, [rows[0], *odd, good])
        assert candles == [
            (60.0, 60.0, 100.0, 110.0, 90.0, 105.0, 1.0),
            (320.0, 60.0, 100.0, 110.0, 90.0, 105.0, 1.0),
        ]
        assert stats == {"candles": 2, "skipped": len(odd)} and by == {"csv_not_six_numbers": len(odd)}


def _backtest(tmp_path: Path, rows: list[str]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "c.csv"
    path.write_text(HEADER + "\n".join(rows) + "\n")
    return run_cli(
        "--mode", "backtest", "--data", str(path), "--run-dir", str(tmp_path / "runs"),
        "--set", "session.interval=1m", "--quiet", cwd=tmp_path,
    )  # fmt: skip


def test_a_backtest_reports_the_rows_it_skipped(tmp_path: Path) -> None:
    """Found by an audit: a file of every row twice ran with `malformed_dropped: {}` and no word
    of the 400 rows dropped. Now the report counts them by reason, and the run warns."""
    good = [f"{1_704_067_200_000 + i * 60_000},100,101,99,100.5,5" for i in range(40)]
    done = _backtest(tmp_path, [row for row in good for _ in (0, 1)])  # every row twice
    assert done.returncode == 0, done.stderr[-2000:]
    report = read_report(tmp_path / "runs" / "latest")
    assert report["malformed_dropped"] == {"csv_repeated_time": 40}
    assert (
        "the BTCUSDT data had 40 row(s) that could not be used, skipped: csv_repeated_time 40" in done.stderr
    )
    assert validate(tmp_path / "runs" / "latest") == []


def test_the_spacing_error_says_when_rows_were_skipped_or_times_are_seconds(tmp_path: Path) -> None:
    """Found by an audit: with every other row refused (a negative volume), the rows kept are 2m
    apart and the error advised session.interval = "2m"; with open times in seconds it advised
    0.06s. Each is said instead, exit 2."""
    t0 = 1_704_067_200_000
    every_other = [f"{t0 + i * 60_000},100,101,99,100.5,{5 if i % 2 == 0 else -5}" for i in range(40)]
    done = _backtest(tmp_path, every_other)
    assert done.returncode == 2
    assert (
        "20 of its first rows were not candles" in done.stderr and "set session.interval" not in done.stderr
    )
    seconds = [f"{t0 // 1000 + i * 60},100,101,99,100.5,5" for i in range(40)]
    done = _backtest(tmp_path, seconds)
    assert done.returncode == 2
    assert "the first column must be the open time in milliseconds" in done.stderr


def test_rows_overlapping_the_candle_before_or_at_impossible_times_are_skipped(tmp_path: Path) -> None:
    """Found by an audit: a row less than an interval after the one before (off the grid) went in
    as a candle overlapping it, the clock ran back; a typo's extra digit (year 2505) or a
    placeholder row at 0 went in and the run wrote a heartbeat for every hour of the gap."""
    t0 = 1_704_067_200_000
    rows = [
        f"{t0},100,110,90,105,1",
        f"{t0 + 30_000},100,110,90,105,1",  # half a minute after: overlapping
        f"{t0 + 60_000},100,110,90,105,1",
        f"{t0 + 60_000 + 59_999},100,110,90,105,1",  # a millisecond short of the next: overlapping
        f"{t0 + 120_000},100,110,90,105,1",
        f"{t0 * 10 + 180_000},100,110,90,105,1",  # an extra digit: year 2509
        "1e300,100,110,90,105,1",
        f"{t0 + 180_000},100,110,90,105,1",
    ]
    candles, stats, by = _read(tmp_path, rows)
    assert [c[0] * 1000 for c in candles] == [t0, t0 + 60_000, t0 + 120_000, t0 + 180_000]
    assert by == {"csv_overlapping": 2, "csv_bad_time": 2} and stats == {"candles": 4, "skipped": 4}
    candles, _, by = _read(tmp_path, ["0,100,110,90,105,1", *rows[:1]])  # a placeholder first
    assert [c[0] * 1000 for c in candles] == [t0] and by == {"csv_bad_time": 1}


def test_candles_of_a_shorter_interval_are_refused_at_the_start(tmp_path: Path) -> None:
    """1-minute rows with session.interval 2m: the reader would skip every other row as
    overlapping, and the rows kept look 2m apart: the start says what is wrong instead, exit 2.
    A stray row among the first, off the grid, is said as such (not "set session.interval")."""
    t0 = 1_704_067_200_000
    path = tmp_path / "c.csv"
    path.write_text(HEADER + "".join(f"{t0 + i * 60_000},100,101,99,100.5,5\n" for i in range(40)))
    done = run_cli(
        "--mode", "backtest", "--data", str(path), "--run-dir", str(tmp_path / "runs"),
        "--set", "session.interval=2m", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "its candles are 1m apart but session.interval is 2m" in done.stderr
    assert "Traceback" not in done.stderr
    stray = [f"{t0 + i * 60_000},100,101,99,100.5,5\n" for i in range(40)]
    stray.insert(10, f"{t0 + 9 * 60_000 + 30_000},100,101,99,100.5,5\n")
    path.write_text(HEADER + "".join(stray))
    done = run_cli(
        "--mode", "backtest", "--data", str(path), "--run-dir", str(tmp_path / "runs"),
        "--set", "session.interval=1m", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "1 of its first rows open less than session.interval (1m) after the candle before them" in (
        done.stderr
    )
    assert "set session.interval" not in done.stderr


def test_a_gzip_file_cut_short_is_a_clear_error(tmp_path: Path) -> None:
    """Found by an audit: a truncated or damaged .gz gave a traceback (EOFError, zlib.error are not
    OSError), exit 1; or, cut late, a run that ended in error. A DataError names the file, exit 2."""
    t0 = 1_704_067_200_000
    text = HEADER + "".join(f"{t0 + i * 60_000},{100 + i % 7},110,90,105,{i % 13}\n" for i in range(20_000))
    whole = gzip.compress(text.encode())
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(
        DataError, match=r"cannot read .*cut\.csv\.gz past its candle \d+: the gzip stream ends"
    ):
        list(read_candles_csv(cut, 60))
    damaged = tmp_path / "damaged.csv.gz"
    damaged.write_bytes(whole[:200] + bytes(b ^ 0xFF for b in whole[200:400]) + whole[400:])
    with pytest.raises(DataError, match=r"cannot read .*damaged\.csv\.gz"):
        list(read_candles_csv(damaged, 60))
    early = tmp_path / "early.csv.gz"  # cut within the rows a start reads first: refused, exit 2
    early.write_bytes(whole[:300])
    plain = str(_plain(tmp_path))
    for args in (["--data", str(early)], ["--data", plain, "--funding", str(early)]):
        done = run_cli(
            "--mode", "backtest", *args, "--run-dir", str(tmp_path / "runs"), "--quiet", cwd=tmp_path
        )
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert "cannot read" in done.stderr and "early.csv.gz" in done.stderr
    # cut further on: the run ends there in error, saying why (the candles before it were run)
    done = run_cli(
        "--mode", "backtest", "--data", str(cut), "--run-dir", str(tmp_path / "late"), cwd=tmp_path
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    report = read_report(tmp_path / "late" / "latest")
    assert report["status"] == "error" and "cut.csv.gz past its candle" in report["error_messages"][0]


def _plain(tmp_path: Path) -> Path:
    t0 = 1_704_067_200_000
    path = tmp_path / "plain.csv"
    path.write_text(HEADER + "".join(f"{t0 + i * 60_000},100,101,99,100.5,5\n" for i in range(40)))
    return path


def test_a_price_or_volume_too_large_to_trade_on_is_skipped_and_counted(tmp_path: Path) -> None:
    """Found by an audit: a row of prices 1e308 (finite) was a candle, and the backtest ended in
    error (OverflowError in the broker's price grid: 1e308 x 10 ticks is inf), as a volume of 1e308
    could in a notional. Prices from MAX_CSV_VALUE (1e15, where the mock's walk stops) on are
    `csv_bad_prices`, volumes `csv_bad_volume`, each counted."""
    rows = [
        "60000,100,110,90,105,1",
        "120000,1e308,1e308,1e308,1e308,1",
        "180000,100,1e15,90,105,1",
        "240000,100,110,90,105,1e308",
        "300000,100,110,90,105,1e15",
        "360000,100,999999999999999,90,105,999999999999999",  # just under: a candle
    ]
    candles, stats, by = _read(tmp_path, rows)
    assert [c[0] for c in candles] == [60.0, 360.0]
    assert stats == {"candles": 2, "skipped": 4}
    assert by == {"csv_bad_prices": 2, "csv_bad_volume": 2}


def test_a_backtest_of_a_file_with_an_enormous_price_ends_ok(tmp_path: Path) -> None:
    rows = [f"{60000 * (i + 1)},{100 + i},{101 + i},{99 + i},{100.5 + i},10" for i in range(30)]
    rows[20] = f"{60000 * 21},1e308,1e308,1e308,1e308,1"
    (tmp_path / "c.csv").write_text(HEADER + "\n".join(rows) + "\n")
    done = run_cli("--mode", "backtest", "--data", "c.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stop_reason=data_end" in done.stdout + done.stderr
    assert "csv_bad_prices 1" in done.stderr


def test_a_file_newest_first_is_refused_at_start(tmp_path: Path) -> None:
    """Found by an audit: a file in descending time order (an export newest first) ran as a backtest
    of its first candle, every other row skipped as csv_time_backwards, and ended ok, exit 0, with
    no trade, said only in a warning at the end. Refused at start, exit 2, as rows off the grid are;
    a few rows out of order are still skipped and counted."""
    rows = [f"{60000 * (i + 1)},{100 + i},{101 + i},{99 + i},{100.5 + i},10" for i in range(30)]
    (tmp_path / "desc.csv").write_text(HEADER + "\n".join(reversed(rows)) + "\n")
    done = run_cli("--mode", "backtest", "--data", "desc.csv", cwd=tmp_path)
    assert done.returncode == 2, done.stdout[-1000:] + done.stderr[-1000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --data desc.csv: 29 of its first rows open before the row before them, 1 candle kept: "
        "its rows are not in ascending time order (newest first?); sort them by open_time_ms"
    )
    rows[10], rows[11] = rows[11], rows[10]  # one row out of order: skipped, counted, the run goes on
    (tmp_path / "one.csv").write_text(HEADER + "\n".join(rows) + "\n")
    done = run_cli("--mode", "backtest", "--data", "one.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-1000:]
    assert "csv_time_backwards 1" in done.stderr


def test_an_enormous_line_is_one_malformed_row_read_in_bounded_memory(tmp_path: Path) -> None:
    """Found by an audit: a candle file with a 60 MB line (no newline in it) took 7 s and 220 MB:
    the reader kept the line's start and copied it with each chunk read (quadratic), and a line
    of gigabytes would have exhausted the memory. A line longer than MAX_LINE_BYTES is dropped as
    it is read: one row that is not six numbers, counted, the rows around it read."""
    import tracemalloc

    good = [f"{60000 * (i + 1)},100,110,90,105,1" for i in range(4)]
    path = tmp_path / "c.csv"
    with path.open("w") as f:
        f.write(HEADER + good[0] + "\n" + good[1] + "\n")
        f.write("9" * 40_000_000 + "\n")
        f.write(good[2] + "\n" + good[3] + "\n")
    stats: dict[str, int] = {}
    by: dict[str, int] = {}
    first: list[tuple[int, str]] = []
    tracemalloc.start()
    try:
        candles = list(read_candles_csv(path, 60, stats, skipped_by=by, first_skipped=first))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [c.open_ts for c in candles] == [60.0, 120.0, 180.0, 240.0]
    assert by == {"csv_not_six_numbers": 1} and first == [(4, "csv_not_six_numbers")]
    assert peak < 8_000_000, peak  # a few chunks, not the line (40 MB)
