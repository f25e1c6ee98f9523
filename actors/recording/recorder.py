"""The recorder: the one writer of the run folder (no trio: the kernel calls it directly; the live
actors reach it through its inbox and actor, actors/recording/actor.py).

It numbers events (`seq` 1, 2, 3, ... with no gaps) as it writes them to `events.jsonl`, writes
every market event the session acted on, with its arrival time, to `market.jsonl` (for replay),
writes a metrics row per heartbeat, and when every sender has closed its channel it writes `metrics.json` and
`final_report.json`, the report derived from the events it wrote. Writes are buffered and flushed
once a second (and at the end), so no actor waits on the disk.

A write that fails (disk full, read-only, I/O error) is a storage fault, never an exception out
of the recorder (actors/recording/storage.py): it is logged in one line, the recorder writes
nothing more, and the runtime stops the session (`take_stop`: its `error` event, once); so does
a health sample with less free space than `session.disk_reserve_mb`. At the end the final record
is written if the disk has room for it again, else the run folder is left as its last
checkpoint left it, for the next start to resume (`written` says which; the report is folded in
memory either way).

Each heartbeat row of `metrics.csv` is rounded for people (`metrics_csv_values`: prices to the
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
from typing import Any, Final, NoReturn

import orjson
from loguru import logger

from actors import logs, secrets
from actors.config import AlertsConfig
from actors.console import ConsoleSink
from actors.recording import checkpoint
from actors.recording.alerts import ALERT_KIND, AlertLog, AlertRules, set_aside
from actors.recording.health import HealthSampler
from actors.recording.html_report import write_report_html
from actors.recording.page_records import PageRecords
from actors.recording.storage import (
    FaultNote,
    LineFile,
    StorageFault,
    free_mb,
    low_space,
    remove_temp_files,
    temp_file,
)
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
    metrics_csv_values,
    metrics_document,
)

FLUSH_EVERY_S: Final = 1.0
# Events that change orders, fills or positions: each is followed by a checkpoint at once.
CRITICAL_PREFIXES: Final = ("order.", "position.", "funding", "liquidation", "breaker.")
# Events the console prints a line for in a live session (actors/console.py): each is written to
# events.jsonl before its line is printed.
ECHOED: Final = frozenset(
    (
        "order.filled",
        "position.closed",
        "position.crossed",
        "order.working",
        "order.cancelled",
        "session.resumed",
    )
)
# Events of this kind carry a market event (`fields["event"]`) to market.jsonl instead of events.jsonl.
MARKET_KIND: Final = "market"


def create_run_folder(run_dir: Path, run_id: str) -> Path:
    """Make `<run_dir>/<run_id>/` and point `<run_dir>/latest` at it (atomically)."""
    path = run_dir / run_id
    path.mkdir(parents=True, exist_ok=False)
    tmp = run_dir / f".latest.{run_id}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_id, target_is_directory=True)
    os.replace(tmp, run_dir / "latest")
    return path


# what session.resumed says of each fill it discarded
DISCARDED_FILL_FIELDS = ("ts", "fill_id", "order_id", "strategy_id", "symbol", "side", "qty", "fill_price")
# and of each cross (`position.crossed`): printed too, as its fills are
DISCARDED_CROSS_FIELDS = ("ts", "symbol", "price", "reason", "allocations")
# every event a resume took out of events.jsonl (written after the checkpoint it resumed from), kept:
# one JSON object per line, `{"resume_seq": the checkpoint's seq, "event": the event}` (`"torn"`:
# the text of a line that was not a whole event)
DISCARDED_FILE: Final = "events.discarded.jsonl"


def split_events(run: Path, resume_seq: int) -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]]]:
    """A resume's reading of `run`'s events.jsonl: the events up to the checkpoint's seq (each
    line, ending in a newline, and its record) and those after it (as `DISCARDED_FILE` keeps
    them: a line the kill tore, its text). Only the last line may be torn (a kill in its write);
    the file must hold the events 1 to the checkpoint's seq, each once and whole, else
    CheckpointError (found by an audit: a damaged line before the checkpoint was dropped as torn,
    leaving a gap in the sequence and, were it a fill, an account that its events no longer add
    up to; a file short of the checkpoint raised a traceback). Read as bytes: a line cut inside
    a UTF-8 character is torn too."""

    def damaged(why: str) -> NoReturn:
        raise checkpoint.CheckpointError(
            f"cannot resume {run.resolve().name}: its events.jsonl does not hold the {resume_seq} "
            f"events its checkpoint follows ({why}): nothing was started; inspect the run folder (or "
            "start a new session with --fresh)"
        )

    with (run / "events.jsonl").open("rb") as f:
        raws = f.readlines()
    kept: list[tuple[str, dict[str, Any]]] = []
    discarded: list[dict[str, Any]] = []
    for number, raw in enumerate(raws, 1):
        try:
            line = raw.decode("utf-8")
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
                raise ValueError("not an event")
        except ValueError:  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
            if number < len(raws):
                damaged(f"line {number} is not an event")
            discarded.append({"resume_seq": resume_seq, "torn": raw.decode("utf-8", "replace")})
            continue
        if record["seq"] > resume_seq:
            discarded.append({"resume_seq": resume_seq, "event": record})
            continue
        if record["seq"] != len(kept) + 1:
            damaged(f"line {number} is seq {record['seq']}, {len(kept) + 1} expected")
        kept.append((line if line.endswith("\n") else line + "\n", record))
    if len(kept) != resume_seq:
        damaged(f"it holds {len(kept)}")
    return kept, discarded


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
        reserve_mb: float = 0.0,
    ) -> None:
        """`alerts`: the alert rules' limits (None: the defaults); `notify`: each alert's message
        to the webhook's queue (must not block); `reserve_mb`: `session.disk_reserve_mb` (0: no
        low-space stop). A write that fails here, before anything is recorded, raises
        StorageFault (temporary files removed)."""
        self.path = path
        self.console = ConsoleSink()  # the console's figures; `console.echo` prints fills and trades
        self.health = HealthSampler(path)
        self.rules = AlertRules(alerts or AlertsConfig())
        self.alert_log = AlertLog(path, notify)
        self.price_dp, self.qty_dp = metric_decimals("")
        self.seq = 0
        self.report_builder = ReportBuilder()
        self.page_records = PageRecords()  # what report.html reads of the events, as they are written
        self.metrics: list[dict[str, Any]] = []
        self.report: dict[str, Any] | None = None
        self.last_event_ts: float | None = None
        self.discarded_events = 0
        # the data source a `feed.fallback` event among the events written (or reloaded) says the
        # session trades on (None: none): a resume goes on with it
        self.fallback_source: str | None = None
        # a resume's discarded events (written after the checkpoint): the fills among them, as a
        # reader saw them, and every order and fill id they gave (never given again: `Parts.skip_ids`);
        # with those of the earlier resumes from which no checkpoint followed (`DISCARDED_FILE`)
        self.discarded_fills: list[dict[str, Any]] = []
        self.discarded_crosses: list[dict[str, Any]] = []
        self.discarded_ids: set[str] = set()
        self.reserve_mb = reserve_mb
        self.fault: StorageFault | None = None  # a write failed: nothing more is written
        self.low_space: StorageFault | None = None  # a health sample found less free than the reserve
        self.written = False  # the final record is on disk (after finish)
        self._stop_taken = False
        self._stopped = False  # session.stopped recorded: no event may follow it
        self._scrub = secrets.active()  # the environment's secrets never reach a file (actors/secrets.py)
        self.note = FaultNote(path)
        # resumed: the storage fault the previous process noted (it could not write its final record)
        self.previous_fault = self.note.read() if resume_seq is not None else None
        self._fault_recorded = False  # the previous fault's note reset, once a checkpoint has its event
        target = path / "events.jsonl.tmp"
        try:
            if resume_seq is not None:
                self._reload(resume_seq)
            target = path / "events.jsonl"
            self._events = LineFile(target)
            target = path / "metrics.csv"
            self._metrics_file = LineFile(target, truncate=True)
            target = path / "market.jsonl"
            self._market = LineFile(target)
            target = self.note.path
            if self.previous_fault is None:
                self.note.keep()
            # else the fault stays noted until a checkpoint holds the `error` event the resumed
            # session records for it (found by a review: reset here, a resume killed before its
            # first checkpoint lost the fault for good); the page is there to write over
        except OSError as exc:
            remove_temp_files(path)
            raise StorageFault.from_os_error(exc, target) from None
        self._files = (self._events, self._market, self._metrics_file)
        self._metrics_csv = csv.writer(self._metrics_file)
        self._metrics_csv.writerow(METRIC_COLUMNS)
        self._metrics_csv.writerows(
            metrics_csv_values(row, self.price_dp, self.qty_dp) for row in self.metrics
        )
        self._log_sink: int | None
        self._log_sink, self._log = logs.add_run_log(path)

    def _reload(self, resume_seq: int) -> None:
        """Resume: keep the events up to the checkpoint's seq (the state restored matches exactly
        those), fold them again into the report and metrics, and count what is discarded
        (`split_events`: CheckpointError, nothing changed, when the file is damaged)."""
        events_path = self.path / "events.jsonl"
        kept, discarded = split_events(self.path, resume_seq)
        for _, record in kept:
            self._fold(record)
            self.console.observe(record, new=False)
            self.rules.on_event(record["kind"], _parse_ts(record["ts"]), record)  # their state only
            self.last_event_ts = _parse_ts(record["ts"])
        # kept before events.jsonl loses them (found by a review: a second crash before the resumed
        # session's first checkpoint took the first one's discarded fills out of every record, and
        # the next resume gave their ids again); a kill between the two writes them twice, once here
        self._keep_discarded(discarded, resume_seq)
        # their alerts too (found by the crash audit: alerts.jsonl kept them, naming events gone
        # and seqs given again to others)
        set_aside(self.path, resume_seq)
        # durable before it replaces the file, and the replacement too (found by an audit: a power
        # loss after an unsynced rename may leave events.jsonl empty under a checkpoint at its seq)
        with temp_file(events_path) as tmp:
            with tmp.open("w", encoding="utf-8") as f:
                f.write("".join(line for line, _ in kept))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, events_path)
        checkpoint.fsync_dir(self.path)

    def _keep_discarded(self, discarded: list[dict[str, Any]], resume_seq: int) -> None:
        """Append this resume's discarded events to `DISCARDED_FILE` (synced), then read every
        one kept there: their ids are never given again, and the fills among those discarded since
        this checkpoint (by this resume or an earlier one from it or a later checkpoint, whose
        `session.resumed` event is gone with them) are this resume's `discarded_fills`."""
        path = self.path / DISCARDED_FILE
        kept = LineFile(path)  # a line torn by a kill in an earlier append is cut first
        try:
            kept.write("".join(dumps_line(entry) + "\n" for entry in discarded))
            kept.flush()
            os.fsync(kept.fileno())
        finally:
            kept.close()
        # the file's name too (made by the first resume), before events.jsonl is replaced without
        # them (found by the crash audit: a power loss could keep the replacement and lose the file)
        checkpoint.fsync_dir(self.path)
        seen: set[str] = set()
        seen_raw: set[bytes] = set()  # the crosses listed (by their line: they have no id)
        since_checkpoint: set[bytes] = set()  # the entries discarded since it (each once)
        with path.open("rb") as f:
            for raw in f:
                try:
                    entry = json.loads(raw)
                    record, since = entry.get("event"), entry.get("resume_seq", 0)
                except (ValueError, AttributeError):
                    continue  # not ours (the file is only ever appended whole lines)
                if isinstance(since, int) and since >= resume_seq:
                    since_checkpoint.add(raw)
                if not isinstance(record, dict):
                    continue  # a torn line's text
                self.discarded_ids.update(
                    value for name in ("order_id", "fill_id") if isinstance(value := record.get(name), str)
                )
                fill_id = str(record.get("fill_id"))
                if record.get("kind") == "order.filled" and raw in since_checkpoint and fill_id not in seen:
                    seen.add(fill_id)
                    self.discarded_fills.append({k: record.get(k) for k in DISCARDED_FILL_FIELDS})
                elif (
                    record.get("kind") == "position.crossed"
                    and raw in since_checkpoint
                    and raw not in seen_raw
                ):
                    # (found by an audit: a cross the console printed went with no word)
                    seen_raw.add(raw)
                    self.discarded_crosses.append({k: record.get(k) for k in DISCARDED_CROSS_FIELDS})
        # the count the fills are of (found by an audit: "0 events discarded, 1 fill among them",
        # the fill an earlier resume's)
        self.discarded_events = len(since_checkpoint)

    def _fold(self, record: dict[str, Any]) -> None:
        self.seq = record["seq"]
        self.report_builder.add(record)
        self.page_records.add(record)
        if record["kind"] == "heartbeat":
            self.metrics.append({**{k: record.get(k) for k in METRIC_FIELDS}, **NO_HEALTH})
        elif record["kind"] == "session.started":
            self.price_dp, self.qty_dp = metric_decimals(record.get("symbol") or "")
        elif record["kind"] == "feed.fallback" and isinstance(record.get("data_source"), str):
            self.fallback_source = record["data_source"]

    def write(self, event: Event) -> None:
        # the event's fields read once (an attrs class: compiled, each read is a generic lookup)
        kind, ts = event.kind, event.ts
        if kind == MARKET_KIND:
            market = dumps_line(market_record(ts, event.fields["event"]))
            self._market.write((secrets.scrub(market) if self._scrub else market) + "\n")
            self._due(self._market)
            return
        record, line = event_line(self.seq + 1, event)
        if self._scrub:
            clean = secrets.scrub(line)
            if clean != line:
                line, record = clean, json.loads(clean)
        self._events.write(line + "\n")
        if self.console.echo and not self.console.batched and kind in ECHOED and self.fault is None:
            # on disk before the console shows it (found by an audit: a FILL printed, the process
            # killed before the flush, and the fill was in no record, its id given again; a kill
            # after an os.write loses nothing, the page cache keeps it). After a storage fault the
            # lines go on (the flatten, in memory): the end says the folder is left as its last
            # checkpoint, for the next start to resume
            self._flush(self._events)
        else:
            self._due(self._events)
        self._fold(record)
        self.console.observe(record)
        self.last_event_ts = ts
        if kind == "heartbeat":
            self._write_metrics_row(ts)
        elif kind == "session.stopped":
            self._stopped = True
        if kind != ALERT_KIND:
            for alert in self.rules.on_event(kind, ts, event.fields):
                self.write(Event(alert.ts, ALERT_KIND, alert.fields()))
                self.alert_log.raise_alert(alert, self.seq)

    def _write_metrics_row(self, ts: float) -> None:
        """The heartbeat's row with the process's health; the health rules see the sample (and
        the low-space rule: `session.disk_reserve_mb`)."""
        sample, fresh = self.health.sample()
        row = self.metrics[-1]
        row.update(sample)
        self._metrics_csv.writerow(metrics_csv_values(row, self.price_dp, self.qty_dp))
        self._due(self._metrics_file)
        if fresh:
            for alert in self.rules.on_health(sample, ts):
                self.alert_log.raise_alert(alert, None)
            if self.low_space is None and self.fault is None:
                self.low_space = low_space(self.path, sample["disk_free_mb"], self.reserve_mb, ts)
                if self.low_space is not None:
                    logger.error("{}", self.low_space.line())

    # --- writing, and storage faults -------------------------------------------------------------

    def _due(self, file: LineFile) -> None:
        if file.due and self.fault is None:
            self._flush(file)

    def _flush(self, file: LineFile) -> bool:
        try:
            file.flush()
        except OSError as exc:
            self._fail(exc, file.path)
            return False
        return True

    def _fail(self, exc: OSError, path: Path) -> None:
        """A write failed: the first fault is kept and logged in one line; from now on nothing
        is written (the lines wait in memory for the end), temporary files are removed, and
        session.log and alerts.jsonl go quiet. May run in the checkpoint's worker thread (the
        recorder's actor waits for it meanwhile)."""
        if self.fault is not None:
            return
        self.fault = StorageFault.from_os_error(exc, path, self.last_event_ts)
        self.console.unrecorded = True
        self._close_run_log()
        self.alert_log.quiet = True
        remove_temp_files(self.path)
        logger.error("{}", self.fault.line())

    def _poll_sinks(self) -> None:
        """A write of session.log or alerts.jsonl that failed is a fault too."""
        for failed in (self._log.fault, self.alert_log.fault):
            if failed is not None and self.fault is None:
                self._fail(*failed)

    def take_stop(self) -> StorageFault | None:
        """The storage stop the session must make (once): a write failed, or the disk has less
        free space than the reserve; its `error` event (`where = "storage"`) is recorded."""
        self._poll_sinks()
        stop = self.fault or self.low_space
        if stop is None or self._stop_taken:
            return None
        self._stop_taken = True
        if not self._stopped:
            self.write(Event(self.last_event_ts or 0.0, "error", stop.fields()))
        return stop

    @property
    def storage(self) -> StorageFault | None:
        """The storage fault or low-space stop of this session, if any."""
        return self.fault or self.low_space

    def _close_run_log(self) -> None:
        if self._log_sink is not None:
            logger.remove(self._log_sink)
            self._log_sink = None

    def flush(self) -> None:
        if self.fault is None:
            for file in self._files:
                if not self._flush(file):
                    return

    def write_checkpoint(self, state: dict[str, Any]) -> None:
        """Make the events durable, and the market they acted on (market.jsonl: the validator
        checks the fills against it, a replay re-runs it; found by an audit: flushed but not
        synced, a power loss could keep fills whose quotes it lost), then the checkpoint that
        matches them (runs in a worker thread); nothing after a storage fault (the last
        checkpoint stays the one that matches the events on disk)."""
        if self.fault is not None:
            return
        self.flush()
        if self.fault is not None:
            return
        for file in (self._events, self._market):
            try:
                os.fsync(file.fileno())
            except OSError as exc:
                self._fail(exc, file.path)
                return
        try:
            checkpoint.write(self.path, state)
        except OSError as exc:
            self._fail(exc, self.path / (checkpoint.NEWEST + ".tmp"))
            return
        if self.previous_fault is not None and not self._fault_recorded:
            try:  # the checkpoint holds the resumed session's `error` event for it now
                self.note.keep()
            except OSError as exc:
                self._fail(exc, self.note.path)
                return
            self._fault_recorded = True

    def finish(self) -> dict[str, Any]:
        """Close the streams and write metrics.json, final_report.json and report.html (a failure
        of the page is logged, never the session's). After a storage fault the final record is
        written only when the disk has room again (`session.disk_reserve_mb` free); else the
        files are cut back to their last whole line, the temporary files removed and the fault
        noted (`storage_fault.json`), for the next start to resume the session. The report is
        returned (and kept in `report`) either way."""
        self.console.flush()
        self._poll_sinks()
        self.report = self.report_builder.report()
        self.alert_log.close()
        if self.fault is None:
            self._write_record()
        elif self._room():
            self._write_record(again=True)
        if self.written:
            self.note.remove()
        else:
            assert self.fault is not None
            remove_temp_files(self.path)
            if not self.note.write(self.fault):
                logger.warning("the storage fault could not be noted in {} either", self.note.path)
        for file in self._files:
            file.close()
        if self.written:
            write_report_html(self.path, self.page_records)
        self._close_run_log()
        return self.report

    def _room(self) -> bool:
        """Whether the final record may be tried again after a fault: the disk has the reserve
        free again (with no reserve: always; free space unknown: yes)."""
        free = free_mb(self.path)
        return self.reserve_mb <= 0 or free is None or free >= self.reserve_mb

    def _write_record(self, *, again: bool = False) -> None:
        """The final record: the lines still waiting, made durable, then metrics.json and
        final_report.json (the folder is finished once that exists)."""
        assert self.report is not None
        for file in self._files:
            if not self._flush_final(file, again):
                return
        target = self.path / "metrics.json"
        try:
            os.fsync(self._events.fileno())
            # a row a second live (86,400 in a day): written a slice at a time (write_metrics_json)
            write_metrics_json(target, self.metrics)
            target = self.path / "final_report.json"
            _write_json(target, self.report)
            # their renames durable (found by the crash audit: a power loss could lose them and
            # leave the run unfinished, for the next start to resume a session that had ended)
            target = self.path
            checkpoint.fsync_dir(self.path)
        except OSError as exc:
            self._fail(exc, target)
            return
        self.written = True

    def _flush_final(self, file: LineFile, again: bool) -> bool:
        if not again:
            return self._flush(file)
        try:
            file.flush()
        except OSError:
            return False
        return True


