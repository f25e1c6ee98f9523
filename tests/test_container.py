"""The container image (podman): hardened, read-only, configured by the environment, healthy while
the session beats, stopped flat by `podman stop` within 10 s, and the README's recipes as written.
Its Ray worker build (`--build-arg SWEEP=1`): the sweep lock installed, Ray on a read-only root, and
deploy/raycluster.yaml's head and worker containers started as KubeRay starts them, running a sweep.

The tests marked `container` build and run the image: `nox -s container` runs them (with
CONTAINER_REQUIRED=1, which turns a missing podman or base image into a failure); `nox -s tests`
deselects them, and a plain `pytest` skips them without podman. The healthcheck's own tests
(tools/healthcheck.py on a temporary folder) need no podman and run in the normal suite.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.config import Config
from tests.conftest import REPO, SHARED
from tools import healthcheck

IMAGE = os.environ.get("CONTAINER_IMAGE", "localhost/btc-laptop-agents-test")
# the Ray worker build (--build-arg SWEEP=1) of deploy/raycluster.yaml
SWEEP_IMAGE = os.environ.get("CONTAINER_SWEEP_IMAGE", "localhost/btc-laptop-agents-sweep-test")
BASE_IMAGE = "docker.io/library/python:3.11-slim"
REQUIRED = os.environ.get("CONTAINER_REQUIRED") == "1"
# how the host reads what uid 10001 wrote (0700 folders, 0600 files): root reads it; a rootless
# podman user through its user namespace
HOST_READ = [] if os.geteuid() == 0 else ["podman", "unshare"]
# the mock session that trades often (tests/conftest.py TRADES_OFTEN), set through the environment
TRADES_OFTEN_ENV = {
    "LAPTOP_AGENTS__SESSION__INTERVAL": "2s",
    "LAPTOP_AGENTS__STRATEGY__FAST_PERIOD": "2",
    "LAPTOP_AGENTS__STRATEGY__SLOW_PERIOD": "5",
    "LAPTOP_AGENTS__RISK__MAX_ORDERS_PER_MINUTE": "100",
    "LAPTOP_AGENTS__FEED__MOCK_VOLATILITY_PCT": "150",
}
README_MARK = "<!-- container-recipe: tests/test_container.py runs this block as written -->"
STOP_LIMIT_S = 10.0


# --- tools/healthcheck.py, no podman ---------------------------------------------------------------


def _run_folder(tmp_path: Path, age_s: float | None) -> Path:
    """<tmp>/runs/latest -> a run folder whose metrics.csv is `age_s` old (None: no metrics.csv)."""
    run = tmp_path / "runs" / "20260101T000000Z-s42"
    run.mkdir(parents=True)
    (tmp_path / "runs" / "latest").symlink_to(run.name, target_is_directory=True)
    if age_s is not None:
        metrics = run / "metrics.csv"
        metrics.write_text("ts,equity\n")
        then = time.time() - age_s
        os.utime(metrics, (then, then))
    return tmp_path / "runs" / "latest"


def test_healthcheck_fresh_heartbeat_is_healthy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    latest = _run_folder(tmp_path, age_s=2)
    assert healthcheck.main([str(latest), "--max-age", "60"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("healthy:") and out.count("\n") == 1


@pytest.mark.parametrize(
    ("age_s", "finished", "says"),
    [(120, False, "120 s ago"), (None, False, "no heartbeat"), (1, True, "finished")],
    ids=["stale", "no-metrics", "finished"],
)
def test_healthcheck_stale_missing_or_finished_is_unhealthy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], age_s: float | None, finished: bool, says: str
) -> None:
    latest = _run_folder(tmp_path, age_s)
    if finished:
        (latest / "final_report.json").write_text("{}\n")
    assert healthcheck.main([str(latest), "--max-age", "60"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("unhealthy:") and says in out and out.count("\n") == 1


@pytest.mark.parametrize("max_age", ["nan", "-1", "0", "inf"])
def test_healthcheck_refuses_a_max_age_that_is_not_a_positive_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], max_age: str
) -> None:
    """Found by an audit: `--max-age nan` called a session three days silent healthy."""
    latest = _run_folder(tmp_path, 3 * 86400)
    with pytest.raises(SystemExit) as exit_:
        healthcheck.main([str(latest), "--max-age", max_age])
    assert exit_.value.code == 2
    assert "--max-age must be a positive number of seconds" in capsys.readouterr().err


def test_healthcheck_without_a_run_folder_is_unhealthy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert healthcheck.main([str(tmp_path / "runs" / "latest")]) == 1
    assert capsys.readouterr().out.startswith("unhealthy: no run folder")


def test_healthcheck_follows_the_run_dir_of_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run_folder(tmp_path, age_s=1)
    monkeypatch.delenv(healthcheck.RUN_DIR_ENV, raising=False)
    assert healthcheck.default_run() == Path("/data/runs/latest")
    monkeypatch.setenv(healthcheck.RUN_DIR_ENV, str(tmp_path / "runs"))
    assert healthcheck.default_run() == tmp_path / "runs" / "latest"
    assert healthcheck.main([]) == 0


def test_healthcheck_looks_past_a_backtest_or_replay_that_moved_latest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by an audit: a replay in the container's run dir moved `latest` to its own finished
    folder, and the live session's healthcheck said unhealthy."""
    _run_folder(tmp_path, age_s=1)  # the live session, running
    runs = tmp_path / "runs"
    replay = runs / "replay-20260101T000000Z-s42"
    replay.mkdir()
    (replay / "final_report.json").write_text("{}\n")
    (runs / "latest").unlink()
    (runs / "latest").symlink_to(replay.name, target_is_directory=True)
    monkeypatch.setenv(healthcheck.RUN_DIR_ENV, str(runs))
    assert healthcheck.default_run() == runs / "20260101T000000Z-s42"
    assert healthcheck.main([]) == 0
    # given as the README says outside the container, `runs/latest`: the same (found by an audit)
    monkeypatch.delenv(healthcheck.RUN_DIR_ENV)
    assert healthcheck.main([str(runs / "latest")]) == 0
    assert healthcheck.main([str(replay)]) == 1  # the replay's own folder, named: finished


