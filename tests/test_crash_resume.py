"""kill -9 at random instants, restart each time: the finished session is whole and consistent.

A session killed after its first checkpoint is resumed by the next start; one killed before it (no
checkpoint to restore) is closed as abandoned by the next start, which then starts a new session
(actors/recording/abandon.py). Real processes through the CLI, real SIGKILLs, on short sessions.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from actors.config import to_dict
from actors.lock import SessionLock
from actors.plan import PlanError, check_resume_config, find_resumable, settle_latest
from actors.recording import checkpoint
from actors.recording.abandon import close_abandoned, close_and_warn, read_events
from actors.recording.html_report import build_report
from actors.recording.recorder import DISCARDED_FILE
from protocols.records import iso
from tests.conftest import cli_env, make_config, read_report, run_cli, run_main
from tests.conftest import read_events as read_events_file
from tools.validate_session import validate

SETS = [
    "session.interval=1s", "strategy.fast_period=1", "strategy.slow_period=2",
    "risk.max_orders_per_minute=600", "risk.max_loss_pct=50", "risk.max_daily_drawdown_pct=50",
    "risk.max_consecutive_losses=0", "feed.tick_interval_s=0.1", "feed.mock_volatility_pct=300",
    "observability.progress=off", "state.checkpoint_interval_s=0.2",
]  # fmt: skip
ARGS = ["--source", "mock", *(a for s in SETS for a in ("--set", s))]


def _start(tmp_path: Path, duration_min: float) -> subprocess.Popen[bytes]:
    """A default start (no --fresh, no --resume): it resumes, closes or starts what it finds."""
    return subprocess.Popen(
        [sys.executable, "-m", "actors.main", "--run-dir", str(tmp_path / "runs"), "--duration", str(duration_min), *ARGS],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.communicate()


def _wait_until(condition: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Poll `condition` until it holds (True), or the process ended or the time ran out (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def _checkpointed(run: Path, kind: str, pid: int | None = None) -> bool:
    """Whether an event of this kind (a session.resumed by process `pid`) is on disk and in the
    newest checkpoint, so that no resume can discard it any more."""
    try:
        records, _ = read_events(run / "events.jsonl")
        saved = checkpoint.load(run).state["seq"]
    except (FileNotFoundError, checkpoint.CheckpointError):
        return False
    return any(r["kind"] == kind and r.get("pid", pid) == pid and r["seq"] <= saved for r in records)


def _folders(tmp_path: Path) -> list[Path]:
    """The run folders (not `latest`, nor the start lock `.start.lock`, a file that comes and goes:
    a kill that left it made a listing hold it, and reading events.jsonl under it failed)."""
    runs = tmp_path / "runs"
    if not runs.is_dir():
        return []
    return sorted(
        p for p in runs.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
    )


def _all_folders_closed_and_consistent(tmp_path: Path) -> list[dict[str, Any]]:
    """Every run folder is finished and validates, except one whose process recorded nothing
    (killed before its first event reached the disk): the reports, oldest first."""
    reports = []
    for run in _folders(tmp_path):
        if not (run / "final_report.json").exists():
            records, _ = read_events(run / "events.jsonl") if (run / "events.jsonl").exists() else ([], 0)
            assert not any(r["kind"] == "session.started" for r in records), f"{run.name} left unfinished"
            continue
        assert validate(run) == [], run.name
        reports.append(read_report(run))
    return reports


CAP_MIN = 1.0  # never reached: the session is stopped by SIGTERM once the kills are done


def _page(path: Path) -> bytes:
    """A report.html without the time it was written."""
    return re.sub(rb"Written [0-9-]+ [0-9:]+ UTC", b"Written", path.read_bytes())


def _ts(iso_ts: str) -> float:
    return datetime.fromisoformat(iso_ts.replace("Z", "+00:00")).timestamp()


@pytest.mark.slow
def test_sigkill_at_random_instants_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """10 kills of one session once it holds a position (the strategy is always in the market
    from its first fill on): half at random instants after a start (some during the start-up, the
    reload or the resume), half at random instants once the restarted session has resumed (so
    every start after the first resumes it); the last start is stopped by SIGTERM."""
    rng = random.Random(20261124)
    latest = tmp_path / "runs" / "latest"
    proc = _start(tmp_path, CAP_MIN)
    assert _wait_until(lambda: _checkpointed(latest, "order.filled"), proc, 30), "no fill"
    run = latest.resolve()
    for i in range(10):
        if i % 2:
            assert _wait_until(partial(_checkpointed, run, "session.resumed", proc.pid), proc, 30)
        time.sleep(rng.uniform(0.02, 0.3) if i % 2 else rng.uniform(0.05, 0.9))
        assert proc.poll() is None, "the session ended before it was killed"
        _kill(proc)
        proc = _start(tmp_path, CAP_MIN)
    assert _wait_until(partial(_checkpointed, run, "session.resumed", proc.pid), proc, 30)
    time.sleep(rng.uniform(0.02, 0.3))
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert _folders(tmp_path) == [run]  # one session, resumed
    report = read_report(run)
    assert (report["status"], report["stop_reason"]) == ("ok", "signal")
    events = read_events_file(run)
    assert report["resumes"] == sum(e["kind"] == "session.resumed" for e in events) >= 5
    assert validate(run) == []
    assert report["open_positions"] == []
    assert report["fills"] > 0
    # its page, built from the records the last start reloaded and then wrote, is the file's
    assert _page(run / "report.html") == _page(build_report(run, tmp_path / "rebuilt.html"))
    # the session's clock runs from its first start, downtime included (its planned end is kept)
    downtime = sum(e["downtime_s"] for e in events if e["kind"] == "session.resumed")
    wall = _ts(report["ended_at"]) - _ts(report["started_at"])
    assert report["elapsed_s"] == pytest.approx(wall, abs=0.01) and wall > downtime > 0
    # equity is continuous: every resume restores exactly the account the logged fills add up to
    position = realized = fees = 0.0
    for e in events:
        if e["kind"] == "order.filled":
            position += e["qty"] if e["side"] == "buy" else -e["qty"]
            realized += e["realized_pnl"]
            fees += e["fee"]
        elif e["kind"] == "session.resumed":
            assert e["downtime_s"] > 0
            assert e["position_qty"] == pytest.approx(position, abs=1e-9)
            assert e["realized_pnl"] == pytest.approx(realized, abs=1e-6)
            assert e["fees_paid"] == pytest.approx(fees, abs=1e-6)
    assert report["status"] == "ok"


@pytest.mark.slow
def test_sigkill_early_after_each_start_never_blocks_the_next(tmp_path: Path) -> None:
    """10 kills, each 20-500 ms after a start (most before the first checkpoint, many before the
    run folder exists); then a start without flags runs its session to the end."""
    rng = random.Random(101)
    for _ in range(10):
        proc = _start(tmp_path, 0.05)
        time.sleep(rng.uniform(0.02, 0.5))
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]  # no start refused
        _kill(proc)
    proc = _start(tmp_path, 0.05)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    latest = (tmp_path / "runs" / "latest").resolve()
    assert validate(latest) == []
    assert read_report(latest)["status"] == "ok"
    _all_folders_closed_and_consistent(tmp_path)


@pytest.mark.slow
def test_sigkill_as_the_run_folder_appears_never_blocks_the_next(tmp_path: Path) -> None:
    """Kills aimed at the instants between a new run folder's events.jsonl and its first
    checkpoint (as the file appears, then as its first event reaches the disk, in turn): each next
    start closes what it finds (abandoned) or resumes it, and goes on."""
    runs = tmp_path / "runs"
    for i in range(6):
        before = set(_folders(tmp_path))
        proc = _start(tmp_path, 0.05)

        def appeared(old: set[Path] = before, size: int = i % 2, pid: int = proc.pid) -> bool:
            new = [p / "events.jsonl" for p in set(_folders(tmp_path)) - old]
            # (or it resumed the session found: the kill before this one came after a checkpoint)
            return any(f.exists() and f.stat().st_size >= size for f in new) or any(
                _checkpointed(p, "session.resumed", pid) for p in old
            )

        _wait_until(appeared, proc, 5)
        assert proc.poll() is None or proc.returncode == 0, proc.communicate()[1].decode()[-2000:]
        _kill(proc)
    proc = _start(tmp_path, 0.05)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert validate((runs / "latest").resolve()) == []
    reports = _all_folders_closed_and_consistent(tmp_path)
    assert {r["status"] for r in reports} <= {"ok", "abandoned"}


def _kill_after_checkpoints(tmp_path: Path, duration_min: float = 0.05) -> Path:
    """Start a session, kill -9 it once both checkpoint generations exist; its run folder.

    The process is stopped (SIGSTOP) before it is killed, and let go again if that caught it
    between the two renames of a checkpoint write (the newest then missing for an instant)."""
    proc = _start(tmp_path, duration_min)
    run = tmp_path / "runs" / "latest"
    both = lambda: (run / checkpoint.PREVIOUS).exists() and (run / checkpoint.NEWEST).exists()  # noqa: E731
    assert _wait_until(both, proc, 30), "no checkpoints written"
    time.sleep(0.3)
    for _ in range(100):
        proc.send_signal(signal.SIGSTOP)
        if both():
            break
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.01)
    _kill(proc)
    return run.resolve()


def _restart_after_the_planned_end(tmp_path: Path, run: Path) -> str:
    """A plain start of a 0.1-minute session, half a second after the planned end (6 s) of the
    one killed in `run`; it must exit 0. Its stderr."""
    (started,) = [e for e in read_events_file(run) if e["kind"] == "session.started"]
    time.sleep(max(0.0, _ts(started["ts"]) + 6.5 - time.time()))
    proc = _start(tmp_path, 0.1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    return err.decode()


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_newest_checkpoint_resumes_from_the_previous_loudly(tmp_path: Path, damage: str) -> None:
    run = _kill_after_checkpoints(tmp_path, 0.1)
    newest = run / "checkpoint.json"
    data = newest.read_bytes()
    newest.write_bytes(
        data[: len(data) // 2] if damage == "truncated" else data.replace(b'"seq"', b'"sez"', 1)
    )
    # the restart comes after the first start's planned end (6 s), so that a resume keeping that
    # end (downtime counts against it) stops at once, and one that planned 6 s anew would run 6 s
    # more: a margin of seconds for a loaded machine, where a restart before the end left 1 s
    (started,) = [e for e in read_events_file(run) if e["kind"] == "session.started"]
    err = _restart_after_the_planned_end(tmp_path, run)
    assert "checkpoint alert" in err
    events = read_events_file(run)
    (resumed,) = [e for e in events if e["kind"] == "session.resumed"]
    assert resumed["checkpoint"] == "checkpoint.prev.json"
    assert resumed["checkpoint_problems"] and resumed["checkpoint_problems"][0].startswith("checkpoint.json")
    assert validate(run) == []  # events after the older checkpoint were discarded, none doubled
    report = read_report(run)
    assert (report["status"], report["resumes"], report["open_positions"]) == ("ok", 1, [])
    # the planned end of the first start is kept across the restart (downtime counts against it):
    # restarted after it, the resumed session stops at once, trading nothing new
    assert report["stop_reason"] == "duration"
    resumed_after_s = _ts(resumed["ts"]) - _ts(started["ts"])
    planned = report["planned_duration_s"]
    assert resumed_after_s > planned
    assert resumed_after_s - 0.002 <= report["elapsed_s"] < resumed_after_s + planned - 1  # ts: to the ms
    after = events[events.index(resumed) + 1 :]
    assert not [e for e in after if e["kind"] == "order.submitted" and not e["reduce_only"]]  # no entry


def _seq_checkpointed(run: Path) -> int:
    try:
        return int(checkpoint.load(run).state["seq"])
    except (FileNotFoundError, checkpoint.CheckpointError):
        return 0


@pytest.mark.parametrize("damage", ["garbled", "short", "twice"])
def test_events_damaged_before_the_checkpoint_refuse_the_resume_and_change_nothing(
    tmp_path: Path, damage: str
) -> None:
    """Only the last line of events.jsonl may be torn (by the kill). A line before the checkpoint
    that is not an event, a file short of the checkpoint's seq, a line twice: the start refuses,
    exit 2, one line, the folder untouched (found by an audit: a garbled line was dropped as torn,
    and the resumed run had a gap in its sequence the validator refused; a short file raised a
    traceback). The file mended, the same start resumes it."""
    proc = _start(tmp_path, 0.05)
    latest = tmp_path / "runs" / "latest"
    assert _wait_until(lambda: _seq_checkpointed(latest) >= 6, proc, 30), "no checkpoint at seq 6"
    proc.send_signal(signal.SIGSTOP)
    _kill(proc)
    run = latest.resolve()
    events = run / "events.jsonl"
    whole = events.read_bytes()
    lines = whole.splitlines(keepends=True)
    if damage == "garbled":
        lines[2] = b'{"seq": 3, "ts": "2026-12-0\n'  # its line 3, a whole line and not an event
    elif damage == "short":
        lines = lines[:4]
    else:
        lines.insert(2, lines[2])
    events.write_bytes(b"".join(lines))
    damaged = events.read_bytes()
    for check in (["--check-config"], []):  # --check-config makes the start's checks
        refused = run_cli(
            "--run-dir", str(tmp_path / "runs"), "--duration", "0.05", *ARGS, *check, cwd=tmp_path
        )
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert "Traceback" not in refused.stderr
        assert f"error: cannot resume {run.name}: its events.jsonl does not hold the" in refused.stderr
        assert "resuming unfinished session" not in refused.stderr  # it is not resumed
    assert events.read_bytes() == damaged and not (run / DISCARDED_FILE).exists()
    assert _folders(tmp_path) == [run]
    events.write_bytes(whole)
    proc = _start(tmp_path, 0.05)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert f"resuming unfinished session {run.name}" in err.decode()
    assert read_report(run)["resumes"] == 1 and validate(run) == []


def test_a_resume_under_a_risk_limit_the_session_has_reached_stops_at_once(tmp_path: Path) -> None:
    """Risk limits may change at a resume: one lowered below what the session has reached already
    (here max_trades 1 after a trade closed) stops it at once, flat, no new entry, as the trade
    that reached it would have (found by an audit: it opened a new position and stopped only when
    that one closed, a trade beyond the limit)."""
    proc = _start(tmp_path, 0.5)
    latest = tmp_path / "runs" / "latest"
    assert _wait_until(partial(_checkpointed, latest, "position.closed"), proc, 60), "no trade checkpointed"
    proc.send_signal(signal.SIGSTOP)
    _kill(proc)
    run = latest.resolve()
    restarted = subprocess.run(
        [sys.executable, "-m", "actors.main", "--run-dir", str(tmp_path / "runs"), "--duration", "0.5", *ARGS,
         "--set", "risk.max_trades=1"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    events = read_events_file(run)
    (resumed,) = [e for e in events if e["kind"] == "session.resumed"]
    after = events[events.index(resumed) + 1 :]
    assert not [e for e in after if e["kind"] == "order.submitted" and not e["reduce_only"]]  # no entry
    (stopped,) = [e for e in after if e["kind"] == "session.stopped"]
    assert stopped["stop_reason"] == "max_trades" and "a limit given at the resume" in stopped["detail"]
    report = read_report(run)
    assert (report["status"], report["stop_reason"], report["open_positions"]) == ("ok", "max_trades", [])
    assert validate(run) == []
    assert "has reached a risk limit given for its resume (max_trades" in restarted.stderr


def test_the_replay_of_a_resumed_session_says_it_runs_it_uninterrupted(tmp_path: Path) -> None:
    """A resumed session's market.jsonl holds what it saw between the crash and its last
    checkpoint, and not the crash: its replay runs one uninterrupted session, whose fills differ
    from the original's from the crash on. The replay says so (found by an audit: 24 fills where
    the original had 12, 'ok', and no word); it validates on its own."""
    run = _kill_after_checkpoints(tmp_path, 0.05)
    proc = _start(tmp_path, 0.05)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert read_report(run)["resumes"] == 1
    replayed = run_cli("--replay", str(run), "--run-dir", str(tmp_path / "replays"), "--quiet", cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    assert f"{run.name} was killed and resumed 1 time(s): its replay runs it as one uninterrupted" in (
        replayed.stderr
    )
    assert validate((tmp_path / "replays" / "latest").resolve()) == []


def test_a_resume_given_another_duration_keeps_its_planned_end_and_says_so(tmp_path: Path) -> None:
    """The planned end is kept across a restart (downtime counts against it): a restart with
    another --duration does not move it, and says that it is not used (found by an audit: a
    restart with --duration 0.5 stopped at the 3 s end with no word)."""
    run = _kill_after_checkpoints(tmp_path, 0.05)
    proc = _start(tmp_path, 0.5)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "the resumed session keeps its planned duration, 0.05 min" in err.decode()
    assert "session.duration_min = 0.5 is not used" in err.decode()
    report = read_report(run)
    assert (report["status"], report["stop_reason"], report["resumes"]) == ("ok", "duration", 1)
    assert report["planned_duration_s"] == 3.0 and report["elapsed_s"] < 30
    assert validate(run) == []


def test_no_usable_checkpoint_refuses_to_start_fresh_silently(tmp_path: Path) -> None:
    run = _kill_after_checkpoints(tmp_path)
    for name in ("checkpoint.json", "checkpoint.prev.json"):
        (run / name).write_bytes(b"{garbage")
    proc = _start(tmp_path, 0.05)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "no usable checkpoint" in err.decode() and "Traceback" not in err.decode()
    # found by a docs audit: it said "resuming unfinished session" first, then "Nothing was started"
    assert "resuming unfinished session" not in err.decode()
    assert _folders(tmp_path) == [run]  # no fresh session


# --- a run folder killed before its first checkpoint, made by hand: closed as abandoned ---

T0 = 1_796_000_000.0  # 2026-11-30


def _record(seq: int, ts: float, kind: str, **fields: Any) -> dict[str, Any]:
    return {"seq": seq, "ts": iso(ts), "kind": kind, **fields}


def _heartbeat(
    seq: int,
    ts: float,
    price: float,
    realized: float,
    fees: float,
    qty: float,
    unrealized: float = 0.0,
    peak: float = 10_000.0,
) -> dict[str, Any]:
    """`peak`: the highest equity before it (the drawdown is from there)."""
    equity = 10_000.0 + realized - fees + unrealized
    peak = max(peak, equity)
    return _record(
        seq, ts, "heartbeat", elapsed_s=round(ts - T0, 3), price=price, equity=round(equity, 6),
        realized_pnl=realized, unrealized_pnl=unrealized, fees_paid=fees, position_qty=qty,
        drawdown_pct=round((peak - equity) / peak * 100, 4),
    )  # fmt: skip


def _fill(
    seq: int, ts: float, n: int, side: str, price: float, realized: float, position: float
) -> dict[str, Any]:
    fee = 0.01 * price * 0.0006
    return _record(
        seq, ts, "order.filled", order_id=f"o{n}", fill_id=f"f{n}", side=side, qty=0.01, type="market",
        requested_price=price, reference_price=price, fill_price=price,
        bid=price - 0.1 if side == "buy" else price, ask=price if side == "buy" else price + 0.1,
        liquidity="taker", fee=fee, fee_bps=6.0, slippage_bps=0.0, slippage_mid_bps=0.8,
        latency_ms=150.0, partial=False, realized_pnl=realized, position_qty=position, reason="entry",
    )  # fmt: skip


def write_killed_run(
    tmp_path: Path,
    *,
    trades: bool = False,
    torn: bool = True,
    run_id: str = "20261130T043320Z-s42",
    data_source: str = "mock",
) -> Path:
    """A run folder as a live session leaves it when killed before its first checkpoint: events
    (the last line torn by the kill), no checkpoint, no report; `runs/latest` points at it."""
    runs = tmp_path / "runs"
    run = runs / run_id
    run.mkdir(parents=True)
    config = to_dict(make_config(tmp_path))
    records = [
        _record(
            1, T0, "session.started", run_id=run_id, symbol="BTCUSDT", interval="1m", data_source=data_source,
            seed=42, planned_duration_s=60.0, starting_equity=10_000.0, config=config, version="0.1.0",
            pid=4242,
        ),
        _heartbeat(2, T0 + 1, 60_000.0, 0.0, 0.0, 0.0),
    ]  # fmt: skip
    if trades:  # a round trip (+1.00 realized), then a new long left open when the process died
        # (each fill 150 ms after its order: its latency_ms)
        records += [
            _record(3, T0 + 1.55, "order.submitted", order_id="o1", side="buy", qty=0.01, type="market"),
            _fill(4, T0 + 1.7, 1, "buy", 60_000.0, 0.0, 0.01),
            _heartbeat(5, T0 + 2, 60_050.0, 0.0, 0.36, 0.01, 0.5),
            _record(6, T0 + 2.35, "order.submitted", order_id="o2", side="sell", qty=0.01, type="market"),
            _fill(7, T0 + 2.5, 2, "sell", 60_100.0, 1.0, 0.0),
            _record(
                8, T0 + 2.5, "position.closed", side="long", qty=0.01, entry_price=60_000.0,
                exit_price=60_100.0, realized_pnl=1.0, fees=0.7206, net_pnl=0.2794, exit_reason="exit",
            ),
            _record(9, T0 + 2.65, "order.submitted", order_id="o3", side="buy", qty=0.01, type="market"),
            _fill(10, T0 + 2.8, 3, "buy", 60_080.0, 0.0, 0.01),
            _heartbeat(11, T0 + 3, 59_000.0, 1.0, 1.08108, 0.01, -10.8, peak=10_000.14),
        ]  # fmt: skip
    text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
    if torn:
        torn_line = {"seq": len(records) + 1, "ts": iso(T0 + 4), "kind": "heartbeat", "price": 6.0e4}
        text += json.dumps(torn_line, separators=(",", ":"))[:-12]  # cut by the kill
    (run / "events.jsonl").write_text(text)
    (run / "market.jsonl").write_text("")
    (latest := runs / "latest").unlink(missing_ok=True)
    latest.symlink_to(run_id, target_is_directory=True)
    return run


@pytest.fixture
def warnings() -> Any:
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING", format="{message}")
    yield messages
    logger.remove(sink)


def test_killed_before_its_first_checkpoint_is_closed_as_abandoned(
    tmp_path: Path, warnings: list[str]
) -> None:
    run = write_killed_run(tmp_path)
    assert find_resumable(tmp_path / "runs", None) is None  # a new session starts
    events, dropped = read_events(run / "events.jsonl")
    assert dropped == 0 and [e["seq"] for e in events] == [1, 2, 3]  # the torn heartbeat dropped
    stopped = events[-1]
    assert stopped["kind"] == "session.stopped" and stopped["ts"] == events[-2]["ts"]
    assert (stopped["status"], stopped["stop_reason"]) == ("abandoned", "abandoned")
    assert "before its first checkpoint" in stopped["detail"]
    assert stopped["elapsed_s"] == 1.0 and stopped["data_source"] == "mock" and stopped["feed_down_s"] == 0.0
    assert (stopped["ending_equity"], stopped["unrealized_pnl"], stopped["open_positions"]) == (
        10_000.0,
        0.0,
        [],
    )
    report = read_report(run)
    assert (report["status"], report["stop_reason"], report["net_pnl"], report["elapsed_s"]) == (
        "abandoned", "abandoned", 0.0, 1.0,
    )  # fmt: skip
    assert json.loads((run / "metrics.json").read_text())["rows"][0]["price"] == 60_000.0
    assert len((run / "metrics.csv").read_text().splitlines()) == 2  # header and one heartbeat
    assert validate(run) == []
    (warning,) = warnings
    assert str(run) in warning and "closed it as abandoned" in warning and "1 torn line" in warning


def test_an_abandoned_session_that_traded_says_what_was_lost(tmp_path: Path, warnings: list[str]) -> None:
    run = write_killed_run(tmp_path, trades=True)
    assert find_resumable(tmp_path / "runs", None) is None
    report = read_report(run)
    fees = 0.36 + 0.3606 + 0.36048
    assert report["fills"] == 3 and report["trade_count"] == 1 and report["wins"] == 1
    assert report["realized_pnl"] == 1.0 and report["fees_paid"] == pytest.approx(fees)
    assert report["ending_equity"] == pytest.approx(10_000.0 + 1.0 - fees)
    # the heartbeats' worst, unrealized loss included: (10,000.14 - 9,989.11892) / 10,000.14
    assert report["max_drawdown_pct"] == 0.1102
    assert (report["unrealized_pnl"], report["open_positions"]) == (0.0, [])
    assert validate(run) == []  # not flat (the long went with the process): allowed when abandoned
    assert (
        len(warnings) == 2
        and "had traded (3 fill(s)" in warnings[1]
        and "(BTCUSDT +0.01000000) was lost" in warnings[1]
    )
    detail = read_events(run / "events.jsonl")[0][-1]["detail"]
    assert "it had 3 fill(s), its position (BTCUSDT +0.01000000) was lost with the process" in detail


def test_an_abandoned_session_that_traded_and_was_flat_does_not_say_a_position_was_lost(
    tmp_path: Path, warnings: list[str]
) -> None:
    """Found by a report audit: a backtest killed after 16,086 fills, flat, was closed with the
    detail (report.html's status, events.jsonl's session.stopped) 'it had 16086 fill(s), its
    position was lost with the process', where the warning said 'it was flat then'. Here the
    killed run's round trip alone (its fills leave it flat)."""
    run = write_killed_run(tmp_path, trades=True, torn=False)
    lines = (run / "events.jsonl").read_text().splitlines()
    (run / "events.jsonl").write_text("\n".join(lines[:8]) + "\n")  # to its position.closed
    close_and_warn(run)
    detail = read_events(run / "events.jsonl")[0][-1]["detail"]
    assert "it had 2 fill(s) and was flat then" in detail and "lost" not in detail
    assert "it was flat then" in warnings[1]


