"""One start decision per run dir: starts at the same instant give the outcome of starts one
after the other (actors/lock.py `StartLock`, the outcomes in the actors/main.py docstring)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from actors.lock import START_LOCK_NAME, SessionLock, StartBusy, StartLock, is_locked
from actors.plan import PlanError, find_resumable
from actors.recording import checkpoint
from actors.recording.recorder import create_run_folder
from actors.session import new_run_id
from tests.conftest import REPO, cli_env, read_events, read_report
from tools.validate_session import validate

# --- the lock, in process ----------------------------------------------------------------------------


def test_starts_decide_one_at_a_time(tmp_path: Path) -> None:
    """Eight threads (each its own open file: flock excludes them as it does processes), each
    holding the start lock while it looks and makes a run folder: never two at once, and the
    run ids chosen under it (one second, one seed) are all distinct."""
    run_dir = tmp_path / "runs"
    inside, most, made = [0], [0], []
    guard = threading.Lock()

    def start() -> None:
        with StartLock(run_dir):
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            made.append(create_run_folder(run_dir, new_run_id(1_700_000_000.0, 42, run_dir)).name)
            time.sleep(0.002)
            with guard:
                inside[0] -= 1

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1
    assert sorted(made) == sorted(
        ["20231114T221320Z-s42", *(f"20231114T221320Z-s42-{n}" for n in range(2, 9))]
    )
    assert not (run_dir / START_LOCK_NAME).exists()


def test_the_session_lock_takes_over_once_armed(tmp_path: Path) -> None:
    run_dir, folder = tmp_path / "runs", tmp_path / "runs" / "r1"
    start = StartLock(run_dir)
    start.acquire()
    folder.mkdir()
    assert not is_locked(folder) and start.held  # a probe (find_resumable's) does not end the decision
    start.arm()
    with SessionLock(folder):
        assert not start.held  # the session's own lock ends it
        with StartLock(run_dir, wait_s=0):  # the next start decides at once
            assert is_locked(folder)
    start.release()  # idempotent


def test_a_waiting_start_gives_up_naming_the_holder(tmp_path: Path) -> None:
    with StartLock(tmp_path), pytest.raises(StartBusy, match=f"process {os.getpid()} holds .start.lock"):
        StartLock(tmp_path, wait_s=0.05).acquire()


def test_a_start_that_made_nothing_leaves_no_trace(tmp_path: Path) -> None:
    run_dir = tmp_path / "a" / "b" / "runs"
    old_umask = os.umask(0o077)
    try:
        with StartLock(run_dir):
            assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
            assert stat.S_IMODE((run_dir / START_LOCK_NAME).stat().st_mode) == 0o600
    finally:
        os.umask(old_umask)
    assert list(tmp_path.iterdir()) == []  # refused: the folders it made are gone
    with StartLock(run_dir):
        (run_dir / "r1").mkdir()
    assert [p.name for p in run_dir.iterdir()] == ["r1"]  # started: the run dir stays, the lock file not


def test_a_waiter_takes_the_lock_file_its_holder_replaced(tmp_path: Path) -> None:
    """The holder removes the file as it releases: a start blocked on the old file must not think
    it holds the lock while a third start holds the new one."""
    first = StartLock(tmp_path)
    first.acquire()
    got = threading.Event()
    second = StartLock(tmp_path)
    waiter = threading.Thread(target=lambda: (second.acquire(), got.set()))
    waiter.start()
    time.sleep(0.05)  # the waiter has opened the old file and polls it
    first.release()
    waiter.join(5)
    assert got.is_set() and second.held
    with pytest.raises(StartBusy):
        StartLock(tmp_path, wait_s=0.02).acquire()  # the file at the path is the one held
    second.release()


def test_a_session_being_started_is_running_not_missing(tmp_path: Path) -> None:
    """Locked before its recorder made events.jsonl: a second start refuses (never starts beside it)."""
    run_dir = tmp_path / "runs"
    folder = create_run_folder(run_dir, "r1")
    with SessionLock(folder), pytest.raises(PlanError, match="session r1 is running in another process"):
        find_resumable(run_dir, None)
    assert find_resumable(run_dir, None) is None  # its process died before it recorded anything: new


# --- 20 pairs of simultaneous starts, real processes ----------------------------------------------------

SETS = [
    "observability.progress=off", "session.interval=1s", "state.checkpoint_interval_s=0.2",
    "feed.tick_interval_s=0.1",
]  # fmt: skip
# plain: two plain starts; fresh: two --fresh; resume: two plain starts on an unfinished latest;
# resume_id: a plain start and --resume of that latest
KINDS = ["plain"] * 12 + ["fresh"] * 4 + ["resume"] * 2 + ["resume_id"] * 2
RUNNING = "error: session {} is running in another process; use --fresh to start a second session"


def fork_server() -> None:
    """Its own process: imports the CLI and the session once, reads the starts (a JSON line of
    {argv, cwd, stderr}), forks one process per start, each blocked on a pipe, prints `ready`; on
    the next line closes the pipe (all start at the same instant: each runs `actors.main.main`),
    then prints `INDEX EXIT_CODE` as each exits. The forks import nothing: 40 starts cost the CPU
    of their sessions, not of 40 interpreters."""
    import traceback

    import trio  # noqa: F401  (imported here so that no start imports it)

    import actors.session_actors  # noqa: F401
    from actors.main import main

    jobs = json.loads(sys.stdin.readline())
    gate_r, gate_w = os.pipe()
    pids = {}
    for i, job in enumerate(jobs):
        pid = os.fork()
        if pid == 0:  # the start
            code = 99
            try:
                os.close(gate_w)
                os.chdir(job["cwd"])
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(null, 1)
                os.dup2(os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)
                os.read(gate_r, 1)  # end of file once the server closes its end
                code = main(job["argv"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids[pid] = i
    os.close(gate_r)
    print("ready", flush=True)
    sys.stdin.readline()
    os.close(gate_w)
    while pids:
        pid, status = os.wait()
        print(pids.pop(pid), os.waitstatus_to_exitcode(status), flush=True)


def _args(pair: Path, *extra: str) -> list[str]:
    sets = [a for s in (*SETS, f"session.kill_switch={pair / 'kill.txt'}") for a in ("--set", s)]
    return ["--source", "mock", "--run-dir", str(pair / "runs"), *sets, *extra]


def _unfinished_session(tmp_path: Path) -> Path:
    """A session killed (SIGKILL) after its first checkpoint: the next start resumes it."""
    proto = tmp_path / "proto"
    proto.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "actors.main", *_args(proto, "--duration", "1")],
        cwd=proto, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            checkpoint.load(proto / "runs" / "latest")
            break
        except (FileNotFoundError, checkpoint.CheckpointError):
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.01)
    proc.kill()
    proc.wait()
    return proto / "runs"


@pytest.mark.slow
def test_20_pairs_of_simultaneous_starts_give_the_documented_outcome(tmp_path: Path) -> None:
    """All 40 starts at one instant, each pair in its own run dir. A pair that is not `--fresh`
    runs until its kill switch, made once one of the two has exited (so the one that runs cannot
    end before the other has decided, however slow the machine)."""
    server = subprocess.Popen(
        [sys.executable, "-c", "from tests.test_start_lock import fork_server; fork_server()"],
        cwd=REPO, env=cli_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.stdin is not None and server.stdout is not None
    proto = _unfinished_session(tmp_path)  # meanwhile the server imports
    resumed = proto.joinpath("latest").resolve().name
    pairs, jobs = [], []
    for i, kind in enumerate(KINDS):
        pair = tmp_path / f"pair{i:02}"
        pair.mkdir()
        if kind.startswith("resume"):
            shutil.copytree(proto, pair / "runs", symlinks=True)
        flags = ["--fresh", "--duration", "0.03"] if kind == "fresh" else ["--duration", "1"]
        second = ["--resume", resumed] if kind == "resume_id" else []
        pairs.append((kind, pair))
        for n, argv in enumerate((_args(pair, *flags), _args(pair, *flags, *second))):
            jobs.append({"argv": argv, "cwd": str(pair), "stderr": str(pair / f"stderr{n}")})
    server.stdin.write(json.dumps(jobs) + "\n")
    server.stdin.flush()
    assert server.stdout.readline() == "ready\n"
    server.stdin.write("go\n")
    server.stdin.flush()
    codes: dict[int, int] = {}
    while len(codes) < len(jobs):
        index, code = map(int, server.stdout.readline().split())
        codes[index] = code
        kind, pair = pairs[index // 2]
        if kind != "fresh":
            (pair / "kill.txt").touch()  # the first of the two is gone: stop the other
    assert server.wait(10) == 0

    for p, (kind, pair) in enumerate(pairs):
        where = f"{pair.name} ({kind})"
        runs = pair / "runs"
        code = [codes[2 * p], codes[2 * p + 1]]
        err = [(pair / f"stderr{n}").read_text() for n in (0, 1)]
        assert all("Traceback" not in e for e in err), (where, err)
        assert not (runs / START_LOCK_NAME).exists(), where
        assert stat.S_IMODE(runs.stat().st_mode) == 0o700, where
        folders = sorted(p for p in runs.iterdir() if not p.is_symlink())
        assert all(f.is_dir() and stat.S_IMODE(f.stat().st_mode) == 0o700 for f in folders), where
        for folder in folders:
            assert validate(folder) == [], where
        if kind == "fresh":
            assert code == [0, 0], (where, err)
            assert len(folders) == 2 and (runs / "latest").resolve() in folders, where
            continue
        assert sorted(code) == [0, 2], (where, code, err)
        won, lost = code.index(0), code.index(2)
        (folder,) = folders
        assert (runs / "latest").resolve() == folder, where
        assert read_report(folder)["stop_reason"] == "kill_switch", where
        expected = RUNNING.format(folder.name)
        if kind == "resume_id" and lost == 1:
            expected = f"error: --resume: {folder} is running in another process"
        assert err[lost].strip() == expected, (where, err[lost])
        if kind.startswith("resume"):
            assert folder.name == resumed and "resuming unfinished session" in err[won], where
            assert "session.resumed" in {e["kind"] for e in read_events(folder)}, where


# --- a signal during start-up leaves nothing behind ----------------------------------------------------

# The CLI's own process (its start-up signal handlers), a signal sent to itself at a known point of
# the start: right after a call of `module.name` whose arguments `when` (Python source over `args`)
# picks. Deterministic: the handler runs at the next bytecode, inside the wrapper.
_SIGNAL_AT = """
import importlib, os, signal, sys
module, name, when, signum = sys.argv[1], sys.argv[2], sys.argv[3], getattr(signal, sys.argv[4])
target = importlib.import_module(module)
real = getattr(target, name)
def wrapper(*args):
    if eval(when, {{"os": os}}, {{"args": args}}):
        os.kill(os.getpid(), signum)  # before the call: the handler runs here
    return real(*args)