def test_healthcheck_runs_as_a_module(tmp_path: Path) -> None:
    """The HEALTHCHECK's command line: one line, exit 1 with nothing there."""
    done = subprocess.run(
        [sys.executable, "-m", "tools.healthcheck", str(tmp_path / "latest")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert done.stdout.startswith("unhealthy:") and done.stdout.count("\n") == 1


def test_containerfile_healthcheck_runs_the_tool() -> None:
    text = (REPO / "Containerfile").read_text()
    assert '"python", "-m", "tools.healthcheck"' in text
    assert "--require-hashes --no-deps" in text and "requirements.lock" in text


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lock: Path) -> dict[str, str]:
    return {_normal(n): v for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock.read_text(), re.M)}


def test_sweep_lock_keeps_the_pins_of_requirements_lock() -> None:
    """requirements-sweep.lock (`nox -s lock`) is requirements.lock plus the sweep extra: every
    package of both at the same version, each with its sha256, so the sweep image installs it on
    top of the default image's dependencies without moving one."""
    base, sweep = _pins(REPO / "requirements.lock"), _pins(REPO / "requirements-sweep.lock")
    assert base.items() <= sweep.items(), {n: (v, sweep.get(n)) for n, v in base.items() if sweep.get(n) != v}
    assert {"ray", "optuna", "pyarrow"} <= set(sweep) - set(base)
    entries = re.split(r"\n(?=[A-Za-z0-9])", (REPO / "requirements-sweep.lock").read_text().split("\n", 2)[2])
    assert len(entries) == len(sweep) and all("--hash=sha256:" in e for e in entries)


