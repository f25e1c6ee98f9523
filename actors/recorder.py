"""Recorder actor: the one writer of the run folder.

It numbers events (`seq` 1, 2, 3, ... with no gaps) as it writes them to `events.jsonl`, writes
every market event the session acted on, with its arrival time, to `market.jsonl` (for replay),
writes a metrics row per heartbeat, and when every sender has closed its channel it writes `metrics.json` and
`final_report.json`, the report derived from the events it wrote. Writes are buffered and flushed
once a second (and at the end), so no actor waits on the disk.
"""

from __future__ import annotations

import csv
import json
import os
from collections import deque
from pathlib import Path
from typing import IO, Any, Self

import trio
from loguru import logger

from protocols.messages import Event
from protocols.records import METRIC_FIELDS, ReportBuilder, dumps_line, event_record, market_record

FLUSH_EVERY_S = 1.0
# Events of this kind carry a market event (`fields["event"]`) to market.jsonl instead of events.jsonl.
MARKET_KIND = "market"


class EventSink:
    """The recorder's inbox: every actor's way to record an event.

    `send` appends and returns without a checkpoint, so an actor's state change and the events
    describing it happen in one scheduler step: whenever the recorder runs, the actors' state
    matches exactly the events it has been given, which is what makes its checkpoints consistent
    with `events.jsonl`. It quacks like a trio send channel (`send`, `clone`, `with`), so actors
    stay written as channel senders. It is unbounded on purpose: the recorder drains it on every
    scheduler turn, and a stalled disk must not stall trading.
    """

    def __init__(self) -> None:
        self._queue: deque[Event] = deque()
        self._wakeup = trio.Event()
        self._open = 1

    async def send(self, event: Event) -> None:  # no checkpoint, by design
        self.send_nowait(event)

    def send_nowait(self, event: Event) -> None:
        if self._open <= 0:
            raise trio.ClosedResourceError("the recorder's inbox is closed")
        self._queue.append(event)
        self._wakeup.set()

    def clone(self) -> EventSink:
        self._open += 1
        return self

    def close(self) -> None:
        self._open -= 1
        self._wakeup.set()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._open <= 0

    def drain(self) -> list[Event]:
        batch = list(self._queue)
        self._queue.clear()
        return batch

    async def wait(self) -> None:
        """Until there is something to drain or every sender has closed."""
        if not self._queue and not self.closed:
            await self._wakeup.wait()
            self._wakeup = trio.Event()


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
        self._market: IO[str] = (path / "market.jsonl").open("a", encoding="utf-8")
        self._log_sink = logger.add(path / "session.log", level="DEBUG", enqueue=False, diagnose=False)

    def write(self, event: Event) -> None:
        if event.kind == MARKET_KIND:
            self._market.write(dumps_line(market_record(event.ts, event.fields["event"])) + "\n")
            return
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
        self._market.flush()
        self._metrics_file.flush()

    def finish(self) -> dict[str, Any]:
        """Close the streams and write metrics.json and final_report.json."""
        self._events.close()
        self._market.close()
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
    inbox: EventSink,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Actor: writes until every sender is closed, then finishes the run folder."""
    task_status.started()
    next_flush = trio.current_time() + FLUSH_EVERY_S
    while True:
        await inbox.wait()
        for event in inbox.drain():
            recorder.write(event)
        if inbox.closed:
            break
        if trio.current_time() >= next_flush:
            recorder.flush()
            next_flush = trio.current_time() + FLUSH_EVERY_S
    recorder.finish()
