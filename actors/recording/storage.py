"""Storage faults: a write of the run folder that fails (disk full, read-only, I/O error) is an
ordinary stop of the session (`stop_reason = "storage"`), never a crash.

The recorder (actors/recording/recorder.py), the run folder's one writer, writes through the
helpers here and turns any `OSError` of a write into a `StorageFault`: one clear line (the path,
the error and the free space of its disk), an `error` event (`where = "storage"`), a stop of the
session; from then on it writes nothing until the end, when it writes the final record only if
its disk has room for it again (`session.disk_reserve_mb` free). Otherwise the run folder is left
as its last checkpoint left it, with its temporary files removed and its files cut back to their
last whole line, so the next start resumes the session; the fault is noted in the room kept for
it (`storage_fault.json`), and the resumed session records it.

The rule that keeps room for the final record (`session.disk_reserve_mb`, 0: off): a session does
not start with less than that free on the run dir's disk (`check_room`, exit 2), and stops with
`stop_reason = "storage"` when a health sample finds less (its final record is then written into
the room kept).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from protocols.records import iso

MB = 1024 * 1024
NOTE = "storage_fault.json"  # the room kept for the note of a fault (a page: `NOTE_SIZE` bytes)
NOTE_SIZE = 4096
# the note of no fault: valid JSON padded with spaces to its full size, so that writing the note of
# a fault later only overwrites bytes the file already has (no new block needed on a full disk)
_NO_FAULT = b"{}" + b" " * (NOTE_SIZE - 3) + b"\n"
FLUSH_CHARS = 1 << 16  # a line file is written when this much waits (and at each flush)


class StorageFault(Exception):
    """A write of the run folder failed (`error`: the errno's name, e.g. `ENOSPC`), or its disk
    has less free space than the reserve (`error = "low_space"`)."""

    def __init__(self, path: str, error: str, message: str, free_mb: float | None, ts: float | None = None):
        self.path = path
        self.error = error
        self.message = message
        self.free_mb = free_mb
        self.ts = ts
        super().__init__(self.line())

    @classmethod
    def from_os_error(cls, exc: OSError, path: Path | str, ts: float | None = None) -> StorageFault:
        code = errno.errorcode.get(exc.errno or 0, "OSError")
        return cls(str(exc.filename or path), code, exc.strerror or str(exc), free_mb(Path(path)), ts)

    def free_text(self) -> str:
        return "free space unknown" if self.free_mb is None else f"{self.free_mb:.1f} MB free on its disk"

    def line(self) -> str:
        """One line for the operator: the path, the error, the free space."""
        if self.error == "low_space":
            return self.message
        return f"storage fault: cannot write {self.path}: {self.message} ({self.error}); {self.free_text()}"

    def detail(self) -> str:
        """The stop's detail (short: the line says the rest)."""
        if self.error == "low_space":
            return f"low space: {self.free_text()}"
        return f"{self.error} on {Path(self.path).name}"

    def fields(self) -> dict[str, Any]:
        """The `error` event's fields."""
        return {
            "where": "storage",
            "message": self.line(),
            "path": self.path,
            "error": self.error,
            "free_mb": self.free_mb,
        }

    def note(self) -> dict[str, Any]:
        return {**self.fields(), "at": iso(self.ts) if self.ts is not None else None}


def free_mb(path: Path) -> float | None:
    """Free space of the disk holding `path` (or its nearest existing folder), MB; None: unknown."""
    for folder in (path, *path.parents):
        try:
            usage = shutil.disk_usage(folder)
        except FileNotFoundError:
            continue
        except OSError:
            return None
        # a disk of no size is no disk (/proc, /sys): a folder there cannot be made anyway, which
        # the start says (not "0 MB free")
        return round(usage.free / MB, 1) if usage.total > 0 else None
    return None


def check_room(run_dir: Path, reserve_mb: float) -> None:
    """At start: StorageFault (`low_space`) when the run dir's disk has less than `reserve_mb`
    free (0: no check)."""
    if reserve_mb <= 0:
        return
    free = free_mb(run_dir)
    if free is not None and free < reserve_mb:
        raise StorageFault(
            str(run_dir),
            "low_space",
            f"not enough free space to start a session in {run_dir}: {free:.1f} MB free on its disk, "
            f"under session.disk_reserve_mb = {reserve_mb:,.10g} MB (free some space, or lower it)",
            free,
        )


def low_space(run_path: Path, free: float | None, reserve_mb: float, ts: float | None) -> StorageFault | None:
    """The stop for a health sample of `free` MB under the reserve (None: room enough)."""
    if reserve_mb <= 0 or free is None or free >= reserve_mb:
        return None
    return StorageFault(
        str(run_path),
        "low_space",
        f"storage low: {free:.1f} MB free on the disk of {run_path}, under session.disk_reserve_mb = "
        f"{reserve_mb:,.10g} MB: stopping the session while its final record fits",
        free,
        ts,
    )


def remove_temp_files(folder: Path) -> None:
    """Remove the temporary files a failed atomic write left in `folder` (`*.tmp`)."""
    try:
        names = [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    except OSError:
        return
    for path in names:
        with contextlib.suppress(OSError):
            path.unlink()


@contextmanager
def temp_file(path: Path) -> Iterator[Path]:
    """The temporary file an atomic write of `path` goes through: removed when the write fails."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def cut_torn_tail(fd: int) -> int:
    """Cut the file open at `fd` (readable) back to its last whole line; its size after."""
    size = os.fstat(fd).st_size
    end = size
    while end > 0:
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    if end != size:
        os.ftruncate(fd, end)
    return end


class LineFile:
    """A file of whole lines that this process appends to: lines wait in memory and are written
    (`os.write`, one call for all of them) at `flush`. A write that fails cuts the file back to
    its last whole line and keeps the lines waiting, so the file never ends in a torn line and a
    later flush that succeeds leaves no gap."""

    def __init__(self, path: Path, *, truncate: bool = False) -> None:
        self.path = path
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if truncate else 0)
        self._fd = os.open(path, flags, 0o600)
        # bytes written, whole lines: a torn last line (a process killed in its write) is cut
        # first, or the next line would be glued to it (found by a review: a resumed session's
        # market.jsonl then broke its replay and its report page)
        self.size = cut_torn_tail(self._fd)
        self._pending: list[str] = []
        self.pending_chars = 0

    def write(self, text: str) -> None:
        """Queue `text` (whole lines); the caller flushes (`due`)."""
        self._pending.append(text)
        self.pending_chars += len(text)

    @property
    def due(self) -> bool:
        return self.pending_chars >= FLUSH_CHARS

    def flush(self) -> None:
        if not self._pending:
            return
        data = "".join(self._pending).encode("utf-8")
        view = memoryview(data)
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, view[written:])
        except OSError:
            if written:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self.size)
            raise
        self.size += len(data)
        self._pending = []
        self.pending_chars = 0

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        """Close without writing what waits (flush first to keep it)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


def noted_fault(note: dict[str, Any], when: str) -> dict[str, Any]:
    """The `error` event's fields for the storage fault a process noted (`storage_fault.json`: it
    could not write its final record), recorded at `when` (the resume, the close)."""
    fields = {k: note.get(k) for k in ("path", "error", "free_mb", "at")}
    message = f"{note.get('message') or 'storage fault'} (at {note.get('at')}; recorded at {when})"
    return {"where": "storage", "message": message, **fields}


class FaultNote:
    """`storage_fault.json`: a page kept in the run folder while the session runs (`{}` and
    spaces), so that a session stopped by a storage fault without room for its final record can
    still note the fault (written over those bytes: no new block needed); the next start reads
    it, records the fault in the resumed session and keeps the page again. Removed when the final
    record is written."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / NOTE

    def read(self) -> dict[str, Any] | None:
        """The fault noted (None: no note, or the note of no fault)."""
        try:
            note = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return None
        return note if isinstance(note, dict) and note else None

    def keep(self) -> None:
        """Keep the page (the note of no fault); OSError when it cannot be written."""
        with self.path.open("wb") as f:
            f.write(_NO_FAULT)
            f.flush()
            os.fsync(f.fileno())

    def write(self, fault: StorageFault) -> bool:
        """Note `fault` in the page kept; False when even that failed."""
        data = json.dumps(fault.note(), separators=(",", ":")).encode()
        if len(data) > NOTE_SIZE - 1:
            data = json.dumps(
                {**fault.note(), "message": fault.line()[:1000], "path": fault.path[-1000:]}
            ).encode()
        try:
            with self.path.open("r+b") as f:
                f.write(data + b" " * (NOTE_SIZE - 1 - len(data)) + b"\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            return False
        return True

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