def test_documented_podman_runs_give_the_stop_more_than_the_wind_down() -> None:
    """Found by a container audit: the README's and the RUNBOOK's `podman run -d` left podman's
    stop timeout at its default, 10 s, which is session.flatten_timeout_s: a stop whose actors
    took their whole wind-down was SIGKILLed (exit 137, no report; the next start resumed it)
    before the flatten and the report that come after it. Each documented unattended run sets
    --stop-timeout to at least twice the wind-down, as the Job's terminationGracePeriodSeconds
    (tests/test_deploy.py)."""
    bound = 2 * Config().session.flatten_timeout_s
    for doc in (REPO / "README.md", REPO / "docs" / "RUNBOOK.md"):
        text = re.sub(r"\\?\n\s*", " ", doc.read_text())  # one line: shell and Markdown breaks
        runs = re.findall(r"podman run -d ((?:(?!btc-laptop-agents).)*)btc-laptop-agents", text)
        assert runs, f"{doc.name}: no `podman run -d ... btc-laptop-agents`"
        for options in runs:
            timeout = re.search(r"--stop-timeout[ =](\d+)", options)
            assert timeout and int(timeout.group(1)) >= bound, f"{doc.name}: podman run -d {options}"


# --- podman ----------------------------------------------------------------------------------------


def _podman_missing() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (bash ../shared/tools/podman-sandbox.sh)"
    base = subprocess.run(["podman", "image", "exists", BASE_IMAGE], capture_output=True, timeout=60)
    if base.returncode != 0:
        return f"base image {BASE_IMAGE} missing (run ../shared/tools/podman-sandbox.sh once)"
    return None


def _need_podman() -> None:
    reason = _podman_missing()
    if reason:
        if REQUIRED:
            pytest.fail(f"CONTAINER_REQUIRED=1: {reason}")
        pytest.skip(reason)


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"podman {' '.join(args)}: exit {done.returncode}\n{done.stderr[-3000:]}"
    return done


def _build(tag: str, context: Path) -> None:
    # --format docker: the OCI format has no HEALTHCHECK and podman would drop it
    podman("build", "--format", "docker", "-t", tag, str(context), timeout=900)


@pytest.fixture(scope="module")
def image() -> str:
    _need_podman()
    _build(IMAGE, REPO)
    return IMAGE


@pytest.fixture
def containers() -> Iterator[list[str]]:
    """Names of the containers a test starts; removed with their anonymous volumes at the end."""
    names: list[str] = []
    yield names
    for name in names:
        subprocess.run(["podman", "rm", "-f", "-v", "-t", "0", name], capture_output=True, timeout=60)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _env_args(env: dict[str, str]) -> list[str]:
    return [a for k, v in env.items() for a in ("-e", f"{k}={v}")]


def _host_text(path: Path) -> str:
    if not HOST_READ:
        return path.read_text()
    return subprocess.run([*HOST_READ, "cat", str(path)], capture_output=True, text=True, timeout=60).stdout


def _report(run: Path) -> dict[str, Any]:
    return json.loads(_host_text(run / "final_report.json"))


def _events(run: Path) -> list[dict[str, Any]]:
    try:
        text = _host_text(run / "events.jsonl")
    except OSError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


