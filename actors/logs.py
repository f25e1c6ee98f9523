"""The program's one logger configuration (loguru): `configure` is called once, by the CLI.

- The console: human-readable lines on stderr at `observability.log_level`. The sink looks up
  `sys.stderr` at each message, so while a rich display is on (the live progress panel, the
  backtest's progress bar: they redirect stderr) a log line is printed above it, never glued onto
  the progress line.
- The run folder: `session.log`, JSON lines (loguru's `serialize=True`) at DEBUG, rotated at
  `observability.log_rotation_mb` into `session.<time>.log` and keeping
  `observability.log_retention_files` rotated files; opened by the recorder once the run folder
  exists (`open_run_log`), closed with it. A write of it that fails (a full disk) never reaches
  the console as a logging error: the sink goes quiet and keeps the error for the recorder
  (`RunLogFile.fault`), which stops the session (actors/recording/storage.py).
"""

from __future__ import annotations

import contextlib
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import attrs
from loguru import logger

from actors import secrets

CONSOLE_FORMAT = "{time:HH:mm:ss} | {level:<7} | {message}"
RUN_LOG = "session.log"


@attrs.frozen
class RunLog:
    """How the run folder's `session.log` is written."""

    rotation_mb: float = 10.0
    retention_files: int = 5


_run_log = RunLog()


def _to_stderr(message: str) -> None:
    # the whole line scrubbed, the traceback loguru appends to a message too (`_patch` sees the
    # message only: found by an audit)
    sys.stderr.write(secrets.scrub(message))
    sys.stderr.flush()


class QuietWhenGone:
    """The process's stdout or stderr, for the CLI (`guard_console`): once a write or a flush fails
    (the terminal hung up, EIO; the pipe's reader gone, EPIPE: `... | tee` stopped by the same
    Ctrl-C), its descriptor is pointed at /dev/null and the program carries on without a console.
    Found by an audit: the first line after the failure raised out of the recorder or the
    progress panel, and the session died without its flatten or its report, holding its position.
    Everything else is the stream's own (`isatty`, `fileno`, `encoding`, ...)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.gone: str | None = None  # why the console went away

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except OSError as exc:
            self._away(exc)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            self._away(exc)

    def _away(self, exc: OSError) -> None:
        if self.gone is None:
            self.gone = exc.strerror or type(exc).__name__
            try:
                null = os.open(os.devnull, os.O_WRONLY)
                try:
                    os.dup2(null, self._stream.fileno())
                finally:
                    os.close(null)
            except (OSError, ValueError):
                return
        # what the stream still held goes to /dev/null (nothing fails at the exit's flush)
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def guard_console() -> None:
    """The CLI, first thing: stdout and stderr that go quiet when their reader is gone
    (`QuietWhenGone`); the run folder's `session.log` keeps every line."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, QuietWhenGone):
            setattr(sys, name, QuietWhenGone(stream))


def escape(text: str, keep_lines: bool = False) -> str:
    """`text` with every control character escaped (`\x1b`, `\n`; with `keep_lines`, line breaks
    kept): one that can neither drive a terminal nor forge a log line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or (keep_lines and c == "\n") else repr(c)[1:-1] for c in text)


def _patch(record: Any) -> None:
    """Every message scrubbed of the secrets (actors/secrets.py), and its control characters
    escaped (`\x1b`, `\n`): text from outside (an exchange's error message, a WebSocket close
    reason) can neither drive the terminal nor forge a log line. A message logged with
    `logger.bind(lines=True)` keeps its line breaks (a traceback)."""
    record["message"] = escape(
        secrets.scrub(record["message"]), keep_lines=record["extra"].get("lines", False)
    )


def configure(level: str = "INFO", run_log: RunLog | None = None) -> None:
    """Replace every sink: the console at `level`; `run_log` for the run folders opened later.
    Every message is scrubbed and escaped first (`_patch`)."""
    global _run_log
    logger.remove()
    logger.configure(patcher=_patch)
    logger.add(_to_stderr, level=level, diagnose=False, format=CONSOLE_FORMAT, colorize=False)
    _run_log = run_log or RunLog()


class RunLogFile:
    """The sink writing `session.log`: each message a line, written at once; rotated when a
    message would take it past `rotation_bytes` (renamed `session.<its opening time>.log`),
    keeping the `retention_files` newest rotated files. The first write that fails (OSError) makes
    it quiet: the error is kept in `fault` (with the path) and nothing more is written."""

    def __init__(self, run_path: Path, rotation_bytes: int, retention_files: int) -> None:
        self.path = run_path / RUN_LOG
        self.rotation_bytes = rotation_bytes
        self.retention_files = retention_files
        self.fault: tuple[OSError, Path] | None = None
        self._file: IO[str] | None = None
        self._opened = datetime.now()
        self._size = 0
        self._open()

    def _open(self) -> None:
        self._file = self.path.open("a", encoding="utf-8")
        self._opened = datetime.now()
        self._size = self._file.tell()

    def write(self, message: str) -> None:
        if self.fault is not None or self._file is None:
            return
        try:
            message = secrets.scrub(message)  # a traceback's text too (see `_to_stderr`)
            size = len(message.encode("utf-8"))
            if self._size and self._size + size > self.rotation_bytes:
                self._rotate()
            assert self._file is not None
            self._file.write(message)
            self._file.flush()
            self._size += size
        except OSError as exc:
            self.fault = (exc, self.path)
            self._close()

    def _rotate(self) -> None:
        self._close(raising=True)
        stem = f"{self.path.stem}.{self._opened:%Y-%m-%d_%H-%M-%S_%f}"
        target = self.path.with_name(stem + self.path.suffix)
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{stem}.{n}{self.path.suffix}")
        os.rename(self.path, target)
        rotated = [
            p for p in self.path.parent.glob(f"{self.path.stem}.*{self.path.suffix}") if p != self.path
        ]
        rotated.sort(key=lambda p: (p.stat().st_mtime, p.name), reverse=True)
        for old in rotated[self.retention_files :]:
            old.unlink(missing_ok=True)
        self._open()

    def _close(self, *, raising: bool = False) -> None:
        f, self._file = self._file, None
        if f is None:
            return
        try:
            f.close()
        except OSError:
            if raising:
                raise

    def stop(self) -> None:
        """Called by loguru when the sink is removed."""
        self._close()


def add_run_log(run_path: Path) -> tuple[int, RunLogFile]:
    """Add the run folder's `session.log` sink; its id (`logger.remove(id)` closes it) and the
    sink (its `fault`)."""
    sink = RunLogFile(run_path, int(_run_log.rotation_mb * 1024 * 1024), _run_log.retention_files)
    sink_id = logger.add(sink, level="DEBUG", serialize=True, enqueue=False, diagnose=False)
    return sink_id, sink


def open_run_log(run_path: Path) -> int:
    """Add the run folder's `session.log` sink; returns its id (`logger.remove(id)` closes it)."""
    return add_run_log(run_path)[0]