def test_closing_again_after_a_killed_close_gives_the_same_folder(tmp_path: Path) -> None:
    run = write_killed_run(tmp_path, trades=True)
    first = close_abandoned(run)
    files = {name: (run / name).read_bytes() for name in ("events.jsonl", "metrics.csv", "metrics.json")}
    (run / "final_report.json").unlink()  # as if the closing start was killed before its last write
    (run / "events.jsonl").write_bytes(files["events.jsonl"] + b'{"seq":11,"ts"')  # and torn after
    second = close_abandoned(run)
    assert second.report == first.report
    assert {name: (run / name).read_bytes() for name in files} == files
    assert validate(run) == []


def test_a_folder_that_recorded_nothing_is_left_as_it_is(tmp_path: Path, warnings: list[str]) -> None:
    run = write_killed_run(tmp_path)
    (run / "events.jsonl").write_text("")  # the events had not reached the disk yet
    assert find_resumable(tmp_path / "runs", None) is None
    assert (run / "events.jsonl").read_text() == "" and not (run / "final_report.json").exists()
    assert "recorded anything" in warnings[0] and str(run) in warnings[0]


def test_a_folder_with_a_checkpoint_is_resumed_not_closed(tmp_path: Path) -> None:
    run = write_killed_run(tmp_path)
    checkpoint.write(run, {"seq": 2})
    assert find_resumable(tmp_path / "runs", None) == run
    assert not (run / "final_report.json").exists()


