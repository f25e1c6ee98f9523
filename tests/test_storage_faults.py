"""Storage faults are an ordinary stop (actors/recording/storage.py).

A full disk for real: sessions on a small tmpfs the test mounts (root only; CI runs as root),
filled mid-position by a file the test writes until the disk is full; then the same start while it
is still full, and again once the file is deleted. In process: a failed checkpoint (the final
record then written), a backtest whose disk never recovers, and the whole-line files and the
quiet session.log under failing writes.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from loguru import logger

from actors import logs
from actors.config import load
from actors.console import UNRECORDED
from actors.plan import Plan
from actors.recording import checkpoint, storage
from actors.recording.storage import NOTE, LineFile, check_room
from actors.session import run_session
from tests.conftest import TRADES_OFTEN, cli_env, make_config, read_events, read_report
from tests.test_replay_backtest import write_bars
from tools.validate_session import validate

SETS = [
    "session.interval=1s", "strategy.fast_period=1", "strategy.slow_period=2",
    "risk.max_orders_per_minute=600", "risk.max_loss_pct=50", "risk.max_daily_drawdown_pct=50",
    "risk.max_consecutive_losses=0", "feed.tick_interval_s=0.1", "feed.mock_volatility_pct=300",
    "observability.progress=off", "state.checkpoint_interval_s=0.2",
]  # fmt: skip
MB = 1024 * 1024


@contextmanager
def _tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of `size_mb` mounted at `path` (unmounted after); skipped when that is not possible."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the suite as root)")
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _start(cwd: Path, disk: Path, *sets: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "actors.main", "--source", "mock", "--run-dir", str(disk / "runs"),
         "--duration", "1", *(a for s in (*SETS, *sets) for a in ("--set", s))],
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _wait_for(proc: subprocess.Popen[str], condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert proc.poll() is None, f"the session ended before {what}: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.01)


def _on_disk(events: Path, text: str) -> bool:
    try:
        return text in events.read_text()
    except FileNotFoundError:
        return False


def _fill(filler: Path, leave_mb: float = 0.0) -> None:
    """Write `filler` until the disk is full (or has only `leave_mb` free)."""
    with filler.open("wb", buffering=0) as f:
        if leave_mb:
            free = os.statvfs(filler).f_bavail * os.statvfs(filler).f_frsize
            f.write(b"\0" * max(0, free - int(leave_mb * MB)))
            return
        for chunk in (b"\0" * 65536, b"\0" * 4096):
            try:
                while True:
                    f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def _finish(proc: subprocess.Popen[str]) -> str:
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return err


@pytest.mark.slow
def test_a_full_disk_mid_position_stops_flat_and_the_next_start_resumes_the_session(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "disk", 16) as disk:
        runs = disk / "runs"
        proc = _start(tmp_path, disk, "session.disk_reserve_mb=6")
        try:
            _wait_for(proc, lambda: _on_disk(runs / "latest" / "events.jsonl", '"order.filled"'), "fill")
            run = (runs / "latest").resolve()
            _fill(disk / "filler")
        finally:
            err = _finish(proc)
        # exit 1, one clear line naming the path, the error and the free space; the flatten
        # (through the broker, in memory); no traceback, no temporary file, no final record
        assert proc.returncode == 1, err[-3000:]
        assert "Traceback" not in err and "Logging error" not in err
        lines = err.splitlines()
        faults = [line for line in lines if "storage fault: cannot write " in line and "ALERT" not in line]
        assert len(faults) == 1, err[-3000:]
        # and the alert a session ending on an error raises (a webhook would get it too)
        assert (
            sum("ALERT session_error: the session ends on an error (storage)" in line for line in lines) == 1
        )
        assert f"{run}/" in faults[0] and "(ENOSPC)" in faults[0] and "MB free on its disk" in faults[0]
        assert sum("storage low:" in line and "ALERT" not in line for line in err.splitlines()) <= 1
        assert "exit flatten_on_exit" in err  # the open position closed
        # in memory only, and its line says so (the next start flattens again, under the same id)
        at = lines.index(faults[0])
        after = [line for line in lines[at:] if line.startswith(("FILL", "CLOSED"))]
        assert len(after) == 2 and "flatten_on_exit" in after[1], err[-3000:]
        assert all(line.endswith(UNRECORDED) for line in after), after
        assert not any(line.endswith(UNRECORDED) for line in lines[:at]), err[-3000:]
        assert "stop_reason=storage" in err and "report=not written" in err
        assert _temp_files(disk) == []
        assert not (run / "final_report.json").exists()
        note = json.loads((run / NOTE).read_text())
        assert (note["where"], note["error"]) == ("storage", "ENOSPC")
        for line in (run / "events.jsonl").read_text().splitlines(keepends=True):
            assert line.endswith("\n")
            json.loads(line)  # whole lines: the failed writes were cut back

        # a start while the disk is still full: one line with the path, exit 2, nothing touched
        before = sorted(p.name for p in runs.iterdir())
        full = subprocess.run(
            _start_args(disk, "session.disk_reserve_mb=6"),
            cwd=tmp_path,
            env=cli_env(),
            capture_output=True,
            text=True,
        )
        assert full.returncode == 2, full.stderr[-3000:]
        assert full.stderr.strip().splitlines() == [
            f"error: not enough free space to start a session in {runs}: 0.0 MB free on its disk, under "
            "session.disk_reserve_mb = 6 MB (free some space, or lower it)"
        ]
        assert sorted(p.name for p in runs.iterdir()) == before

        # space freed: the next start resumes the session, records the fault, and ends it flat
        (disk / "filler").unlink()
        proc = _start(tmp_path, disk, "session.disk_reserve_mb=6")
        try:
            _wait_for(proc, lambda: _on_disk(run / "events.jsonl", "recorded at the resume"), "resume")
            proc.send_signal(signal.SIGTERM)
        finally:
            err = _finish(proc)
        assert proc.returncode == 0, err[-3000:]
        report = read_report(run)
        assert (report["status"], report["stop_reason"], report["open_positions"]) == ("ok", "signal", [])
        assert report["resumes"] == 1 and report["storage_faults"] == 1 and report["errors"] >= 1
        assert any("No space left on device" in m for m in report["error_messages"])
        (fault,) = [e for e in read_events(run) if e["kind"] == "error"]
        assert (fault["where"], fault["error"]) == ("storage", "ENOSPC")
        assert validate(run) == []
        assert _temp_files(disk) == [] and not (run / NOTE).exists()


def _start_args(disk: Path, *sets: str) -> list[str]:
    return [sys.executable, "-m", "actors.main", "--source", "mock", "--run-dir", str(disk / "runs"),
            "--duration", "1", *(a for s in (*SETS, *sets) for a in ("--set", s))]  # fmt: skip


@pytest.mark.slow
def test_free_space_under_the_reserve_stops_the_session_with_its_report(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "disk", 24) as disk:
        runs = disk / "runs"
        proc = _start(tmp_path, disk, "session.disk_reserve_mb=10")
        try:
            _wait_for(proc, lambda: _on_disk(runs / "latest" / "events.jsonl", '"order.filled"'), "fill")
            run = (runs / "latest").resolve()
            _fill(disk / "filler", leave_mb=8)  # under the reserve, room for the final record
        finally:
            err = _finish(proc)
        assert proc.returncode == 1, err[-3000:]
        assert "Traceback" not in err and "storage fault" not in err
        (low,) = [line for line in err.splitlines() if "storage low:" in line and "ALERT" not in line]
        assert f"on the disk of {run}" in low and "under session.disk_reserve_mb = 10 MB" in low
        report = read_report(run)
        assert (report["status"], report["stop_reason"], report["open_positions"]) == ("error", "storage", [])
        assert report["storage_faults"] == 1
        assert validate(run) == []
        assert (run / "report.html").exists() and not (run / NOTE).exists()
        assert _temp_files(disk) == []


# --- in process ------------------------------------------------------------------------------------------


async def test_a_failed_checkpoint_stops_the_session_and_the_record_is_written_when_there_is_room(
    tmp_path: Path, autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = checkpoint.write

    def write(folder: Path, state: dict[str, Any]) -> None:
        if state["parts"]["account"]["position_qty"]:  # the first checkpoint holding a position
            (folder / "checkpoint.json.tmp").write_text("{")  # a torn temporary file
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(folder, state)

    monkeypatch.setattr(checkpoint, "write", write)
    config = make_config(tmp_path, *TRADES_OFTEN, duration_min=10)
    result = await run_session(config, handle_signals=False, progress_mode="off")
    report = read_report(result.run_path)
    assert (report["status"], report["stop_reason"], report["open_positions"]) == ("error", "storage", [])
    assert result.written and result.exit_code == 1 and result.storage is not None
    assert report["storage_faults"] == 1 and report["elapsed_s"] < 600
    (fault,) = [e for e in read_events(result.run_path) if e["kind"] == "error"]
    assert fault["where"] == "storage" and fault["error"] == "ENOSPC"
    assert fault["path"].endswith("checkpoint.json.tmp")
    assert _temp_files(result.run_path) == [] and not (result.run_path / NOTE).exists()
    assert validate(result.run_path) == []


async def test_a_backtest_on_a_disk_that_never_recovers_leaves_its_note_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write(_fd: int, _data: Any) -> int:
        raise OSError(errno.EIO, "Input/output error")

    # at the system call the run's files write through (LineFile.flush): a method of a compiled
    # class cannot be replaced (nox -s compiled runs this test too)
    monkeypatch.setattr(storage.os, "write", write)
    data = tmp_path / "bars.csv"
    write_bars(data, 3000)
    config = load(
        None, {}, [f"session.run_dir={tmp_path / 'runs'}", "session.interval=1m", *TRADES_OFTEN[1:]]
    )
    result = await run_session(config, plan=Plan(mode="backtest", data=str(data)), handle_signals=False)
    assert (result.report["status"], result.report["stop_reason"]) == ("error", "storage")
    assert not result.written and result.exit_code == 1
    assert not (result.run_path / "final_report.json").exists()
    note = json.loads((result.run_path / NOTE).read_text())
    assert (note["error"], note["path"]) == ("EIO", str(result.run_path / "events.jsonl"))
    assert _temp_files(result.run_path) == []


def test_a_failed_write_leaves_whole_lines_and_a_later_one_no_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = LineFile(tmp_path / "events.jsonl")
    lines.write("one\n")
    lines.flush()
    real_write = os.write

    def half_then_full(fd: int, data: Any) -> int:
        if len(data) > 4:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    lines.write("two\n")
    lines.write("three\n")
    monkeypatch.setattr(storage.os, "write", half_then_full)
    with pytest.raises(OSError):
        lines.flush()
    assert (tmp_path / "events.jsonl").read_text() == "one\n"  # cut back to the last whole line
    monkeypatch.setattr(storage.os, "write", real_write)
    lines.write("four\n")
    lines.flush()
    lines.close()
    assert (tmp_path / "events.jsonl").read_text() == "one\ntwo\nthree\nfour\n"


def test_a_session_log_that_cannot_be_written_goes_quiet(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    class Full:
        def write(self, _text: str) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    logs.configure("ERROR")
    sink_id, sink = logs.add_run_log(tmp_path)
    try:
        sink._file = Full()  # type: ignore[assignment]
        logger.info("one")
        logger.info("two")
    finally:
        logger.remove(sink_id)
        logs.configure()
    assert sink.fault is not None and sink.fault[0].errno == errno.ENOSPC
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err


def test_the_start_check_keeps_the_reserve(tmp_path: Path) -> None:
    check_room(tmp_path / "runs" / "not yet", 0)  # 0: off
    check_room(tmp_path / "runs" / "not yet", 1)  # the nearest folder that exists is measured
    # found by an audit: a run dir under /proc was refused for "0.0 MB free on its disk"; a disk
    # of no size is not measured (the start then says it cannot use the folder)
    if Path("/proc/self").exists():
        assert storage.free_mb(Path("/proc/nope")) is None
        check_room(Path("/proc/nope"), 50)
    with pytest.raises(storage.StorageFault, match=r"not enough free space to start a session in .*MB free"):
        check_room(tmp_path, 1e12)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (b"", b""),
        (b'{"a":1}\n', b'{"a":1}\n'),
        (b'{"a":1}\n{"b":', b'{"a":1}\n'),  # a line cut by a kill in its write
        (b'{"b":', b""),
        (b'{"a":1}\n' + b"x" * 70_000, b'{"a":1}\n'),  # a torn line longer than one read
    ],
)
def test_a_line_file_opened_on_a_torn_last_line_cuts_it(tmp_path: Path, before: bytes, after: bytes) -> None:
    """Found by a review: a resumed session appended its first market.jsonl line to the line its
    killed predecessor had torn, one garbled line in the middle of the file (its replay and its
    report page failed on it). The file is cut back to its last whole line when opened, so every
    line written after is whole."""
    path = tmp_path / "market.jsonl"
    path.write_bytes(before)
    lines = LineFile(path)
    assert lines.size == len(after) and path.read_bytes() == after
    lines.write('{"c":3}\n')
    lines.flush()
    lines.close()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        json.loads(line) for line in (after + b'{"c":3}\n').decode().splitlines()
    ]


async def test_a_noted_fault_stays_noted_until_a_checkpoint_holds_its_resumed_error(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Found by a review: the resuming process reset the fault note as it opened the folder, before
    the `error` event it records for the fault was checkpointed: killed in between, the next
    resume found no fault, and the run's report said `storage_faults 0`. The note is reset only by
    the first checkpoint after the resume (which holds that event)."""
    from actors.recording.recorder import Recorder
    from actors.recording.storage import FaultNote, StorageFault

    result = await run_session(make_config(tmp_path), handle_signals=False, progress_mode="off")
    run = result.run_path
    for name in ("final_report.json", "metrics.json", "report.html"):
        (run / name).unlink()
    note = FaultNote(run)
    note.keep()
    assert note.write(StorageFault(str(run / "events.jsonl"), "ENOSPC", "No space left on device", 0.0, 1.0))
    loaded = checkpoint.load(run)
    recorder = Recorder(run, resume_seq=loaded.state["seq"])
    try:
        assert recorder.previous_fault is not None and recorder.previous_fault["error"] == "ENOSPC"
        assert FaultNote(run).read() == recorder.previous_fault  # a kill now: the next resume sees it
        recorder.write_checkpoint(loaded.state)
        assert FaultNote(run).read() is None and (run / NOTE).exists()  # the page kept for the next
    finally:
        recorder.finish()  # closes its files and its session.log sink


