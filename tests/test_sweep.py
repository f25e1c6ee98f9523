"""Sweeps on a local Ray (issue 16): 30 trials (two strategies, a 2x2 grid each, three walk-forward
windows, and each window's out-of-sample trials) over the shared real data. Every trial's run
folder passes the validator and is, event for event, the CLI backtest of the same parameters and
window; killed mid-way with SIGKILL and run again, the sweep finishes with no trial run twice;
its sweep.html draws every chart in headless Chromium (when installed: .ci/run installs it).

Needs Ray (the `sweep` extra: `nox -s sweep`, which CI runs) and ../shared/data; skips, saying
why, without either. Marked `sweep`: not in `nox -s tests` (Ray's start-up and 30 backtests on
2 cores take about a minute)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.recording.report_stats import statistics
from tests.test_report_html import CHROMIUM, assert_every_chart_drew, chromium
from tests.test_sweep_html import open_sweep
from tools.validate_session import validate

pytestmark = [pytest.mark.slow, pytest.mark.sweep]
ray = pytest.importorskip("ray", reason="Ray is not installed (the sweep extra: pip install -e '.[sweep]')")

ROOT = Path(__file__).resolve().parents[1]
SPEC = """
[sweep]
name = "test"
data = "{data}"
objective = "net_pnl"
min_trades = 1
sampler = "grid"
set = ["risk.max_loss_pct=100", "risk.max_daily_drawdown_pct=100", "risk.max_consecutive_losses=0"]

[walk_forward]
start = "2023-08-01"
train_days = 2
test_days = 1
windows = 3

[[strategy]]
kind = "ema_cross"
[strategy.space]
fast_period = [5, 9]
slow_period = [21, 34]