def test_a_folder_owned_by_a_live_process_is_neither_closed_nor_resumed(tmp_path: Path) -> None:
    run = write_killed_run(tmp_path)
    with SessionLock(run), pytest.raises(PlanError, match="running in another process"):
        find_resumable(tmp_path / "runs", None)
    assert not (run / "final_report.json").exists()


def test_a_killed_backtest_is_closed_by_the_next_backtest_and_says_it_was_one(
    tmp_path: Path, warnings: list[str]
) -> None:
    run = write_killed_run(
        tmp_path, trades=True, run_id="backtest-20261130T000000Z-s42", data_source="backtest: a.csv"
    )
    settle_latest(tmp_path / "runs")  # what a backtest (or replay, or --fresh) start does first
    stopped = read_events(run / "events.jsonl")[0][-1]
    assert stopped["status"] == "abandoned" and "a backtest killed before its end" in stopped["detail"]
    assert "first checkpoint" not in stopped["detail"] and validate(run) == []
    assert "is a backtest killed before its end" in warnings[0] and str(run) in warnings[0]
    assert "(BTCUSDT +0.01000000) was lost" in warnings[1]


def test_a_run_killed_between_a_closing_fill_and_its_trade_is_closed_at_its_last_whole_step(
    tmp_path: Path,
) -> None:
    """Found by a review: the file is written in chunks, not by steps, so a backtest killed at
    random may leave a fill that closes its position without the `position.closed` of the same
    step (6 of 25 killed backtests): closed as it was, the validator refused the folder. The
    unfinished step is left out, and the detail says so."""
    run = write_killed_run(tmp_path, trades=True, torn=False, run_id="backtest-20261130T000000Z-s42")
    lines = (run / "events.jsonl").read_text().splitlines(keepends=True)
    (run / "events.jsonl").write_text("".join(lines[:7]))  # up to the closing fill, seq 7
    assert close_abandoned(run).closed
    events, _ = read_events(run / "events.jsonl")
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5, 6, 7]  # the fill of seq 7 left out
    assert events[-2]["kind"] == "order.submitted"  # its own step, before the fill's
    assert events[-1]["kind"] == "session.stopped"
    assert "the 1 event(s) of the step it was killed in were left out" in events[-1]["detail"]
    assert validate(run) == []


