"""Real session processes through the CLI: duration, kill switch, SIGTERM, SIGINT, exit codes."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from protocols.records import REPORT_FIELDS
from tests.conftest import REPO, TRADES_OFTEN, cli_env, read_events


def _start(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    sets = [a for s in TRADES_OFTEN for a in ("--set", s)]
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "actors.main",
            "--config",
            str(REPO / "config" / "live.toml"),
            "--source",
            "mock",
            "--run-dir",
            str(tmp_path / "runs"),
            *sets,
            *args,
        ],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _report(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "runs" / "latest" / "final_report.json").read_text())


def _stopped_at(tmp_path: Path) -> float:
    """Wall time of the session.stopped event (the stop, flatten and report are done by then)."""
    stopped = next(e for e in read_events(tmp_path / "runs" / "latest") if e["kind"] == "session.stopped")
    return datetime.fromisoformat(stopped["ts"].replace("Z", "+00:00")).timestamp()


def _wait_started(tmp_path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    events = tmp_path / "runs" / "latest" / "events.jsonl"
    while time.monotonic() < deadline:
        if events.exists() and "heartbeat" in events.read_text():
            return
        time.sleep(0.05)
    raise AssertionError("session did not start")


@pytest.mark.slow
def test_timed_session_stops_by_itself(tmp_path: Path) -> None:
    proc = _start(tmp_path, "--duration", "0.1")  # 6 s
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    report = _report(tmp_path)
    assert report["stop_reason"] == "duration"
    assert 6.0 <= report["elapsed_s"] <= 7.0
    assert report["open_positions"] == []
    assert set(REPORT_FIELDS) <= set(report)
    events = read_events(tmp_path / "runs" / "latest")
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    rows = (tmp_path / "runs" / "latest" / "metrics.csv").read_text().splitlines()[1:]
    assert len(rows) == sum(e["kind"] == "heartbeat" for e in events) >= 6
    assert "elapsed" in err  # live progress on stderr


def test_kill_switch_file_stops_within_a_second(tmp_path: Path) -> None:
    proc = _start(tmp_path, "--duration", "5")
    _wait_started(tmp_path)
    touched = time.time()
    (tmp_path / "kill.txt").touch()
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    report = _report(tmp_path)
    assert report["stop_reason"] == "kill_switch"
    assert report["open_positions"] == []
    assert _stopped_at(tmp_path) - touched < 1.0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_flat(tmp_path: Path, signum: signal.Signals) -> None:
    proc = _start(tmp_path, "--duration", "5")
    _wait_started(tmp_path)
    sent = time.time()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert _stopped_at(tmp_path) - sent < 1.0
    assert proc.returncode == 0, err
    report = _report(tmp_path)
    assert report["stop_reason"] == "signal"
    assert report["status"] == "ok"
    assert report["open_positions"] == []
    assert "Traceback" not in err


def _opened(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open (its start waits on that lock from then on)."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if Path(os.readlink(fd)) == path:
                return True
        except OSError:
            continue
    return False


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_start_up_exits_at_once_without_a_traceback(
    tmp_path: Path, signum: signal.Signals, code: int
) -> None:
    """A signal while the start waits for another start's lock (README, Stopping a session): exit
    at once, 128 + the signal, one process's worth of nothing written. Found by an audit: Ctrl-C
    there printed a KeyboardInterrupt traceback and the process died of SIGINT."""
    run_dir = tmp_path / "runs"
    run_dir.mkdir()
    lock = run_dir / ".start.lock"
    with lock.open("w") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # another start deciding
        proc = _start(tmp_path, "--duration", "1")
        try:
            deadline = time.monotonic() + 30
            while not _opened(proc.pid, lock):
                assert proc.poll() is None and time.monotonic() < deadline, "the start never waited"
                time.sleep(0.01)
            sent = time.monotonic()
            proc.send_signal(signum)
            _, err = proc.communicate(timeout=10)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == code, err
    assert took < 5
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert [p.name for p in run_dir.iterdir()] == [".start.lock"]  # no run folder


def _stopped_flat_on_a_signal(tmp_path: Path, proc: subprocess.Popen[Any]) -> dict[str, Any]:
    """The session exited 0, stopped by its signal, flat, its run valid; its last event."""
    from tools.validate_session import validate

    assert proc.returncode == 0
    run = (tmp_path / "runs" / "latest").resolve()
    report = _report(tmp_path)
    assert (report["status"], report["stop_reason"], report["open_positions"]) == ("ok", "signal", [])
    assert validate(run) == []
    return read_events(run)[-1]


def _holding(tmp_path: Path, proc: subprocess.Popen[Any]) -> None:
    """Until a fill is on disk (from then on the session may hold a position)."""
    events = tmp_path / "runs" / "latest" / "events.jsonl"
    deadline = time.monotonic() + 30
    while not (events.exists() and '"order.filled"' in events.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "no fill"
        time.sleep(0.02)


def test_a_console_gone_before_the_stop_still_ends_flat_with_the_report(tmp_path: Path) -> None:
    """`... 2>&1 | tee out` stopped by one Ctrl-C (the terminal sends it to tee too), a terminal
    hung up, a log reader that died: the session's next console line fails (EPIPE, EIO). Found by
    an audit: that line raised out of the recorder or the progress panel, and the session died
    without its flatten or its report (exit 1), holding its position. Here the pipe's reader goes
    once a fill is on disk, then SIGTERM: exit 0, flat, the report written, the folder valid."""

    proc = _start(tmp_path, "--duration", "5", "--set", "observability.progress=plain")
    try:
        _holding(tmp_path, proc)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader is gone: the next line the session writes fails (EPIPE)
        proc.stderr.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stopped = _stopped_flat_on_a_signal(tmp_path, proc)
    assert stopped["kind"] == "session.stopped"


def test_the_terminal_closing_stops_the_session_flat_with_its_report(tmp_path: Path) -> None:
    """A session on a terminal (a pty, its controlling terminal, the panel drawn by rich) whose
    terminal hangs up: an ssh connection lost, its window closed. Found by an audit: SIGHUP's
    default action ended the process as a SIGKILL would, holding its position, no report (exit
    -1). It stops as a SIGTERM does: flat, its report, exit 0 (the dead terminal let go)."""
    import termios

    master, slave = os.openpty()

    def controlling_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        # SIGHUP's default, whatever the test runner has (under nohup it is ignored, and a session
        # keeps an ignored SIGHUP ignored, as documented: the hang-up would then go unheard)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)

    sets = [a for s in TRADES_OFTEN for a in ("--set", s)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "actors.main", "--config", str(REPO / "config" / "live.toml"), "--source",
         "mock", "--run-dir", str(tmp_path / "runs"), *sets, "--duration", "5"],
        cwd=tmp_path, env=cli_env(), stdin=slave, stdout=slave, stderr=slave,
        start_new_session=True, preexec_fn=controlling_terminal,
    )  # fmt: skip
    os.close(slave)
    drained = threading.Thread(target=_drain, args=(master,), daemon=True)
    drained.start()
    try:
        _holding(tmp_path, proc)
        os.close(master)  # the terminal hangs up: SIGHUP to its session's foreground processes
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stopped = _stopped_flat_on_a_signal(tmp_path, proc)
    assert (stopped["kind"], stopped["detail"]) == ("session.stopped", "SIGHUP")


def _drain(fd: int) -> None:
    """Read a pty's output until it closes (a terminal that is read keeps its writer going)."""
    with contextlib.suppress(OSError):
        while os.read(fd, 65536):
            pass


