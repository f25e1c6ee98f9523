"""One process per session, one start decision at a time per run dir.

- `SessionLock`: an exclusive lock on `<run folder>/session.lock`, an `flock` held for the life
  of the process, so it is released by the kernel however the process ends (`kill -9` included):
  a dead owner never blocks a resume, a live one always does.
- `StartLock`: an exclusive lock on `<run dir>/.start.lock`, held by a start (actors/main.py) from
  before it looks at `latest` (resume, refuse or new: `find_resumable`) until its session holds its
  own `SessionLock` (a new run folder made and locked, or the resumed one locked). So two starts
  in one run dir decide one after the other, each on a run dir that the other has finished
  changing: the second sees the first's session locked, never half-made. The start lock is
  handed over, not released by the session: once `arm`ed, the next `SessionLock` this thread
  takes releases it (the probes of `find_resumable` and abandon.py take session locks too, before
  it is armed). Its file is removed on release (a start that finds it gone or replaced takes the
  new one); a run dir the start made is removed again when nothing else went into it (a refused
  start leaves no trace).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from typing import IO, Self

from actors.signals import shielded, unshielded

LOCK_NAME = "session.lock"
START_LOCK_NAME = ".start.lock"
START_WAIT_S = 60.0  # how long a start waits for another start's decision before it gives up
_POLL_S = 0.01


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
        _hand_over()

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


class StartBusy(Exception):
    """Another start has held the run dir's start lock for `START_WAIT_S`."""


_armed = threading.local()  # .lock: the StartLock the next SessionLock of this thread releases


def _hand_over() -> None:
    start: StartLock | None = getattr(_armed, "lock", None)
    if start is not None:
        start.release()


class StartLock:
    """`<run_dir>/.start.lock` (module docstring). `acquire` makes the run dir when missing
    (mode 0700 under the CLI's umask 077) and waits up to `wait_s` for another start."""

    def __init__(self, run_dir: Path, wait_s: float = START_WAIT_S) -> None:
        self.run_dir = run_dir
        self.path = run_dir / START_LOCK_NAME
        self.wait_s = wait_s
        self._fd: int | None = None
        self._made: list[Path] = []  # the folders acquire made (deepest first)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        deadline = time.monotonic() + self.wait_s
        # the CLI's SIGINT and SIGTERM are held meanwhile but for the waits, and taken once the
        # lock is whole (found by the stop audit: one cutting it left the lock file, and the run
        # dir the start made; actors/signals.py)
        with shielded():
            try:
                self._take(deadline)
            except BaseException:
                self._remove_made()
                raise

    def _take(self, deadline: float) -> None:
        while True:
            self._make_run_dir()
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:  # the run dir was removed meanwhile by a start that made it
                if time.monotonic() > deadline:
                    raise
                continue
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise StartBusy(self._busy(fd)) from None
                        with unshielded():  # a signal ends the wait
                            time.sleep(_POLL_S)
                if self._is_current(fd):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # removed or replaced by its holder's release: take the file now there
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def _make_run_dir(self) -> None:
        missing = []
        for folder in (self.run_dir, *self.run_dir.parents):
            if folder.is_dir():
                break
            missing.append(folder)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for folder in missing:  # those this start made (not those another made meanwhile: harmless)
            if folder not in self._made:
                self._made.append(folder)

    def _is_current(self, fd: int) -> bool:
        """Whether the locked file is still the one at `self.path` (not removed by its last holder)."""
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _busy(self, fd: int) -> str:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        return (
            f"another session has been starting in {self.run_dir} for {self.wait_s:g} s "
            f"(process {owner} holds {self.path.name}); try again once it has started"
        )

    def arm(self) -> None:
        """The next `SessionLock` this thread takes releases this lock (the session's own)."""
        if self._fd is not None:
            _armed.lock = self

    def release(self) -> None:
        """Idempotent. Removes the lock file (while still holding it) and the folders `acquire`
        made when they are empty (the start made nothing: it refused or failed)."""
        if getattr(_armed, "lock", None) is self:
            _armed.lock = None
        if self._fd is None:
            return
        with shielded():  # (a signal meanwhile is taken once it is done: actors/signals.py)
            fd, self._fd = self._fd, None
            try:  # tidying only: the lock itself ends with the descriptor
                self.path.unlink(missing_ok=True)
                self._remove_made()
            except OSError:
                pass
            finally:
                os.close(fd)

    def _remove_made(self) -> None:
        """The folders `acquire` made, removed when empty (the start made nothing in them)."""
        try:
            for folder in self._made:
                folder.rmdir()  # OSError (not empty: the session's folder is in it) ends the loop
        except OSError:
            pass
        finally:
            self._made.clear()

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