[[strategy]]
kind = "trend_pullback"
[strategy.space]
stop_atr_mult = [1.0, 1.5]
target_r = [1.5, 2.0]
"""
TRAIN_TRIALS = 3 * (4 + 4)
TEST_TRIALS = 3 * 2


def _spec(tmp_path: Path, shared_data: Path) -> Path:
    spec = tmp_path / "sweep.toml"
    spec.write_text(SPEC.format(data=shared_data / "btcusdt_perp_1m.csv.gz"))
    return spec


def _sweep(spec: Path, out: Path, workers: int = 2, **popen: Any) -> subprocess.Popen[str]:
    args = [
        sys.executable,
        "-m",
        "tools.sweep",
        str(spec),
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--progress",
        "plain",
    ]
    return subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def _table(out: Path) -> list[dict[str, str]]:
    with (out / "trials.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _events(run: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    for record in records:  # where it came from and went to: not the trading
        for name in ("config", "data_source", "run_id", "pid"):
            record.pop(name, None)
    return records


def _same(row: str, value: Any) -> bool:
    if value is None:
        return row == ""
    if isinstance(value, str):
        return row == value
    return abs(float(row) - float(value)) <= 1e-9 * max(1.0, abs(float(value)))


def test_a_sweep_is_its_cli_backtests_and_survives_a_kill(tmp_path: Path, shared_data: Path) -> None:
    spec = _spec(tmp_path, shared_data)
    out = tmp_path / "out"
    # killed mid-way (the whole process group: the sweep and its Ray)
    sweep = _sweep(spec, out, start_new_session=True)
    log = out / "trials.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and sweep.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 8:
            break
        time.sleep(0.05)
    assert sweep.poll() is None, f"the sweep ended before it was killed:\n{sweep.communicate()[0][-3000:]}"
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait(timeout=30)
    before = {}
    for line in log.read_text().splitlines():
        record = json.loads(line)
        events = Path(record["run_path"]) / "events.jsonl"
        before[record["key"]] = (events.stat().st_ino, events.stat().st_mtime_ns)
    assert 8 <= len(before) < TRAIN_TRIALS + TEST_TRIALS

    # run again: it finishes, and what had finished is not run again
    again = _sweep(spec, out)
    output = again.communicate(timeout=600)[0]
    assert again.returncode == 0, output[-3000:]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    keys = [(r["key"], r["phase"]) for r in records]
    assert len(keys) == len(set(keys)) == TRAIN_TRIALS + TEST_TRIALS  # each trial once in the log
    for record in records:
        events = Path(record["run_path"]) / "events.jsonl"
        if record["key"] in before:
            assert (events.stat().st_ino, events.stat().st_mtime_ns) == before[record["key"]], record["key"]
        runs = [
            p for p in (out / "trials" / record["trial_id"]).iterdir() if p.is_dir() and not p.is_symlink()
        ]
        assert len(runs) == 1, runs  # one run folder per trial: none run twice

    # the table: a row per trial, each its run folder's figures and the CLI backtest's
    table = _table(out)
    assert len(table) == TRAIN_TRIALS + TEST_TRIALS
    assert {row["status"] for row in table} == {"ok"}
    assert {row["phase"] for row in table} == {"train", "test"}
    assert {row["strategy"] for row in table} == {"ema_cross", "trend_pullback"}
    assert sorted({row["window"] for row in table}) == ["0", "1", "2"]
    summary = json.loads((out / "sweep.json").read_text())
    # what made it: the spec file and the data, by their sha256 (hashlib here), and the spec's terms
    data = shared_data / "btcusdt_perp_1m.csv.gz"
    made_of = summary["spec"]
    assert made_of["file"] == str(spec) and made_of["sha256"] == hashlib.sha256(spec.read_bytes()).hexdigest()
    assert made_of["data"] == [
        {"symbol": "BTCUSDT", "file": str(data), "sha256": hashlib.sha256(data.read_bytes()).hexdigest()}
    ]
    assert (made_of["base_config"], made_of["sampler"], made_of["budget"]) == (None, "grid", None)
    assert made_of["walk_forward"] == {
        "start": "2023-08-01T00:00:00Z", "train_days": 2, "test_days": 1, "windows": 3
    }  # fmt: skip
    assert made_of["strategies"][0] == {
        "name": "ema_cross", "kind": "ema_cross", "space": {"fast_period": [5, 9], "slow_period": [21, 34]}
    }  # fmt: skip
    by_id = {r["trial_id"]: r for r in records}
    from tools.sweep.spec import load_spec
    from tools.sweep.trial import Trial

    loaded = load_spec(spec)

    def check(row: dict[str, str]) -> None:
        run = out / row["run_folder"]
        assert validate(run) == [], row["trial_id"]
        record = by_id[row["trial_id"]]
        trial = Trial(
            record["key"],
            record["strategy"],
            record["params"],
            record["window"],
            record["phase"],
            record["start"],
            record["end"],
            tuple(_sets(loaded, record)),
        )
        cli_dir = tmp_path / "cli" / f"{row['trial_id']}-{row['phase']}"
        done = subprocess.run(
            [sys.executable, "-m", "actors.main", *trial.cli(loaded.base_config, loaded.data, cli_dir)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        cli_run = cli_dir / "latest"
        assert _events(cli_run) == _events(run), row["trial_id"]
        report = json.loads((cli_run / "final_report.json").read_text())
        stats = statistics([json.loads(line) for line in (cli_run / "events.jsonl").read_text().splitlines()])
        for name in ("net_pnl", "return_pct", "trade_count", "max_drawdown_pct", "fees_paid", "stop_reason"):
            assert _same(row[name], report[name]), (row["trial_id"], name, row[name], report[name])
        for name in ("sharpe", "profit_factor"):
            assert _same(row[name], stats[name]), (row["trial_id"], name, row[name], stats[name])

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(check, table))

    # sweep.html: every chart drawn in headless Chromium (the report test's harness)
    if CHROMIUM:
        seen = trio.run(_open_page, out / "sweep.html", tmp_path)
        assert_every_chart_drew(
            seen["charts"],
            {f"chart-{chart}-{kind}" for chart in ("space", "wf") for kind in ("ema_cross", "trend_pullback")}
            | {"chart-equity-train", "chart-equity-test"},
        )

    # the walk-forward: each window's out-of-sample trial has the best in-sample parameters
    for window in summary["windows"]:
        for kind, chosen in window["best"].items():
            train = [
                r
                for r in table
                if r["window"] == str(window["index"]) and r["strategy"] == kind and r["phase"] == "train"
            ]
            top = max(train, key=lambda r: (float(r["net_pnl"]), [-ord(ch) for ch in r["trial_id"]]))
            assert json.loads(top["params"]) == chosen["params"]
            test = [
                r
                for r in table
                if r["window"] == str(window["index"]) and r["strategy"] == kind and r["phase"] == "test"
            ]
            assert len(test) == 1 and json.loads(test[0]["params"]) == chosen["params"]
            assert test[0]["start"] == window["test"]["start"] and test[0]["end"] == window["test"]["end"]


async def _open_page(page: Path, tmp_path: Path) -> dict[str, Any]:
    async with chromium(tmp_path / "chromium-profile") as tools:
        return await open_sweep(tools, page)


def _sets(spec: Any, record: dict[str, Any]) -> list[str]:
    from tools.sweep.spec import trial_sets

    return trial_sets(spec, record["strategy"], record["params"])


TPE_SPEC = """
[sweep]
name = "tpe"
data = "{data}"
objective = "net_pnl"
min_trades = 1
sampler = "tpe"
budget = 5
seed = 3
set = ["risk.max_loss_pct=100", "risk.max_daily_drawdown_pct=100", "risk.max_consecutive_losses=0"]

