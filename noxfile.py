"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s session -- --duration 1`."""

from __future__ import annotations

import shutil
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

# Python caches compiled modules (__pycache__, git-ignored) even where the environment says not to
# (PYTHONDONTWRITEBYTECODE set, as on the CI machines): each pytest-xdist worker and each CLI process
# a test starts would otherwise compile the project's modules again (collection alone: 8 s -> 3 s)
CACHE_BYTECODE = {"PYTHONDONTWRITEBYTECODE": ""}
# setup.py compiles the backtest's hot path (mypyc) when this is set; every other install is the
# interpreted sources
COMPILE = {"BTC_AGENTS_COMPILE": "1"}


@nox.session
def session(s: nox.Session) -> None:
    """Run one paper-trading session on config/live.toml; extra args go to the CLI."""
    s.install("-e", ".")
    # Ctrl-C reaches the session too (one process group): nox then waits for it to stop, flat, with
    # its report. Nox's default sends SIGTERM 0.3 s after the Ctrl-C and SIGKILL 0.2 s after that
    # (found by an audit): a stop still writing its report was killed, and the next start resumed
    # the session and traded on. The session bounds its own stop (session.flatten_timeout_s).
    s.run("python", "-m", "actors.main", "--config", "config/live.toml", *s.posargs, interrupt_timeout=None)


@nox.session
def tests(s: nox.Session) -> None:
    """The whole test suite (pytest-trio), in 6 pytest-xdist workers: most of the slow tests wait
    on real sockets and real processes, so they overlap well on 2 cores (measured: 4 workers left
    a fifth of the 2 cores idle, 6 about a twentieth). `-- -k name` selects.
    The container tests (marker `container`) are `nox -s container`'s."""
    s.install("-e", ".[test]")
    suite = ["-m", "not container and not sweep"]
    # collected once first, writing the assertion-rewritten test modules' bytecode (about 7 s of CPU
    # on a fresh clone): the workers then read it instead of each rewriting them side by side
    s.run("pytest", "-q", "--collect-only", *suite, silent=True, env=CACHE_BYTECODE)
    # worksteal: a worker that runs out takes half of the longest queue (tests/conftest.py puts the
    # long tests at the heads of the first chunks and deals the other real-time tests over them)
    s.run("pytest", "-q", "-n", "6", "--dist", "worksteal", *suite, *s.posargs, env=CACHE_BYTECODE)


@nox.session
def explore(s: nox.Session) -> None:
    """The Hypothesis tests with new random examples on every run (every other session draws the
    same ones each run: tests/conftest.py), to look for failing cases the fixed draws miss; a
    failure prints its example and a `@reproduce_failure` line. `-- --hypothesis-seed N` repeats one run."""
    s.install("-e", ".[test]")
    s.run("pytest", "-q", "-n", "2", "-m", "hypothesis", *s.posargs, env={"HYPOTHESIS_PROFILE": "explore"})


@nox.session
def quick(s: nox.Session) -> None:
    """The deterministic subset to run while working (under a minute): no real-time socket,
    process, soak, container or benchmark test (those are marked `slow`)."""
    s.install("-e", ".[test]")
    s.run(
        "pytest",
        "-q",
        "-n",
        "2",  # CPU-bound tests: a worker a core (4 spend more of the minute starting and contending)
        "-m",
        "not slow and not container and not sweep",
        *s.posargs,
        env=CACHE_BYTECODE,
    )