def test_a_run_closed_as_abandoned_records_the_storage_fault_it_had_noted(tmp_path: Path) -> None:
    """Found by a review: a backtest stopped by a storage fault with no room for its final record
    notes it in storage_fault.json; closed as abandoned at the next start, its report said no
    error and no storage fault, and the note stayed in the finished folder."""
    from actors.recording.storage import NOTE, FaultNote, StorageFault

    run = write_killed_run(tmp_path, trades=True, run_id="backtest-20261130T000000Z-s42")
    FaultNote(run).keep()
    FaultNote(run).write(
        StorageFault(str(run / "events.jsonl"), "ENOSPC", "No space left on device", 0.0, T0 + 3)
    )
    assert close_abandoned(run).closed
    events, _ = read_events(run / "events.jsonl")
    assert [e["kind"] for e in events[-2:]] == ["error", "session.stopped"]
    assert (events[-2]["where"], events[-2]["error"]) == ("storage", "ENOSPC")
    assert "storage fault" in events[-1]["detail"]
    report = read_report(run)
    assert (report["storage_faults"], report["errors"]) == (1, 1)
    assert not (run / NOTE).exists() and validate(run) == []


def test_an_abandoned_run_names_each_symbol_it_held(tmp_path: Path, warnings: list[str]) -> None:
    """The position lost is told per symbol: a long in one and a short in another is not flat."""
    run = write_killed_run(tmp_path, torn=False)
    lines = (run / "events.jsonl").read_text().splitlines()
    for n, (symbol, side, price) in enumerate([("BTCUSDT", "buy", 60_000.0), ("ETHUSDT", "sell", 3_000.0)]):
        fill = _fill(3 + n, T0 + 2 + n, n + 1, side, price, 0.0, 0.01 if side == "buy" else -0.01)
        lines.append(json.dumps({**fill, "symbol": symbol}))
    (run / "events.jsonl").write_text("\n".join(lines) + "\n")
    result = close_and_warn(run)
    assert result.positions == {"BTCUSDT": 0.01, "ETHUSDT": -0.01}
    assert "(BTCUSDT +0.01000000, ETHUSDT -0.01000000) was lost" in warnings[1]


