"""Candle files for backtests: parsed lazily, bad rows skipped and counted, never passed on."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from actors.feeds.history import DataError, candle_ticks, read_candles_csv

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
