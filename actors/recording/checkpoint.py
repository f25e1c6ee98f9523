"""Checkpoint files: atomic, checksummed, two generations.

`checkpoint.json` is the newest, `checkpoint.prev.json` the one before. A write goes to a temporary
file, is fsynced, the newest becomes the previous, the temporary becomes the newest, and the folder
is fsynced, so a crash at any instant leaves at least one complete checkpoint. A checkpoint whose
checksum does not match is never used; the loader falls back to the previous one and says so.

With a state key (`LAPTOP_AGENTS_STATE_KEY`, installed by the CLI with `use_key`), each checkpoint
also carries an HMAC-SHA256 of its body under that key. A checkpoint that does not verify (altered,
written with another key, not signed at all) or one that is signed while no key is set is refused
with `CheckpointError`, loudly, and never resumed: the loader does not fall back to the previous
generation for it (a tampered folder is for an operator to look at, not to be read around). Each
checkpoint names its run folder in its checksummed (and signed) body: one copied into another run
folder is not used there (refused as tampered when signed).
Secrets of the environment are scrubbed from a checkpoint's text before it is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

import attrs

from actors import secrets

NEWEST = "checkpoint.json"
PREVIOUS = "checkpoint.prev.json"
FORMAT = 1


class CheckpointError(Exception):
    """No usable checkpoint: the message says what was found."""


class TamperedCheckpoint(ValueError):
    """A checkpoint whose HMAC does not verify under the state key (or is signed without a key)."""


_key: bytes | None = None


def use_key(key: bytes | None) -> None:
    """Sign the checkpoints written from now on with `key` and verify those read (None: neither)."""
    global _key
    _key = key


def _hmac(key: bytes, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()


@attrs.frozen
class Loaded:
    state: dict[str, Any]
    path: Path
    problems: list[str]  # what was wrong with newer generations that were skipped


def _checksum(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def encode(state: dict[str, Any], run: str | None = None) -> bytes:
    """The checkpoint file's bytes; `run`: the run folder's name, in the checksummed (and signed)
    body, so that a checkpoint copied into another run folder is refused there."""
    if secrets.active():
        text = json.dumps(state, separators=(",", ":"), allow_nan=False)
        clean = secrets.scrub(text)
        if clean != text:
            state = json.loads(clean)
    body: dict[str, Any] = {"format": FORMAT, "state": state}
    if run is not None:
        body["run"] = run
    doc = {**body, "sha256": _checksum(body)}
    if _key is not None:
        doc["hmac"] = _hmac(_key, body)
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def decode(data: bytes, run: str | None = None) -> dict[str, Any]:
    """The state in a checkpoint file's bytes; ValueError says why they are not a valid checkpoint
    (`run`: the folder it is read from, which a checkpoint naming its run must name)."""
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON (truncated?): {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "state" not in doc:
        raise ValueError("not a checkpoint of this format")
    body = {"format": doc["format"], "state": doc["state"]}
    if "run" in doc:  # older checkpoints name no run
        body["run"] = doc["run"]
    signed = "hmac" in doc
    if _key is None and signed:
        raise TamperedCheckpoint(
            f"signed with a state key, and {secrets.STATE_KEY} is not set: set the key it was "
            "written with to resume it"
        )
    if _key is not None and not signed:
        raise TamperedCheckpoint(
            f"not signed, and {secrets.STATE_KEY} is set: it was written without the key or its "
            "signature was removed"
        )
    if _key is not None and not hmac.compare_digest(str(doc["hmac"]), _hmac(_key, body)):
        raise TamperedCheckpoint(
            f"HMAC mismatch under {secrets.STATE_KEY}: the file was altered or written with another key"
        )
    if doc.get("sha256") != _checksum(body):
        raise ValueError("checksum mismatch")
    if run is not None and "run" in body and body["run"] != run:
        wrong = f"written for run {body['run']!r}, not {run!r} (copied from another run folder?)"
        if signed:  # verified under the key: someone moved it here
            raise TamperedCheckpoint(wrong)
        raise ValueError(wrong)
    state: dict[str, Any] = doc["state"]
    return state


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _run_id(folder: Path) -> str:
    """The run folder's own name (through `runs/latest`)."""
    return folder.resolve().name


def write(folder: Path, state: dict[str, Any]) -> None:
    """Atomically make `state` the newest checkpoint in `folder`, keeping the previous one."""
    data = encode(state, _run_id(folder))
    tmp = folder / (NEWEST + ".tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:  # a full disk, say: no temporary file left behind
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    newest = folder / NEWEST
    if newest.exists():
        os.replace(newest, folder / PREVIOUS)
    os.replace(tmp, newest)
    fsync_dir(folder)


def _between_renames(folder: Path) -> dict[str, Any] | None:
    """The state a write killed between its two renames left whole in its temporary file (written
    and fsynced before them), the newest moved to previous already; None when there is none whole
    (found by an audit: the resume went back a generation and undid a fill that file held). A
    file cut in its own write fails its checksum and is passed over, as a forged one is. Only with
    a previous: the very first write has none to move, and a folder with no checkpoint file but
    its temporary one is closed as abandoned (actors/recording/abandon.py `has_checkpoint`)."""
    if not (folder / PREVIOUS).exists():
        return None
    try:
        return decode((folder / (NEWEST + ".tmp")).read_bytes(), _run_id(folder))
    except (OSError, ValueError):
        return None


def load(folder: Path) -> Loaded:
    """The newest valid checkpoint; CheckpointError when there is none."""
    problems: list[str] = []
    for name in (NEWEST, PREVIOUS):
        path = folder / name
        try:
            return Loaded(decode(path.read_bytes(), _run_id(folder)), path, problems)
        except FileNotFoundError:
            if name == NEWEST and (cut := _between_renames(folder)) is not None:
                problems.append(
                    f"{name}: missing (its write was cut between its renames: taken whole from {name}.tmp)"
                )
                return Loaded(cut, folder / (NEWEST + ".tmp"), problems)
            problems.append(f"{name}: missing")
        except TamperedCheckpoint as exc:
            raise CheckpointError(
                f"refusing to resume {folder}: {name} failed its integrity check: {exc}. Nothing was "
                "started; inspect the run folder (or start a new session with --fresh)"
            ) from None
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
    raise CheckpointError(
        f"no usable checkpoint in {folder}: {'; '.join(problems)}. Nothing was started; it cannot be "
        "resumed until a usable checkpoint is back in it (from an archive of the run): start a new "
        "session with --fresh (this one is left as it is)"
    )