def _validate(run: Path) -> None:
    done = subprocess.run(
        [*HOST_READ, sys.executable, "-m", "tools.validate_session", str(run)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.mark.container
def test_image_is_hardened_and_installs_the_lock(image: str) -> None:
    inspected = json.loads(podman("image", "inspect", image).stdout)[0]
    config = inspected["Config"]
    assert config["User"] == "10001:10001"
    assert config["WorkingDir"] == "/data"
    assert "/data" in config["Volumes"]
    assert config["Entrypoint"] == ["python", "-m", "actors.main", "--config", "/app/config/live.toml"]
    assert "PYTHONDONTWRITEBYTECODE=1" in config["Env"]
    # podman 4 shows the HEALTHCHECK beside Config, docker (and later podman) in it
    check = inspected.get("Healthcheck") or config.get("Healthcheck")
    assert check and check["Test"][:4] == ["CMD", "python", "-m", "tools.healthcheck"]
    # exactly the lock's versions, and nothing broken
    frozen = podman(
        "run", "--rm", "--read-only", "--entrypoint", "python", image, "-m", "pip", "freeze", "--all"
    ).stdout
    installed = {  # name: version, or the file it came from (the project: "@ file:///app")
        re.sub(r"[-_.]+", "-", m.group(1)).lower(): m.group(2)
        for m in (re.match(r"([A-Za-z0-9_.-]+)\s*(?:==|@)\s*(.*)", line) for line in frozen.splitlines())
        if m
    }
    lock = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (REPO / "requirements.lock").read_text(), re.M)
    assert lock and {n.lower(): v for n, v in lock}.items() <= installed.items()
    assert "btc-laptop-agents" in installed
    # the default build (SWEEP=0) holds no package of the sweep image
    assert {"ray", "optuna", "pyarrow"}.isdisjoint(installed)
    podman("run", "--rm", "--read-only", "--entrypoint", "python", image, "-m", "pip", "check")


@pytest.mark.container
def test_read_only_session_configured_by_the_environment(image: str, tmp_path: Path) -> None:
    """A whole session on a read-only root: state only in the /data volume, config from -e."""
    data = tmp_path / "data"
    data.mkdir()
    done = podman(
        "run",
        "--rm",
        "--read-only",
        "-v",
        f"{data}:/data:U",
        *_env_args({"LAPTOP_AGENTS__BROKER__STARTING_EQUITY": "12345"}),
        image,
        "--source",
        "mock",
        "--duration",
        "0.1",
        timeout=180,
    )
    assert "stop_reason=duration" in done.stderr
    assert "Traceback" not in done.stderr
    run = data / "runs" / "latest"
    report = _report(run)
    assert report["status"] == "ok" and report["stop_reason"] == "duration"
    assert report["starting_equity"] == 12345.0
    assert report["data_source"] == "mock"
    # report.html is written last and its failure only logged: it must be there
    listed = subprocess.run([*HOST_READ, "ls", str(run)], capture_output=True, text=True, timeout=60)
    assert "report.html" in listed.stdout.split()
    _validate(run)


@pytest.mark.container
def test_a_package_on_the_volume_does_not_replace_the_images(image: str, tmp_path: Path) -> None:
    """Found by a container audit: `python -m` put the working directory, /data (the writable
    volume), first on the import path, so a /data/tools/healthcheck.py or /data/actors/main.py ran
    in place of the image's code (its read-only root kept nothing from being replaced). Planted
    there, the HEALTHCHECK's command and the ENTRYPOINT still run the installed code."""
    data = tmp_path / "data"
    for package, module in (("tools", "healthcheck"), ("actors", "main")):
        (data / package).mkdir(parents=True)
        (data / package / "__init__.py").write_text("")
        (data / package / f"{module}.py").write_text("print('planted code ran')\n")
    volume = ["--rm", "--read-only", "-v", f"{data}:/data:U"]
    check = podman("run", *volume, "--entrypoint", "python", image, "-m", "tools.healthcheck", check=False)
    assert check.returncode == 1 and check.stdout.startswith("unhealthy: no run folder"), check.stdout
    usage = podman("run", *volume, image, "--help")
    assert usage.stdout.startswith("usage: python -m actors.main"), usage.stdout[:300]


@pytest.mark.container
def test_session_writes_nothing_outside_data_and_tmp(image: str, containers: list[str]) -> None:
    """`podman diff` of a session on a writable root equals that of a container that ran nothing
    (podman's own /etc), apart from /data (the volume) and /tmp."""

    def diff(name: str, *args: str) -> set[str]:
        containers.append(name)
        podman("run", "--name", name, *args, timeout=180)
        return {line.split(maxsplit=1)[1] for line in podman("diff", name).stdout.splitlines() if line}

    baseline = diff(_name("btc-diff-base"), "--entrypoint", "true", image)
    session = diff(_name("btc-diff"), image, "--source", "mock", "--duration", "0.05")
    extra = {p for p in session - baseline if not p.startswith(("/data", "/tmp"))}
    assert extra == set(), f"written outside /data and /tmp: {sorted(extra)}"


@pytest.mark.container
def test_podman_stop_flattens_within_10_s_and_healthcheck(
    image: str, tmp_path: Path, containers: list[str]
) -> None:
    """A running read-only session: `podman healthcheck run` says healthy; `podman stop -t 10`
    (SIGTERM) ends it flat, with its report, exit 0, well before podman's SIGKILL."""
    runs = tmp_path / "runs"
    runs.mkdir()
    name = _name("btc-stop")
    containers.append(name)
    podman(
        "run",
        "-d",
        "--name",
        name,
        "--read-only",
        "-v",
        f"{runs}:/data/runs:U",
        *_env_args(TRADES_OFTEN_ENV),
        image,
        "--source",
        "mock",
        "--duration",
        "5",
    )
    run = runs / "latest"
    _wait_for(lambda: any(e["kind"] == "heartbeat" for e in _events(run)), 60, "the first heartbeat")
    time.sleep(1.5)  # the heartbeat's metrics.csv row flushed (once a second)
    health = podman("healthcheck", "run", name, check=False)
    assert health.returncode == 0, health.stdout + health.stderr
    assert json.loads(podman("inspect", name).stdout)[0]["State"]["Health"]["Status"] == "healthy"

    def holding() -> bool:
        beats = [e for e in _events(run) if e["kind"] == "heartbeat"]
        return bool(beats) and beats[-1]["position_qty"] != 0

    # stop with a position open when the strategy takes one (it usually does within seconds)
    with contextlib.suppress(AssertionError):
        _wait_for(holding, 40, "a position")
    sent = time.monotonic()
    podman("stop", "-t", str(int(STOP_LIMIT_S)), name, timeout=60)
    took = time.monotonic() - sent
    state = json.loads(podman("inspect", name).stdout)[0]["State"]
    assert took < STOP_LIMIT_S, f"podman stop took {took:.1f} s (SIGKILL after {STOP_LIMIT_S:g} s)"
    assert state["ExitCode"] == 0, podman("logs", name).stderr[-3000:]
    report = _report(run)
    assert report["status"] == "ok" and report["stop_reason"] == "signal"
    assert report["open_positions"] == []
    events = _events(run)
    assert events[-1]["kind"] == "session.stopped" and events[-1]["detail"] == "SIGTERM"
    assert [e for e in events if e["kind"] == "heartbeat"][-1]["position_qty"] == 0
    _validate(run)
    flattened = any(e.get("reason") == "flatten_on_exit" for e in events)
    print(f"podman stop: {took:.2f} s; flattened a position: {flattened}")


def _readme_recipe() -> str:
    readme = (REPO / "README.md").read_text()
    after = readme.split(README_MARK, 1)
    assert len(after) == 2, f"README.md lost its marked container recipe ({README_MARK})"
    block = re.match(r"\s*```bash\n(.*?)\n```", after[1], re.S)
    assert block, "the marked container recipe is not a ```bash block"
    return block.group(1)


def _fresh_checkout(dest: Path) -> Path:
    """The working tree's files as a clone would have them (tracked and new, no ignored ones)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.mark.container
def test_readme_recipe_runs_as_written(tmp_path: Path) -> None:
    """The README's marked podman block, run by bash line after line (set -e) in a fresh checkout."""
    _need_podman()
    recipe = _readme_recipe()
    names = re.findall(r"--name (\S+)", recipe)
    checkout = _fresh_checkout(tmp_path / "btc-laptop-agents")
    for name in names:  # a container of an earlier run of this test
        subprocess.run(["podman", "rm", "-f", "-v", "-t", "0", name], capture_output=True, timeout=60)
    try:
        done = subprocess.run(
            ["bash", "-euxo", "pipefail", "-c", recipe],
            cwd=checkout,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, f"exit {done.returncode}\n{done.stderr[-4000:]}"
    finally:
        for name in names:
            subprocess.run(["podman", "rm", "-f", "-v", "-t", "0", name], capture_output=True, timeout=60)
    run = checkout / "runs" / "latest"
    report = _report(run)
    assert report["status"] == "ok" and report["stop_reason"] == "signal"
    # the killed session was resumed by `podman start`, then stopped flat (found by an audit: the
    # README said to run the same `podman run`, which exits 125 while the named container exists)
    events = _events(run)
    assert [e["kind"] for e in events].count("session.resumed") == 1
    assert events[-1]["kind"] == "session.stopped" and events[-1]["detail"] == "SIGTERM"
    _validate(run)


# --- the Ray worker image (deploy/raycluster.yaml) -------------------------------------------------

# a sweep of 3 trials (a 2-value grid on 1 train day, then the best on the next day) over the
# shared perpetual data, mounted where --data points
TINY_SWEEP = """
[sweep]
name = "tiny"
data = "/market/btcusdt_perp_1m.csv.gz"
objective = "net_pnl"
min_trades = 0
sampler = "grid"
set = ["risk.max_loss_pct=100", "risk.max_daily_drawdown_pct=100", "risk.max_consecutive_losses=0"]

[walk_forward]
start = "2023-08-01"
train_days = 1
test_days = 1
windows = 1

[[strategy]]
kind = "ema_cross"
[strategy.space]
fast_period = [5, 9]
slow_period = [21]
"""


@pytest.fixture(scope="module")
def sweep_image() -> str:
    """The Containerfile built with SWEEP=1 (downloads the sweep lock's wheels once, ~150 MB)."""
    _need_podman()
    podman(
        "build", "--format", "docker", "--build-arg", "SWEEP=1", "-t", SWEEP_IMAGE, str(REPO), timeout=1800
    )
    return SWEEP_IMAGE


def _ray_run(*args: str) -> list[str]:
    """`podman run` as deploy/raycluster.yaml runs a Ray container: the image's user, a read-only
    root, /tmp and /dev/shm in memory (its emptyDir volumes), /data the image's volume; no network
    but its own loopback (this machine's podman shares the host's network otherwise)."""
    return ["run", "--no-healthcheck", "--read-only", "--tmpfs", "/tmp", "--shm-size", "512m", *args]


@pytest.mark.container
def test_sweep_image_installs_the_sweep_lock_and_runs_ray_read_only(sweep_image: str) -> None:
    frozen = podman(
        "run", "--rm", "--read-only", "--entrypoint", "python", sweep_image, "-m", "pip", "freeze"
    )
    installed = {
        _normal(m.group(1)): m.group(2)
        for m in (re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line) for line in frozen.stdout.splitlines())
        if m
    }
    assert _pins(REPO / "requirements-sweep.lock").items() <= installed.items()
    podman("run", "--rm", "--read-only", "--entrypoint", "python", sweep_image, "-m", "pip", "check")
    # a local Ray as `python -m tools.sweep` starts one, non-root on a read-only root
    code = (
        "import os, ray, tools.sweep.__main__; print('uid', os.getuid()); "
        "ray.init(num_cpus=1, include_dashboard=False); "
        "print('result', ray.get(ray.remote(lambda: 1 + 1).remote()))"
    )
    done = podman(
        *_ray_run("--rm", "--network", "none", "--entrypoint", "python", sweep_image, "-c", code),
        timeout=180,
    )
    assert "uid 10001" in done.stdout and "result 2" in done.stdout, done.stdout + done.stderr[-3000:]


def _quantity_bytes(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([KMGT]i)?", value).groups()  # type: ignore[union-attr]
    return int(number) * 1024 ** ("KMGT".index(unit[0]) + 1 if unit else 0)


def _kuberay_start(group: dict[str, Any], *, head: bool, **more: str) -> str:
    """The `ray start` KubeRay generates for a group (its KUBERAY_GEN_RAY_START_CMD): the
    group's rayStartParams, `--block`, the head's dashboard host, the default metrics and agent
    ports, num-cpus and memory from the container's limits when not given; then `more`."""
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    params = {
        "block": "true",
        "metrics-export-port": "8080",
        "dashboard-agent-listen-port": "52365",
        "num-cpus": str(int(limits["cpu"])),
        "memory": str(_quantity_bytes(limits["memory"])),
        **({"dashboard-host": "0.0.0.0"} if head else {}),
        **group["rayStartParams"],
        **more,
    }
    flags = [f"--{k}" if v == "true" else f"--{k}={v}" for k, v in sorted(params.items())]
    return " ".join(["ray", "start", *(["--head"] if head else []), *flags])


def _until(what: str, timeout: float, *args: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        done = podman(*args, check=False, timeout=60)
        if done.returncode == 0:
            return
        assert time.monotonic() < deadline, (
            f"{what}: not within {timeout:g} s\n{done.stdout}{done.stderr[-2000:]}"
        )
        time.sleep(2)


@pytest.mark.container
def test_sweep_image_runs_the_raycluster_and_a_sweep_on_it(
    sweep_image: str, containers: list[str], tmp_path: Path
) -> None:
    """deploy/raycluster.yaml's head and worker containers as KubeRay starts them (their command,
    args, env and KubeRay's generated `ray start`), in one network namespace (the worker's ports
    moved off the head's; on Kubernetes each pod has its own): their probes pass, a wrong Ray
    token is refused, and `python -m tools.sweep --address auto` on the head runs its trials on the
    worker (the head has no CPU for Ray), as README's "Running sweeps and sessions on Kubernetes"."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (it comes with kubernetes-validate)")
    data = SHARED / "data" / "btcusdt_perp_1m.csv.gz"
    if not data.is_file():
        pytest.skip(f"real market data not found at {data} (../shared beside the repo)")
    cluster = next(
        d
        for d in yaml.safe_load_all((REPO / "deploy" / "raycluster.yaml").read_text())
        if d["kind"] == "RayCluster"
    )
    head_group, worker_group = cluster["spec"]["headGroupSpec"], cluster["spec"]["workerGroupSpecs"][0]
    token = secrets.token_hex(32)

    def args_of(group: dict[str, Any], start: str) -> list[str]:
        [container] = group["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value", token) for e in container["env"]}  # the Secret's: the token
        env["KUBERAY_GEN_RAY_START_CMD"] = start
        return [
            *_env_args(env),
            "--entrypoint",
            json.dumps(container["command"]),
            sweep_image,
            *container["args"],
        ]

    spec = tmp_path / "spec"
    spec.mkdir()
    (spec / "tiny.toml").write_text(TINY_SWEEP)
    head, worker = _name("btc-ray-head"), _name("btc-ray-worker")
    containers.extend([worker, head])  # removed in this order
    podman(
        *_ray_run("-d", "--name", head, "--network", "none", "-v", f"{spec}:/spec:ro"),
        *("-v", f"{data}:/market/{data.name}:ro"),
        *args_of(head_group, _kuberay_start(head_group, head=True)),
    )
    [head_container] = head_group["template"]["spec"]["containers"]
    [worker_container] = worker_group["template"]["spec"]["containers"]
    _until(
        "the head's readiness probe", 120, "exec", head, *head_container["readinessProbe"]["exec"]["command"]
    )
    podman("exec", head, *head_container["livenessProbe"]["exec"]["command"], timeout=60)
    wrong = podman(
        "exec", "-e", f"RAY_AUTH_TOKEN={secrets.token_hex(32)}", head,
        *head_container["readinessProbe"]["exec"]["command"], check=False, timeout=60,
    )  # fmt: skip
    assert wrong.returncode != 0 and "token" in wrong.stderr.lower()

    worker_start = _kuberay_start(
        worker_group,
        head=False,
        address="127.0.0.1:6379",
        **{"metrics-export-port": "8081", "dashboard-agent-listen-port": "52366"},
    )
    podman(
        *_ray_run("-d", "--name", worker, "--network", f"container:{head}"),
        *args_of(worker_group, worker_start),
    )
    _until(
        "the worker's readiness probe",
        120,
        "exec",
        worker,
        *worker_container["readinessProbe"]["exec"]["command"],
    )
    podman("exec", worker, *worker_container["livenessProbe"]["exec"]["command"], timeout=60)

    sweep = podman(
        "exec", head, "python", "-m", "tools.sweep", "/spec/tiny.toml", "--address", "auto",
        "--out", "/data/sweeps/tiny", "--data", f"/market/{data.name}", "--progress", "plain",
        timeout=300,
    )  # fmt: skip
    assert "sweep tiny:" in sweep.stderr, sweep.stderr[-3000:]
    table = podman("exec", head, "cat", "/data/sweeps/tiny/trials.csv").stdout
    rows = list(csv.DictReader(io.StringIO(table)))
    assert len(rows) >= 2 and all(r["status"] == "ok" for r in rows), table
    # the trials ran on the worker (their run folders on its /data), and each run folder came back
    # to the sweep's folder on the head, whole: it passes the validator there
    ran = podman("exec", worker, "ls", "/data/sweeps/tiny/trials").stdout.split()
    assert ran and sorted(ran) == sorted(
        podman("exec", head, "ls", "/data/sweeps/tiny/trials").stdout.split()
    )
    for row in rows:
        run = f"/data/sweeps/tiny/{row['run_folder']}"
        podman("exec", head, "python", "-m", "tools.validate_session", run, timeout=60)
