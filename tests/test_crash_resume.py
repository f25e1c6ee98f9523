"""kill -9 at random instants, restart each time: the finished session is whole and consistent."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import cli_env, read_events
from tools.validate_session import validate

ARGS = [
    "--source", "mock", "--duration", "0.75",
    "--set", "session.interval=1s", "--set", "strategy.fast_period=2", "--set", "strategy.slow_period=4",
    "--set", "risk.max_orders_per_minute=600", "--set", "feed.tick_interval_s=0.1",
    "--set", "feed.mock_volatility_pct=300", "--set", "observability.progress=off",
    "--set", "state.checkpoint_interval_s=0.2",
]  # fmt: skip


def _start(tmp_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "actors.main", "--run-dir", str(tmp_path / "runs"), *ARGS],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_sigkill_at_random_instants_loses_and_doubles_nothing(tmp_path: Path) -> None:
    rng = random.Random(20261124)
    kills = 0
    while kills < 22:
        proc = _start(tmp_path)
        time.sleep(rng.uniform(0.3, 1.6))
        if proc.poll() is not None:  # the session already finished
            break
        proc.kill()
        proc.wait()
        kills += 1
    proc = _start(tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    run = (tmp_path / "runs" / "latest").resolve()
    assert len([p for p in (tmp_path / "runs").iterdir() if not p.is_symlink()]) == 1  # one session, resumed
    report = json.loads((run / "final_report.json").read_text())
    events = read_events(run)
    assert kills >= 20
    assert report["resumes"] == sum(e["kind"] == "session.resumed" for e in events) >= 15
    assert validate(run) == []
    assert report["open_positions"] == []
    assert report["fills"] > 0
    # the duration is honoured: planned end kept across restarts (downtime counts against it)
    assert report["planned_duration_s"] <= report["elapsed_s"] <= report["planned_duration_s"] + 5
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


def _kill_after_checkpoints(tmp_path: Path) -> Path:
    """Start a session, kill -9 it once both checkpoint generations exist; its run folder."""
    proc = _start(tmp_path)
    deadline = time.monotonic() + 30
    run = tmp_path / "runs" / "latest"
    while not (run / "checkpoint.prev.json").exists() or not (run / "checkpoint.json").exists():
        assert time.monotonic() < deadline, "no checkpoints written"
        time.sleep(0.05)
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    return run.resolve()


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_newest_checkpoint_resumes_from_the_previous_loudly(tmp_path: Path, damage: str) -> None:
    run = _kill_after_checkpoints(tmp_path)
    newest = run / "checkpoint.json"
    data = newest.read_bytes()
    newest.write_bytes(
        data[: len(data) // 2] if damage == "truncated" else data.replace(b'"seq"', b'"sez"', 1)
    )
    proc = _start(tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "checkpoint alert" in err.decode()
    (resumed,) = [e for e in read_events(run) if e["kind"] == "session.resumed"]
    assert resumed["checkpoint"] == "checkpoint.prev.json"
    assert resumed["checkpoint_problems"] and resumed["checkpoint_problems"][0].startswith("checkpoint.json")
    assert validate(run) == []  # events after the older checkpoint were discarded, none doubled
    report = json.loads((run / "final_report.json").read_text())
    assert (report["status"], report["resumes"], report["open_positions"]) == ("ok", 1, [])


def test_no_usable_checkpoint_refuses_to_start_fresh_silently(tmp_path: Path) -> None:
    run = _kill_after_checkpoints(tmp_path)
    for name in ("checkpoint.json", "checkpoint.prev.json"):
        (run / name).write_bytes(b"{garbage")
    proc = _start(tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "no usable checkpoint" in err.decode() and "Traceback" not in err.decode()
    assert [p for p in (tmp_path / "runs").iterdir() if not p.is_symlink()] == [run]  # no fresh session
