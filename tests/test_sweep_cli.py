"""The sweep CLI's exit codes and its last lines on a local Ray, over a small data file each test
writes: a sweep whose every trial failed, one whose trials failed in part, and a cluster address
where nothing answers.

Needs Ray (the `sweep` extra): marked `sweep`, as `nox -s sweep` installs it (`nox -s tests` does
not); about 10 s each (Ray's start-up), not ../shared/data."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.sweep]
pytest.importorskip("ray", reason="Ray is not installed (the sweep extra: pip install -e '.[sweep]')")

ROOT = Path(__file__).resolve().parents[1]
SPEC = """
[sweep]
name = "cli"
data = "candles.csv"
objective = "net_pnl"
min_trades = 1
sampler = "grid"
set = [{sets}]

[walk_forward]
start = "2024-01-01"
train_days = 1
test_days = 1
windows = 1

[[strategy]]
kind = "ema_cross"
[strategy.space]
{space}
"""


def _spec(tmp_path: Path, *sets: str, space: str = "fast_period = [5, 9]") -> Path:
    """The spec over two days of seeded random-walk 1m candles from 2024-01-01."""
    rng = random.Random(5)
    price, lines = 60_000.0, ["open_time_ms,open,high,low,close,volume"]
    for i in range(2 * 1440):
        close = price + rng.uniform(-30, 30)
        high, low = max(price, close) + rng.uniform(0, 10), min(price, close) - rng.uniform(0, 10)
        lines.append(f"{(1704067200 + i * 60) * 1000},{price:.1f},{high:.1f},{low:.1f},{close:.1f},1.5")
        price = close
    (tmp_path / "candles.csv").write_text("\n".join(lines) + "\n")
    spec = tmp_path / "spec.toml"
    sets_toml = ", ".join(f'"{s}"' for s in ("risk.max_loss_pct=100", *sets))
    spec.write_text(SPEC.format(sets=sets_toml, space=space))
    return spec


def _sweep(
    spec: Path, *flags: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m tools.sweep SPEC FLAGS`, killed (its whole process group) after `timeout` s."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.sweep", str(spec), "--progress", "off", *flags],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # (a RAY_ADDRESS of the shell running the tests is a cluster: not theirs)
        env=env if env is not None else {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"still running after {timeout} s: {err[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_a_sweep_whose_every_trial_failed_exits_1_naming_the_first(tmp_path: Path) -> None:
    """Found by an audit: a sweep whose every trial failed measured nothing and exited 0, and a
    script or CI job running it took it for a result. Here every trial's worker refuses to start
    (its run folder's disk has less free space than session.disk_reserve_mb, an exabyte): a failure
    the driver cannot see before the trials run. Exit 1, with one line naming the first of them."""
    spec = _spec(tmp_path, "session.disk_reserve_mb=1e12")
    done = _sweep(spec, "--out", str(tmp_path / "out"), "--workers", "1")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    # the table's first row: window 0, train, ema_cross, the smaller trial id
    table = (tmp_path / "out" / "trials.csv").read_text().splitlines()
    assert len(table) == 3 and all(",failed," in row for row in table[1:]), table
    first = table[1]
    fast = first.rsplit(",", 1)[1]
    assert line.startswith(
        f'error: every trial failed (2 of 2): the sweep measured nothing; the first: ema_cross {{"fast_period": {fast}}} '
        "(window 0, train): session ended error: storage (low space: "
    ), line


def test_an_address_where_nothing_answers_exits_4_naming_it_at_once(tmp_path: Path) -> None:
    """Found by an audit: `--address` to a cluster that cannot be reached retried without end (Ray's
    20 connection attempts of about 40 s each; stopped by hand after 120 s). A port of 127.0.0.1
    held by a socket that does not listen (a connection there is refused): exit 4 at once, one
    line naming the address, no traceback."""
    import socket
    import time

    spec = _spec(tmp_path)
    with socket.socket() as held:  # the port, on every interface (Ray takes 127.0.0.1 as this
        held.bind(("0.0.0.0", 0))  # machine's own address): bound, not listening
        address = f"127.0.0.1:{held.getsockname()[1]}"
        began = time.monotonic()
        done = _sweep(spec, "--out", str(tmp_path / "out"), "--address", address, timeout=30)
        took = time.monotonic() - began
    assert done.returncode == 4, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    # (there: the address as given, or the one Ray reads it as, this machine's own, named)
    assert re.fullmatch(
        rf"error: --address {address}: nothing answers (there|at \S+:{address.split(':')[1]}) "
        r"\(connection refused\): is a Ray head running at that address\?",
        done.stderr.splitlines()[-1],
    ), done.stderr[-3000:]
    assert took < 20, took


def test_a_sweep_whose_trials_failed_in_part_exits_0_counting_them_and_naming_the_first(
    tmp_path: Path,
) -> None:
    """A sweep some of whose trials failed is complete (exit 0: the table says which and why); its
    console line said `5 trials (0 from the log, 1 failed)`, the failed ones beside those found in
    the log as if one of them, and not why. It now counts the trials ok and failed, and names the
    first failure. fast_period 30 with slow_period 21 breaks fast < slow (each list's ends pass the
    spec): 1 of the 4 train trials, and the window's out-of-sample trial, 5 in all."""
    spec = _spec(tmp_path, space="fast_period = [5, 30]\nslow_period = [21, 50]")
    out = tmp_path / "out"
    done = _sweep(spec, "--out", str(out), "--workers", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert (
        f"sweep cli: 5 trials, 4 ok, 1 failed (0 from the log) -> {out / 'trials.csv'}, {out / 'sweep.html'}"
        in lines
    )
    (said,) = [line for line in lines if "failed (trials.csv" in line]
    assert said.startswith(
        "  1 of 5 trials failed (trials.csv's error column says why); the first: ema_cross "
        '{"fast_period": 30, "slow_period": 21} (window 0, train): '
    ), said
    assert "fast_period: 30 is not allowed" in said, said


def test_ray_address_in_the_environment_is_the_cluster_and_said_as_such(tmp_path: Path) -> None:
    """Found by an audit: without --address, ray.init reads RAY_ADDRESS (set on a Ray head, say):
    the sweep went to that cluster unsaid, hung when nothing answered there, and with --workers
    ended in a traceback (ValueError). It is the cluster, as --address would be: one line naming
    it when nothing answers (exit 4), and --workers with it exit 2."""
    import socket

    spec = _spec(tmp_path)
    with socket.socket() as held:  # as above: a port where a connection is refused
        held.bind(("0.0.0.0", 0))
        address = f"127.0.0.1:{held.getsockname()[1]}"
        env = {**os.environ, "RAY_ADDRESS": address}
        done = _sweep(spec, "--out", str(tmp_path / "out"), timeout=30, env=env)
        assert done.returncode == 4, done.stderr[-3000:]
        assert re.fullmatch(
            rf"error: RAY_ADDRESS={address}: nothing answers (there|at \S+) \(connection refused\): "
            r"is a Ray head running at that address\?",
            done.stderr.splitlines()[-1],
        ), done.stderr[-3000:]
        done = _sweep(spec, "--out", str(tmp_path / "out"), "--workers", "1", timeout=30, env=env)
        assert done.returncode == 2, done.stderr[-3000:]
        assert done.stderr.splitlines() == [
            f"error: --workers is for a local Ray; RAY_ADDRESS={address} names a cluster (unset it for a local Ray)"
        ]


def test_a_sweep_that_judged_no_window_out_of_sample_exits_1_saying_why(tmp_path: Path) -> None:
    """Found by an audit: a sweep whose train trials were ok but in which no window had a train
    trial eligible to choose (here sweep.min_trades = 100000: `over 0 of 1 windows`) measured
    nothing that matters and exited 0. Exit 1, with one line saying why (the every-trial-failed
    line's words); the table and sweep.json are written all the same."""
    spec = _spec(tmp_path)
    spec.write_text(spec.read_text().replace("min_trades = 1\n", "min_trades = 100000\n"))
    done = _sweep(spec, "--out", str(tmp_path / "out"), "--workers", "1")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert "  ema_cross: out-of-sample net PnL +0.00 USDT over 0 of 1 windows" in lines[-2], lines[-2]
    assert lines[-1] == (
        "error: no window judged out of sample (0 of 1): the sweep measured nothing; ema_cross: 1 without "
        "an in-sample trial eligible to choose (at least sweep.min_trades = 100000 trades and a defined net_pnl)"
    )
    table = (tmp_path / "out" / "trials.csv").read_text().splitlines()
    assert len(table) == 3 and all(",ok," in row for row in table[1:]), table  # two train trials, ok
    assert (tmp_path / "out" / "sweep.json").exists()


def test_a_window_outside_the_data_is_refused_at_start_naming_it(tmp_path: Path) -> None:
    """Found by an audit: a walk-forward window the data holds no candle of (two days of data, three
    windows of 1 + 1 days: window 1's test day and window 2 are after it) was only a warning at
    start (`hold 0 of their 1,440 candles`); its trials then failed and the sweep exited 0 on
    window 0's verdict. Refused before any trial runs: exit 2, a line per window's days naming
    them, the data's span and the key."""
    spec = _spec(tmp_path)
    spec.write_text(spec.read_text().replace("windows = 1\n", "windows = 3\n"))
    out = tmp_path / "out"
    done = _sweep(spec, "--out", str(out), "--workers", "1")
    assert done.returncode == 2, done.stderr[-3000:]
    said = [line for line in done.stderr.splitlines() if line.startswith("spec error:")]
    span = f"{tmp_path / 'candles.csv'} spans 2024-01-01T00:00:00Z to 2024-01-03T00:00:00Z"
    after = (
        "those days are after its last candle: fewer windows or an earlier start): its trials could not run"
    )
    assert said == [
        "spec error: walk_forward.windows: window 1's test days (2024-01-03T00:00:00Z to 2024-01-04T00:00:00Z) "
        f"hold no candle of the data ({span}; {after}",
        "spec error: walk_forward.windows: window 2's train days (2024-01-03T00:00:00Z to 2024-01-04T00:00:00Z) "
        f"hold no candle of the data ({span}; {after}",
        "spec error: walk_forward.windows: window 2's test days (2024-01-04T00:00:00Z to 2024-01-05T00:00:00Z) "
        f"hold no candle of the data ({span}; {after}",
    ], done.stderr[-3000:]
    assert said == done.stderr.splitlines()[-3:] and "Traceback" not in done.stderr
    assert not (out / "trials.jsonl").exists()  # no trial ran
