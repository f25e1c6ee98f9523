"""Flags that do not apply to the kind of run asked for are refused, not ignored (found by an
audit: a replay took --config, --set, --seed and --duration, invalid values too, and ignored them;
a backtest ignored --duration, --resume, --fresh and --source), and `--check-config` makes the
checks a start makes. Each refusal: exit 2, one line naming the flag, nothing left behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import trio
import trio.testing

from actors.session import run_session
from tests.conftest import REPO, make_config, run_cli, run_main


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished mock session's run folder (on a virtual clock: instant)."""
    tmp = tmp_path_factory.mktemp("rec")

    async def main() -> Path:
        config = make_config(tmp, "observability.progress=off", duration_min=0.2)
        return (await run_session(config, handle_signals=False, progress_mode="off")).run_path

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.fixture
def candles(tmp_path: Path) -> Path:
    path = tmp_path / "bars.csv"
    rows = [f"{1_704_067_200_000 + i * 60_000},100.0,101.0,99.0,100.5,5.0" for i in range(30)]
    path.write_text("open_time_ms,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("args", "flags"),
    [
        (["--set", "risk.max_position_size=abc"], "--set"),
        (["--seed", "7"], "--seed"),
        (["--duration", "-1"], "--duration"),
        (["--source", "bitunix"], "--source"),
        (["--symbol", "ETHUSDT"], "--symbol"),
        (["--fresh"], "--fresh"),
        (["--config", "/nope.toml", "--set", "risk.max_position_size=abc"], "--set"),
    ],
)
def test_a_replay_refuses_the_flags_its_recorded_config_replaces(
    tmp_path: Path, recording: Path, args: list[str], flags: str
) -> None:
    runs = tmp_path / "runs"
    result = run_main("--replay", str(recording), "--run-dir", str(runs), *args, cwd=tmp_path)
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert line.startswith(f"error: {flags}: not for --replay")
    assert "only --run-dir, --runtime and --quiet apply" in line
    assert not runs.exists()


