"""The run-folder tools on real run folders: the monitor beside a live session (and on a finished or
dead one), cleanup's rule, archive and restore (checksums, refusals, the validator)."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TRADES_OFTEN, cli_env, run_main
from tests.test_replay_backtest import write_bars
from tools.monitor import EventTail

DAY = 86400.0
# Backtests that trade and never stop early (no breaker, no loss limit).
BACKTEST_SETS = [
    "strategy.fast_period=2",
    "strategy.slow_period=5",
    "risk.max_consecutive_losses=0",
    "risk.max_loss_pct=50",
    "risk.max_daily_drawdown_pct=50",
]


def tool(name: str, *args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"tools.{name}", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _sets(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


BACKTEST = [*_sets(BACKTEST_SETS), "--mode", "backtest", "--data"]
SESSION = [sys.executable, "-m", "actors.main", *_sets(TRADES_OFTEN), "--source", "mock", "--fresh"]


@pytest.fixture(scope="module")
def backtest_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run dir with three finished backtests (seeds 1, 2, 3), made once for the module."""
    root = tmp_path_factory.mktemp("backtests")
    write_bars(root / "bars.csv", 240)
    for seed in (1, 2, 3):  # the CLI in this process (the tools under test run as processes)
        args = [*BACKTEST, str(root / "bars.csv"), "--run-dir", str(root / "runs"), "--seed", str(seed)]
        done = run_main(*args, cwd=root)
        assert done.returncode == 0, done.stderr
    return root / "runs"


@pytest.fixture
def runs(tmp_path: Path, backtest_runs: Path) -> Path:
    """This test's own copy of the three backtests (file times kept)."""
    shutil.copytree(backtest_runs, tmp_path / "runs", symlinks=True)
    return tmp_path / "runs"


def run_folders(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.is_dir() and not p.is_symlink())


def set_finished(run: Path, days_ago: float) -> None:
    ts = time.time() - days_ago * DAY
    os.utime(run / "final_report.json", (ts, ts))


def point_latest(run_dir: Path, name: str) -> None:
    (run_dir / "latest").unlink()
    (run_dir / "latest").symlink_to(name, target_is_directory=True)


