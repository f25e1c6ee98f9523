"""Checkpoint files: atomic, checksummed, two generations.

`checkpoint.json` is the newest, `checkpoint.prev.json` the one before. A write goes to a temporary
file, is fsynced, the newest becomes the previous, the temporary becomes the newest, and the folder
is fsynced, so a crash at any instant leaves at least one complete checkpoint. A checkpoint whose
checksum does not match is never used; the loader falls back to the previous one and says so.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import attrs

NEWEST = "checkpoint.json"
PREVIOUS = "checkpoint.prev.json"
FORMAT = 1


class CheckpointError(Exception):
    """No usable checkpoint: the message says what was found."""


@attrs.frozen
class Loaded:
    state: dict[str, Any]
    path: Path
    problems: list[str]  # what was wrong with newer generations that were skipped


def _checksum(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def encode(state: dict[str, Any]) -> bytes:
    body = {"format": FORMAT, "state": state}
    return json.dumps({**body, "sha256": _checksum(body)}, separators=(",", ":"), allow_nan=False).encode()


def decode(data: bytes) -> dict[str, Any]:
    """The state in a checkpoint file's bytes; ValueError says why they are not a valid checkpoint."""
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON (truncated?): {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "state" not in doc:
        raise ValueError("not a checkpoint of this format")
    body = {"format": doc["format"], "state": doc["state"]}
    if doc.get("sha256") != _checksum(body):
        raise ValueError("checksum mismatch")
    state: dict[str, Any] = doc["state"]
    return state


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(folder: Path, state: dict[str, Any]) -> None:
    """Atomically make `state` the newest checkpoint in `folder`, keeping the previous one."""
    data = encode(state)
    tmp = folder / (NEWEST + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    newest = folder / NEWEST
    if newest.exists():
        os.replace(newest, folder / PREVIOUS)
    os.replace(tmp, newest)
    fsync_dir(folder)


def load(folder: Path) -> Loaded:
    """The newest valid checkpoint; CheckpointError when there is none."""
    problems: list[str] = []
    for name in (NEWEST, PREVIOUS):
        path = folder / name
        try:
            return Loaded(decode(path.read_bytes()), path, problems)
        except FileNotFoundError:
            problems.append(f"{name}: missing")
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
    raise CheckpointError(f"no usable checkpoint in {folder}: " + "; ".join(problems))
