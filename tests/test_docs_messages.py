"""The docs quote the messages and name the stop reasons the program really has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from actors.lock import SessionLock, SessionLocked
from actors.session import DATA_DRIVEN_STOPS
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


@pytest.mark.parametrize("doc", ["docs/START_HERE.md", "docs/troubleshooting.md"])
def test_the_lock_message_quoted_is_the_real_one(tmp_path: Path, doc: str) -> None:
    run = tmp_path / "20240101T000000Z-s42"
    run.mkdir()
    with SessionLock(run), pytest.raises(SessionLocked) as raised:
        SessionLock(run).acquire()
    quoted = re.search(r"`error: (session RUN is already running[^`]*)`", (REPO / doc).read_text())
    assert quoted is not None, f"{doc} does not quote the lock message"
    pid = re.search(r"process (\d+)", str(raised.value))
    assert pid is not None
    expected = quoted.group(1).replace("RUN", run.name).replace("PID", pid.group(1))
    assert str(raised.value) == expected


def test_every_stop_reason_is_in_the_readme_table() -> None:
    table = README[README.index("## Stopping a session") : README.index("## Command line")]
    for reason in {*DATA_DRIVEN_STOPS, "duration", "kill_switch", "signal", "error"}:
        assert f"`{reason}`" in table, reason


def test_the_console_script_is_documented() -> None:
    assert "btc-laptop-agents = " in (REPO / "pyproject.toml").read_text()
    assert "btc-laptop-agents --config config/live.toml" in README
