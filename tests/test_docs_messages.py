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


def _rejection_reasons() -> set[str]:
    """Every `order.rejected` reason the code can give, found in its source: the risk gate's
    `Rejection("...")` and caps (the `room` it sizes against, by name), the broker's `_refuse(..., "...")`
    and the exchange's refusals (`return "..."` of `_margin_refusal` and `Instrument.refusal`),
    and the reasons in-flight orders are abandoned with."""
    gate = (REPO / "actors/risk/gate.py").read_text()
    broker = (REPO / "actors/broker/paper.py").read_text()
    instruments = (REPO / "protocols/instruments.py").read_text()
    session = (REPO / "actors/session.py").read_text()
    reasons = set(re.findall(r'Rejection\(\s*"([a-z_]+)"', gate))
    reasons |= set(re.findall(r'\("(max_[a-z_]+)", ', gate))  # the caps the gate sizes against (its `room`)
    reasons |= set(re.findall(r'_refuse\([^()]*?"([a-z_]+)"', broker))
    margin = broker[broker.index("def _margin_refusal") :]
    reasons |= set(re.findall(r'return "([a-z_]+)"', margin[: margin.index("\n    def ")]))
    refusal = instruments[instruments.index("def refusal") :]
    reasons |= set(re.findall(r'return "([a-z_]+)"', refusal[: refusal.index("\n    def ")]))
    reasons |= set(re.findall(r'abandon_in_flight\(self, now: float, reason: str = "([a-z_]+)"', broker))
    reasons |= set(re.findall(r'abandon_in_flight\([a-z_]+, "([a-z_]+)"\)', session))
    return reasons


def test_every_rejection_reason_is_in_the_troubleshooting_table() -> None:
    reasons = _rejection_reasons()
    # the scan finds them where they are (a change of shape would empty it, not pass it)
    assert {
        "max_notional",
        "below_min_size",
        "insufficient_margin",
        "qty_off_grid",
        "lost_at_restart",
    } <= reasons
    assert len(reasons) >= 20
    doc = (REPO / "docs/troubleshooting.md").read_text()
    table = doc[doc.index("## Order rejection reasons") :]
    missing = sorted(r for r in reasons if f"`{r}`" not in table)
    assert not missing, f"rejection reasons not in docs/troubleshooting.md: {missing}"
