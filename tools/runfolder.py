"""What the run-folder tools (monitor, cleanup, archive) ask of a run folder, read only.

A *run folder* is a directory holding `events.jsonl` (the recorder creates it right after the
session takes its lock, actors/recording/recorder.py). It is *finished* once `final_report.json`
exists (written last, as actors/plan.py `is_unfinished` says). A live session holds an `flock` on
its `session.lock` (actors/lock.py) and wrote its pid into it.

Nothing here takes the session's lock for longer than a probe, and nothing writes: `actors.lock`'s
`is_locked` would rewrite the pid in `session.lock` when it gets the lock, so the probe is done
here on a read-only descriptor.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import psutil

from actors.lock import LOCK_NAME

EVENTS = "events.jsonl"
REPORT = "final_report.json"
# The owner's process must be at most this much older than its lock file's last write (the pid is
# written right after the process takes the lock): an older process with the same pid is another
# one that reused it.
PID_REUSE_SLACK_S = 2.0


class NotARunFolder(Exception):
    """The path given is not a run folder; the message says why."""


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and (path / EVENTS).is_file()


def is_finished(path: Path) -> bool:
    return (path / REPORT).is_file()


def resolve_run(path: Path) -> Path:
    """The run folder a path names (following `latest`), or `NotARunFolder` saying why not."""
    if not path.exists():
        raise NotARunFolder(f"{path} does not exist")
    resolved = path.resolve()
    if not is_run_folder(resolved):
        raise NotARunFolder(f"{path} is not a run folder (no {EVENTS} in it)")
    return resolved


def lock_held(path: Path) -> bool:
    """Whether a live process holds the session's lock: a non-blocking shared `flock` probe on a
    read-only descriptor, released at once (it never writes to the file)."""
    lock = path / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def owner_pid(path: Path) -> int | None:
    """The pid the session's process wrote into its lock file (None: no lock file, or no pid)."""
    try:
        text = (path / LOCK_NAME).read_text(encoding="utf-8").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def owner_alive(path: Path) -> bool:
    """Whether the process named in the lock file still runs (without touching the lock): it exists,
    is not a zombie, and started before it wrote the lock file (else the pid was reused)."""
    pid = owner_pid(path)
    if pid is None:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        created = process.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    try:
        written = (path / LOCK_NAME).stat().st_mtime
    except FileNotFoundError:
        return False
    return created <= written + PID_REUSE_SLACK_S


def folder_size(path: Path) -> int:
    """Bytes of the files under `path` (symbolic links not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue
    return total


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