def test_a_checkpointed_latest_is_left_for_a_live_start_with_a_warning(
    tmp_path: Path, warnings: list[str]
) -> None:
    """A backtest moves `latest` to its own folder; a killed live session that can be resumed is
    not closed, and the warning names the flag that resumes it."""
    run = write_killed_run(tmp_path)
    checkpoint.write(run, {"seq": 2})
    settle_latest(tmp_path / "runs")
    assert not (run / "final_report.json").exists()
    assert "still resumes that session" in warnings[0] and f"--resume {run.name}" in warnings[0]
    with SessionLock(run):  # owned by a live process: nothing said, nothing touched
        settle_latest(tmp_path / "runs")
    assert len(warnings) == 1
    settle_latest(tmp_path / "runs", live=True)  # a --fresh start: the new one will be the newest
    assert "this --fresh start leaves it as it is; resume it later with --resume" in warnings[1]


@pytest.mark.parametrize("live", [True, False])
def test_a_latest_whose_checkpoints_are_both_damaged_is_not_said_resumable(
    tmp_path: Path, warnings: list[str], live: bool
) -> None:
    """Found by the stop audit: a --fresh start (or a backtest) beside a killed session whose
    two checkpoints were both damaged told the operator to resume it later with --resume RUN_ID,
    which refuses it ('no usable checkpoint'). The warning says it cannot be resumed, why, and
    what can be done; the refusal of a start says so too. Nothing in the folder changes."""
    run = write_killed_run(tmp_path)
    checkpoint.write(run, {"seq": 2})
    checkpoint.write(run, {"seq": 2})
    for name in (checkpoint.NEWEST, checkpoint.PREVIOUS):
        (run / name).write_bytes(b"{garbage")
    before = sorted(p.name for p in run.iterdir())
    settle_latest(tmp_path / "runs", live=live)
    assert sorted(p.name for p in run.iterdir()) == before
    (said,) = warnings
    assert f"{run.name} is an unfinished session that cannot be resumed: no usable checkpoint in" in said
    assert "resume it later" not in said and "still resumes" not in said
    assert f"(--resume {run.name}) only once a usable checkpoint is back in it" in said
    assert (
        "This --fresh start leaves it as it is" if live else "a live start without --fresh refuses"
    ) in said
    with pytest.raises(checkpoint.CheckpointError) as refused:  # a plain start, or --resume RUN_ID
        checkpoint.load(run)
    assert "start a new session with --fresh (this one is left as it is)" in str(refused.value)


def _finished_backtest_is_latest(runs: Path, run_id: str = "backtest-20240101T000000Z-s42") -> None:
    (runs / run_id).mkdir()
    (runs / run_id / "events.jsonl").write_text("")
    (runs / run_id / "final_report.json").write_text("{}")
    (runs / "latest").unlink()
    (runs / "latest").symlink_to(run_id, target_is_directory=True)


def test_a_plain_start_resumes_the_killed_session_after_a_backtest_moved_latest(tmp_path: Path) -> None:
    """kill -9 a live session, run a backtest in the same run dir, start again: the live session
    is resumed (it once started a new one, silently leaving the killed one unfinished)."""
    runs = tmp_path / "runs"
    old = write_killed_run(tmp_path, run_id="20261129T000000Z-s42")
    (old / "final_report.json").write_text("{}")  # an older live session, finished
    run = write_killed_run(tmp_path)  # the newest live one, killed after its first checkpoint
    checkpoint.write(run, {"seq": 2})
    _finished_backtest_is_latest(runs)
    assert find_resumable(runs, None) == run
    (run / "final_report.json").write_text("{}")  # the newest live one finished: nothing to resume
    assert find_resumable(runs, None) is None
    with SessionLock(old):  # an older one is not looked at, whatever its state
        assert find_resumable(runs, None) is None