METRICS_SLICE: Final = 1000  # metrics.json's rows serialised at once


def write_metrics_json(path: Path, rows: list[dict[str, Any]]) -> None:
    """metrics.json, atomically: the bytes `orjson.dumps(metrics_document(rows), OPT_INDENT_2)`
    and a newline, the rows serialised METRICS_SLICE at a time (found by the long-session audit:
    the whole document at once, as bytes, then text, then bytes again, held three copies of it
    at the end of a session: 38 MB each for a day's 86,400 rows, 229 MB peak RSS where the
    session itself had peaked at 151 MB; the memory now is a slice's, whatever the rows)."""
    option = orjson.OPT_INDENT_2
    scrub = secrets.active()
    with temp_file(path) as tmp:
        with tmp.open("wb") as f:
            if not rows:
                f.write(_scrubbed(orjson.dumps(metrics_document(rows), option=option), scrub))
            else:
                # the document with no rows ends `"rows": []\n}`: its rows go between the brackets,
                # indented as the document's own would be (a JSON line break is never inside a value)
                head = orjson.dumps(metrics_document([]), option=option)
                assert head.endswith(b"[]\n}")
                f.write(_scrubbed(head[:-3], scrub))
                for start in range(0, len(rows), METRICS_SLICE):
                    text = orjson.dumps(rows[start : start + METRICS_SLICE], option=option)
                    # `[\n  {...},\n  {...}\n]`: the objects, two more spaces in on each line
                    body = text[1:-2].replace(b"\n", b"\n  ")
                    f.write(_scrubbed((b"," if start else b"") + body, scrub))
                f.write(b"\n  ]\n}")
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def _scrubbed(data: bytes, scrub: bool) -> bytes:
    return secrets.scrub(data.decode()).encode() if scrub else data


def _write_json(path: Path, data: Any) -> None:
    with temp_file(path) as tmp:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(secrets.scrub(json.dumps(data, indent=2, allow_nan=False)))
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def _parse_ts(iso_ts: str) -> float:
    return datetime.fromisoformat(iso_ts.replace("Z", "+00:00")).timestamp()