[walk_forward]
start = "2023-08-01"
train_days = 1
test_days = 1
windows = 1

[[strategy]]
kind = "ema_cross"
[strategy.space]
fast_period = {{ low = 3, high = 12 }}
slow_period = [21, 34]
stop_loss_pct = {{ low = 0.2, high = 2.0, log = true }}
"""


def test_optunas_tpe_sampler_runs_its_budget_within_the_space_and_resumes(
    tmp_path: Path, shared_data: Path
) -> None:
    spec = tmp_path / "tpe.toml"
    spec.write_text(TPE_SPEC.format(data=shared_data / "btcusdt_perp_1m.csv.gz"))
    out = tmp_path / "out"
    first = _sweep(spec, out)
    output = first.communicate(timeout=600)[0]
    assert first.returncode == 0, output[-3000:]
    records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    train = [r for r in records if r["phase"] == "train"]
    test = [r for r in records if r["phase"] == "test"]
    assert len(train) == 5 and len(test) == 1 and all(r["status"] == "ok" for r in records)
    for r in train:
        p = r["params"]
        assert isinstance(p["fast_period"], int) and 3 <= p["fast_period"] <= 12
        assert p["slow_period"] in (21, 34) and 0.2 <= p["stop_loss_pct"] <= 2.0
    assert len({json.dumps(r["params"], sort_keys=True) for r in train}) > 1
    best = max(train, key=lambda r: (r["net_pnl"], [-ord(ch) for ch in r["trial_id"]]))
    assert test[0]["params"] == best["params"]
    # run again: the studies are told the log's trials, and nothing runs
    again = _sweep(spec, out)
    output = again.communicate(timeout=600)[0]
    assert again.returncode == 0, output[-3000:]
    assert len((out / "trials.jsonl").read_text().splitlines()) == len(records)
    assert "6 trials, 6 ok, 0 failed (6 from the log)" in output
    # killed after two trials were logged: the study, asked again from the same seed, draws the
    # logged trials' parameters again; found in the log, they are neither run nor counted twice
    # (they were: duplicate rows, and the budget spent on them)
    lines = (out / "trials.jsonl").read_text().splitlines()
    (out / "trials.jsonl").write_text("\n".join(lines[:2]) + "\n")
    resumed = _sweep(spec, out)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output[-3000:]
    records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    train = [r for r in records if r["phase"] == "train"]
    assert len(train) == 5 and len({r["key"] for r in train}) == 5, [r["trial_id"] for r in train]
    assert len([r for r in records if r["phase"] == "test"]) == 1


def test_tpe_draws_the_same_trials_on_1_and_2_workers_and_across_a_resume(
    tmp_path: Path, shared_data: Path
) -> None:
    """The TPE studies were told trials as they finished, with as many in flight as --workers:
    past Optuna's 10 random start-up draws the same spec drew other parameters on 1 worker than
    on 2 (4 of 14 differed over the shared perp data). Now a study is told in the order it asked,
    a fixed number in flight: the same trials, the same verdict, the same table; and a sweep run
    again asks its studies the same, finding the log's trials as they are asked."""
    spec = tmp_path / "tpe.toml"
    spec.write_text(
        TPE_SPEC.format(data=shared_data / "btcusdt_perp_1m.csv.gz").replace("budget = 5", "budget = 14")
    )
    seen = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        run = _sweep(spec, out, workers=workers)
        output = run.communicate(timeout=600)[0]
        assert run.returncode == 0, output[-3000:]
        records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
        assert len(records) == 15 and all(r["status"] == "ok" for r in records), output[-3000:]
        verdict = json.loads((out / "sweep.json").read_text())["verdict"]
        # the table in one order (it was in the order the trials finished)
        table = [{k: v for k, v in row.items() if k != "seconds"} for row in _table(out)]
        seen.append((sorted((r["phase"], r["trial_id"], r["net_pnl"]) for r in records), verdict, table))
    assert seen[0] == seen[1]
    # stopped after 7 trials and run again: the same trials (a resumed study was told the log's
    # trials and re-seeded: 7 of its 14 were others)
    lines = (tmp_path / "out2" / "trials.jsonl").read_text().splitlines()
    (tmp_path / "out2" / "trials.jsonl").write_text("\n".join(lines[:7]) + "\n")
    resumed = _sweep(spec, tmp_path / "out2")
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0 and "15 trials, 15 ok, 0 failed (7 from the log)" in output, output[-3000:]
    records = [json.loads(line) for line in (tmp_path / "out2" / "trials.jsonl").read_text().splitlines()]
    assert sorted((r["phase"], r["trial_id"], r["net_pnl"]) for r in records) == seen[0][0]
    assert json.loads((tmp_path / "out2" / "sweep.json").read_text())["verdict"] == seen[0][1]