def test_killed_backtests_and_replays_are_closed_by_a_plain_start_wherever_latest_points(
    tmp_path: Path, warnings: list[str]
) -> None:
    """Found by an audit: a backtest killed, then a plain live start (which looks past a
    backtest's `latest`): the backtest was never closed, and once `latest` moved on no later start
    closed it either. Any start now closes every killed backtest and replay it owns no process."""
    runs = tmp_path / "runs"
    backtest = write_killed_run(
        tmp_path, trades=True, run_id="backtest-20261130T000000Z-s42", data_source="backtest: a.csv"
    )
    replay = write_killed_run(tmp_path, run_id="replay-20261130T000000Z-s42", data_source="replay of x")
    running = write_killed_run(
        tmp_path, run_id="backtest-20261130T000000Z-s43", data_source="backtest: b.csv"
    )
    live = write_killed_run(tmp_path, run_id="20261130T000000Z-s42")  # latest now, finished
    (live / "final_report.json").write_text("{}")
    with SessionLock(running):  # a backtest still running in its process: left to it
        assert find_resumable(runs, None) is None
    for run in (backtest, replay):
        assert read_report(run)["status"] == "abandoned" and validate(run) == []
    assert not (running / "final_report.json").exists()
    assert sum("killed before its end" in w for w in warnings) == 2
    settle_latest(runs)  # a backtest's start closes the one no longer running
    assert read_report(running)["status"] == "abandoned"


def test_a_running_live_session_behind_a_backtests_latest_refuses_a_second_start(tmp_path: Path) -> None:
    run = write_killed_run(tmp_path)
    _finished_backtest_is_latest(tmp_path / "runs")
    with SessionLock(run), pytest.raises(PlanError, match="running in another process"):
        find_resumable(tmp_path / "runs", None)


def test_a_backtest_start_closes_a_killed_latest_first(tmp_path: Path) -> None:
    """The CLI's backtest start settles `latest` (in process: a backtest of 30 candles)."""
    run = write_killed_run(
        tmp_path, trades=True, run_id="backtest-20261130T000000Z-s42", data_source="backtest: a.csv"
    )
    data = tmp_path / "bars.csv"
    rows = [f"{1_704_067_200_000 + i * 60_000},100.0,101.0,99.0,100.5,5.0" for i in range(30)]
    data.write_text("open_time_ms,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    result = run_main(
        "--mode", "backtest", "--data", str(data), "--run-dir", str(tmp_path / "runs"), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"run folder {run} is a backtest killed before its end" in result.stderr
    assert read_report(run)["status"] == "abandoned" and validate(run) == []
    new = (tmp_path / "runs" / "latest").resolve()
    assert new != run and read_report(new)["stop_reason"] == "data_end"


def test_a_run_killed_between_its_report_and_its_page_gets_its_page_at_the_next_start(
    tmp_path: Path,
) -> None:
    """final_report.json marks a run finished; report.html comes right after it. A kill between
    the two (found by a kill -9 fuzz) left the page missing for good: the next start writes it,
    unless the run's process still holds it."""
    run = write_killed_run(tmp_path, trades=True)
    close_abandoned(run)  # a finished run folder (its report and page written)
    # the page as it was, but for the wall-clock time it says it was written at (its footer)
    page = lambda: re.sub(rb"Written [0-9-]+ [0-9:]+ UTC", b"Written", (run / "report.html").read_bytes())  # noqa: E731
    written = page()
    assert written != (run / "report.html").read_bytes()
    (run / "report.html").unlink()
    with SessionLock(run):  # still its process's: left to it
        assert find_resumable(tmp_path / "runs", None) is None
    assert not (run / "report.html").exists()
    assert find_resumable(tmp_path / "runs", None) is None  # a live start: a new session, and the page
    assert page() == written
    (run / "report.html").unlink()
    settle_latest(tmp_path / "runs")  # a backtest's or replay's start
    assert page() == written


def test_a_session_is_not_resumed_under_other_strategy_parameters(tmp_path: Path) -> None:
    """Its strategies' state was built for their parameters: an EMA restored under a shorter
    period never seeds again (found by an audit: 0 signals after such a resume, 25 without it).
    The start refuses, exit 2, naming the key; the same configuration resumes."""
    run = write_killed_run(tmp_path)
    checkpoint.write(run, {"seq": 2})
    recorded = json.loads((run / "events.jsonl").read_text().splitlines()[0])["config"]
    same = to_dict(make_config(tmp_path))
    assert recorded == json.loads(json.dumps(same))
    check_resume_config(run, same)  # nothing changed: resumed
    check_resume_config(run, to_dict(make_config(tmp_path, "risk.max_loss_pct=9")))  # a limit may change
    with pytest.raises(PlanError, match=r"strategy\.slow_period: 21 in the session, 30 now") as refused:
        check_resume_config(run, to_dict(make_config(tmp_path, "strategy.slow_period=30")))
    assert "--fresh" in str(refused.value)
    changed = ["--run-dir", str(tmp_path / "runs"), "--source", "mock", "--set", "strategy.slow_period=30"]
    # --check-config refuses what the start refuses (found by an audit: it said 0 when the
    # session resumed was the unfinished latest, not one --resume named); --fresh passes
    for check in (["--check-config"], []):
        result = run_main(*changed, *check, cwd=tmp_path)
        assert result.returncode == 2 and f"cannot resume {run.name}" in result.stderr
        assert "Traceback" not in result.stderr and not (run / "final_report.json").exists()
    result = run_main(*changed, "--fresh", "--check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (run / "final_report.json").exists() and (tmp_path / "runs" / "latest").resolve() == run


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("broker.starting_equity=20000", r"broker\.starting_equity: 10000\.0 in the session, 20000\.0 now"),
        ("broker.taker_fee_bps=10", r"broker\.taker_fee_bps: 6\.0 in the session, 10\.0 now"),
        ("broker.leverage=5", r"broker\.leverage: 2\.0 in the session, 5\.0 now"),
        ("session.symbol=ETHUSDT", r"symbols traded: \['BTCUSDT'\] in the session, \['ETHUSDT'\] now"),
    ],
)
def test_a_session_is_not_resumed_under_another_account_or_symbol(
    tmp_path: Path, change: str, named: str
) -> None:
    """Its checkpointed account was built for its symbols and broker keys, which the validator
    and a replay read from its session.started (found by an audit: resumed with another
    starting_equity its equity jumped by the difference, with other fees every later fill failed
    the validator, with another symbol its BTCUSDT position was closed at ETHUSDT's price)."""
    run = write_killed_run(tmp_path)
    checkpoint.write(run, {"seq": 2})
    with pytest.raises(PlanError, match=named):
        check_resume_config(run, to_dict(make_config(tmp_path, change)))
    check_resume_config(run, to_dict(make_config(tmp_path, "risk.max_trades=3")))  # a limit may change


