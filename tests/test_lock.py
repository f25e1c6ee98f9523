"""A second process on the same session refuses; a dead owner does not block."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from actors.lock import SessionLock, SessionLocked, is_locked
from tests.conftest import REPO


def _hold_lock_in_child(run: Path) -> subprocess.Popen[str]:
    code = (
        "import sys,time; from pathlib import Path; from actors.lock import SessionLock; "
        "l=SessionLock(Path(sys.argv[1])); l.acquire(); print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(run)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_process_refuses_with_the_owner_named(tmp_path: Path) -> None:
    proc = _hold_lock_in_child(tmp_path)
    try:
        assert is_locked(tmp_path)
        with pytest.raises(SessionLocked, match=f"process {proc.pid}"):
            SessionLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()


def test_killed_owner_releases_the_lock(tmp_path: Path) -> None:
    proc = _hold_lock_in_child(tmp_path)
    proc.kill()  # SIGKILL: no cleanup runs
    proc.wait()
    deadline = time.monotonic() + 5
    while is_locked(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.01)
    with SessionLock(tmp_path):
        assert (tmp_path / "session.lock").read_text().strip().isdigit()