BAD_COMBINATION_SPEC = """
[sweep]
name = "bad"
data = "{data}"
objective = "net_pnl"
min_trades = 0
sampler = "grid"

[walk_forward]
start = "2023-08-01"
train_days = 1
test_days = 1
windows = 1

[[strategy]]
kind = "ema_cross"
[strategy.space]
fast_period = [5, 30]
slow_period = [21, 50]
"""


def test_a_grid_combination_that_breaks_a_config_rule_is_a_failed_trial(
    tmp_path: Path, shared_data: Path
) -> None:
    """fast_period 30 with slow_period 21: each list's ends are valid, the pair is not. The trial
    is recorded failed with the config error and the sweep goes on (the driver crashed, exit 1)."""
    spec = tmp_path / "bad.toml"
    spec.write_text(BAD_COMBINATION_SPEC.format(data=shared_data / "btcusdt_perp_1m.csv.gz"))
    out = tmp_path / "out"
    done = _sweep(spec, out)
    output = done.communicate(timeout=600)[0]
    assert done.returncode == 0 and "Traceback" not in output, output[-3000:]
    records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    train = {
        (r["params"]["fast_period"], r["params"]["slow_period"]): r for r in records if r["phase"] == "train"
    }
    assert len(train) == 4
    bad = train[(30, 21)]
    assert bad["status"] == "failed" and "fast_period: 30 is not allowed" in bad["error"]
    assert all(r["status"] == "ok" for k, r in train.items() if k != (30, 21))