@nox.session
def compiled(s: nox.Session) -> None:
    """The compiled build (setup.py: the backtest's hot path through mypyc) under `nox -s quick`'s
    tests: a copy of the repository's files, compiled in place in the session's temporary folder
    (the repository itself never holds a compiled module, which an edited source would not
    replace), its tests run there against it (tests/conftest.py refuses to run them on anything
    else). Left out: the one test that replaces a method of a compiled class to make it fail (a
    compiled class has no such seam)."""
    s.install("-e", ".[test]", "mypy==2.4.1", "setuptools>=68")
    tmp = Path(s.create_tmp())
    copy = tmp / "repo"
    shutil.rmtree(copy, ignore_errors=True)
    # the working tree's files, new ones too (not those git ignores)
    tracked = s.run(
        "git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", silent=True, external=True
    )
    for name in str(tracked).split("\0"):
        if name and Path(name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(name, copy / name)
    shared = Path("..").resolve() / "shared"  # the real data's tests find it beside the copy too
    if shared.is_dir() and not (tmp / "shared").exists():
        (tmp / "shared").symlink_to(shared)
    with s.chdir(copy):
        s.run("python", "setup.py", "-q", "build_ext", "--inplace", env=COMPILE)
        s.run(
            "pytest",
            "-q",
            "-rs",  # a skipped test says why
            "-n",
            "2",
            "-p",
            "no:cacheprovider",
            "-m",
            "not slow and not container and not sweep",
            "--deselect",
            "tests/test_session.py::test_actor_failure_ends_in_error_with_report",
            *s.posargs,
            env=CACHE_BYTECODE | {"BTC_AGENTS_EXPECT_COMPILED": "1"},
        )


@nox.session
def lint(s: nox.Session) -> None:
    """ruff (with the ASYNC rules) and mypy."""
    s.install("-e", ".[test,lint]")
    s.run("ruff", "check", ".")
    s.run("ruff", "format", "--check", ".")
    s.run("mypy")


@nox.session
def bench(s: nox.Session) -> None:
    """Throughput, memory and latency figures (docs/performance.md); `-- --quick` for a smoke run."""
    # pip builds in the tree: no module of an earlier build (build/lib) may enter this one's wheel
    shutil.rmtree("build", ignore_errors=True)
    # the feed benchmark runs the fake exchange, which needs hypercorn (of the test extra; not the
    # whole extra: trio.testing imports pytest when it is installed, 8 MiB on every figure)
    s.install(".[sweep]", "hypercorn>=0.17")  # the sweep extra: the sweep throughput (Ray)
    # then the project again, compiled (setup.py: the backtest's hot path through mypyc, the version
    # it was checked with), as `pip install` gives it to a user who asks: the CLI's figures are this
    # build's (tools/bench.py says which build it ran); the profile reads the sources
    s.install("mypy==2.4.1", "setuptools>=68")
    shutil.rmtree("build", ignore_errors=True)
    s.install("--no-build-isolation", "--no-deps", "--force-reinstall", ".", env=COMPILE)
    # the peers of ../shared/bench/peers/, pinned as measured there (numpy and pandas also make the
    # bars and run reference_loop.py); a peer that cannot be installed is reported as skipped
    pins = ["numpy==2.4.6", "pandas==2.3.3"]  # with each peer, so that none moves them
    for peer in (pins, ["backtesting==0.6.6", *pins], ["nautilus_trader==1.221.0", *pins]):
        try:
            s.install(*peer)
        except nox.command.CommandFailed:
            s.warn(f"could not install {' '.join(peer)}: reported as skipped")
    s.run("python", "-m", "tools.bench", *s.posargs)
    # the live feed: parse-and-dispatch cost per frame, and a session at 200 frames/s
    quick = ["--no-session", "--frames", "6000"] if "--quick" in s.posargs else []
    s.run("python", "-m", "tools.bench_feed", *quick)


@nox.session
def sweep(s: nox.Session) -> None:
    """The sweep tests on a local Ray (marker `sweep`; CI runs this after the suite): 30 trials
    over the shared data against their CLI backtests, a kill and a resume (tests/test_sweep.py).
    `-- --example` runs config/sweeps/example.toml instead, into sweeps/example."""
    s.install("-e", ".[test,sweep]")
    if "--example" in s.posargs:
        s.run("python", "-m", "tools.sweep", "config/sweeps/example.toml", "--out", "sweeps/example")
        return
    s.run("pytest", "-q", "-m", "sweep", *s.posargs, env=CACHE_BYTECODE)


@nox.session
def soak(s: nox.Session) -> None:
    """The long live runs, 3 minutes each, side by side (CI runs this after the suite): a session
    against the fake exchange with every fault on at once (tests/test_soak.py, `SOAK_SECONDS`), and
    one against an exchange dropping every connection after 5 s (tests/test_flapping_exchange.py,
    `FLAPPING_SECONDS`). The test suite runs shorter ones."""
    s.install("-e", ".[test]")
    s.run(
        "pytest",
        "-q",
        "-n",
        "2",
        "tests/test_soak.py",
        "tests/test_flapping_exchange.py",
        *s.posargs,
        env={
            "SOAK_SECONDS": s.env.get("SOAK_SECONDS", "180"),
            "FLAPPING_SECONDS": s.env.get("FLAPPING_SECONDS", "180"),
        },
    )


@nox.session
def container(s: nox.Session) -> None:
    """Build the image (podman) and run the container tests (tests/test_container.py, marker
    `container`): a read-only session, `podman stop` within 10 s and flat, the HEALTHCHECK, the
    README's recipes. Needs podman and the base image (CI: ../shared/tools/podman-sandbox.sh);
    without them this fails (CONTAINER_REQUIRED=1) where `pytest` alone would skip."""
    s.install("-e", ".[test]")
    s.run(
        "pytest",
        "-q",
        "-m",
        "container",
        "tests/test_container.py",
        *s.posargs,
        env={"CONTAINER_REQUIRED": "1"},
    )


LOCK = "requirements.lock"
SWEEP_LOCK = "requirements-sweep.lock"


@nox.session
def lock(s: nox.Session) -> None:
    """Regenerate requirements.lock, the image's hash-pinned runtime dependencies: pyproject.toml's
    [project].dependencies (no extras) resolved for Linux and Python 3.11 by `uv pip compile`, every
    file's sha256 listed (the Containerfile installs it with `pip install --require-hashes`).
    Then requirements-sweep.lock, the Ray worker image's (`--build-arg SWEEP=1`): the same
    dependencies and the `sweep` extra (ray, optuna, pyarrow), compiled with requirements.lock as
    constraints (`-c`), so that a package of both has the version of requirements.lock and the
    sweep image installs its lock on top of the default image's without moving a pin.
    `-- --upgrade` moves every pin to the newest release; without it the pins kept still fit."""
    s.install("uv")
    s.run(
        "uv",
        "pip",
        "compile",
        "pyproject.toml",
        "--generate-hashes",
        "--python-version",
        "3.11",
        "--python-platform",
        "linux",
        "--custom-compile-command",
        "nox -s lock",
        "--quiet",
        "--output-file",
        LOCK,
        *s.posargs,
    )
    # after requirements.lock, within it: one resolution would move the default image's pins
    s.run(
        "uv",
        "pip",
        "compile",
        "pyproject.toml",
        "--extra",
        "sweep",
        "--constraints",
        LOCK,
        "--generate-hashes",
        "--python-version",
        "3.11",
        "--python-platform",
        "linux",
        "--custom-compile-command",
        "nox -s lock",
        "--quiet",
        "--output-file",
        SWEEP_LOCK,
        *s.posargs,
    )
