"""Whole sessions on the mock feed under trio's autojump clock: minutes of session time in ms."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

from actors.session import run_session
from protocols.records import METRIC_COLUMNS, REPORT_FIELDS
from tests.conftest import TRADES_OFTEN, make_config, read_events, read_report


async def test_ten_minute_session_runs_in_seconds(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    config = make_config(tmp_path, duration_min=10)
    t0 = trio.current_time()
    # on the virtual clock (how fast it runs is the benchmark's business, not a test's)
    result = await run_session(config, handle_signals=False, progress_mode="off")
    assert trio.current_time() - t0 == pytest.approx(600.0, abs=0.01)
    report = read_report(result.run_path)
    assert report["status"] == "ok"
    assert report["stop_reason"] == "duration"
    assert report["elapsed_s"] == pytest.approx(600.0, abs=0.01)
    assert report["open_positions"] == []
    assert set(REPORT_FIELDS) <= set(report)


async def test_run_folder_contract(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    config = make_config(tmp_path, duration_min=1)
    result = await run_session(config, handle_signals=False, progress_mode="off")
    assert (tmp_path / "runs" / "latest").resolve() == result.run_path.resolve()
    events = read_events(result.run_path)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["kind"] == "session.started"
    assert events[-1]["kind"] == "session.stopped"
    assert all(e["ts"].endswith("Z") and "T" in e["ts"] for e in events)
    heartbeats = [e for e in events if e["kind"] == "heartbeat"]
    assert len(heartbeats) == 60
    csv_lines = (result.run_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].split(",") == list(METRIC_COLUMNS)
    assert len(csv_lines) - 1 == len(heartbeats)
    import json

    metrics = json.loads((result.run_path / "metrics.json").read_text())
    assert len(metrics["rows"]) == len(heartbeats)
    assert metrics["rows"][-1]["equity"] == heartbeats[-1]["equity"]


async def test_trading_session_reconciles_to_the_cent(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    config = make_config(tmp_path, *TRADES_OFTEN, duration_min=10)
    result = await run_session(config, handle_signals=False, progress_mode="off")
    report = read_report(result.run_path)
    events = read_events(result.run_path)
    fills = [e for e in events if e["kind"] == "order.filled"]
    closed = [e for e in events if e["kind"] == "position.closed"]
    assert len(fills) >= 4 and len(closed) >= 2
    assert report["fees_paid"] > 0
    assert report["open_positions"] == []
    net = report["net_pnl"]
    assert abs(net - (report["ending_equity"] - report["starting_equity"])) < 0.005
    assert abs(net - (report["realized_pnl"] - report["fees_paid"] + report["unrealized_pnl"])) < 0.005
    assert abs(report["fees_paid"] - sum(f["fee"] for f in fills)) < 0.005
    assert report["trade_count"] == len(closed)
    assert report["wins"] + report["losses"] <= report["trade_count"]
    slip = config.broker.slippage_bps / 10_000
    for f in fills:  # never better than the market offered; at most the configured slippage worse
        touch = f["ask"] if f["side"] == "buy" else f["bid"]
        worse_by = f["fill_price"] - touch if f["side"] == "buy" else touch - f["fill_price"]
        assert 0 <= worse_by <= touch * slip + 0.1
        assert "requested_price" in f and f["fee"] > 0
    assert sum(f["qty"] if f["side"] == "buy" else -f["qty"] for f in fills) == pytest.approx(0.0, abs=1e-9)


async def test_same_seed_same_result(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    a = await run_session(
        make_config(tmp_path / "a", *TRADES_OFTEN, duration_min=3), handle_signals=False, progress_mode="off"
    )
    b = await run_session(
        make_config(tmp_path / "b", *TRADES_OFTEN, duration_min=3), handle_signals=False, progress_mode="off"
    )
    ra, rb = read_report(a.run_path), read_report(b.run_path)
    for key in ("net_pnl", "fees_paid", "trade_count", "fills", "realized_pnl"):
        assert ra[key] == rb[key], key


async def test_kill_switch_stops_within_a_second_flat(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    config = make_config(tmp_path, *TRADES_OFTEN, duration_min=10)
    kill = Path(config.session.kill_switch)
    result_box = []

    async def touch_later() -> None:
        await trio.sleep(100)
        kill.touch()  # noqa: ASYNC240 (a thread would let the autojump clock run ahead)

    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(touch_later)
        result_box.append(await run_session(config, handle_signals=False, progress_mode="off"))
    report = read_report(result_box[0].run_path)
    assert report["stop_reason"] == "kill_switch"
    assert 100 <= trio.current_time() - t0 <= 101
    assert report["open_positions"] == []


def _unreadable_folder() -> Path | None:
    """A folder whose entries cannot be looked at (EACCES even for root in a container: another
    process's root), or None on a machine where it can."""
    folder = Path("/proc/1/root")
    try:
        (folder / "kill.txt").exists()
    except PermissionError:
        return folder
    return None


async def test_a_kill_switch_that_cannot_be_looked_at_is_warned_of_and_seen_once_it_can(
    tmp_path: Path, autojump_clock: trio.abc.Clock, capfd: pytest.CaptureFixture[str]
) -> None:
    """Found by an audit: the watchdog's `Path.exists` raised (EACCES, EIO, ...) and the session
    ended at once in an error with a traceback (the start lets such a path run). Now it is warned
    of once, and a file there stops the session once the path can be looked at again."""
    from actors import logs

    unreadable = _unreadable_folder()
    if unreadable is None:
        pytest.skip("no folder here whose entries raise PermissionError")
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "switch"
    link.symlink_to(unreadable)
    config = make_config(tmp_path, *TRADES_OFTEN, f"session.kill_switch={link / 'kill.txt'}", duration_min=10)
    result_box = []

    async def mend_then_touch() -> None:
        await trio.sleep(50)
        link.unlink()  # inline: a thread would let the autojump clock run ahead
        link.symlink_to(real, target_is_directory=True)
        await trio.sleep(50)
        (real / "kill.txt").touch()

    logs.configure("INFO")
    try:
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mend_then_touch)
            result_box.append(await run_session(config, handle_signals=False, progress_mode="off"))
    finally:
        logs.configure()
    report = read_report(result_box[0].run_path)
    assert (report["status"], report["stop_reason"], report["errors"]) == ("ok", "kill_switch", 0)
    assert 100 <= trio.current_time() - t0 <= 101
    assert report["open_positions"] == []
    err = capfd.readouterr().err
    assert err.count("cannot be looked at (Permission denied)") == 1, err[-2000:]
    assert "can be looked at again" in err
    assert "Traceback" not in err


