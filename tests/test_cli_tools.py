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
        (["--retry-after", "3\n"], "--retry-after '3\\n': expected printable ASCII (an HTTP header's value)"),
        (["--symbol", "BTC USDT"], "symbol 'BTC USDT': expected 2-20 of A-Z, 0-9"),
        (["--symbols", "BTCUSDT,ETHUSDT", "--stall-symbol", "SOLUSDT"], "--stall-symbol SOLUSDT: not a symbol served"),
        (["--funding-hours", "BTCUSDT=3"], "--funding-hours BTCUSDT=3: expected SYMBOL=H, a symbol served here (BTCUSDT) and H one of 1, 2, 4, 8"),
        (["--funding-hours", "ETHUSDT=4"], "--funding-hours ETHUSDT=4: expected SYMBOL=H, a symbol served here (BTCUSDT)"),
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


# --- the run-folder tools, the validator, the sweep ----------------------------------------------


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A folder that passes for a run folder (its events.jsonl): the tools look no further before
    these refusals."""
    folder = tmp_path / "runs" / "20240101T000000Z-s42"
    folder.mkdir(parents=True)
    (folder / "events.jsonl").write_text("")
    return folder


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["{run}", "-o", "{tmp}"], "tools.report: -o {tmp}: is a directory; expected the path of the page to write"),
        (["{run}", "-o", "{tmp}/none/p.html"], "tools.report: -o {tmp}/none/p.html: its folder {tmp}/none does not exist; expected the path of the page to write"),
        (["{run}", "{run}", "-o", "{tmp}"], "tools.report: -o {tmp}: is a directory; expected the path of the page to write"),
        (["{tmp}/none"], "tools.report: {tmp}/none does not exist"),
        (["{tmp}"], "tools.report: {tmp} is not a run folder (no events.jsonl in it)"),
    ],
)  # fmt: skip
def test_the_report_tool_refuses_a_page_it_cannot_write_before_building_it(
    tmp_path: Path,
    run: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    said: str,
) -> None:
    """Found: `-o DIR` and `-o` in a missing folder ended in a traceback (exit 1)."""
    from tools import report

    monkeypatch.setattr(report, "build_report", _never)
    monkeypatch.setattr(report, "build_comparison", _never)
    err = _refused(report.main, [a.format(tmp=tmp_path, run=run) for a in argv], capsys)
    assert err.splitlines() == [said.format(tmp=tmp_path, run=run)]


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--restore", "{tmp}/empty.tar.gz"], "error: {tmp}/empty.tar.gz is empty; expected a run archive (python -m tools.archive RUN)"),
        (["--restore", "{tmp}/junk.tar.gz", "--run-dir", "{tmp}/file"], "error: --run-dir {tmp}/file is not a folder"),
        (["--restore", "{tmp}/none.tar.gz"], "error: {tmp}/none.tar.gz is not a file"),
        (["--restore", "{tmp}"], "error: {tmp} is not a file"),
        (["{run}", "-o", "{tmp}/none/a.tar.gz"], "error: -o {tmp}/none/a.tar.gz: its folder {tmp}/none does not exist"),
        (["{tmp}/none"], "error: {tmp}/none does not exist"),
    ],
)  # fmt: skip
def test_archive_refuses_bad_input_in_one_line(
    tmp_path: Path, run: Path, capsys: pytest.CaptureFixture[str], argv: list[str], said: str
) -> None:
    """Found: an empty ARCHIVE was said in five lines (exit 1), `--run-dir FILE` with --restore and
    `-o` in a missing folder ended in a traceback."""
    from tools import archive

    (tmp_path / "empty.tar.gz").write_bytes(b"")
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive")
    (tmp_path / "file").write_text("")
    err = _refused(archive.main, [a.format(tmp=tmp_path, run=run) for a in argv], capsys)
    assert err.splitlines() == [said.format(tmp=tmp_path, run=run)]
    assert not (tmp_path / "none").exists() and (tmp_path / "file").is_file()


def test_archive_says_a_file_that_is_no_archive_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not a tar archive at all: refused (exit 1, as a corrupted one), one line."""
    from tools import archive

    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive")
    assert archive.main(["--restore", str(tmp_path / "junk.tar.gz"), "--run-dir", str(tmp_path / "r")]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
        f"error: {tmp_path}/junk.tar.gz is corrupted or not a run archive (or unreadable): "
    )


def test_the_validator_says_a_missing_run_folder_is_not_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tools.validate_session import main

    err = _refused(main, [str(tmp_path / "none")], capsys)
    assert err.splitlines() == [f"error: {tmp_path}/none does not exist"]
    err = _refused(main, [str(tmp_path)], capsys)
    assert err.splitlines() == [f"error: {tmp_path} is not a run folder (no events.jsonl)"]