async def test_a_resume_over_a_line_torn_inside_a_character_drops_it(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A kill in the write of a line holding non-ASCII text (an error message, say) may cut it
    inside a UTF-8 character: the resume drops it as a torn line, as it does any other (read as
    text, it raised UnicodeDecodeError and the session could not resume)."""
    from actors.recording.recorder import Recorder

    result = await run_session(make_config(tmp_path), handle_signals=False, progress_mode="off")
    run = result.run_path
    for name in ("final_report.json", "metrics.json", "report.html"):
        (run / name).unlink()
    loaded = checkpoint.load(run)
    torn = json.dumps({"seq": 10**6, "kind": "error", "message": "d\u00e9j\u00e0 vu"}, ensure_ascii=False)
    data = torn.encode("utf-8")
    cut = data.index("\u00e9".encode()) + 1  # inside the two bytes of the é
    with (run / "events.jsonl").open("ab") as f:
        f.write(data[:cut])
    recorder = Recorder(run, resume_seq=loaded.state["seq"])
    try:
        assert recorder.discarded_events >= 1 and recorder.seq == loaded.state["seq"]
    finally:
        recorder.finish()
    for line in (run / "events.jsonl").read_bytes().splitlines():
        json.loads(line.decode("utf-8"))  # whole lines only


def test_a_fill_is_on_disk_before_the_console_prints_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by an audit: a live session printed a FILL line while its event waited in the
    recorder's buffer; killed before the next flush, the fill was in no record (no UNDONE at the
    resume) and its id went to another fill. Each line the console prints is of an event already
    written to events.jsonl (a kill -9 after an os.write loses nothing)."""
    import actors.console
    from actors.recording.recorder import Recorder
    from protocols.messages import Event

    run = tmp_path / "run"
    run.mkdir()
    recorder = Recorder(run)
    recorder.console.echo = True  # a live session's console (not batched)
    seen_on_disk: list[bool] = []

    def printed(line: str) -> None:  # what was on disk when the line was printed
        seen_on_disk.append('"fill_id":"f1"' in (run / "events.jsonl").read_text().replace(" ", ""))

    monkeypatch.setattr(actors.console, "_print", printed)
    try:
        fields = {
            "order_id": "o1", "fill_id": "f1", "side": "buy", "qty": 0.01, "fill_price": 60_000.0,
            "requested_price": 60_000.0, "bid": 59_999.9, "ask": 60_000.0, "liquidity": "taker",
            "fee": 0.36, "fee_bps": 6.0, "slippage_bps": 0.0, "latency_ms": 0.0, "realized_pnl": 0.0,
            "position_qty": 0.01, "symbol": "BTCUSDT", "strategy_id": "s",
            "allocations": [["s", 0.01, 0.0, 0.36]],
        }  # fmt: skip
        recorder.write(Event(1_700_000_000.0, "order.filled", fields))
        assert seen_on_disk == [True]
    finally:  # its files and log closed (no session to finish: no report to write)
        for file in recorder._files:
            file.close()
        recorder._close_run_log()
