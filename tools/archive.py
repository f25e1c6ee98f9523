"""Pack a run folder into one checksummed file, and give it back: `python -m tools.archive`.

`python -m tools.archive RUN [-o OUT]` writes `OUT` (default `<run_id>.tar.gz` in the current
folder; a name ending in `.tar.xz` is compressed with xz instead) holding `MANIFEST.json` first
(the run id and each file's size and SHA-256) and then the run folder as `<run_id>/...` (every
file but `session.lock`, which belongs to a process), and beside it `OUT.sha256`, the archive's
SHA-256 in `sha256sum` format (`sha256sum -c OUT.sha256` checks it). A run whose process is still
running (it holds its `session.lock`) is refused.

`python -m tools.archive --restore ARCHIVE [--run-dir DIR]` checks the archive against
`ARCHIVE.sha256` (when it is there), refuses any member that is not a plain file or folder under
`<run_id>/` (absolute paths, `..`, links, devices), refuses to overwrite an existing
`DIR/<run_id>`, extracts into a temporary folder in `DIR` checking every file against the
manifest, then moves it into place (file times kept) and runs the validator on it
(`tools.validate_session`). Nothing is left behind when a check fails.

Exit 0: done. 1: refused (a running session, an existing output or run folder, a corrupted or
unsafe archive, a restored run the validator rejects). 2: bad arguments, RUN not a run folder,
ARCHIVE missing or empty, `-o` in a folder that is not there, a `--run-dir` that is a file.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from actors.lock import LOCK_NAME
from tools.runfolder import NotARunFolder, human_size, is_finished, lock_held, resolve_run

MANIFEST = "MANIFEST.json"
FORMAT = "btc-laptop-agents run archive"
COMPRESSION = {".tar.gz": "gz", ".tgz": "gz", ".tar.xz": "xz", ".txz": "xz"}
WRITE_MODES: dict[str, Literal["w:gz", "w:xz"]] = {"gz": "w:gz", "xz": "w:xz"}
CHUNK = 1 << 20


class Refused(Exception):
    """The archive or restore cannot be done; the message says why (exit 1)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def compression_of(out: Path) -> str | None:
    return next((mode for suffix, mode in COMPRESSION.items() if out.name.endswith(suffix)), None)


# --- archive -------------------------------------------------------------------------------------


def run_files(run_path: Path) -> list[Path]:
    """The run folder's regular files, relative, sorted (symbolic links and the lock left out)."""
    files = []
    for root, _dirs, names in os.walk(run_path):
        for name in names:
            path = Path(root, name)
            if (
                path.is_file()
                and not path.is_symlink()
                and not (Path(root) == run_path and name == LOCK_NAME)
            ):
                files.append(path.relative_to(run_path))
    return sorted(files)


