"""Recorder actor: the one writer of the run folder.

It numbers events (`seq` 1, 2, 3, ... with no gaps) as it writes them to `events.jsonl`, writes a
metrics row per heartbeat, and when every sender has closed its channel it writes `metrics.json` and
`final_report.json`, the report derived from the events it wrote. Writes are buffered and flushed
once a second (and at the end), so no actor waits on the disk.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import IO, Any

import trio
from loguru import logger

from protocols.messages import Event
from protocols.records import METRIC_FIELDS, ReportBuilder, dumps_line, event_record

FLUSH_EVERY_S = 1.0


def create_run_folder(run_dir: Path, run_id: str) -> Path:
    """Make `<run_dir>/<run_id>/` and point `<run_dir>/latest` at it (atomically)."""
    path = run_dir / run_id
    path.mkdir(parents=True, exist_ok=False)
    tmp = run_dir / f".latest.{run_id}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_id, target_is_directory=True)
    os.replace(tmp, run_dir / "latest")
    return path


class Recorder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.seq = 0
        self.report_builder = ReportBuilder()
        self.metrics: list[dict[str, Any]] = []
        self.report: dict[str, Any] | None = None
        self._events: IO[str] = (path / "events.jsonl").open("a", encoding="utf-8")
        self._metrics_file: IO[str] = (path / "metrics.csv").open("w", encoding="utf-8", newline="")
        self._metrics_csv = csv.DictWriter(self._metrics_file, fieldnames=METRIC_FIELDS)
        self._metrics_csv.writeheader()
        self._log_sink = logger.add(path / "session.log", level="DEBUG", enqueue=False, diagnose=False)

    def write(self, event: Event) -> None:
        self.seq += 1
        record = event_record(self.seq, event)
        self._events.write(dumps_line(record) + "\n")
        self.report_builder.add(record)
        if event.kind == "heartbeat":
            row = {k: record.get(k) for k in METRIC_FIELDS}
            self.metrics.append(row)
            self._metrics_csv.writerow(row)

    def flush(self) -> None:
        self._events.flush()
        self._metrics_file.flush()

    def finish(self) -> dict[str, Any]:
        """Close the streams and write metrics.json and final_report.json."""
        self._events.close()
        self._metrics_file.close()
        _write_json(self.path / "metrics.json", {"fields": list(METRIC_FIELDS), "rows": self.metrics})
        self.report = self.report_builder.report()
        _write_json(self.path / "final_report.json", self.report)
        logger.remove(self._log_sink)
        return self.report


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


async def run_recorder(
    recorder: Recorder,
    events_rx: trio.MemoryReceiveChannel[Event],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Actor: writes until every sender is closed, then finishes the run folder."""
    task_status.started()
    next_flush = trio.current_time() + FLUSH_EVERY_S
    with events_rx:
        async for event in events_rx:
            recorder.write(event)
            if trio.current_time() >= next_flush:
                recorder.flush()
                next_flush = trio.current_time() + FLUSH_EVERY_S
    recorder.finish()