def test_under_nohup_a_hangup_is_ignored(tmp_path: Path) -> None:
    """`nohup` (SIGHUP ignored from the start): the session is meant to outlive its terminal and
    does; a SIGTERM then stops it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "actors.main", "--config", str(REPO / "config" / "live.toml"), "--source",
         "mock", "--run-dir", str(tmp_path / "runs"), *[a for s in TRADES_OFTEN for a in ("--set", s)],
         "--duration", "5"],
        cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),
    )  # fmt: skip
    try:
        _wait_started(tmp_path)
        proc.send_signal(signal.SIGHUP)
        events = tmp_path / "runs" / "latest" / "events.jsonl"
        seen = events.read_text().count('"heartbeat"')
        deadline = time.monotonic() + 30
        while events.read_text().count('"heartbeat"') < seen + 2:  # it ran on past the SIGHUP
            assert proc.poll() is None and time.monotonic() < deadline, "stopped by the SIGHUP"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    stopped = read_events(tmp_path / "runs" / "latest")[-1]
    assert (stopped["kind"], stopped["stop_reason"], stopped["detail"]) == (
        "session.stopped",
        "signal",
        "SIGTERM",
    )


def _signal_mask(pid: int, field: str) -> int:
    """The process's `SigIgn` or `SigCgt` mask (/proc/PID/status): bit n - 1 is signal n."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith(field + ":")).split()[1], 16)