def test_a_killed_session_restarted_with_another_starting_equity_is_refused_then_resumed(
    tmp_path: Path,
) -> None:
    """A real session killed after its checkpoints: a start with another broker.starting_equity
    refuses (exit 2, the folder untouched); the start with its own configuration resumes it,
    and the finished run validates."""
    run = _kill_after_checkpoints(tmp_path, 0.05)
    before = (run / "events.jsonl").read_bytes()
    refused = run_cli(
        "--run-dir", str(tmp_path / "runs"), "--duration", "0.05", *ARGS,
        "--set", "broker.starting_equity=20000", cwd=tmp_path,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert (
        f"cannot resume {run.name}: it ran on another configuration (broker.starting_equity" in refused.stderr
    )
    assert (run / "events.jsonl").read_bytes() == before and not (run / "final_report.json").exists()
    proc = _start(tmp_path, 0.05)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert _folders(tmp_path) == [run]
    assert read_report(run)["resumes"] == 1 and validate(run) == []


def test_the_cli_closes_it_and_starts_a_new_session(tmp_path: Path) -> None:
    run = write_killed_run(tmp_path, trades=True)
    result = run_cli(
        "--source", "mock", "--duration", "0.01", "--run-dir", str(tmp_path / "runs"), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"run folder {run} was killed before its first checkpoint" in result.stderr
    assert read_report(run)["status"] == "abandoned" and validate(run) == []
    new = (tmp_path / "runs" / "latest").resolve()
    assert new != run and read_report(new)["status"] == "ok" and validate(new) == []


def _checkpointed_in_position(run: Path) -> bool:
    """The newest checkpoint was taken with a position open (its last fill before it left one)."""
    try:
        records, _ = read_events(run / "events.jsonl")
        saved = checkpoint.load(run).state["seq"]
    except (FileNotFoundError, checkpoint.CheckpointError):
        return False
    fills = [r for r in records if r["kind"] == "order.filled" and r["seq"] <= saved]
    return bool(fills) and abs(fills[-1]["position_qty"]) > 1e-9


@pytest.mark.slow
def test_restarted_after_its_planned_end_a_session_closes_at_the_markets_next_quote(tmp_path: Path) -> None:
    """Found by an audit: killed in a position and restarted after its planned end, a session
    closed at the quote of before the crash (a minute old and more). It now waits for the next
    quote (entries refused), closes there and stops."""
    proc = _start(tmp_path, 0.1)
    run = tmp_path / "runs" / "latest"
    assert _wait_until(partial(_checkpointed_in_position, run), proc, 30), "no position checkpointed"
    proc.send_signal(signal.SIGSTOP)
    _kill(proc)
    run = run.resolve()
    err = _restart_after_the_planned_end(tmp_path, run)
    assert "closing its position at the market's next quote" in err
    events = read_events_file(run)
    (resumed,) = [e for e in events if e["kind"] == "session.resumed"]
    assert resumed["position_qty"] != 0
    after = events[events.index(resumed) + 1 :]
    (flatten,) = [e for e in after if e["kind"] == "order.submitted" and e["reason"] == "flatten_on_exit"]
    assert flatten["quote_age_s"] < 1.0  # a quote the market offered after the restart
    (fill,) = [e for e in after if e["kind"] == "order.filled" and e["order_id"] == flatten["order_id"]]
    with (run / "market.jsonl").open() as f:
        quotes = [json.loads(line) for line in f]
    fresh = [q for q in quotes if q["type"] == "tick" and q["arrival_ts"] > _ts(resumed["ts"])]
    assert fresh and (fill["bid"], fill["ask"]) in {(q["bid"], q["ask"]) for q in fresh}
    assert not [e for e in after if e["kind"] == "order.submitted" and not e["reduce_only"]]  # no entry
    assert not [e for e in after if e["kind"] == "alert" and e["rule"] == "stale_flatten"]
    report = read_report(run)
    assert (report["status"], report["stop_reason"], report["open_positions"]) == ("ok", "duration", [])
    assert validate(run) == []


def test_the_events_a_resume_keeps_are_durable_before_they_replace_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume rewrites events.jsonl without the events after its checkpoint: the new file is
    fsynced before it replaces the old, and the folder after (found by an audit: written and
    renamed unsynced, a power loss could leave events.jsonl empty under a checkpoint at its seq,
    a session no start could resume). The standard library's calls are watched, nothing mocked."""
    import os

    from actors.recording.recorder import Recorder

    run = write_killed_run(tmp_path, trades=True)
    checkpoint.write(run, {"seq": 8})
    synced: set[tuple[int, int]] = set()  # (device, inode) of each file or folder fsynced
    replaced: list[tuple[bool, str]] = []  # each replace of events.jsonl: was its source synced
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        synced.add((st.st_dev, st.st_ino))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        if Path(dst).name == "events.jsonl":
            st = os.stat(src)
            replaced.append(((st.st_dev, st.st_ino) in synced, str(src)))
            synced.discard((os.stat(run).st_dev, os.stat(run).st_ino))  # the folder: synced after it
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    recorder = Recorder(run, resume_seq=8)
    try:
        assert replaced == [(True, str(run / "events.jsonl.tmp"))]
        assert (os.stat(run).st_dev, os.stat(run).st_ino) in synced  # the rename made durable
        assert recorder.seq == 8 and recorder.discarded_events == 4  # 9, 10, 11 and the torn line
    finally:
        recorder.finish()


def _watch_durability(run: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Each fsync (of the run folder: "folder", else the name of the file in it) and each replace
    into the run folder (its target's name), in order; the standard library's, watched."""
    import os

    ops: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (os.stat(run).st_dev, os.stat(run).st_ino):
            ops.append(("fsync", "folder"))
        else:
            names = [
                p.name for p in run.iterdir() if (p.stat().st_dev, p.stat().st_ino) == (st.st_dev, st.st_ino)
            ]
            ops.append(("fsync", names[0] if names else "?"))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        ops.append(("replace", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return ops


def _folder_synced_between(ops: list[tuple[str, str]], first: tuple[str, str], then: tuple[str, str]) -> bool:
    """Whether the run folder is fsynced after `first` and before `then` (both done, in order)."""
    a, b = ops.index(first), ops.index(then)
    return a < b and ("fsync", "folder") in ops[a:b]


def test_the_discarded_events_and_the_final_report_are_durable_in_their_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new file or a rename is durable once its folder is fsynced (found by the crash audit):
    events.discarded.jsonl (and alerts.discarded.jsonl), made by a resume, was fsynced but not its folder before events.jsonl
    was replaced without the events it keeps (a power loss could keep the replacement and lose
    the file), and final_report.json's rename was not followed by one (lost, the run would look
    unfinished, for the next start to resume a session that had ended). The same for a run closed
    as abandoned: the folder is synced before its final report is renamed in, and after."""
    from actors.recording.recorder import Recorder

    run = write_killed_run(tmp_path, trades=True)
    checkpoint.write(run, {"seq": 8})
    alert = {"ts": iso(T0 + 3), "run_id": run.name, "seq": 10, "rule": "breaker", "message": "m"}
    (run / "alerts.jsonl").write_text(json.dumps(alert) + "\n")  # an alert of a discarded event
    ops = _watch_durability(run, monkeypatch)
    recorder = Recorder(run, resume_seq=8)
    assert _folder_synced_between(ops, ("fsync", DISCARDED_FILE), ("replace", "events.jsonl"))
    assert _folder_synced_between(ops, ("fsync", "alerts.discarded.jsonl"), ("replace", "alerts.jsonl"))
    recorder.finish()
    monkeypatch.undo()
    assert recorder.written
    assert ("fsync", "folder") in ops[ops.index(("replace", "final_report.json")) :]

    killed = write_killed_run(tmp_path / "other", trades=True)
    ops = _watch_durability(killed, monkeypatch)
    close_abandoned(killed)
    monkeypatch.undo()
    assert _folder_synced_between(ops, ("replace", "metrics.json"), ("replace", "final_report.json"))
    assert ("fsync", "folder") in ops[ops.index(("replace", "final_report.json")) :]


def test_a_checkpoint_follows_the_events_and_the_market_made_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint is written once the events before it and the market they acted on
    (market.jsonl, which the validator checks the fills against and a replay re-runs) are
    fsynced (found by an audit: market.jsonl was flushed only, so a power loss could keep a
    fill whose quote it lost). The standard library's fsync is watched, nothing mocked."""
    import os

    from actors.recording.recorder import Recorder
    from protocols.messages import Event, Tick

    run = write_killed_run(tmp_path, trades=True)
    checkpoint.write(run, {"seq": 11})
    recorder = Recorder(run, resume_seq=11)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        for name in ("events.jsonl", "market.jsonl", checkpoint.NEWEST + ".tmp"):
            path = run / name
            if path.exists() and (os.stat(path).st_dev, os.stat(path).st_ino) == (st.st_dev, st.st_ino):
                synced.append(name)
        real_fsync(fd)

    try:
        tick = Tick(T0 + 5, 60_000.0, 60_000.1, 60_000.0, symbol="BTCUSDT")
        recorder.write(Event(T0 + 5, "market", {"event": tick}))
        recorder.write(Event(T0 + 5, "feed.live", {"symbol": "BTCUSDT"}))
        monkeypatch.setattr(os, "fsync", fsync)
        recorder.write_checkpoint({"seq": recorder.seq})
        monkeypatch.undo()
        assert synced[:2] == ["events.jsonl", "market.jsonl"] and checkpoint.NEWEST + ".tmp" in synced
        assert (run / "market.jsonl").read_text().count("\n") == 1
    finally:
        recorder.finish()


# --- a resume goes on with the market the session traded on ---------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _exchange(ws_port: int, rest_port: int, folder: Path) -> subprocess.Popen[bytes]:
    """The fake exchange on these ports, its BTCUSDT at 90,000 (the mock source starts at 60,000)."""
    urls = folder / "urls.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.fake_bitunix", "--port", str(ws_port), "--rest-port", str(rest_port),
         "--start-price", "90000", "--history", "300", "--port-file", str(urls)],
        cwd=folder, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert _wait_until(lambda: urls.exists() and urls.stat().st_size > 0, proc, 30), "the fake did not start"
    return proc


def _on_exchange(
    tmp_path: Path, ws_port: int, rest_port: int, duration_min: float, *extra: str
) -> subprocess.Popen[bytes]:
    """A plain start of a 1m session on the exchange at these ports (the mock source after
    `feed.connect_timeout_s` = 1 s without its data); `extra`: more `--set`s."""
    sets = [
        "session.interval=1m", "strategy.history=30", "observability.progress=off",
        "state.checkpoint_interval_s=0.2", "feed.connect_timeout_s=1",
        f"feed.ws_url=ws://127.0.0.1:{ws_port}/public/", f"feed.rest_url=http://127.0.0.1:{rest_port}",
        *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "actors.main", "--run-dir", str(tmp_path / "runs"), "--duration", str(duration_min),
         "--source", "bitunix", *(a for s in sets for a in ("--set", s))],
        cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _after_resume(run: Path) -> list[dict[str, Any]]:
    events = read_events_file(run)
    (resumed,) = [e for e in events if e["kind"] == "session.resumed"]
    return events[events.index(resumed) + 1 :]


@pytest.mark.parametrize("kept_in", ["checkpoint", "events"])
def test_a_session_that_fell_back_to_the_mock_source_resumes_on_it(tmp_path: Path, kept_in: str) -> None:
    """Found by an audit: a session that had fallen back to the mock source (its market at
    60,000) resumed, the exchange reachable again, on the exchange's market (90,000): its
    mock-made position was liquidated at once, and the report said `bitunix`. It resumes on the
    mock source, its walk restored, the exchange not asked. `events`: a checkpoint from before
    the data source was kept in it (its `bitunix`): the `feed.fallback` event says it."""
    ws_port, rest_port = _free_port(), _free_port()
    proc = _on_exchange(tmp_path, ws_port, rest_port, 0.3)  # nothing listens there yet: the fallback
    latest = tmp_path / "runs" / "latest"
    assert _wait_until(partial(_checkpointed, latest, "heartbeat"), proc, 30) and _wait_until(
        partial(_checkpointed, latest, "feed.fallback"), proc, 30
    ), "no fallback checkpointed"
    proc.send_signal(signal.SIGSTOP)
    _kill(proc)
    run = latest.resolve()
    if kept_in == "events":
        loaded = checkpoint.load(run)
        assert loaded.state["session"]["data_source"].startswith("mock (fallback: ")
        loaded.state["session"]["data_source"] = "bitunix"
        for name in (checkpoint.PREVIOUS, checkpoint.NEWEST):
            (run / name).unlink(missing_ok=True)
        checkpoint.write(run, loaded.state)
    exchange = _exchange(ws_port, rest_port, tmp_path)
    try:
        proc = _on_exchange(tmp_path, ws_port, rest_port, 0.3)
        _, err = proc.communicate(timeout=90)
    finally:
        exchange.kill()
        exchange.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    after = _after_resume(run)
    assert not [e for e in after if e["kind"] in ("feed.connected", "feed.live", "feed.fallback")]
    prices = [e["price"] for e in after if e["kind"] == "heartbeat" and e.get("price")]
    assert prices and max(prices) < 75_000  # the mock's market, never the exchange's 90,000
    report = read_report(run)
    assert report["data_source"].startswith("mock (fallback: ") and report["resumes"] == 1
    assert validate(run) == []
    assert "resuming it on the mock source" in err.decode()


def test_a_session_on_the_exchange_resumes_on_it_with_no_fallback(tmp_path: Path) -> None:
    """The other way round: a session that traded the exchange's prices (90,000), restarted
    while the exchange is down, does not fall back to the mock source (another market, at
    60,000, under the same account): it waits for the exchange, stale, to its end, and says so
    with a `feed_down` alert (found by the cockpit audit: none came, the feed never up again)."""
    ws_port, rest_port = _free_port(), _free_port()
    exchange = _exchange(ws_port, rest_port, tmp_path)
    try:
        proc = _on_exchange(tmp_path, ws_port, rest_port, 0.3)
        latest = tmp_path / "runs" / "latest"
        assert _wait_until(partial(_checkpointed, latest, "feed.live"), proc, 30), "no live data"
        assert _wait_until(partial(_checkpointed, latest, "heartbeat"), proc, 30)
        proc.send_signal(signal.SIGSTOP)
        _kill(proc)
    finally:
        exchange.kill()
        exchange.communicate()
    run = latest.resolve()
    proc = _on_exchange(tmp_path, ws_port, rest_port, 0.3, "alerts.feed_down_s=1")
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err.decode()[-2000:]
    after = _after_resume(run)
    assert not [e for e in after if e["kind"] == "feed.fallback"], "fell back to the mock source"
    assert [e["rule"] for e in after if e["kind"] == "alert"] == ["resume", "feed_down"]
    prices = [e["price"] for e in after if e["kind"] == "heartbeat" and e.get("price")]
    assert prices and min(prices) > 75_000  # the exchange's last prices, never the mock's 60,000
    report = read_report(run)
    assert report["data_source"] == "bitunix" and report["resumes"] == 1
    assert validate(run) == []
