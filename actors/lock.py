"""One process per session: an exclusive lock on `<run folder>/session.lock`.

The lock is an `flock` held for the life of the process, so it is released by the kernel however
the process ends (`kill -9` included): a dead owner never blocks a resume, a live one always does.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO, Self

LOCK_NAME = "session.lock"


class SessionLocked(Exception):
    """Another live process owns this session."""


class SessionLock:
    def __init__(self, run_path: Path) -> None:
        self.path = run_path / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        f = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "unknown"
            f.close()
            raise SessionLocked(
                f"session {self.path.parent.name} is already running in process {owner}; "
                f"stop it (kill -TERM {owner}) or start a new session with --fresh"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_locked(run_path: Path) -> bool:
    """Whether a live process holds the session's lock (without taking it for long)."""
    if not (run_path / LOCK_NAME).exists():
        return False
    try:
        with SessionLock(run_path):
            return False
    except SessionLocked:
        return True
