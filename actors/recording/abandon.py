"""Closing, as abandoned, a run folder whose process died before its first checkpoint.

A live session writes its first checkpoint a few tens of milliseconds after it creates
`events.jsonl`. A process killed in between (`kill -9`, a power cut) leaves a run folder that is
unfinished (no `final_report.json`) but cannot be resumed (no checkpoint to restore). The next
start closes it instead, so that it never blocks a later one:

- a torn last line of `events.jsonl` (the process died in the middle of a write) is dropped, and
  one of `market.jsonl` cut off;
- a `session.stopped` event is appended with status and stop reason `abandoned`, at the time of the
  last event recorded, with the fields a normal stop has, derived from the events (the position it
  may have had went with the process: paper only, so nothing is flattened and nothing is open);
- `metrics.json`, `metrics.csv` and `final_report.json` are written from the events, as the
  recorder does at the end of a session (`protocols.records.ReportBuilder`).

Every file is replaced atomically and `final_report.json` comes last, so a start killed while
closing leaves a folder that the next start closes again, with the same result. A folder whose
`events.jsonl` holds no `session.started` (the first lines had not reached the disk) recorded
nothing that a report could be made of: it is left as it is.

Backtests and replays keep no checkpoint at all: one killed before its end (`kill -9`, out of
memory) is closed the same way by the next start in its run dir, whatever that start runs, and its
`session.stopped` and the warning say it was a backtest (or a replay), not a live session.
"""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
from loguru import logger

from actors.lock import SessionLock
from actors.recording import checkpoint
from actors.recording.alerts import set_aside
from actors.recording.html_report import write_report_html
from actors.recording.storage import FaultNote, cut_torn_tail, noted_fault, temp_file
from protocols.records import (
    METRIC_COLUMNS,
    METRIC_FIELDS,
    NO_HEALTH,
    ReportBuilder,
    dumps_line,
    metric_decimals,
    metrics_csv_values,
    metrics_document,
)

ABANDONED = "abandoned"
EVENTS = "events.jsonl"


@attrs.frozen
class Abandoned:
    """What closing a run folder found and did."""

    run_path: Path
    closed: bool  # False: no session.started recorded, the folder was left as it is
    dropped_lines: int = 0  # unreadable lines dropped from events.jsonl (a torn last write)
    fills: int = 0
    positions: dict[str, float] = attrs.Factory(dict)  # what the fills left open, per symbol
    report: dict[str, Any] | None = None
    ran_on: str = "live"  # "backtest" or "replay": a run that keeps no checkpoint at all


def run_kind(started: dict[str, Any]) -> str:
    """`backtest`, `replay` or `live`, from a run's `session.started` record (its data source)."""
    source = str(started.get("data_source") or "")
    if source.startswith("backtest:"):
        return "backtest"
    if source.startswith("replay of "):
        return "replay"
    return "live"


def open_positions(fills: list[dict[str, Any]], default_symbol: str) -> dict[str, float]:
    """Each symbol's position the fills leave (flat symbols left out)."""
    positions: dict[str, float] = {}
    for fill in fills:
        symbol = fill.get("symbol") or default_symbol
        signed = fill["qty"] if fill["side"] == "buy" else -fill["qty"]
        positions[symbol] = positions.get(symbol, 0.0) + signed
    return {symbol: round(qty, 8) for symbol, qty in positions.items() if round(qty, 8)}


def has_checkpoint(run_path: Path) -> bool:
    return any((run_path / name).exists() for name in (checkpoint.NEWEST, checkpoint.PREVIOUS))


FLAT = 1e-9  # a position this small is flat