def lock(run: Path) -> int:
    fd = os.open(run / "session.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


# --- cleanup -------------------------------------------------------------------------------------


def test_cleanup_keeps_the_newest_n_and_the_young_and_never_latest_unfinished_or_locked(
    tmp_path: Path, runs: Path
) -> None:
    a, b, c = sorted(runs.glob("backtest-*"))
    set_finished(a, 10)
    set_finished(b, 5)
    set_finished(c, 1)
    point_latest(runs, a.name)  # the oldest: protected by latest alone
    unfinished = runs / "backtest-unfinished"
    shutil.copytree(b, unfinished)
    (unfinished / "final_report.json").unlink()
    (runs / "notes").mkdir()
    (runs / "notes" / "events.txt").write_text("not a run folder")
    old = time.time() - 30 * DAY
    for path in (unfinished, unfinished / "events.jsonl", runs / "notes"):
        os.utime(path, (old, old))

    dry = tool(
        "cleanup", "--keep", "1", "--older-than", "2", "--dry-run", "--run-dir", str(runs), cwd=tmp_path
    )
    assert dry.returncode == 0, dry.stderr
    assert f"would delete {b}" in dry.stdout
    assert f"kept {a}" in dry.stdout and "latest points to it" in dry.stdout
    assert "would delete 1 run folder(s), would free" in dry.stdout
    assert len(run_folders(runs)) == 5  # nothing deleted

    done = tool("cleanup", "--keep", "1", "--older-than", "2", "--run-dir", str(runs), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"deleted {b} (" in done.stdout and "freed" in done.stdout
    assert run_folders(runs) == sorted([a.name, c.name, unfinished.name, "notes"])

    # keep none, any age: c is old enough now but latest points to it; a is locked by a live process
    point_latest(runs, c.name)
    fd = lock(a)
    try:
        locked = tool("cleanup", "--keep", "0", "--older-than", "0", "--run-dir", str(runs), cwd=tmp_path)
    finally:
        os.close(fd)
    assert locked.returncode == 0, locked.stderr
    assert "a live process holds its session.lock" in locked.stdout
    assert run_folders(runs) == sorted([a.name, c.name, unfinished.name, "notes"])

    last = tool("cleanup", "--keep", "0", "--older-than", "0", "--run-dir", str(runs), cwd=tmp_path)
    assert f"deleted {a} (" in last.stdout
    assert run_folders(runs) == sorted([c.name, unfinished.name, "notes"])
    assert (runs / "latest").resolve() == c.resolve()


def test_cleanup_refuses_bad_arguments(tmp_path: Path) -> None:
    for args in (
        ["--keep", "-1", "--older-than", "1"],
        ["--keep", "1"],
        ["--older-than", "1"],
        ["--keep", "1", "--older-than", "-2"],
        ["--keep", "1", "--older-than", "1", "--run-dir", str(tmp_path / "missing")],
    ):
        result = tool("cleanup", *args, cwd=tmp_path)
        assert result.returncode == 2, args
        assert "Traceback" not in result.stderr


# --- archive and restore -------------------------------------------------------------------------


def file_bytes(run: Path) -> dict[str, bytes]:
    return {
        p.relative_to(run).as_posix(): p.read_bytes()
        for p in run.rglob("*")
        if p.is_file() and p.name != "session.lock"
    }


@pytest.mark.parametrize("suffix", [".tar.gz", pytest.param(".tar.xz", marks=pytest.mark.slow)])  # xz: slow
def test_archive_and_restore_give_back_a_valid_run_folder(tmp_path: Path, runs: Path, suffix: str) -> None:
    run = (runs / "latest").resolve()
    out = tmp_path / f"saved{suffix}"
    loose = os.umask(0o022)  # a shell's usual umask (the CLI in process leaves 077 behind)
    made = tool("archive", str(runs / "latest"), "-o", str(out), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    digest, name = Path(f"{out}.sha256").read_text().split()
    assert (digest, name) == (hashlib.sha256(out.read_bytes()).hexdigest(), out.name)  # sha256sum format
    check = subprocess.run(["sha256sum", "-c", f"{out.name}.sha256"], cwd=tmp_path, capture_output=True)
    assert check.returncode == 0

    restored = tool("archive", "--restore", str(out), "--run-dir", str(tmp_path / "restored"), cwd=tmp_path)
    os.umask(loose)
    assert restored.returncode == 0, restored.stderr
    assert "tools.validate_session OK" in restored.stdout
    back = tmp_path / "restored" / run.name
    assert file_bytes(back) == file_bytes(run)
    # file times kept (cleanup's age of a restored run is the original's)
    assert abs((back / "final_report.json").stat().st_mtime - (run / "final_report.json").stat().st_mtime) < 1
    # state at rest: nobody else reads the archive or the restored folder (they were 0644/0755)
    assert {oct(p.stat().st_mode & 0o777) for p in (out, Path(f"{out}.sha256"))} == {"0o600"}
    assert oct(back.stat().st_mode & 0o777) == "0o700"
    assert {oct(p.stat().st_mode & 0o777) for p in back.rglob("*") if p.is_file()} == {"0o600"}
    validated = subprocess.run(
        [sys.executable, "-m", "tools.validate_session", str(back)],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
    )
    assert validated.returncode == 0, validated.stdout

    again = tool("archive", "--restore", str(out), "--run-dir", str(tmp_path / "restored"), cwd=tmp_path)
    assert again.returncode == 1 and "exists already" in again.stderr
    assert tool("archive", str(run), "-o", str(out), cwd=tmp_path).returncode == 1  # never overwrites


def test_restore_refuses_a_corrupted_archive(tmp_path: Path, runs: Path) -> None:
    out = tmp_path / "run.tar.gz"
    assert tool("archive", str(runs / "latest"), "-o", str(out), cwd=tmp_path).returncode == 0
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0xFF
    out.write_bytes(bytes(data))
    bad = tool("archive", "--restore", str(out), "--run-dir", str(tmp_path / "r"), cwd=tmp_path)
    assert bad.returncode == 1 and "is corrupted" in bad.stderr and "SHA-256" in bad.stderr
    assert "Traceback" not in bad.stderr
    Path(f"{out}.sha256").unlink()  # no sidecar: the damage is still found (gzip CRC or the manifest)
    bad = tool("archive", "--restore", str(out), "--run-dir", str(tmp_path / "r"), cwd=tmp_path)
    assert bad.returncode == 1 and "corrupted" in bad.stderr and "Traceback" not in bad.stderr
    assert list((tmp_path / "r").iterdir()) == []  # nothing left behind


def crafted(path: Path, run_id: str, members: list[tarfile.TarInfo], manifest_files: dict) -> None:
    manifest = json.dumps({"format": "btc-laptop-agents run archive", "version": 1, "run_id": run_id,
                           "files": manifest_files}).encode()  # fmt: skip
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("MANIFEST.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "outside_run", "manifest_mismatch"])
def test_restore_refuses_unsafe_or_inconsistent_members(tmp_path: Path, kind: str) -> None:
    sha_x = hashlib.sha256(b"x").hexdigest()
    member = tarfile.TarInfo({"dotdot": "r1/../../evil", "absolute": "/tmp/evil", "outside_run": "other/evil"}
                             .get(kind, "r1/events.jsonl"))  # fmt: skip
    member.size = 1
    if kind == "symlink":
        member.type, member.linkname, member.size = tarfile.SYMTYPE, "/etc/passwd", 0
    files = {"events.jsonl": {"size": 1, "sha256": "0" * 64 if kind == "manifest_mismatch" else sha_x}}
    out = tmp_path / "evil.tar.gz"
    crafted(out, "r1", [member], files)
    result = tool("archive", "--restore", str(out), "--run-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert ("unsafe member" if kind != "manifest_mismatch" else "corrupted") in result.stderr
    assert not (tmp_path / "evil").exists() and not (tmp_path / "runs" / "r1").exists()
    assert list((tmp_path / "runs").iterdir()) == []


@pytest.mark.parametrize("run_id", ["latest", ".start.lock", ".latest.r1", "a b", ""])
def test_restore_refuses_a_run_id_that_is_no_run_folder_name(tmp_path: Path, run_id: str) -> None:
    """Found by an audit: an archive of a folder named `latest` restored as a real directory
    `runs/latest`, and every later start failed (the run dir's own entries are not run ids)."""
    member = tarfile.TarInfo(f"{run_id}/events.jsonl")
    member.size = 1
    out = tmp_path / "odd.tar.gz"
    crafted(out, run_id, [member], {"events.jsonl": {"size": 1, "sha256": hashlib.sha256(b"x").hexdigest()}})
    result = tool("archive", "--restore", str(out), "--run-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 1 and "unsafe run id" in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


def test_a_rebuilt_page_is_private_as_the_session_writes_it(tmp_path: Path, runs: Path) -> None:
    """Found by an audit: `tools.report` wrote report.html 0644 under a shell's umask."""
    loose = os.umask(0o022)
    try:
        page = tmp_path / "page.html"
        assert tool("report", str(runs / "latest"), "-o", str(page), cwd=tmp_path).returncode == 0
    finally:
        os.umask(loose)
    assert oct(page.stat().st_mode & 0o777) == "0o600"


def test_archive_refuses_a_running_session_and_non_run_folders(tmp_path: Path, runs: Path) -> None:
    fd = lock((runs / "latest").resolve())
    try:
        busy = tool("archive", str(runs / "latest"), cwd=tmp_path)
    finally:
        os.close(fd)
    assert busy.returncode == 1 and "running session" in busy.stderr
    assert tool("archive", str(tmp_path), cwd=tmp_path).returncode == 2
    assert tool("archive", "--restore", str(tmp_path / "none.tar.gz"), cwd=tmp_path).returncode == 2
    assert tool("archive", str(runs / "latest"), "-o", "x.zip", cwd=tmp_path).returncode == 2


# --- monitor -------------------------------------------------------------------------------------


def test_event_tail_waits_for_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"seq": 1, "kind": "heartbeat"}\n{"seq": 2, "ki')
    tail = EventTail(path)
    assert [r["seq"] for r in tail.read_new()[0]] == [1]
    with path.open("ab") as f:
        f.write(b'nd": "heartbeat"}\n')
    assert [r["seq"] for r in tail.read_new()[0]] == [2]
    path.write_bytes(b'{"seq": 1, "kind": "session.started"}\n')  # rewritten (a resume): read again
    records, restarted = tail.read_new()
    assert restarted and [r["seq"] for r in records] == [1]


def test_monitor_on_a_finished_run_prints_its_summary_and_exits(tmp_path: Path, runs: Path) -> None:
    report = json.loads((runs / "latest" / "final_report.json").read_text())
    for args in ([], ["--once"]):
        result = tool("monitor", *args, "--run-dir", str(runs), cwd=tmp_path, timeout=20)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[-1].startswith(
            f"session {report['run_id']} {report['status']}: stop_reason={report['stop_reason']}"
        )
        assert f"trades {report['trade_count']} " in result.stdout
    missing = tool("monitor", "--run-dir", str(tmp_path / "nothing"), cwd=tmp_path)
    assert (
        missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    )


def _start_session(tmp_path: Path, duration_min: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*SESSION, "--duration", str(duration_min), "--run-dir", str(tmp_path / "runs")],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _wait_for_events(tmp_path: Path, timeout: float = 20) -> None:
    events = tmp_path / "runs" / "latest" / "events.jsonl"
    deadline = time.monotonic() + timeout
    while not (events.exists() and events.stat().st_size > 0):
        assert time.monotonic() < deadline, "the session did not start"
        time.sleep(0.05)


def _start_monitor(tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tools.monitor", "--run-dir", str(tmp_path / "runs"), "--interval", "0.2"],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_monitor_beside_a_live_session_shows_progress_and_exits_when_it_ends(tmp_path: Path) -> None:
    session = _start_session(tmp_path, 0.15)  # 9 s
    try:
        _wait_for_events(tmp_path)
        monitor = _start_monitor(tmp_path)
        out, err = monitor.communicate(timeout=40)
        assert session.wait(timeout=20) == 0
    finally:
        session.kill()
    assert monitor.returncode == 0, err
    run_id = (tmp_path / "runs" / "latest").resolve().name
    progress = [line for line in out.splitlines() if line.startswith(f"{run_id}  elapsed ")]
    assert len({line.split()[2] for line in progress}) >= 4, out  # elapsed moved on, line by line
    assert all("equity " in line and "BTCUSDT" in line for line in progress)
    assert out.splitlines()[-1].startswith(f"session {run_id} ok: stop_reason=duration"), out
    report = json.loads((tmp_path / "runs" / "latest" / "final_report.json").read_text())
    assert f"trades {report['trade_count']} " in out.splitlines()[-1]
    assert sum(line.startswith("  ") and " fill " in line for line in out.splitlines()) == report["fills"]


@pytest.mark.slow
def test_monitor_says_when_the_session_process_died(tmp_path: Path) -> None:
    session = _start_session(tmp_path, 1)
    try:
        _wait_for_events(tmp_path)
        monitor = _start_monitor(tmp_path)
        time.sleep(1.5)
        session.send_signal(signal.SIGKILL)
        session.wait(timeout=10)
        out, err = monitor.communicate(timeout=20)
    finally:
        session.kill()
    assert monitor.returncode == 1, (out, err)
    assert "its process is gone and it never stopped" in out.splitlines()[-1]
    once = tool("monitor", "--once", "--run-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert once.returncode == 1 and "its process is gone" in once.stdout


@pytest.mark.slow
def test_monitor_says_when_a_live_sessions_heartbeats_stopped(tmp_path: Path) -> None:
    """Found by the cockpit audit: a session whose process is alive but no longer writes (stuck;
    SIGSTOP here, its metrics.csv last written 30 s ago, as the healthcheck reads it) was shown
    as running, its figures of then with no word; the healthcheck said unhealthy."""
    session = _start_session(tmp_path, 1)
    try:
        _wait_for_events(tmp_path)
        metrics = tmp_path / "runs" / "latest" / "metrics.csv"
        deadline = time.monotonic() + 20
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            assert time.monotonic() < deadline, "no heartbeat row"
            time.sleep(0.05)
        session.send_signal(signal.SIGSTOP)
        try:
            past = time.time() - 30
            os.utime(metrics, (past, past))
            once = tool("monitor", "--once", "--run-dir", str(tmp_path / "runs"), cwd=tmp_path)
            took = time.time() - past - 30
            health = tool("healthcheck", str(tmp_path / "runs" / "latest"), cwd=tmp_path)
        finally:
            session.send_signal(signal.SIGCONT)
    finally:
        session.kill()
        session.wait(timeout=10)
    assert health.returncode == 0  # (under its 60 s)
    run_id = (tmp_path / "runs" / "latest").resolve().name
    assert once.returncode == 0, once.stderr
    (line,) = [line for line in once.stdout.splitlines() if " elapsed " in line]
    said, stall = line.split("  NO HEARTBEAT for ")
    assert stall.endswith(" s: its process is alive but writes nothing (stuck?)"), line
    assert 30 <= int(stall.split()[0]) <= 30 + took + 1 and said.startswith(f"{run_id}  elapsed "), line


def test_monitor_on_a_dead_backtest_says_it_cannot_be_resumed(tmp_path: Path) -> None:
    """A backtest or replay keeps no checkpoint: the monitor no longer tells the user that the
    same command resumes it (found by an audit)."""
    from tools.monitor import SessionView

    backtest = SessionView(tmp_path / "backtest-20240101T000000Z-s42")
    assert "cannot be resumed: the next start closes it as abandoned" in backtest.dead_line()
    live = SessionView(tmp_path / "20240101T000000Z-s42")
    (live.run_path).mkdir()
    (live.run_path / "checkpoint.json").write_text("{}")
    assert "Starting the same command again resumes it" in live.dead_line()


def test_monitor_on_a_session_dead_before_its_first_checkpoint_says_it_cannot_be_resumed(
    tmp_path: Path,
) -> None:
    """Found by a docs audit: a live session killed before its first checkpoint is closed as
    abandoned by the next start (docs/START_HERE.md), but the monitor said the same command resumes it."""
    from tools.monitor import SessionView

    early = SessionView(tmp_path / "20240101T000000Z-s42")
    early.run_path.mkdir()
    line = early.dead_line()
    assert "resumes it" not in line
    assert "before its first checkpoint" in line and "closes it as abandoned" in line


def test_monitor_follows_the_unfinished_live_session_past_a_backtests_latest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by an audit: started beside a running session after a backtest in the same run dir
    had moved `latest`, the monitor showed the backtest's summary and exited. It follows the
    unfinished live session, saying so; a finished one leaves `latest` (the backtest) to it."""
    from tools.monitor import default_target

    runs = tmp_path / "runs"
    live = runs / "20240101T000000Z-s42"
    backtest = runs / "backtest-20240101T000100Z-s42"
    for folder in (live, backtest):
        folder.mkdir(parents=True)
        (folder / "events.jsonl").write_text("")
    (backtest / "final_report.json").write_text("{}\n")
    (runs / "latest").symlink_to(live.name, target_is_directory=True)
    assert default_target(runs) == runs / "latest"  # latest is the live session itself
    point_latest(runs, backtest.name)
    assert default_target(runs) == live
    assert f"following the live session {live.name} instead" in capsys.readouterr().err
    (live / "final_report.json").write_text("{}\n")  # it finished: the backtest is the newest run
    assert default_target(runs) == runs / "latest"


def test_the_monitor_shows_a_liquidations_size_and_prices(tmp_path: Path) -> None:
    """Found by an audit: it read fields the `liquidation` event does not have and showed
    `LIQUIDATION BTCUSDT  @ `."""
    from tools.monitor import SessionView

    view = SessionView(tmp_path / "run")
    record = {
        "seq": 9, "ts": "2026-01-01T00:00:00.000Z", "kind": "liquidation", "symbol": "BTCUSDT",
        "position_qty": -2.0, "mark_price": 40466.862000000005, "liquidation_price": 40466.862,
        "bankruptcy_price": 40867.5,
    }  # fmt: skip
    assert view.fold(record) == "LIQUIDATION BTCUSDT -2.0 at mark 40,466.9 (bankruptcy 40,867.5)"


def test_the_monitor_shows_a_symbol_fresh_again(tmp_path: Path) -> None:
    """Found by an audit: nothing said a stale symbol was fresh again, and the monitor showed
    `last: stale` to the session's end. The feed's `feed.fresh` is shown, with its symbols."""
    from tools.monitor import SessionView

    view = SessionView(tmp_path / "run")
    stale = {"seq": 9, "ts": "2026-01-01T00:00:00.000Z", "kind": "feed.stale", "reason": "no data for 10 s",
             "symbols": ["ETHUSDT"]}  # fmt: skip
    assert view.fold(stale) == "feed.stale ETHUSDT (no data for 10 s)" and view.feed_state == "stale"
    fresh = {**stale, "seq": 10, "kind": "feed.fresh", "reason": "websocket data"}
    assert view.fold(fresh) == "feed.fresh ETHUSDT (websocket data)" and view.feed_state == "fresh"


def test_the_monitor_shows_a_cross_of_opposite_strategies(tmp_path: Path) -> None:
    from tools.monitor import SessionView

    view = SessionView(tmp_path / "run")
    record = {
        "seq": 9, "ts": "2026-01-01T00:00:00.000Z", "kind": "position.crossed", "symbol": "BTCUSDT",
        "price": 59948.9, "reason": "breaker",
        "allocations": [["fast", 0.001, -0.012, 0.0], ["slow", -0.001, -0.1458, 0.0]],
    }  # fmt: skip
    assert (
        view.fold(record) == "crossed BTCUSDT fast +0.001, slow -0.001 @ 59,948.9 (no trade, no fee; breaker)"
    )


def test_the_monitors_positions_are_those_of_the_fills_not_of_the_last_heartbeat(
    backtest_runs: Path,
) -> None:
    """Found by the cockpit audit (a live session's `--once`): fills after the last heartbeat (in
    the same second) flipped the position, and the monitor showed `BTCUSDT -0.01 @ 60,020.1`, the
    heartbeat's stale size at the new long's entry price, a position that never was. The reference
    is the broker's own: the next heartbeat's `position_qty`, where no fill came in between."""
    from tools.monitor import SessionView

    run = next(p for p in sorted(backtest_runs.iterdir()) if p.is_dir() and not p.is_symlink())
    records = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    checked = 0
    for i, record in enumerate(records):
        if record["kind"] != "order.filled" or records[i + 1]["kind"] == "order.filled":
            continue  # the last of a run of fills
        after = next(r for r in records[i + 1 :] if r["kind"] in ("heartbeat", "order.filled"))
        if after["kind"] != "heartbeat" or not any(r["kind"] == "heartbeat" for r in records[:i]):
            continue
        view = SessionView(run)
        for r in records[: i + 1]:
            view.fold(r)
        ((_, qty, entry),) = view.open_positions()
        assert qty == pytest.approx(after["position_qty"], abs=1e-9), (record["seq"], view.position_text())
        assert (entry > 0) == (abs(after["position_qty"]) > 1e-9)
        checked += 1
    assert checked >= 3