setattr(target, name, wrapper)
from actors import main as cli
sys.argv = ["actors.main", *sys.argv[5:]]
sys.exit(cli.main())
"""


def _start_signalled(
    tmp_path: Path, module: str, name: str, when: str, signum: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _SIGNAL_AT.format(), module, name, when, signum, *args],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


_LOCK_FD = "os.path.basename(os.readlink(f'/proc/self/fd/{args[0]}')) == '.start.lock'"


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
@pytest.mark.parametrize(
    ("name", "when"),
    [
        ("flock", f"args[1] & 2 and {_LOCK_FD}"),  # as it takes the start lock (LOCK_EX)
        ("ftruncate", _LOCK_FD),  # as it writes its pid into it, the lock held
    ],
)
def test_a_signal_as_a_start_takes_its_lock_leaves_no_lock_file(
    tmp_path: Path, signum: str, name: str, when: str
) -> None:
    """Found by the stop audit: a SIGTERM (or Ctrl-C) in the instants a start takes the run dir's
    start lock exited (143, 130) with `.start.lock` left in the run dir, and the run dir the
    start had made. The signal is held over those instants and taken once the lock is whole: the
    start exits as before, leaving nothing (a refused start leaves no trace)."""
    runs = tmp_path / "runs"
    module = "fcntl" if name == "flock" else "os"
    done = _start_signalled(
        tmp_path, module, name, when, signum, "--run-dir", str(runs), "--source", "mock", "--fresh"
    )
    assert done.returncode == 128 + {"SIGTERM": 15, "SIGINT": 2}[signum], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not runs.exists(), sorted(p.name for p in runs.iterdir())


def test_a_signal_while_a_start_closes_a_killed_run_leaves_no_temporary_file(tmp_path: Path) -> None:
    """Found by the stop audit: a start closing a run killed before its first checkpoint writes
    each file to FILE.tmp and renames it; a SIGTERM between the two left FILE.tmp in the run
    folder for good. Now the temporary file is removed as the signal ends the start; the next
    start closes the run whole."""
    from tests.test_crash_resume import write_killed_run

    run = write_killed_run(tmp_path, trades=True)
    runs = run.parent
    when = "os.path.basename(args[1]) == 'metrics.json'"
    args = ("--run-dir", str(runs), "--source", "mock", "--fresh")
    done = _start_signalled(tmp_path, "os", "replace", when, "SIGTERM", *args)
    assert done.returncode == 143, done.stderr[-2000:]
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []
    assert not (runs / START_LOCK_NAME).exists()
    assert not (run / "final_report.json").exists()
    from actors.recording.abandon import close_abandoned

    close_abandoned(run)
    assert validate(run) == []
