"""The program's one logger configuration (loguru): `configure` is called once, by the CLI.

- The console: human-readable lines on stderr at `observability.log_level`. The sink looks up
  `sys.stderr` at each message, so while a rich display is on (the live progress panel, the
  backtest's progress bar: they redirect stderr) a log line is printed above it, never glued onto
  the progress line.
- The run folder: `session.log`, JSON lines (loguru's `serialize=True`) at DEBUG, rotated at
  `observability.log_rotation_mb` and keeping `observability.log_retention_files` rotated files;
  opened by the recorder once the run folder exists (`open_run_log`), closed with it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

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
    sys.stderr.write(message)
    sys.stderr.flush()


def _scrub(record: Any) -> None:
    record["message"] = secrets.scrub(record["message"])


def configure(level: str = "INFO", run_log: RunLog | None = None) -> None:
    """Replace every sink: the console at `level`; `run_log` for the run folders opened later.
    Every message is scrubbed of the environment's secrets (actors/secrets.py) first."""
    global _run_log
    logger.remove()
    logger.configure(patcher=_scrub if secrets.active() else None)
    logger.add(_to_stderr, level=level, diagnose=False, format=CONSOLE_FORMAT, colorize=False)
    _run_log = run_log or RunLog()


def open_run_log(run_path: Path) -> int:
    """Add the run folder's `session.log` sink; returns its id (`logger.remove(id)` closes it)."""
    return logger.add(
        run_path / RUN_LOG,
        level="DEBUG",
        serialize=True,
        rotation=int(_run_log.rotation_mb * 1024 * 1024),
        retention=_run_log.retention_files,
        enqueue=False,
        diagnose=False,
    )