SHARED_SPEC = """
[sweep]
name = "shared"
data = "{data}"
objective = "sharpe"
min_trades = 1
sampler = "random"
budget = 3
seed = 3

[walk_forward]
start = "2023-08-01"
train_days = 1
test_days = 1
windows = 2

[[strategy]]
kind = "ema_cross"
[strategy.space]
fast_period = {{ low = 3, high = 12 }}
slow_period = [21, 34]
"""


def test_a_backtest_in_both_phases_runs_once(tmp_path: Path, shared_data: Path) -> None:
    """Window 0's test days are window 1's train days: its out-of-sample parameters, drawn for
    window 1 too, are one backtest, run once (even while it is in flight) and shared by both rows."""
    spec = tmp_path / "shared.toml"
    spec.write_text(SHARED_SPEC.format(data=shared_data / "btcusdt_perp_1m.csv.gz"))
    out = tmp_path / "out"
    # one worker: window 1's train trials wait in Ray's queue when window 0's test trial comes
    done = _sweep(spec, out, workers=1)
    output = done.communicate(timeout=600)[0]
    assert done.returncode == 0, output[-3000:]
    records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    by_key: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_key.setdefault(record["key"], []).append(record)
    both = [rs for rs in by_key.values() if {r["phase"] for r in rs} == {"train", "test"}]
    assert both, "the random draws (seed 3) repeat window 0's out-of-sample parameters in window 1"
    for rs in both:
        assert len(rs) == 2
        figures = [{k: v for k, v in r.items() if k not in ("phase", "window")} for r in rs]  # `seconds` too
        assert figures[0] == figures[1] and figures[0]["sharpe"] is not None
    for key in by_key:
        runs = [p for p in (out / "trials" / key[:16]).iterdir() if p.is_dir() and not p.is_symlink()]
        assert len(runs) == 1 and validate(runs[0]) == []


def test_a_trials_run_folder_packed_on_a_worker_unpacks_whole_on_the_driver(
    tmp_path: Path, shared_data: Path
) -> None:
    """On a cluster a trial's run folder is written on its worker's disk and sent back packed:
    unpacked in the sweep's folder it is the same files, `latest` included, and passes the
    validator."""
    from tools.sweep.spec import load_spec, trial_sets
    from tools.sweep.trial import Trial, pack_folder, read_columns, run_trial, unpack_folder

    spec = load_spec(_spec(tmp_path, shared_data))
    data = spec.data[0][1]
    columns = {str(data): read_columns(data, 60.0, "BTCUSDT")}
    start = 1_690_848_000.0  # 2023-08-01
    trial = Trial(
        "ab" * 32,
        "ema_cross",
        {"fast_period": 5},
        0,
        "train",
        start,
        start + 86_400.0,
        tuple(trial_sets(spec, "ema_cross", {"fast_period": 5})),
    )
    worker_dir = tmp_path / "worker" / trial.id
    record = run_trial(trial, None, spec.data, columns, worker_dir)
    assert record["status"] == "ok" and record["trade_count"] > 0
    driver_dir = tmp_path / "driver" / trial.id
    driver_dir.mkdir(parents=True)
    (driver_dir / "partial.txt").write_text("a half-written run")  # replaced, not merged
    unpack_folder(pack_folder(worker_dir), driver_dir)

    def tree(root: Path) -> dict[str, bytes | str]:
        return {
            str(p.relative_to(root)): (f"-> {os.readlink(p)}" if p.is_symlink() else p.read_bytes())
            for p in sorted(root.rglob("*"))
            if p.is_symlink() or p.is_file()
        }

    assert tree(driver_dir) == tree(worker_dir)
    assert validate((driver_dir / "latest").resolve()) == []