async def test_actor_failure_ends_in_error_with_report(
    tmp_path: Path, autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from actors.strategies import ema_cross as strategy

    calls = 0
    real_update = strategy.EmaCross.update

    def exploding_update(self: strategy.EmaCross, close: float) -> strategy.Cross | None:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise RuntimeError("strategy bug")
        return real_update(self, close)

    monkeypatch.setattr(strategy.EmaCross, "update", exploding_update)
    result = await run_session(
        make_config(tmp_path, *TRADES_OFTEN, duration_min=2), handle_signals=False, progress_mode="off"
    )
    report = read_report(result.run_path)
    assert result.exit_code == 1
    assert report["status"] == "error"
    assert report["stop_reason"] == "error"
    assert report["errors"] >= 1
    assert "strategy bug" in report["error_messages"][0]
    assert report["open_positions"] == []


STOPS_ON_MAX_LOSS = (
    "session.interval=2s",
    "strategy.fast_period=2",
    "strategy.slow_period=5",
    "feed.mock_volatility_pct=150",
    "risk.max_orders_per_minute=100",
    "risk.max_daily_drawdown_pct=50",
    "risk.max_consecutive_losses=0",
    "risk.max_loss_pct=0.05",
    "strategy.stop_loss_pct=5",
    "strategy.take_profit_pct=5",
    "risk.sizing=fixed",
    "strategy.order_qty=0.1",
    "risk.max_position_size=1",
    "risk.max_notional=100000",
    "risk.max_leverage=10",
    "broker.leverage=10",
    "state.checkpoint_interval_s=0.1",
)


@pytest.mark.parametrize("restarted", ["before its planned end", "after its planned end"])
async def test_a_session_that_died_after_its_risk_stop_stops_again_at_its_resume(
    tmp_path: Path, autojump_clock: trio.abc.Clock, restarted: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a review: a session whose process died after its risk gate stopped it (here on
    max_loss) but before its flatten resumed trading to its planned end: its loss limit no longer
    checked, its report saying `duration`. It stops again at once for the same reason, and closes
    its position at the market's next quote. The crash: the folder as the process left it at its
    last checkpoint (its final files removed; the resume drops the events after the checkpoint).
    Restarted after its planned end too (found by an audit: the report then said `duration`)."""
    from actors import clock as clock_module
    from actors.plan import Plan
    from actors.recording import checkpoint

    config = make_config(tmp_path, *STOPS_ON_MAX_LOSS, duration_min=2)
    first = await run_session(config, handle_signals=False, progress_mode="off")
    assert read_report(first.run_path)["stop_reason"] == "max_loss"
    state = checkpoint.load(first.run_path).state["parts"]
    assert state["risk"]["stopping"] and state["risk"]["stop_reason"] == "max_loss"
    assert state["account"]["position_qty"] != 0  # the last checkpoint: stopped, not yet flat
    for name in ("final_report.json", "metrics.json", "report.html"):
        (first.run_path / name).unlink()
    if restarted == "after its planned end":  # the resumed process's clock: 3 minutes on
        monkeypatch.setattr(clock_module, "time", SimpleNamespace(time=lambda: time.time() + 180))
    t0 = trio.current_time()
    resume = Plan(resume=first.run_path)  # what a plain start finds (actors/plan.py)
    second = await run_session(config, plan=resume, handle_signals=False, progress_mode="off")
    assert second.run_path == first.run_path
    assert trio.current_time() - t0 < 5  # not to its planned end, 2 minutes on
    report = read_report(second.run_path)
    assert (report["stop_reason"], report["resumes"], report["open_positions"]) == ("max_loss", 1, [])
    events = read_events(second.run_path)
    (resumed,) = [e for e in events if e["kind"] == "session.resumed"]
    after = events[events.index(resumed) + 1 :]
    assert not [e for e in after if e["kind"] == "order.submitted" and not e.get("reduce_only")]
    assert [e["reason"] for e in after if e["kind"] == "order.submitted"] == ["flatten_on_exit"]


@pytest.mark.parametrize("interrupted_by", ["SIGTERM", "kill switch"])
@pytest.mark.parametrize("restarted", ["before its planned end", "after its planned end"])
async def test_a_signal_or_the_kill_switch_at_a_resume_after_a_risk_stop_keeps_its_reason(
    tmp_path: Path,
    autojump_clock: trio.abc.Clock,
    restarted: str,
    interrupted_by: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by an audit: a session that died after its risk gate stopped it (max_loss) stops
    again at its resume, waiting for the market's next quote to close at; a SIGTERM (here: one
    that came while the CLI started it, taken as the session starts) or the kill switch ended that
    wait, and the report said `signal` / `kill_switch`: the max_loss stop was lost from the
    record. It ends the wait (the session stops at once) and the reason stays max_loss."""
    import os
    import signal

    from actors import clock as clock_module
    from actors import signals
    from actors.plan import Plan

    config = make_config(tmp_path, *STOPS_ON_MAX_LOSS, duration_min=2)
    first = await run_session(config, handle_signals=False, progress_mode="off")
    assert read_report(first.run_path)["stop_reason"] == "max_loss"
    for name in ("final_report.json", "metrics.json", "report.html"):
        (first.run_path / name).unlink()
    if restarted == "after its planned end":  # the resumed process's clock: 3 minutes on
        monkeypatch.setattr(clock_module, "time", SimpleNamespace(time=lambda: time.time() + 180))
    handlers = {signum: signal.getsignal(signum) for signum in (*signals.SIGNALS, signals.HANGUP)}
    try:
        if interrupted_by == "SIGTERM":  # as the CLI holds it (actors/main.py) until the session listens
            signals.hold_signals()
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 5
            while not signals._held:  # the handler runs in this thread at its next bytecode
                assert time.monotonic() < deadline, "SIGTERM not delivered"
        else:
            Path(config.session.kill_switch).touch()  # noqa: ASYNC240 (before the session)
        t0 = trio.current_time()
        second = await run_session(
            config, plan=Plan(resume=first.run_path), handle_signals=True, progress_mode="off"
        )
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        signals._held.clear()
        signals._ended.clear()
    assert trio.current_time() - t0 < 5
    report = read_report(second.run_path)
    assert (report["status"], report["stop_reason"], report["open_positions"]) == ("ok", "max_loss", [])
    stopped = read_events(second.run_path)[-1]
    assert stopped["kind"] == "session.stopped"
    assert stopped["detail"].endswith("(stopped again at the resume)")
    assert second.exit_code == 0


@pytest.mark.parametrize("action", ["stop", "halt"])
async def test_a_resume_under_a_breaker_limit_the_session_has_reached_trips_it(
    tmp_path: Path, autojump_clock: trio.abc.Clock, action: str
) -> None:
    """Found by the crash audit: a max_consecutive_losses lowered for a resume, which the
    restored streak had reached already, was looked at only when the next trade closed (so was a
    lowered max_daily_drawdown_pct, until the broker's watch restored under the old floor fired),
    while max_trades stops at once. Now the breaker trips at the resume: set to stop, the session
    stops at once, flat, as for max_trades; set to halt, no entry is made and its position is
    closed by the breaker's flatten at the first quote after the resume (not the one of before the
    crash). The crash: a session ended on its duration, its folder as at its last checkpoint (one
    losing trade in a row, a short open)."""
    from actors.plan import Plan
    from actors.recording import checkpoint

    first = await run_session(
        make_config(tmp_path, *TRADES_OFTEN, duration_min=2), handle_signals=False, progress_mode="off"
    )
    saved = checkpoint.load(first.run_path).state
    assert saved["parts"]["risk"]["consecutive_losses"] == 1 and saved["parts"]["account"]["position_qty"] < 0
    for name in ("final_report.json", "metrics.json", "report.html"):
        (first.run_path / name).unlink()
    config = make_config(
        tmp_path, *TRADES_OFTEN, "risk.max_consecutive_losses=1", f"risk.on_breaker={action}", duration_min=2
    )
    second = await run_session(
        config, plan=Plan(resume=first.run_path), handle_signals=False, progress_mode="off"
    )
    events = read_events(second.run_path)
    (resumed,) = [e for e in events if e["kind"] == "session.resumed"]
    after = events[events.index(resumed) + 1 :]
    (tripped,) = [e for e in after if e["kind"] == "breaker.tripped"]
    assert (tripped["reason"], tripped["action"]) == ("max_consecutive_losses", action)
    assert not [e for e in after if e["kind"] == "order.submitted" and not e.get("reduce_only")]  # no entry
    submitted = [e for e in after if e["kind"] == "order.submitted"]
    report = read_report(second.run_path)
    assert report["open_positions"] == []
    if action == "stop":
        assert [e["reason"] for e in submitted] == ["flatten_on_exit"]
        assert report["stop_reason"] == "breaker"
        assert events[-1]["detail"].endswith("(a limit given at the resume)")
        return
    assert [e["reason"] for e in submitted] == ["breaker"]
    (closing,) = submitted
    assert closing["ts"] > resumed["ts"] and closing["quote_age_s"] < 5  # a quote of after the resume
    assert report["stop_reason"] == "duration"


async def test_a_resume_moves_aside_the_alerts_of_the_events_it_discards(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Found by the crash audit: a resume takes the events after its checkpoint out of
    events.jsonl and gives their seqs to the events that follow, but alerts.jsonl kept the alerts
    of those events: a line naming seq N named another event since. They are moved to
    alerts.discarded.jsonl (`after_seq`: the checkpoint's seq); a health alert (no seq) stays; the
    validator checks each alert left against its event. The crash: a session's folder as at its
    last checkpoint, its process having died in an error after it (its `error` event and its
    `session_error` alert, the event and the line, written past the checkpoint)."""
    import json

    from actors.plan import Plan
    from actors.recording import checkpoint
    from tools.validate_session import check_alerts, load_events

    config = make_config(tmp_path, *TRADES_OFTEN, duration_min=2)
    first = await run_session(config, handle_signals=False, progress_mode="off")
    run = first.run_path
    saved = checkpoint.load(run).state["seq"]
    lines = (run / "events.jsonl").read_text().splitlines(keepends=True)
    stopped = json.loads(lines[-1])
    seq, ts = stopped["seq"], stopped["ts"]
    assert seq > saved + 1
    message = "the session ends on an error (session): boom"
    fields = {
        "rule": "session_error",
        "severity": "critical",
        "message": message,
        "details": {"where": "session"},
    }
    error = {"seq": seq, "ts": ts, "kind": "error", "where": "session", "message": "boom"}
    lines[-1:] = [
        json.dumps(error) + "\n",
        json.dumps({"seq": seq + 1, "ts": ts, "kind": "alert", **fields}) + "\n",
    ]
    (run / "events.jsonl").write_text("".join(lines))
    memory = {"ts": ts, "run_id": run.name, "seq": None, "rule": "memory", "severity": "warning",
              "message": "resident memory 900 MB is above alerts.max_rss_mb = 800 MB", "details": {}}  # fmt: skip
    dead = {"ts": ts, "run_id": run.name, "seq": seq + 1, **fields}
    (run / "alerts.jsonl").write_text(json.dumps(memory) + "\n" + json.dumps(dead) + "\n")
    for name in ("final_report.json", "metrics.json", "report.html"):
        (run / name).unlink()
    await run_session(config, plan=Plan(resume=run), handle_signals=False, progress_mode="off")
    aside = [json.loads(line) for line in (run / "alerts.discarded.jsonl").read_text().splitlines()]
    assert aside == [{"after_seq": saved, "alert": dead}]
    kept = [json.loads(line) for line in (run / "alerts.jsonl").read_text().splitlines()]
    assert kept[0] == memory and dead not in kept
    assert [a["rule"] for a in kept[1:]] == ["resume"]  # the resumed session's own
    events, _ = load_events(run / "events.jsonl")
    assert check_alerts(run, events, finished=True) == []


async def test_a_resume_lists_the_fills_it_discarded_and_never_gives_their_ids_again(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Found by an audit: a fill printed on the console (and sent to the webhook) just before a
    crash, written after the last checkpoint, vanished at the resume without a word, and its fill
    id was given to another fill. Now `session.resumed` lists each fill it discarded, the console
    prints an UNDONE line for it, and no order or fill id the discarded events gave is given again.
    The crash: a session stopped on max_loss, its folder as at its last checkpoint (stopped, not yet
    flat): its flatten's events come after it."""
    from actors.console import discarded_line
    from actors.plan import Plan
    from actors.recording import checkpoint

    config = make_config(tmp_path, *STOPS_ON_MAX_LOSS, duration_min=2)
    first = await run_session(config, handle_signals=False, progress_mode="off")
    before = read_events(first.run_path)
    saved = checkpoint.load(first.run_path).state["seq"]
    lost = [e for e in before if e["seq"] > saved and e["kind"] == "order.filled"]
    assert lost and all(e["reason"] == "flatten_on_exit" for e in lost)
    lost_ids = {e[k] for e in before if e["seq"] > saved for k in ("order_id", "fill_id") if k in e}
    for name in ("final_report.json", "metrics.json", "report.html"):
        (first.run_path / name).unlink()
    second = await run_session(
        config, plan=Plan(resume=first.run_path), handle_signals=False, progress_mode="off"
    )
    events = read_events(second.run_path)
    assert events[:saved] == before[:saved]  # the record up to the checkpoint, as it was
    (resumed,) = [e for e in events if e["kind"] == "session.resumed"]
    fields = ("ts", "fill_id", "order_id", "strategy_id", "symbol", "side", "qty", "fill_price")
    assert resumed["discarded_fills"] == [{k: e[k] for k in fields} for e in lost]
    assert resumed["discarded_events"] == len(before) - saved
    after = events[events.index(resumed) + 1 :]
    # the orders and fills that came to be after the resume (not the stops and targets placed
    # before the checkpoint, which its flatten cancels again)
    made = {e["order_id"] for e in after if e["kind"] in ("order.submitted", "order.working", "order.filled")}
    made |= {e["fill_id"] for e in after if e["kind"] == "order.filled"}
    made -= {e["order_id"] for e in before[:saved] if "order_id" in e}
    assert [e for e in after if e["kind"] == "order.filled"]  # it flattened again, under new ids
    assert made and not made & lost_ids, (made, lost_ids)
    line = discarded_line(resumed["discarded_fills"][0])
    assert line.startswith("UNDONE ") and lost[0]["fill_id"] in line and "last checkpoint" in line


async def test_a_second_crash_before_the_resumed_session_checkpoints_loses_no_discarded_fill(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Found by a review: a resume takes the events written after the checkpoint out of
    `events.jsonl`; when the resumed process died too before its own first checkpoint, the next
    resume knew nothing of the first one's discarded fills: none listed, their ids given again
    (the flatten's `flatten-1` among them). They are kept (`events.discarded.jsonl`) before
    `events.jsonl` loses them. The crashes: the session of the test above; then its resume, run to
    its end, with its folder put back to the first process's last checkpoint, as a kill after the
    resume's flatten was written but before its checkpoint leaves it."""
    import json
    import shutil

    from actors.plan import Plan
    from actors.recording import checkpoint

    config = make_config(tmp_path, *STOPS_ON_MAX_LOSS, duration_min=2)
    first = await run_session(config, handle_signals=False, progress_mode="off")
    path = first.run_path
    saved = checkpoint.load(path).state["seq"]
    kept = tmp_path / "kept"
    kept.mkdir()
    for name in ("checkpoint.json", "checkpoint.prev.json"):
        shutil.copy2(path / name, kept / name)
    finals = ("final_report.json", "metrics.json", "report.html")
    before = read_events(path)

    def crash() -> None:  # the folder as at the first process's last checkpoint, events since kept
        for name in finals:
            (path / name).unlink()
        for name in ("checkpoint.json", "checkpoint.prev.json"):
            shutil.copy2(kept / name, path / name)

    crash()
    await run_session(config, plan=Plan(resume=path), handle_signals=False, progress_mode="off")
    middle = read_events(path)
    crash()
    await run_session(config, plan=Plan(resume=path), handle_signals=False, progress_mode="off")
    events = read_events(path)

    def fills_after(record: list[dict]) -> list[dict]:
        return [e for e in record if e["seq"] > saved and e["kind"] == "order.filled"]

    first_lost, second_lost = fills_after(before), fills_after(middle)
    assert first_lost and second_lost
    (resumed,) = [e for e in events if e["kind"] == "session.resumed"]
    # both processes' fills after the checkpoint, the first's named by the second's resume too
    assert [f["fill_id"] for f in resumed["discarded_fills"]] == [
        f["fill_id"] for f in first_lost + second_lost
    ]
    # and the count they are of is both processes' events after it
    assert resumed["discarded_events"] == len(before) - saved + len(middle) - saved
    lost_ids = {e[k] for e in before + middle if e["seq"] > saved for k in ("order_id", "fill_id") if k in e}
    made = {e[k] for e in events if e["seq"] > saved for k in ("order_id", "fill_id") if k in e}
    made -= {e["order_id"] for e in before[:saved] if "order_id" in e}
    assert made and not made & lost_ids, (made, lost_ids)
    # every event either process took out of events.jsonl, against the checkpoint it resumed from
    with (path / "events.discarded.jsonl").open() as f:
        discarded = [json.loads(line) for line in f]
    assert {d["resume_seq"] for d in discarded} == {saved}
    assert [d["event"] for d in discarded] == before[saved:] + middle[saved:]


async def test_a_live_sessions_run_folder_and_latest_are_durable_in_the_run_dir(
    tmp_path: Path, autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the crash audit: a live session's checkpoints sync its run folder's own entries,
    never the run dir's, so a power loss could lose the folder's creation or `latest`'s move to
    it (the next start would not resume it). The run dir is fsynced once `latest` points at the
    new folder, before the session's first checkpoint. The standard library's calls watched."""
    import os

    config = make_config(tmp_path, *TRADES_OFTEN, duration_min=0.05)
    run_dir = Path(config.session.run_dir)
    ops: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        there = os.stat(run_dir) if run_dir.exists() else None
        if there is not None and (st.st_dev, st.st_ino) == (there.st_dev, there.st_ino):
            ops.append("fsync run dir")
        elif any(os.path.samestat(st, os.stat(p)) for p in run_dir.glob("*/checkpoint.json.tmp")):
            ops.append("fsync checkpoint")
        real_fsync(fd)

    def replace(src: object, dst: object) -> None:
        if Path(str(dst)) == run_dir / "latest":
            ops.append("replace latest")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    await run_session(config, handle_signals=False, progress_mode="off")
    monkeypatch.undo()
    assert ops[:3] == ["replace latest", "fsync run dir", "fsync checkpoint"]
