"""The tools' command lines refuse bad input before doing anything: a flag's value out of range, a
file that is missing, empty, or a directory where a file is meant. One clear message each, exit 2,
never a traceback (found by a CLI audit, reading each tool as a new user)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


def _refused(main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """`main(argv)` in this process: exit 2 (argparse's SystemExit or a returned 2); its stderr."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code  # type: ignore[assignment]
    out, err = capsys.readouterr()
    assert code == 2, (argv, out, err)
    return err


# --- the fake exchange ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        # found: --port 99999 listened on 34463 (99999 - 65536), --port -1 said "cannot listen", exit 1
        (["--port", "99999"], "--port 99999: expected a port from 0 to 65535"),
        (["--rest-port", "-1"], "--rest-port -1: expected a port from 0 to 65535"),
        (["--malformed", "2"], "--malformed 2.0: expected a fraction from 0 to 1"),
        (["--rest-errors", "-0.5"], "--rest-errors -0.5: expected a fraction from 0 to 1"),
        (["--history", "-1"], "--history -1: expected 0 or more"),
        (["--stall-for", "nan"], "--stall-for nan: expected 0 or more"),
        (["--drop-every", "-3"], "--drop-every -3.0: expected 0 or more"),
        (["--latency-ms", "-5"], "--latency-ms -5.0: expected 0 or more"),
        (["--idle-timeout", "0"], "--idle-timeout 0.0: expected a number of seconds > 0"),
        (["--start-price", "-5"], "--start-price -5.0: expected a price > 0"),
        (["--zigzag", "100"], "--zigzag 100.0: expected a percentage from 0 up to (not) 100"),
        (["--clock-offset", "inf"], "--clock-offset inf: expected a number of seconds"),
        (["--symbol", "BTC USDT"], "symbol 'BTC USDT': expected 2-20 of A-Z, 0-9"),
        (["--symbols", "BTCUSDT,ETHUSDT", "--stall-symbol", "SOLUSDT"], "--stall-symbol SOLUSDT: not a symbol served"),
        (["--csv", "{tmp}/none.csv"], "cannot read candles file {tmp}/none.csv: No such file or directory"),
        (["--csv", "{tmp}"], "cannot read candles file {tmp}: Is a directory"),
        (["--csv", "{tmp}/empty.csv"], "{tmp}/empty.csv: must start with the header"),
        # found: said "cannot listen: [Errno 21] Is a directory ... (try another --port ...)", exit 1
        (["--port-file", "{tmp}"], "--port-file {tmp}: is a directory; expected the path of a file"),
        (["--port-file", "{tmp}/none/ports.json"], "--port-file {tmp}/none/ports.json: its folder {tmp}/none does not exist"),
    ],
)  # fmt: skip
def test_the_fake_exchange_refuses_a_bad_flag_value_before_it_listens(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    said: str,
) -> None:
    from tools.fake_bitunix import server
    from tools.fake_bitunix.server import main

    def serve(*_: object) -> None:
        raise AssertionError("the fake exchange started")

    monkeypatch.setattr(server, "_serve_cli", serve)
    (tmp_path / "empty.csv").write_text("")
    err = _refused(main, [a.format(tmp=tmp_path) for a in argv], capsys)
    assert f"python -m tools.fake_bitunix: error: {said.format(tmp=tmp_path)}" in err


# --- the benchmarks ------------------------------------------------------------------------------


def _never(*_: object, **__: object) -> None:
    raise AssertionError("it ran")


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--sizes", "0"], "--sizes 0: expected a number of candles of at least 1,000"),
        (["--sizes", "5000", "-5"], "--sizes -5: expected a number of candles of at least 1,000"),
        (["--reps", "0"], "--reps 0: expected 1 or more"),  # found: ran the default, 3
        (["--reps", "-1"], "--reps -1: expected 1 or more"),
        (["--latency-seconds", "0"], "--latency-seconds 0: expected a number of seconds > 0, at most 86400"),
        (["--latency-seconds", "-3"], "--latency-seconds -3: expected"),  # found: a MISS, exit 0
        (["--latency-seconds", "nan"], "--latency-seconds nan: expected"),
        (["--json", "{tmp}"], "--json {tmp}: is a directory; expected the path of a file"),
        (["--json", "{tmp}/none/b.json"], "--json {tmp}/none/b.json: its folder {tmp}/none does not exist"),
        (["--work", "{tmp}/file"], "--work {tmp}/file: is a file; expected a folder"),
    ],
)
def test_the_bench_refuses_a_bad_flag_value_before_it_measures(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    said: str,
) -> None:
    from tools import bench

    monkeypatch.setattr(bench, "machine", _never)  # the first thing a run does
    (tmp_path / "file").write_text("")
    err = _refused(bench.main, [a.format(tmp=tmp_path) for a in argv], capsys)
    assert f"python -m tools.bench: error: {said.format(tmp=tmp_path)}" in err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--rate", "nan"], "--frames >= 6, --repeat >= 1, --rate > 0 and --seconds > 0"),
        (["--seconds", "inf"], "--frames >= 6, --repeat >= 1, --rate > 0 and --seconds > 0"),
        (["--frames", "0"], "--frames >= 6, --repeat >= 1, --rate > 0 and --seconds > 0"),
        (["--work", "{tmp}/file"], "--work {tmp}/file: is a file; expected a folder"),
    ],
)
def test_the_feed_bench_refuses_a_bad_flag_value_before_it_measures(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    said: str,
) -> None:
    from tools import bench_feed

    monkeypatch.setattr(bench_feed, "make_frames", _never)  # the micro benchmark's first step
    (tmp_path / "file").write_text("")
    err = _refused(bench_feed.main, [a.format(tmp=tmp_path) for a in argv], capsys)
    assert f"python -m tools.bench_feed: error: {said.format(tmp=tmp_path)}" in err