def test_the_monitor_says_a_run_dir_that_is_a_file_is_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found: `--run-dir FILE` said "FILE/latest does not exist"."""
    from tools.monitor import main

    (tmp_path / "file").write_text("")
    err = _refused(main, ["--run-dir", str(tmp_path / "file"), "--once"], capsys)
    assert err.splitlines() == [
        f"error: --run-dir {tmp_path}/file is a file; expected the folder of the run folders"
    ]
    err = _refused(main, ["--run-dir", str(tmp_path / "none"), "--once"], capsys)  # no session yet
    assert err.splitlines() == [f"error: {tmp_path}/none/latest does not exist"]


SPEC = """\
[sweep]
name = "t"
data = "{data}"
[walk_forward]
train_days = 1
test_days = 1
windows = 1
[[strategy]]
kind = "ema_cross"
[strategy.space]
fast_period = [2, 3]
"""


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--out", "{tmp}/file"], "error: --out {tmp}/file is a file; expected the sweep's folder"),
        (["--data", "{tmp}"], "spec error: --data {tmp}: a directory, not a file"),
        (["--data", "{tmp}/none.csv"], "spec error: --data {tmp}/none.csv: file not found"),
    ],
)
def test_the_sweep_refuses_bad_paths_before_ray_starts(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    said: str,
) -> None:
    """Found: `--out FILE` ended in a traceback once Ray had started; `--data DIR` was "file not
    found"."""
    from tools.sweep import __main__ as sweep
    from tools.sweep import runner

    (tmp_path / "bars.csv").write_text("open_time_ms,open,high,low,close,volume\n")
    (tmp_path / "file").write_text("")
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.format(data=tmp_path / "bars.csv"))
    monkeypatch.setattr(runner, "run_sweep", _never)
    err = _refused(sweep.main, [str(spec), *(a.format(tmp=tmp_path) for a in argv)], capsys)
    assert said.format(tmp=tmp_path) in err.splitlines()


# --- exit codes the suite gave nowhere else (tests/test_docs.py EXIT_CODES) ----------------------


def test_the_healthcheck_exits_0_on_a_fresh_heartbeat_and_1_otherwise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its codes were tested only in the container's tests (nox -s container). The run folder of
    `LAPTOP_AGENTS__SESSION__RUN_DIR`'s `latest` by default."""
    import os
    import time

    from tools import healthcheck

    runs = tmp_path / "runs"
    run = runs / "20240101T000000Z-s42"
    run.mkdir(parents=True)
    monkeypatch.setenv(healthcheck.RUN_DIR_ENV, str(runs))
    assert healthcheck.main([]) == 1  # no latest yet
    assert capsys.readouterr().out.startswith(f"unhealthy: no run folder at {runs / 'latest'}")
    (runs / "latest").symlink_to(run.name)
    assert healthcheck.main([]) == 1  # no heartbeat yet
    (run / "metrics.csv").write_text("ts\n")
    assert healthcheck.main([]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("healthy: last heartbeat")
    old = time.time() - 120
    os.utime(run / "metrics.csv", (old, old))
    assert healthcheck.main([]) == 1 and healthcheck.main(["--max-age", "300"]) == 0
    (run / "final_report.json").write_text("{}")
    assert healthcheck.main(["--max-age", "300", str(run)]) == 1
    assert "has finished" in capsys.readouterr().out
    assert "--max-age must be a positive number" in _refused(healthcheck.main, ["--max-age", "nan"], capsys)


def test_the_fake_exchange_exits_1_on_a_port_it_cannot_listen_on(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from tools.fake_bitunix.server import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--port", str(port)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert (
        line.startswith("fake_bitunix: cannot listen: ") and "(try another --port/--rest-port, or 0)" in line
    )


def test_a_sweep_stopped_by_ctrl_c_exits_130_saying_its_trials_are_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tools.sweep import __main__ as sweep
    from tools.sweep import runner

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    (tmp_path / "bars.csv").write_text("open_time_ms,open,high,low,close,volume\n")
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.format(data=tmp_path / "bars.csv"))
    monkeypatch.setattr(runner, "run_sweep", interrupted)
    assert sweep.main([str(spec), "--out", str(tmp_path / "out"), "--progress", "off"]) == 130
    assert "run the same command again to finish the sweep" in capsys.readouterr().err


def test_cleanup_exits_1_when_a_folder_cannot_be_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tools import cleanup

    runs = tmp_path / "runs"
    for name in ("20240101T000000Z-s1", "20240102T000000Z-s1"):
        (runs / name).mkdir(parents=True)
        (runs / name / "events.jsonl").write_text("")
        (runs / name / "final_report.json").write_text("{}")

    def refuse(path: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cleanup.shutil, "rmtree", refuse)
    assert cleanup.main(["--keep", "0", "--older-than", "0", "--run-dir", str(runs)]) == 1
    assert capsys.readouterr().err.count("error: could not delete") == 2


def test_the_sweep_page_tool_refuses_a_folder_that_is_no_sweep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tools.sweep.html import main

    err = _refused(main, [str(tmp_path)], capsys)
    assert err.splitlines() == [f"tools.sweep.html: {tmp_path} is not a sweep folder (no trials.csv)"]
