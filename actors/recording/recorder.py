"""The recorder: the one writer of the run folder (no trio: the kernel calls it directly; the live
actors reach it through its inbox and actor, actors/recording/actor.py).

It numbers events (`seq` 1, 2, 3, ... with no gaps) as it writes them to `events.jsonl`, writes
every market event the session acted on, with its arrival time, to `market.jsonl` (for replay),
writes a metrics row per heartbeat, and when every sender has closed its channel it writes `metrics.json` and
`final_report.json`, the report derived from the events it wrote. Writes are buffered and flushed
once a second (and at the end), so no actor waits on the disk.

Each heartbeat row of `metrics.csv` is rounded for people (`metrics_csv_row`: prices to the
symbol's tick, money to the cent) and carries the process's health, sampled here, where the I/O
is (actors/recording/health.py); every event written and every health sample go through the alert
rules (actors/recording/alerts.py: why event alerts enter `events.jsonl` and health alerts do not).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson
from loguru import logger

from actors import logs, secrets
from actors.config import AlertsConfig
from actors.console import ConsoleSink
from actors.recording import checkpoint
from actors.recording.alerts import ALERT_KIND, AlertLog, AlertRules
from actors.recording.health import HealthSampler
from actors.recording.html_report import write_report_html
from protocols.messages import Event
from protocols.records import (
    METRIC_COLUMNS,
    METRIC_FIELDS,
    NO_HEALTH,
    ReportBuilder,
    dumps_line,
    event_line,
    market_record,
    metric_decimals,
    metrics_csv_row,
    metrics_document,
)

FLUSH_EVERY_S = 1.0
# Events that change orders, fills or positions: each is followed by a checkpoint at once.
CRITICAL_PREFIXES = ("order.", "position.", "funding", "liquidation", "breaker.")
# Events of this kind carry a market event (`fields["event"]`) to market.jsonl instead of events.jsonl.
MARKET_KIND = "market"


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
    """Owns the run folder's files. Live sessions checkpoint through the inbox
    (`EventSink.checkpoint`); replays and backtests are simply run again."""

    def __init__(
        self,
        path: Path,
        resume_seq: int | None = None,
        *,
        alerts: AlertsConfig | None = None,
        notify: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """`alerts`: the alert rules' limits (None: the defaults); `notify`: each alert's message
        to the webhook's queue (must not block)."""
        self.path = path
        self.console = ConsoleSink()  # the console's figures; `console.echo` prints fills and trades
        self.health = HealthSampler(path)
        self.rules = AlertRules(alerts or AlertsConfig())
        self.alert_log = AlertLog(path, notify)
        self.price_dp, self.qty_dp = metric_decimals("")
        self.seq = 0
        self.report_builder = ReportBuilder()
        self.metrics: list[dict[str, Any]] = []
        self.report: dict[str, Any] | None = None
        self.last_event_ts: float | None = None
        self.discarded_events = 0
        self._scrub = secrets.active()  # the environment's secrets never reach a file (actors/secrets.py)
        if resume_seq is not None:
            self._reload(resume_seq)
        self._events: IO[str] = (path / "events.jsonl").open("a", encoding="utf-8")
        self._metrics_file: IO[str] = (path / "metrics.csv").open("w", encoding="utf-8", newline="")
        self._metrics_csv = csv.DictWriter(self._metrics_file, fieldnames=METRIC_COLUMNS)
        self._metrics_csv.writeheader()
        self._metrics_csv.writerows(metrics_csv_row(row, self.price_dp, self.qty_dp) for row in self.metrics)
        self._market: IO[str] = (path / "market.jsonl").open("a", encoding="utf-8")
        self._log_sink = logs.open_run_log(path)

    def _reload(self, resume_seq: int) -> None:
        """Resume: keep the events up to the checkpoint's seq (the state restored matches exactly
        those), fold them again into the report and metrics, and count what is discarded."""
        events_path = self.path / "events.jsonl"
        kept: list[str] = []
        with events_path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    self.discarded_events += 1
                    continue
                if record.get("seq", 0) > resume_seq:
                    self.discarded_events += 1
                    continue
                kept.append(line if line.endswith("\n") else line + "\n")
                self._fold(record)
                self.console.observe(record, new=False)
                self.rules.on_event(record["kind"], _parse_ts(record["ts"]), record)  # their state only
                self.last_event_ts = _parse_ts(record["ts"])
        if self.seq != resume_seq:
            raise RuntimeError(
                f"events.jsonl holds {self.seq} events but the checkpoint is at seq {resume_seq}"
            )
        tmp = events_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, events_path)

    def _fold(self, record: dict[str, Any]) -> None:
        self.seq = record["seq"]
        self.report_builder.add(record)
        if record["kind"] == "heartbeat":
            self.metrics.append({**{k: record.get(k) for k in METRIC_FIELDS}, **NO_HEALTH})
        elif record["kind"] == "session.started":
            self.price_dp, self.qty_dp = metric_decimals(record.get("symbol") or "")

    def write(self, event: Event) -> None:
        if event.kind == MARKET_KIND:
            market = dumps_line(market_record(event.ts, event.fields["event"]))
            self._market.write((secrets.scrub(market) if self._scrub else market) + "\n")
            return
        record, line = event_line(self.seq + 1, event)
        if self._scrub:
            clean = secrets.scrub(line)
            if clean != line:
                line, record = clean, json.loads(clean)
        self._events.write(line + "\n")
        self._fold(record)
        self.console.observe(record)
        self.last_event_ts = event.ts
        if event.kind == "heartbeat":
            self._write_metrics_row(event.ts)
        if event.kind != ALERT_KIND:
            for alert in self.rules.on_event(event.kind, event.ts, event.fields):
                self.write(Event(alert.ts, ALERT_KIND, alert.fields()))
                self.alert_log.raise_alert(alert, self.seq)

    def _write_metrics_row(self, ts: float) -> None:
        """The heartbeat's row with the process's health; the health rules see the sample."""
        sample, fresh = self.health.sample()
        row = self.metrics[-1]
        row.update(sample)
        self._metrics_csv.writerow(metrics_csv_row(row, self.price_dp, self.qty_dp))
        if fresh:
            for alert in self.rules.on_health(sample, ts):
                self.alert_log.raise_alert(alert, None)

    def flush(self) -> None:
        self._events.flush()
        self._market.flush()
        self._metrics_file.flush()

    def write_checkpoint(self, state: dict[str, Any]) -> None:
        """Make the events durable, then the checkpoint that matches them (runs in a worker thread)."""
        self.flush()
        os.fsync(self._events.fileno())
        checkpoint.write(self.path, state)

    def finish(self) -> dict[str, Any]:
        """Close the streams and write metrics.json, final_report.json and report.html (a failure
        of the page is logged, never the session's)."""
        self._events.close()
        self._market.close()
        self._metrics_file.close()
        self.alert_log.close()
        # the metrics rows of a long backtest by the thousand: orjson (the same JSON, ten times faster)
        _write_json(self.path / "metrics.json", metrics_document(self.metrics), fast=True)
        self.report = self.report_builder.report()
        _write_json(self.path / "final_report.json", self.report)
        write_report_html(self.path)
        logger.remove(self._log_sink)
        return self.report


def _write_json(path: Path, data: Any, *, fast: bool = False) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        if fast:
            f.write(secrets.scrub(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()))
        else:
            f.write(secrets.scrub(json.dumps(data, indent=2, allow_nan=False)))
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _parse_ts(iso_ts: str) -> float:
    return datetime.fromisoformat(iso_ts.replace("Z", "+00:00")).timestamp()