def read_events(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The event records of an events.jsonl that may end in a torn line, and how many lines could
    not be read (read as bytes: a write cut inside a UTF-8 character is torn too, not an error)."""
    records: list[dict[str, Any]] = []
    dropped = 0
    for raw in path.read_bytes().splitlines():
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            dropped += 1
            continue
        if isinstance(record, dict) and "seq" in record and "kind" in record and "ts" in record:
            records.append(record)
        else:
            dropped += 1
    return records, dropped


def whole_steps(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records up to the end of the last whole step: a process killed in a step may have
    written a fill that closes a position but not its `position.closed` (the file is written in
    chunks, not by steps; found by a review: 6 of 25 backtests killed at random were closed into
    folders the validator refused). Cut before the first closing fill whose trade never came."""
    held: dict[str, float] = {}
    waiting: dict[str, list[int]] = {}  # by symbol: the closing fills not yet matched
    default = records[0].get("symbol") or "" if records else ""
    for i, record in enumerate(records):
        kind = record["kind"]
        symbol = record.get("symbol") or default
        if kind == "order.filled" and isinstance(record.get("position_qty"), int | float):
            before, after = held.get(symbol, 0.0), float(record["position_qty"])
            held[symbol] = after
            if abs(before) > FLAT and (abs(after) <= FLAT or (after > 0) != (before > 0)):
                waiting.setdefault(symbol, []).append(i)
        elif kind == "position.closed" and waiting.get(symbol):
            waiting[symbol].pop(0)
    cut = min((i for indices in waiting.values() for i in indices), default=len(records))
    return records[:cut]


def _ts(iso_ts: str) -> float:
    return datetime.fromisoformat(iso_ts.replace("Z", "+00:00")).timestamp()


def stopped_record(records: list[dict[str, Any]], detail: str) -> dict[str, Any]:
    """The `session.stopped` record closing these events as abandoned."""
    started, last = records[0], records[-1]
    builder = ReportBuilder()
    data_source = started["data_source"]
    for record in records:
        builder.add(record)
        if record["kind"] == "feed.fallback" and record.get("data_source"):
            data_source = record["data_source"]
    fees = builder.fees["maker"] + builder.fees["taker"]
    equity = started["starting_equity"] + builder.realized_pnl - fees - builder.funding_paid
    return {
        "seq": last["seq"] + 1,
        "ts": last["ts"],
        "kind": "session.stopped",
        "status": ABANDONED,
        "stop_reason": ABANDONED,
        "detail": detail,
        "elapsed_s": round(_ts(last["ts"]) - _ts(started["ts"]), 3),
        "data_source": data_source,
        "feed_down_s": 0.0,
        "ending_equity": round(equity, 6),
        "unrealized_pnl": 0.0,
        "max_drawdown_pct": round(builder.max_drawdown_pct, 4),
        "open_positions": [],
    }


def _replace(path: Path, data: str) -> None:
    # the temporary file removed when the write is cut (found by the stop audit: a SIGTERM to the
    # start closing the folder left it there for good)
    with temp_file(path) as tmp:
        with tmp.open("w", encoding="utf-8", newline="") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def _metrics_csv(rows: list[dict[str, Any]], symbol: str) -> str:
    """As the recorder writes it (rounded for people); the health columns stay empty: the samples
    were not in the events."""
    price_dp, qty_dp = metric_decimals(symbol)
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(METRIC_COLUMNS)
    writer.writerows(metrics_csv_values(row, price_dp, qty_dp) for row in rows)
    return out.getvalue()


def _cut_torn_line(path: Path) -> None:
    """market.jsonl cut back to its last whole line (a kill in its write tears it; found by an
    audit: the closed run's validator and page then read a line that is not a record)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        cut_torn_tail(fd)
    finally:
        os.close(fd)


def close_abandoned(run_path: Path) -> Abandoned:
    """Close a run folder that has no checkpoint as abandoned (see the module docstring).

    Holds the session's lock meanwhile (`SessionLocked` when a live process owns the folder).
    Closing a folder already closed, or closed halfway by a killed start, gives the same files.
    """
    with SessionLock(run_path):
        records, dropped = read_events(run_path / EVENTS)
        if not records or records[0]["kind"] != "session.started":
            return Abandoned(run_path, closed=False, dropped_lines=dropped)
        unfinished = 0
        if records[-1]["kind"] != "session.stopped":
            whole = whole_steps(records)
            unfinished, records = len(records) - len(whole), whole
        fills = [r for r in records if r["kind"] == "order.filled"]
        positions = open_positions(fills, records[0].get("symbol") or "")
        kind = run_kind(records[0])
        if records[-1]["kind"] != "session.stopped":
            # the alerts of the events left out (a step cut, lines lost with the process's buffer)
            # moved aside before the events they no longer name are given their seqs (found by the
            # crash audit), as a resume does
            set_aside(run_path, records[-1]["seq"])
            detail = (
                "killed before its first checkpoint (no checkpoint.json): closed by the next start"
                if kind == "live"
                else f"a {kind} killed before its end (a {kind} keeps no checkpoint): closed by the next start"
            )
            if fills and positions:
                held = ", ".join(f"{symbol} {qty:+.8f}" for symbol, qty in positions.items())
                detail += (
                    f"; it had {len(fills)} fill(s), its position ({held}) was lost with the process (paper)"
                )
            elif fills:  # found by a report audit: said lost of a flat run's position
                detail += f"; it had {len(fills)} fill(s) and was flat then"
            if unfinished:
                detail += f"; the {unfinished} event(s) of the step it was killed in were left out"
            fault = FaultNote(run_path).read()
            if fault is not None:  # it had stopped on a storage fault, with no room for its record
                last = records[-1]
                records.append(
                    {
                        "seq": last["seq"] + 1,
                        "ts": last["ts"],
                        "kind": "error",
                        **noted_fault(fault, "the close"),
                    }
                )
                detail += "; it had stopped on a storage fault (its error event says which)"
            records.append(stopped_record(records, detail))
            rewrite = True
        else:  # closed already by a start that was killed before it wrote the report
            rewrite = dropped > 0
        if rewrite:
            _replace(run_path / EVENTS, "".join(dumps_line(r) + "\n" for r in records))
        _cut_torn_line(run_path / "market.jsonl")
        builder = ReportBuilder()
        for record in records:
            builder.add(record)
        rows = [
            {**{k: r.get(k) for k in METRIC_FIELDS}, **NO_HEALTH} for r in records if r["kind"] == "heartbeat"
        ]
        _replace(run_path / "metrics.csv", _metrics_csv(rows, records[0].get("symbol") or ""))
        metrics = metrics_document(rows)
        _replace(run_path / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False) + "\n")
        report = builder.report()
        # the files above renamed durably before the report that makes the folder finished (found
        # by the crash audit: a power loss could keep the report and lose an earlier rename)
        checkpoint.fsync_dir(run_path)
        _replace(run_path / "final_report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
        FaultNote(run_path).remove()  # the final record is written (found by a review: left behind)
        checkpoint.fsync_dir(run_path)
        write_report_html(run_path)  # after the report, as a session's recorder does
    return Abandoned(
        run_path,
        closed=True,
        dropped_lines=dropped,
        fills=len(fills),
        positions=positions,
        report=report,
        ran_on=kind,
    )


def close_and_warn(run_path: Path) -> Abandoned:
    """`close_abandoned`, with a warning that names the run folder and says what was lost."""
    result = close_abandoned(run_path)
    if not result.closed:
        logger.warning(
            "run folder {} was killed before it recorded anything (no session.started in {}): "
            "left as it is; starting a new session",
            run_path,
            EVENTS,
        )
        return result
    report = result.report
    assert report is not None
    torn = f"; {result.dropped_lines} torn line(s) of {EVENTS} dropped" if result.dropped_lines else ""
    why = (
        "was killed before its first checkpoint and cannot be resumed"
        if result.ran_on == "live"
        else f"is a {result.ran_on} killed before its end (a {result.ran_on} keeps no checkpoint to resume from)"
    )
    logger.warning(
        "run folder {} {}: closed it as {} (its last event at {}; final_report.json written{}); "
        "starting a new session",
        run_path,
        why,
        report["status"],
        report["ended_at"],
        torn,
    )
    if result.fills:
        held = ", ".join(f"{symbol} {qty:+.8f}" for symbol, qty in result.positions.items())
        lost = (
            f"the position it had then ({held}) was lost with its process (paper only)"
            if held
            else "it was flat then"
        )
        logger.warning(
            "the abandoned session {} had traded ({} fill(s), realized pnl {:+.2f} USDT, fees {:.2f}); {}",
            run_path.name,
            result.fills,
            report["realized_pnl"],
            report["fees_paid"],
            lost,
        )
    return result
