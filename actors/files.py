"""Reading a small file a user names (`--config`, `LAPTOP_AGENTS_STATE_KEY_FILE`, ...): a regular
file only, at most a size, so that a FIFO cannot hang the start nor `/dev/zero` fill the memory
(found by an audit: `--config FIFO` hung, `--config /dev/zero` ended in a MemoryError traceback)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_SMALL_FILE = 1024 * 1024  # 1 MiB: far above any config file or key


class NotReadable(ValueError):
    """The path is not a regular file, or is larger than the limit; the message says which."""


def read_small_file(path: str | Path, limit: int = MAX_SMALL_FILE) -> bytes:
    """The bytes of the regular file at `path`; NotReadable when it is something else (a
    directory, a FIFO, a device) or larger than `limit`, OSError when it cannot be opened. Opened
    without blocking (a FIFO with no writer would wait forever), checked on the open file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise NotReadable("a directory, not a file")
        if not stat.S_ISREG(mode):
            raise NotReadable("not a regular file (a FIFO, a device or a socket)")
        chunks, size = [], 0
        while chunk := os.read(fd, min(65536, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise NotReadable(f"larger than {limit // 1024} KiB")
        return b"".join(chunks)
    finally:
        os.close(fd)
