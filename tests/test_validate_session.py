"""The validator passes a real session's run folder and catches each kind of tampering."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors.recording.abandon import close_abandoned
from actors.session import run_session
from tests.conftest import TRADES_OFTEN, make_config, read_events
from tests.test_crash_resume import write_killed_run
from tools.validate_session import main, validate


@pytest.fixture(scope="module")
def _trading_run_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real 5-minute session that trades (on an autojump clock), for every test to copy."""
    tmp_path = tmp_path_factory.mktemp("trading")
    config = make_config(tmp_path, *TRADES_OFTEN, duration_min=5)
    result = trio.run(
        partial(run_session, config, handle_signals=False, progress_mode="off"),
        clock=trio.testing.MockClock(autojump_threshold=0),
    )
    assert any(e["kind"] == "order.filled" for e in read_events(result.run_path))
    return result.run_path


@pytest.fixture
def trading_run(_trading_run_once: Path, tmp_path: Path) -> Path:
    """A copy of the real session's run folder, to tamper with."""
    return Path(shutil.copytree(_trading_run_once, tmp_path / _trading_run_once.name))


def test_real_session_validates(trading_run: Path) -> None:
    assert validate(trading_run) == []
    assert main([str(trading_run)]) == 0


def test_tampered_report_is_caught(trading_run: Path) -> None:
    run = trading_run
    report = json.loads((run / "final_report.json").read_text())
    report["net_pnl"] += 1.0
    (run / "final_report.json").write_text(json.dumps(report))
    problems = validate(run)
    assert any("net_pnl" in p for p in problems)
    assert main([str(run)]) == 1


def test_missing_event_and_doubled_fill_are_caught(trading_run: Path) -> None:
    run = trading_run
    lines = (run / "events.jsonl").read_text().splitlines()
    fill_at = next(i for i, line in enumerate(lines) if '"order.filled"' in line)
    doubled = [*lines[: fill_at + 1], lines[fill_at], *lines[fill_at + 1 :]]
    (run / "events.jsonl").write_text("\n".join(doubled) + "\n")
    problems = validate(run)
    assert any("seq" in p for p in problems)
    assert any("more than once" in p for p in problems)


@pytest.mark.parametrize("damage", ["no_kind", "null_fill_fields", "not_an_object", "report_garbled"])
def test_malformed_records_are_problems_not_tracebacks(
    trading_run: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by an audit: `{"seq":999}` or a fill with null fields crashed the validator (and the
    monitor) with a KeyError/TypeError traceback."""
    from tools.monitor import SessionView

    run = trading_run
    lines = (run / "events.jsonl").read_text().splitlines()
    fill_at = next(i for i, line in enumerate(lines) if '"order.filled"' in line)
    if damage == "no_kind":
        lines.append(json.dumps({"seq": len(lines) + 1}))
    elif damage == "null_fill_fields":
        fill = json.loads(lines[fill_at])
        lines[fill_at] = json.dumps({**fill, "order_id": None, "qty": None, "fill_price": None})
        del fill["order_id"]
        lines.append(json.dumps(fill))
    elif damage == "not_an_object":
        lines.append("[1, 2]")
    else:
        (run / "final_report.json").write_text('{"net_pnl": ')
    (run / "events.jsonl").write_text("\n".join(lines) + "\n")
    problems = validate(run)
    assert problems
    assert main([str(run)]) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    view = SessionView(run)
    for line in lines:
        record = json.loads(line)
        view.fold(record if isinstance(record, dict) else {"seq": 0})  # no exception


def test_an_unfinished_run_is_said_to_be_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_killed_run(tmp_path, trades=True)
    whole = [line for line in (run / "events.jsonl").read_text().splitlines() if line.endswith("}")]
    (run / "events.jsonl").write_text("\n".join(whole) + "\n")  # without its torn last line
    assert main([str(run)]) == 0
    assert "OK (unfinished: no final_report.json yet" in capsys.readouterr().err


def test_not_a_run_folder_exits_2(tmp_path: Path) -> None:
    assert main([str(tmp_path)]) == 2


# --- abandoned runs (killed before their first checkpoint, closed by the next start) ---


def _abandoned_run(tmp_path: Path) -> Path:
    run = write_killed_run(tmp_path, trades=True)  # a long open when the process died
    close_abandoned(run)
    return run


def _rewrite(run: Path, name: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Apply `change` to the final report, or to the last event (the session.stopped)."""
    if name == "final_report.json":
        report = json.loads((run / name).read_text())
        change(report)
        (run / name).write_text(json.dumps(report))
        return
    lines = (run / name).read_text().splitlines()
    last = json.loads(lines[-1])
    change(last)
    (run / name).write_text("\n".join([*lines[:-1], json.dumps(last)]) + "\n")


def test_abandoned_run_validates_though_not_flat(tmp_path: Path) -> None:
    run = _abandoned_run(tmp_path)
    assert read_events(run)[-1]["status"] == "abandoned"
    assert validate(run) == []
    assert main([str(run)]) == 0


def test_abandoned_run_with_something_open_is_caught(tmp_path: Path) -> None:
    run = _abandoned_run(tmp_path)
    open_position = [{"side": "long", "qty": 0.01}]
    for name in ("events.jsonl", "final_report.json"):  # consistent with each other, still wrong
        _rewrite(run, name, lambda record: record.update(open_positions=open_position))
    problems = validate(run)
    assert problems == [f"abandoned run: unrealized_pnl 0.0 and open_positions {open_position} "
                        "(nothing can be open after its process died)"]  # fmt: skip


def test_abandoned_run_with_another_stop_reason_is_caught(tmp_path: Path) -> None:
    run = _abandoned_run(tmp_path)
    for name in ("events.jsonl", "final_report.json"):
        _rewrite(run, name, lambda record: record.update(stop_reason="duration"))
    assert validate(run) == ["abandoned run: stop_reason 'duration', not 'abandoned'"]


def test_a_clean_end_must_still_be_flat(tmp_path: Path) -> None:
    run = _abandoned_run(tmp_path)  # the fills leave a long
    for name in ("events.jsonl", "final_report.json"):
        _rewrite(run, name, lambda record: record.update(status="ok", stop_reason="duration"))
    problems = validate(run)
    assert problems == ["session ended ok but the fills leave a position of +0.01000000 BTCUSDT"]


def test_a_fill_allocated_to_another_strategy_than_its_orders_is_caught(trading_run: Path) -> None:
    """An order of a strategy's is wholly its own (found by an audit: a fill booked to another
    strategy passed once the report was rebuilt from the same events)."""
    lines = (trading_run / "events.jsonl").read_text().splitlines()
    at = next(
        i for i, line in enumerate(lines) if '"order.filled"' in line and '"strategy_id":"ema_cross"' in line
    )
    fill = json.loads(lines[at])
    fill["allocations"] = [["someone_else", *fill["allocations"][0][1:]]]
    lines[at] = json.dumps(fill)
    (trading_run / "events.jsonl").write_text("\n".join(lines) + "\n")
    assert any(
        "an order of strategy 'ema_cross' allocated to ['someone_else']" in p for p in validate(trading_run)
    )