def archive(run_path: Path, out: Path) -> tuple[str, int]:
    """Write the archive and its sidecar; return the archive's SHA-256 and how many files it holds."""
    mode = compression_of(out)
    assert mode is not None
    run_id = run_path.name
    files = run_files(run_path)
    manifest = {
        "format": FORMAT,
        "version": 1,
        "run_id": run_id,
        "files": {
            rel.as_posix(): {"size": (run_path / rel).stat().st_size, "sha256": sha256_file(run_path / rel)}
            for rel in files
        },
    }
    data = (json.dumps(manifest, indent=2) + "\n").encode()
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with tarfile.open(tmp, WRITE_MODES[mode], format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(data), int(os.path.getmtime(run_path)), 0o644
            tar.addfile(info, io.BytesIO(data))
            for rel in files:
                tar.add(run_path / rel, arcname=f"{run_id}/{rel.as_posix()}", recursive=False)
        digest = sha256_file(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    Path(f"{out}.sha256").write_text(f"{digest}  {out.name}\n", encoding="utf-8")
    return digest, len(files)


# --- restore -------------------------------------------------------------------------------------


def check_sidecar(archive_path: Path) -> str:
    """Compare the archive with `ARCHIVE.sha256`; say what was checked."""
    sidecar = Path(f"{archive_path}.sha256")
    if not sidecar.is_file():
        return f"no {sidecar.name} beside it: checked against its manifest only"
    expected = sidecar.read_text(encoding="utf-8").split()
    if not expected or len(expected[0]) != 64:
        raise Refused(f"{sidecar} is not a sha256sum line")
    actual = sha256_file(archive_path)
    if actual != expected[0].lower():
        raise Refused(
            f"{archive_path} is corrupted: its SHA-256 is {actual}, {sidecar.name} says {expected[0]}"
        )
    return f"SHA-256 {actual} matches {sidecar.name}"


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def read_manifest(tar: tarfile.TarFile) -> dict[str, Any]:
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isfile():
        raise Refused(f"not a run archive: its first member is not {MANIFEST}")
    f = tar.extractfile(first)
    assert f is not None
    try:
        manifest = json.loads(f.read())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refused(f"{MANIFEST} is unreadable: {exc}") from None
    run_id = manifest.get("run_id") if isinstance(manifest, dict) else None
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise Refused(f"not a run archive: {MANIFEST} is not this tool's")
    # a run folder's name, and none of the run dir's own entries (`latest`, `.start.lock`, the
    # hidden `.latest.*` of a repoint): restored as such, they broke every later start
    if (
        not isinstance(run_id, str)
        or not _RUN_ID.fullmatch(run_id)
        or run_id.startswith(".")
        or run_id == "latest"
    ):
        raise Refused(f"{MANIFEST} names an unsafe run id {run_id!r}")
    return manifest


def member_path(member: tarfile.TarInfo, run_id: str) -> PurePosixPath | None:
    """The member's path inside the run folder (None: the folder itself); refuses anything unsafe."""
    path = PurePosixPath(member.name)
    unsafe = (
        path.is_absolute()
        or ".." in path.parts
        or "\\" in member.name
        or not path.parts
        or path.parts[0] != run_id
        or not (member.isfile() or member.isdir())
    )
    if unsafe:
        raise Refused(f"unsafe member {member.name!r}: refused (only files and folders under {run_id}/)")
    rel = PurePosixPath(*path.parts[1:])
    if not rel.parts:
        return None
    if member.isdir():
        raise Refused(f"unexpected folder member {member.name!r}")
    return rel


def extract(tar: tarfile.TarFile, manifest: dict[str, Any], into: Path) -> None:
    """Each member into `into`, checked against the manifest as it is written."""
    run_id, expected = manifest["run_id"], manifest["files"]
    seen: set[str] = set()
    times: list[tuple[Path, float]] = []
    for member in tar.getmembers()[1:]:  # the first is the manifest
        rel = member_path(member, run_id)
        if rel is None:
            continue
        key = rel.as_posix()
        if key not in expected or key in seen:
            raise Refused(f"member {member.name!r} is not in {MANIFEST} (or repeated)")
        seen.add(key)
        target = into.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        source = tar.extractfile(member)
        assert source is not None
        digest = hashlib.sha256()
        with target.open("xb") as f:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                f.write(chunk)
        if digest.hexdigest() != expected[key]["sha256"] or member.size != expected[key]["size"]:
            raise Refused(f"{member.name} is corrupted: its SHA-256 differs from {MANIFEST}'s")
        times.append((target, float(member.mtime)))
    missing = sorted(set(expected) - seen)
    if missing:
        raise Refused(f"the archive lacks files its manifest lists: {', '.join(missing)}")
    for path, mtime in times:
        os.utime(path, (mtime, mtime))


def restore(archive_path: Path, run_dir: Path) -> tuple[Path, str]:
    """Restore the archive into `run_dir/<run_id>`; return its path and what the checksum check said."""
    checked = check_sidecar(archive_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=run_dir))
    try:
        try:
            with tarfile.open(archive_path, "r:*") as tar:
                manifest = read_manifest(tar)
                target = run_dir / manifest["run_id"]
                if target.exists() or target.is_symlink():
                    raise Refused(f"{target} exists already: not overwritten (move it away or use --run-dir)")
                extract(tar, manifest, staging / "run")
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
            # one line (found by a CLI audit: tarfile's message for a file it cannot open lists
            # every compression it tried, a line each)
            reason = str(exc).splitlines()[0].rstrip(":") if str(exc) else type(exc).__name__
            raise Refused(
                f"{archive_path} is corrupted or not a run archive (or unreadable): {reason}"
            ) from None
        (staging / "run").mkdir(exist_ok=True)
        if target.exists():
            raise Refused(f"{target} exists already: not overwritten")
        os.rename(staging / "run", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, checked


# --- the command ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.archive",
        description="Pack a run folder into one checksummed .tar.gz/.tar.xz, or restore one (--restore).",
    )
    parser.add_argument("run", nargs="?", type=Path, help="run folder to archive (e.g. runs/latest)")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="OUT",
        help="archive to write (default: <run_id>.tar.gz; .tar.xz for xz)",
    )
    parser.add_argument("--restore", type=Path, metavar="ARCHIVE", help="restore this archive into --run-dir")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path("runs"),
        help="with --restore: where the run folder goes (default: runs)",
    )
    return parser