@pytest.mark.parametrize("target", ["latest", "latest/events.jsonl"])
def test_a_replay_of_runs_latest_replays_that_session_not_its_own_new_folder(
    tmp_path: Path, target: str
) -> None:
    """Found by an audit: `--replay runs/latest` (or runs/latest/events.jsonl) in the run dir the
    replay writes to read its market data after `latest` had moved to the replay's own new, empty
    folder: a replay of nothing, 0 trades against the session's 2, exit 0 and no warning."""
    from tests.conftest import TRADES_OFTEN, read_report

    async def session() -> Path:
        config = make_config(tmp_path, *TRADES_OFTEN, "observability.progress=off", duration_min=0.5)
        return (await run_session(config, handle_signals=False, progress_mode="off")).run_path

    original = read_report(trio.run(session, clock=trio.testing.MockClock(autojump_threshold=0)))
    assert original["trade_count"] > 0
    runs = tmp_path / "runs"
    result = run_main("--replay", str(runs / target), "--run-dir", str(runs), "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (replay,) = runs.glob("replay-*")
    assert (runs / "latest").resolve() == replay.resolve()
    again = read_report(replay)
    for field in ("trade_count", "fills", "net_pnl", "fees_paid", "ending_equity"):
        assert again[field] == original[field], field


def test_a_replay_warns_of_the_environments_config_variables_and_runs(
    tmp_path: Path, recording: Path
) -> None:
    runs = tmp_path / "runs"
    env = {"LAPTOP_AGENTS__RISK__MAX_POSITION_SIZE": "abc", "LAPTOP_AGENTS__SESSION__SEED": "3"}
    result = run_main("--replay", str(recording), "--run-dir", str(runs), "--quiet", cwd=tmp_path, **env)
    assert result.returncode == 0, result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert "ignored (LAPTOP_AGENTS__RISK__MAX_POSITION_SIZE, LAPTOP_AGENTS__SESSION__SEED)" in warning
    assert len(list(runs.glob("replay-*"))) == 1


def test_a_replay_with_a_config_file_says_it_is_not_read_and_runs(tmp_path: Path, recording: Path) -> None:
    """The container's ENTRYPOINT passes --config to every start, `podman run IMAGE --replay RUN`
    included: the file (even a missing one) is not read, and the replay says so."""
    runs = tmp_path / "runs"
    result = run_main(
        "--replay", str(recording), "--run-dir", str(runs), "--config", "/nope.toml", "--quiet", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert "--replay re-runs the recorded config: --config /nope.toml is not read" in warning
    assert len(list(runs.glob("replay-*"))) == 1


@pytest.mark.parametrize(
    ("args", "flag", "instead"),
    [
        (["--duration", "1"], "--duration", "--from and --until"),
        (["--resume", "20240101T000000Z-s42"], "--resume", "new run folder"),
        (["--fresh"], "--fresh", "new run folder"),
        (["--source", "bitunix"], "--source", "--data"),
    ],
)
def test_a_backtest_refuses_the_flags_it_would_ignore(
    tmp_path: Path, candles: Path, args: list[str], flag: str, instead: str
) -> None:
    runs = tmp_path / "runs"
    for check in ([], ["--check-config"]):
        result = run_main(
            "--mode", "backtest", "--data", str(candles), "--run-dir", str(runs), *args, *check, cwd=tmp_path
        )  # fmt: skip
        assert result.returncode == 2
        line = _one_line(result.stderr)
        assert line.startswith(f"error: {flag} is not for --mode backtest: ") and instead in line
        assert not runs.exists()


def test_a_backtest_takes_the_flags_it_uses(tmp_path: Path, candles: Path) -> None:
    runs = tmp_path / "runs"
    result = run_main(
        "--mode", "backtest", "--data", str(candles), "--run-dir", str(runs), "--seed", "7",
        "--symbol", "BTCUSDT", "--until", "2024-01-01T00:20Z", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "run_id",
    ["../..", "/tmp", "..", ".", "a/b", "20240101T000000Z-s42/..", "backtest-20240101T000000Z-s42", ""],
)
def test_resume_takes_a_run_id_not_a_path(tmp_path: Path, run_id: str) -> None:
    """Found by an audit: `--resume ../..` said a run 'finished already', and an absolute path
    resumed a session of another run dir."""
    runs = tmp_path / "runs"
    for check in ([], ["--check-config"]):
        result = run_main("--resume", run_id, "--run-dir", str(runs), *check, cwd=tmp_path)
        assert result.returncode == 2
        line = _one_line(result.stderr)
        assert line.startswith("error: --resume ") and "expected a live session's run id" in line
        assert "or latest" in line
        assert not runs.exists()


def test_resume_of_a_run_id_that_is_not_there_says_so(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    for check in ([], ["--check-config"]):
        result = run_main("--resume", "20240101T000000Z-s42", "--run-dir", str(runs), *check, cwd=tmp_path)
        assert result.returncode == 2
        assert "error: --resume: no run folder" in _one_line(result.stderr)
    assert list(runs.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--resume", "20240101T000000Z-s42", "--fresh"], "--fresh and --resume contradict each other"),
        (["--data", "/nope.csv"], "--data is only for --mode backtest"),
        (["--mode", "backtest", "--data", "/nope.csv"], "--data: file not found: /nope.csv"),
        (["--mode", "backtest"], "--mode backtest needs --data FILE"),
        (["--from", "2024-01-01"], "--from and --until are only for --mode backtest"),
        # the default given explicitly is still a backtest's flag (found by an audit: it passed)
        (["--runtime", "kernel"], "--runtime is only for --mode backtest and --replay"),
        (["--runtime", "actors"], "--runtime is only for --mode backtest and --replay"),
    ],
)
def test_check_config_refuses_what_a_start_refuses(tmp_path: Path, args: list[str], fragment: str) -> None:
    """Found by an audit: --check-config said 0 to flags a start refuses."""
    runs = tmp_path / "runs"
    start = run_main(*args, "--run-dir", str(runs), cwd=tmp_path)
    check = run_main(*args, "--run-dir", str(runs), "--check-config", cwd=tmp_path)
    assert start.returncode == check.returncode == 2
    assert fragment in _one_line(start.stderr) and fragment in _one_line(check.stderr)
    assert check.stdout == ""
    assert not runs.exists()


def test_check_config_gives_the_warning_a_start_gives(tmp_path: Path) -> None:
    live = str(REPO / "config" / "live.toml")
    result = run_main(
        "--config", live, "--check-config", cwd=tmp_path, LAPTOP_AGENTS__STRATEGY__FAST_PERIOD="5"
    )
    assert result.returncode == 0, result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if line]
    assert (
        "WARNING" in warning
        and "replace" in warning
        and "this session runs one ema_cross strategy" in warning
    )


@pytest.mark.parametrize("kill_switch", [".", "runs", "{tmp}"])
def test_a_kill_switch_at_a_directory_is_refused(tmp_path: Path, kill_switch: str) -> None:
    """Found by an audit: `session.kill_switch = "runs"` stopped every session at once, 'ok'."""
    runs = tmp_path / "runs"
    runs.mkdir()
    value = kill_switch.format(tmp=tmp_path)
    for check in ([], ["--check-config"]):
        result = run_main(
            "--source", "mock", "--duration", "0.05", "--run-dir", str(runs),
            "--set", f"session.kill_switch={value}", *check, cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 2
        line = _one_line(result.stderr)
        assert line == (
            f"error: session.kill_switch: {value} is a directory; expected the path of a file "
            "(a file there stops the session), e.g. kill.txt"
        )
    assert list(runs.iterdir()) == []


def test_a_kill_switch_there_at_the_start_is_a_warning_naming_it(tmp_path: Path) -> None:
    kill = tmp_path / "stop.txt"
    kill.write_text("")

    async def main() -> None:
        config = make_config(tmp_path, "observability.progress=off", f"session.kill_switch={kill}")
        result = await run_session(config, handle_signals=False, progress_mode="off")
        assert result.report["stop_reason"] == "kill_switch"

    from loguru import logger

    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(str(m)), level="WARNING", format="{level} {message}")
    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        logger.remove(sink)
    (warning,) = [line for line in seen if "kill switch" in line]
    assert warning.startswith(
        f"WARNING kill switch {kill} was already there at the start: the session stopped at once"
    )


def test_a_flag_is_spelled_out(tmp_path: Path) -> None:
    """Found by an audit: `--dur 5` was taken for --duration."""
    result = run_main("--dur", "5", "--check-config", cwd=tmp_path)
    assert result.returncode == 2
    assert "unrecognized arguments: --dur 5" in _one_line(result.stderr)


def test_data_naming_a_directory_says_so(tmp_path: Path) -> None:
    result = run_main("--mode", "backtest", "--data", str(tmp_path), "--check-config", cwd=tmp_path)
    assert result.returncode == 2
    assert _one_line(result.stderr) == f"error: --data: {tmp_path} is a directory; expected a candle file"


def _error_line(stderr: str) -> str:
    """The one `error: ` line of a start refused (a backtest warns of its funding before it)."""
    assert "Traceback" not in stderr, stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("error: ")]
    return line