TWO_TABLES_BASE = """
[session]
symbol = "BTCUSDT"
interval = "1m"
[risk]
max_position_size = 1.0
max_notional = 1000.0
max_total_notional = 2000.0
[[strategies]]
id = "btc_trend"
kind = "trend_pullback"
[[strategies]]
id = "eth_ema"
kind = "ema_cross"
symbol = "ETHUSDT"
"""
TWO_TABLES_SPEC = """
[sweep]
name = "two"
base_config = "base.toml"
data = {{ BTCUSDT = "{btc}", ETHUSDT = "{eth}" }}
objective = "net_pnl"
min_trades = 1
set = ["risk.max_loss_pct=100", "risk.max_daily_drawdown_pct=100", "risk.max_consecutive_losses=0"]
[walk_forward]
start = "2025-05-21"
train_days = 1
test_days = 1
windows = 1
[[strategy]]
id = "eth_ema"
[strategy.space]
fast_period = [9]
[[strategy]]
id = "btc_trend"
[strategy.space]
target_r = [2.0]
"""


def test_two_strategies_trials_that_are_one_backtest_keep_their_own_rows(
    tmp_path: Path, shared_data: Path
) -> None:
    """Found by an audit: two tables of one base config tuned with their current values make the
    same config: one backtest, run once, whose record kept the first trial's strategy and
    parameters. btc_trend's train row was filed under eth_ema, and its out-of-sample trial, built
    from eth_ema's parameters, failed. Each keeps its own row now, both judged."""
    (tmp_path / "base.toml").write_text(TWO_TABLES_BASE)
    spec = tmp_path / "two.toml"
    btc, eth = shared_data / "btcusdt_perp_1m.csv.gz", shared_data / "btcusdt_1m.csv.gz"
    spec.write_text(TWO_TABLES_SPEC.format(btc=btc, eth=eth))
    out = tmp_path / "out"
    done = _sweep(spec, out, workers=1)
    output = done.communicate(timeout=600)[0]
    assert done.returncode == 0, output[-3000:]
    rows = {(r["strategy"], r["phase"]): r for r in _table(out)}
    assert set(rows) == {(s, p) for s in ("eth_ema", "btc_trend") for p in ("train", "test")}, rows
    assert all(r["status"] == "ok" for r in rows.values()), rows
    assert json.loads(rows["btc_trend", "train"]["params"]) == {"target_r": 2.0}
    assert json.loads(rows["eth_ema", "train"]["params"]) == {"fast_period": 9}
    for phase in ("train", "test"):  # one backtest for both strategies' rows of each phase
        assert rows["eth_ema", phase]["trial_id"] == rows["btc_trend", phase]["trial_id"]
    verdict = json.loads((out / "sweep.json").read_text())["verdict"]
    assert verdict["btc_trend"]["windows"] == verdict["eth_ema"]["windows"] == 1


SMALL_SPACE_SPEC = """
[sweep]
name = "small"
data = "{data}"
objective = "net_pnl"
min_trades = 0
sampler = "{sampler}"
budget = 4
seed = 5
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


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_space_smaller_than_the_budget_runs_each_set_once(
    tmp_path: Path, shared_data: Path, sampler: str
) -> None:
    """Two parameter sets, a budget of 4: the random sampler drew sets twice (two rows of one trial
    id), and TPE's progress waited for trials it could never ask (its total stayed 5). Now each set
    runs once, and the progress counts to the trials that ran (2 in-sample, 1 out-of-sample)."""
    spec = tmp_path / "small.toml"
    spec.write_text(SMALL_SPACE_SPEC.format(data=shared_data / "btcusdt_perp_1m.csv.gz", sampler=sampler))
    out = tmp_path / "out"
    run = _sweep(spec, out, workers=1)
    output = run.communicate(timeout=600)[0]
    assert run.returncode == 0, output[-3000:]
    table = _table(out)
    train = [row for row in table if row["phase"] == "train"]
    assert sorted(json.loads(row["params"])["fast_period"] for row in train) == [5, 9]
    assert len({row["trial_id"] for row in table}) == len(table) == 3
    progress = [line for line in output.splitlines() if line.startswith("trials ")]
    assert progress[-1].startswith("trials 3/3 done"), progress
    if sampler == "random":
        assert "ema_cross: its space holds 2 parameter sets, fewer than sweep.budget (4)" in output