def test_a_session_started_with_sigint_ignored_leaves_it_ignored(tmp_path: Path) -> None:
    """A background job of a non-interactive shell (`python -m actors.main ... &` in a script)
    starts with SIGINT ignored, so that a Ctrl-C meant for the script's foreground leaves it
    running; Python leaves such a SIGINT ignored. Found by an audit: the session put its handler
    over it and a Ctrl-C stopped it, where SIGHUP under nohup stayed ignored. Now the running
    session still has SIGINT ignored (read from /proc, not timed); a SIGINT sent, then a SIGTERM:
    the SIGTERM stops it (a handled SIGINT would have come first: its number is lower)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "actors.main", "--config", str(REPO / "config" / "live.toml"), "--source",
         "mock", "--run-dir", str(tmp_path / "runs"), *[a for s in TRADES_OFTEN for a in ("--set", s)],
         "--duration", "5"],
        cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        _wait_started(tmp_path)
        ignored, caught = _signal_mask(proc.pid, "SigIgn"), _signal_mask(proc.pid, "SigCgt")
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert ignored >> (signal.SIGINT - 1) & 1 and not caught >> (signal.SIGINT - 1) & 1
    assert caught >> (signal.SIGTERM - 1) & 1  # SIGTERM is the session's
    assert proc.returncode == 0, err
    assert "SIGINT" not in err
    stopped = read_events(tmp_path / "runs" / "latest")[-1]
    assert (stopped["kind"], stopped["stop_reason"], stopped["detail"]) == (
        "session.stopped",
        "signal",
        "SIGTERM",
    )


def test_nox_session_waits_for_the_session_to_stop_after_a_ctrl_c() -> None:
    """`nox -s session` (the README's first command): a Ctrl-C reaches nox and the session alike
    (one process group); nox, by default, then sends the session SIGTERM 0.3 s later and SIGKILL
    0.2 s after that, killing a stop still writing its report (the next start resumed the session
    and traded on). Its `s.run` of the CLI must wait (`interrupt_timeout=None`: nox's
    `shutdown_process` then waits for the child without a bound; the session bounds its own stop).
    Read from noxfile.py's syntax tree: nox is not among the test dependencies."""
    import ast

    tree = ast.parse((REPO / "noxfile.py").read_text())
    session = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "session")
    runs = [
        call
        for call in ast.walk(session)
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "run"
    ]
    cli = [c for c in runs if any(isinstance(a, ast.Constant) and a.value == "actors.main" for a in c.args)]
    assert len(cli) == 1, ast.dump(session)
    timeout = {k.arg: k.value for k in cli[0].keywords}.get("interrupt_timeout")
    assert isinstance(timeout, ast.Constant) and timeout.value is None, "nox would SIGKILL the stop"