def test_data_naming_a_fifo_or_a_device_says_what_it_is(tmp_path: Path, candles: Path) -> None:
    """Found by an audit: `--data FIFO` said "file not found"."""
    fifo = tmp_path / "bars.fifo"
    os.mkfifo(fifo)
    for path, what in ((fifo, "a FIFO"), (Path("/dev/null"), "a device")):
        for check in ([], ["--check-config"]):
            result = run_cli("--mode", "backtest", "--data", str(path), *check, cwd=tmp_path)
            assert result.returncode == 2, result.stderr
            expected = f"error: --data: {path} is not a regular file ({what}); expected a candle file"
            assert _error_line(result.stderr) == expected
    funding = run_main("--mode", "backtest", "--data", str(candles), "--funding", str(fifo), cwd=tmp_path)
    assert funding.returncode == 2
    assert _error_line(funding.stderr) == (
        f"error: --funding: {fifo} is not a regular file (a FIFO); expected a file of funding rates"
    )
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("rows", "said"),
    [
        (
            # five fields; a letter; a high under the open; a time of 0 (not above 0)
            [
                "1704067200000,100,101,99,100",
                "x,100,101,99,100,1",
                "1704067260000,100,99,98,99,1",
                "0,1,1,1,1,1",
            ],
            "4 rows read, all malformed: no candle (csv_bad_prices 1, csv_bad_time 1, "
            "csv_not_six_numbers 2); the first, line 2: not six plain numbers (csv_not_six_numbers); "
            "expected rows of six plain numbers open_time_ms,open,high,low,close,volume (the open time in ms)",
        ),
        (
            ["1704067200.5,100,101,99,100,1"],
            "1 row read, malformed: no candle (csv_bad_time 1); the first, line 2: an open time that is "
            "not whole milliseconds above 0 and before 2100 (csv_bad_time); expected rows",
        ),
        ([], "no candles: no rows after its header"),
    ],
)
def test_data_whose_every_row_is_malformed_says_so(tmp_path: Path, rows: list[str], said: str) -> None:
    """Found by an audit: a data file of malformed rows only said "no candles"; the rows read are
    counted by reason, the first one named by its line (the header is line 1) and reason."""
    data = tmp_path / "d.csv"
    data.write_text("\n".join(["open_time_ms,open,high,low,close,volume", *rows]) + "\n")
    for check in ([], ["--check-config"]):
        result = run_cli("--mode", "backtest", "--data", str(data), *check, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert _error_line(result.stderr).startswith(f"error: --data {data}: {said}")
    assert not (tmp_path / "runs").exists()


def test_exchange_urls_set_on_the_mock_source_are_said_to_be_unused(tmp_path: Path) -> None:
    """Found by an audit: the README's fake-exchange URLs, set without `--source bitunix`, were
    ignored without a word (the default source is the mock) and the session traded on the mock."""
    urls = ["--set", "feed.ws_url=ws://127.0.0.1:9/public/", "--set", "feed.rest_url=http://127.0.0.1:9"]
    result = run_main(*urls, "--check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if line]
    assert "feed.ws_url and feed.rest_url are not used: feed.source is 'mock'" in warning
    assert "--source bitunix reads them" in warning
    quiet = run_main(*urls, "--source", "bitunix", "--check-config", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_an_order_qty_that_risk_sizing_never_reads_is_said_to_be_unused(tmp_path: Path) -> None:
    """Found by an audit: the risk-profile templates set `order_qty`, which risk sizing (the
    default) never reads: their entries traded another size without a word."""
    result = run_main("--set", "strategy.order_qty=0.005", "--check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if line]
    assert "strategy.order_qty = 0.005 not used: risk.sizing is 'risk'" in warning
    assert "risk.sizing = 'fixed' trades order_qty" in warning
    tables = tmp_path / "two.toml"
    tables.write_text(
        '[[strategies]]\nid = "a"\nkind = "trend_pullback"\norder_qty = 0.002\n'
        '[[strategies]]\nid = "b"\nkind = "liquidity_sweep"\n'
    )
    result = run_main("--config", str(tables), "--check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        "strategies[a].order_qty = 0.002 not used" in result.stderr and "strategies[b]" not in result.stderr
    )
    # read with fixed sizing, and the default (config/default.toml lists it) is no news
    for sets in (["strategy.order_qty=0.005", "risk.sizing=fixed"], ["strategy.order_qty=0.001"]):
        quiet = run_main(*(a for s in sets for a in ("--set", s)), "--check-config", cwd=tmp_path)
        assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    # the shipped configs set none that goes unread
    for path in sorted((REPO / "config").rglob("*.toml")):
        if "sweeps" not in path.parts:
            shipped = run_main("--config", str(path), "--check-config", cwd=tmp_path)
            assert "order_qty" not in shipped.stderr, (path, shipped.stderr)


def test_a_run_dir_that_is_a_file_is_named_as_one(tmp_path: Path) -> None:
    """Found by an audit: `--run-dir FILE` said "File exists"."""
    (tmp_path / "runs").write_text("not a folder\n")
    result = run_main("--run-dir", "runs", "--source", "mock", "--duration", "0.05", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "session.run_dir: cannot use runs: it is a file; expected a directory" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("rows", "extra", "said"),
    [
        ("1m", ["--set", "session.interval=5m"], "its candles are 1m apart but session.interval is 5m"),
        ("1m", ["--from", "2030-01-01"], "no candles in the --from/--until window"),
        ("header", [], "--data"),
    ],
)
def test_check_config_refuses_the_data_a_backtest_start_refuses(
    tmp_path: Path, rows: str, extra: list[str], said: str
) -> None:
    """Found by an audit: --check-config only looked for the --data file, and passed candles of
    another interval, an empty window or a file that is not candles, which the start refused."""
    data = tmp_path / "d.csv"
    header = "open_time_ms,open,high,low,close,volume" if rows != "header" else "time,o,h,l,c,v"
    lines = [f"{1_704_067_200_000 + i * 60_000},100.0,101.0,99.0,100.5,5.0" for i in range(30)]
    data.write_text(header + "\n" + "\n".join(lines) + "\n")
    args = ["--mode", "backtest", "--data", str(data), *extra]
    checked = run_main(*args, "--check-config", cwd=tmp_path)
    started = run_main(*args, cwd=tmp_path)
    assert checked.returncode == started.returncode == 2, (checked.stderr, started.stderr)
    error = [line for line in started.stderr.splitlines() if line.startswith("error: ")]
    assert error and said in error[0]
    assert error[0] in checked.stderr  # the same line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_check_config_refuses_a_run_dir_the_start_cannot_use(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("not a folder\n")
    for run_dir, said in (("runs", "it is a file"), ("runs/sub", "runs is a file")):
        result = run_main("--run-dir", run_dir, "--check-config", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert f"session.run_dir: cannot use {run_dir}: {said}; expected a directory" in result.stderr


def test_check_config_refuses_a_run_dir_on_a_read_only_disk_as_the_start_does(tmp_path: Path) -> None:
    """Found by a docs audit: troubleshooting.md's `error: session.run_dir: cannot use ...` (exit 2,
    "checked before the start") came from the start only: `--check-config` (the RUNBOOK's check
    before a session) passed a run dir it could not write, exit 0. A read-only tmpfs as root (CI);
    else a folder without write permission."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=100m", "tmpfs", str(disk)], capture_output=True, text=True
        )
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
        reason = "Read-only file system"
    else:
        disk.chmod(0o555)
        reason = "Permission denied"
    try:
        for run_dir in ("disk", "disk/runs"):
            args = ("--run-dir", run_dir, "--source", "mock", "--duration", "0.05")
            checked = run_main(*args, "--check-config", cwd=tmp_path)
            started = run_main(*args, cwd=tmp_path)
            said = f"error: session.run_dir: cannot use {run_dir}: {reason}\n"
            assert (checked.returncode, started.returncode) == (2, 2), (checked.stderr, started.stderr)
            assert checked.stderr == started.stderr == said
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)
        else:
            disk.chmod(0o755)


@pytest.mark.parametrize("key", ["feed.source=bitunix", "session.duration_min=1"])
def test_a_backtest_refuses_the_set_of_a_key_whose_flag_it_refuses(tmp_path: Path, key: str) -> None:
    """Found by an audit: `--source bitunix` exited 2 with a backtest, `--set feed.source=bitunix`
    passed and was ignored. The environment's variable (a container's, for its live sessions) is
    not refused: warned of."""
    data = tmp_path / "d.csv"
    lines = [f"{1_704_067_200_000 + i * 60_000},100.0,101.0,99.0,100.5,5.0" for i in range(30)]
    data.write_text("open_time_ms,open,high,low,close,volume\n" + "\n".join(lines) + "\n")
    args = ["--mode", "backtest", "--data", str(data), "--check-config"]
    refused = run_main(*args, "--set", key, cwd=tmp_path)
    assert refused.returncode == 2
    assert f"--set {key.partition('=')[0]} is not for --mode backtest" in refused.stderr
    name, _, value = key.partition("=")
    var = "LAPTOP_AGENTS__" + name.replace(".", "__").upper()
    warned = run_main(*args, cwd=tmp_path, **{var: value})
    assert warned.returncode == 0, warned.stderr
    assert f"{var} is not read by a backtest" in warned.stderr


def test_a_close_fill_with_latency_is_said_to_fill_at_the_next_open(tmp_path: Path) -> None:
    """Found by an audit: `broker.backtest_fill = "close"` filled at the next candle's open at the
    default latency (the order reaches the market after the close), as "next_open" does, unsaid."""
    data = tmp_path / "bars.csv"
    data.write_text(
        "open_time_ms,open,high,low,close,volume\n"
        + "".join(f"{1_704_067_200_000 + i * 60_000},100,101,99,100.5,5\n" for i in range(30))
    )
    backtest = ["--mode", "backtest", "--data", str(data), "--set", "session.interval=1m"]
    result = run_main(*backtest, "--set", "broker.backtest_fill=close", "--check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "broker.backtest_fill = 'close' fills a market order at its signal candle's close only" in (
        result.stderr
    )
    exact = ["broker.backtest_fill=close", "broker.latency_ms=0", "broker.latency_jitter_ms=0"]
    quiet = run_main(*backtest, *(a for s in exact for a in ("--set", s)), "--check-config", cwd=tmp_path)
    assert quiet.returncode == 0 and "backtest_fill" not in quiet.stderr, quiet.stderr
