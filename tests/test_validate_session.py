"""The validator passes a real session's run folder and catches each kind of tampering."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from actors.session import run_session
from tests.conftest import TRADES_OFTEN, make_config, read_events
from tools.validate_session import main, validate


async def _trading_run(tmp_path: Path) -> Path:
    result = await run_session(
        make_config(tmp_path, *TRADES_OFTEN, duration_min=5), handle_signals=False, progress_mode="off"
    )
    assert any(e["kind"] == "order.filled" for e in read_events(result.run_path))
    return result.run_path


async def test_real_session_validates(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    run = await _trading_run(tmp_path)
    assert validate(run) == []
    assert main([str(run)]) == 0


async def test_tampered_report_is_caught(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    run = await _trading_run(tmp_path)
    report = json.loads((run / "final_report.json").read_text())
    report["net_pnl"] += 1.0
    (run / "final_report.json").write_text(json.dumps(report))
    problems = validate(run)
    assert any("net_pnl" in p for p in problems)
    assert main([str(run)]) == 1


async def test_missing_event_and_doubled_fill_are_caught(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    run = await _trading_run(tmp_path)
    lines = (run / "events.jsonl").read_text().splitlines()
    fill_at = next(i for i, line in enumerate(lines) if '"order.filled"' in line)
    doubled = [*lines[: fill_at + 1], lines[fill_at], *lines[fill_at + 1 :]]
    (run / "events.jsonl").write_text("\n".join(doubled) + "\n")
    problems = validate(run)
    assert any("seq" in p for p in problems)
    assert any("more than once" in p for p in problems)


def test_not_a_run_folder_exits_2(tmp_path: Path) -> None:
    assert main([str(tmp_path)]) == 2
