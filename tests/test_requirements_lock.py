"""requirements.lock (the image's dependencies, `nox -s lock`) covers exactly pyproject.toml's
runtime dependencies: each pinned with `==` and its sha256 hashes, each pin within pyproject's
range, and every other entry there only because one of them needs it (uv's `# via` lines) — no
test or lint extra, nothing left over from a dependency since removed. Fails when pyproject's
dependencies change without `nox -s lock`."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO

LOCK = REPO / "requirements.lock"
PROJECT = "btc-laptop-agents"
FROM_PYPROJECT = f"{PROJECT} (pyproject.toml)"


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _entries() -> dict[str, dict]:
    """name -> {"version", "hashes", "via"} from the lock's blocks (a pin, its hashes, `# via`)."""
    entries: dict[str, dict] = {}
    current: dict | None = None
    in_via = False
    for raw in LOCK.read_text().splitlines():
        line = raw.strip()
        pin = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)(?:\s*;.*?)?\s*\\?$", raw)
        if pin:
            current = {"version": pin.group(2), "hashes": [], "via": []}
            entries[canonicalize_name(pin.group(1))] = current
            in_via = False
        elif current is not None and line.startswith("--hash="):
            current["hashes"].append(line.removesuffix("\\").strip())
        elif current is not None and line.startswith("# via"):
            rest = line.removeprefix("# via").strip()
            if rest:
                current["via"].append(rest)
            in_via = not rest
        elif current is not None and in_via and line.startswith("#   "):
            current["via"].append(line.removeprefix("#").strip())
        elif line and not line.startswith("#"):
            raise AssertionError(f"requirements.lock: unexpected line {raw!r}")
    return entries


def test_every_entry_is_pinned_with_sha256_hashes() -> None:
    entries = _entries()
    assert entries, "requirements.lock has no pins"
    for name, entry in entries.items():
        assert entry["hashes"], f"{name} has no --hash"
        assert all(re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", h) for h in entry["hashes"]), name
    assert not re.search(r"^\s*(-e|--editable|--index-url|--extra-index-url|git\+)", LOCK.read_text(), re.M)


def test_lock_covers_exactly_the_runtime_dependencies() -> None:
    entries = _entries()
    required = {canonicalize_name(Requirement(r).name): Requirement(r) for r in _project()["dependencies"]}
    direct = {name for name, e in entries.items() if FROM_PYPROJECT in e["via"]}
    assert direct == set(required), (
        f"run `nox -s lock`: missing {sorted(set(required) - direct)}, stale {sorted(direct - set(required))}"
    )
    for name, req in required.items():
        assert Version(entries[name]["version"]) in req.specifier, (
            f"{name}=={entries[name]['version']}: {req}"
        )


def test_every_other_entry_is_needed_by_a_runtime_dependency() -> None:
    entries = _entries()
    reachable = {n for n, e in entries.items() if FROM_PYPROJECT in e["via"]}
    grew = True
    while grew:
        more = {
            n
            for n, e in entries.items()
            if n not in reachable and any(canonicalize_name(v.split()[0]) in reachable for v in e["via"])
        }
        reachable |= more
        grew = bool(more)
    assert set(entries) == reachable, f"not needed at run time: {sorted(set(entries) - reachable)}"
    assert {"pytest", "hypothesis", "ruff", "mypy", "setuptools", "pip"} & set(entries) == set()


def test_lock_is_made_by_nox_lock() -> None:
    head = LOCK.read_text().splitlines()[:2]
    assert head[1].strip() == "#    nox -s lock", head