def _archive_command(run: Path, out: Path | None) -> int:
    try:
        run_path = resolve_run(run)
    except NotARunFolder as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = out if out is not None else Path(f"{run_path.name}.tar.gz")
    if not out.parent.is_dir():  # found by a CLI audit: a traceback
        print(f"error: -o {out}: its folder {out.parent} does not exist", file=sys.stderr)
        return 2
    if lock_held(run_path):
        print(
            f"error: {run_path} is a running session (its session.lock is held): archive it once it ends",
            file=sys.stderr,
        )
        return 1
    if out.exists():
        print(f"error: {out} exists already: not overwritten (choose another -o)", file=sys.stderr)
        return 1
    if not is_finished(run_path):
        print(f"warning: {run_path} is unfinished (no final_report.json): archived as it is", file=sys.stderr)
    digest, count = archive(run_path, out)
    print(
        f"archived {run_path} ({count} files) -> {out} ({human_size(out.stat().st_size)}), "
        f"sha256 {digest} in {out}.sha256"
    )
    return 0


def _restore_command(archive_path: Path, run_dir: Path) -> int:
    from tools.validate_session import validate

    if not archive_path.is_file():
        print(f"error: {archive_path} is not a file", file=sys.stderr)
        return 2
    # found by a CLI audit: an empty ARCHIVE was said in five lines, exit 1, and a --run-dir that is
    # a file ended in a traceback
    if archive_path.stat().st_size == 0:
        print(
            f"error: {archive_path} is empty; expected a run archive (python -m tools.archive RUN)",
            file=sys.stderr,
        )
        return 2
    if run_dir.exists() and not run_dir.is_dir():
        print(f"error: --run-dir {run_dir} is not a folder", file=sys.stderr)
        return 2
    try:
        target, checked = restore(archive_path, run_dir)
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    problems = validate(target)
    print(f"restored {archive_path} -> {target} ({checked})")
    if problems:
        for problem in problems:
            print(f"validate_session: {problem}", file=sys.stderr)
        print(f"error: the restored run {target} does not pass tools.validate_session", file=sys.stderr)
        return 1
    print(f"{target}: tools.validate_session OK")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.umask(0o077)  # state at rest, as the CLI's: the archive and a restored run folder 0600/0700
    if args.restore is not None:
        if args.run is not None or args.output is not None:
            parser.error("--restore ARCHIVE takes no RUN and no -o (use --run-dir for where it goes)")
        return _restore_command(args.restore, args.run_dir)
    if args.run is None:
        parser.error("give a run folder to archive (RUN) or --restore ARCHIVE")
    if args.output is not None and compression_of(args.output) is None:
        parser.error(f"-o {args.output}: the name must end in {', '.join(COMPRESSION)}")
    return _archive_command(args.run, args.output)


if __name__ == "__main__":
    sys.exit(main())
