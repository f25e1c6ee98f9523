"""A sweep's spec (tools/sweep/spec.py), without Ray: the windows it rolls, the trials its samplers
give, and a clear line naming the key for every problem (exit 2, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from actors.config import load
from tools.sweep.spec import Range, SpecError, load_spec, trial_sets

ROOT = Path(__file__).resolve().parents[1]
GOOD = """
[sweep]
data = "candles.csv"
objective = "sharpe"
min_trades = 3
sampler = "{sampler}"
budget = {budget}
seed = 11
set = ["risk.max_loss_pct=100"]

[walk_forward]
start = "2024-01-01"
train_days = 3
test_days = 1.5
windows = 4

[[strategy]]
kind = "ema_cross"
[strategy.space]
fast_period = {fast}
slow_period = [21, 34, 55]

[[strategy]]
kind = "trend_pullback"
[strategy.space]
target_r = [1.5, 2.0]
"""


def _spec(tmp_path: Path, text: str) -> Path:
    (tmp_path / "candles.csv").write_text("open_time_ms,open,high,low,close,volume\n")
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def _good(tmp_path: Path, sampler: str = "grid", budget: int = 0, fast: str = "[5, 9]") -> Path:
    return _spec(tmp_path, GOOD.format(sampler=sampler, budget=budget, fast=fast))


def test_windows_roll_by_the_test_length(tmp_path: Path) -> None:
    spec = load_spec(_good(tmp_path))
    start = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    day = 86_400
    windows = spec.windows_from(first_open=0.0)  # the spec's start wins over the data's
    assert [(w.train_start, w.train_end, w.test_end) for w in windows] == [
        (start + i * 1.5 * day, start + i * 1.5 * day + 3 * day, start + i * 1.5 * day + 4.5 * day)
        for i in range(4)
    ]
    assert all(w.test_start == w.train_end for w in windows)


def test_the_grid_is_every_combination_in_order(tmp_path: Path) -> None:
    spec = load_spec(_good(tmp_path))
    ema, pullback = spec.strategies
    assert spec.grid(ema) == [{"fast_period": f, "slow_period": s} for f in (5, 9) for s in (21, 34, 55)]
    assert spec.grid(pullback) == [{"target_r": 1.5}, {"target_r": 2.0}]
    assert trial_sets(spec, "ema_cross", {"fast_period": 5, "slow_period": 21}) == [
        "risk.max_loss_pct=100",
        "strategy.name=ema_cross",
        "strategy.fast_period=5",
        "strategy.slow_period=21",
    ]


TABLES = """
[[strategies]]
id = "trend"
kind = "trend_pullback"

[[strategies]]
id = "sweep"
kind = "liquidity_sweep"
"""


def test_a_strategy_of_the_base_configs_tables_is_tuned_by_its_id_beside_the_others(tmp_path: Path) -> None:
    """`id` instead of `kind`: one of the base config's [[strategies]] tables, its parameters set
    by `strategies.<id>.<key>` and the other tables trading beside it, as in the live session."""
    (tmp_path / "base.toml").write_text(TABLES)
    text = GOOD.format(sampler="grid", budget=0, fast="[5, 9]")
    text = text.replace("[sweep]\n", '[sweep]\nbase_config = "base.toml"\n')
    text = text.replace('kind = "trend_pullback"', 'id = "trend"')
    spec = load_spec(_spec(tmp_path, text))
    ema, trend = spec.strategies
    assert (trend.name, trend.kind, trend.table) == ("trend", "trend_pullback", "trend")
    assert (ema.name, ema.table) == ("ema_cross", None)
    sets = trial_sets(spec, "trend", {"target_r": 1.5})
    assert sets == ["risk.max_loss_pct=100", "strategies.trend.target_r=1.5"]
    config = load(tmp_path / "base.toml", {}, sets, {})
    # both of the base's strategies, the tuned one with the trial's value, the other as configured
    assert [(s.id, s.kind) for s in config.strategy_specs] == [
        ("trend", "trend_pullback"),
        ("sweep", "liquidity_sweep"),
    ]
    assert config.strategy_specs[0].params.target_r == 1.5
    # a kind beside them: the trial's one strategy, as before
    assert [
        s.kind for s in load(tmp_path / "base.toml", {}, trial_sets(spec, "ema_cross", {}), {}).strategy_specs
    ] == ["ema_cross"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ('id = "trend"', 'id = "trendy"'),
            "strategy[1].id: 'trendy' is not an id of the base config's [[strategies]]; one of trend, sweep",
        ),
        (
            ('id = "trend"', 'id = "trend"\nkind = "trend_pullback"'),
            "strategy[1]: give kind (one strategy) or id",
        ),
        (
            ("target_r = [1.5, 2.0]", "lookback = [5]"),
            "strategy[1].space.lookback: not a parameter of trend_pullback",
        ),
        (
            ("target_r = [1.5, 2.0]", "target_r = [-1.0, 2.0]"),
            "strategy trend with {'target_r': -1.0}: strategies[trend].target_r",
        ),
        (
            ('base_config = "base.toml"\n', ""),
            "strategy[1].id: 'trend' is not an id of the base config's [[strategies]]; none",
        ),
    ],
)
def test_a_table_id_that_is_not_the_base_configs_is_named(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    (tmp_path / "base.toml").write_text(TABLES)
    text = GOOD.format(sampler="grid", budget=0, fast="[5, 9]")
    text = text.replace("[sweep]\n", '[sweep]\nbase_config = "base.toml"\n')
    text = text.replace('kind = "trend_pullback"', 'id = "trend"').replace(*edit)
    with pytest.raises(SpecError) as raised:
        load_spec(_spec(tmp_path, text))
    assert any(message in problem for problem in raised.value.problems), raised.value.problems


def test_random_draws_are_seeded_the_same_in_every_window_and_within_range(tmp_path: Path) -> None:
    spec = load_spec(_good(tmp_path, "random", 20, "{ low = 3, high = 15 }"))
    ema = spec.strategies[0]
    assert ema.space["fast_period"] == Range(3, 15)
    drawn = spec.random_params(ema)
    assert drawn == spec.random_params(ema) and len(drawn) == 20
    assert all(3 <= d["fast_period"] <= 15 and isinstance(d["fast_period"], int) for d in drawn)
    assert all(d["slow_period"] in (21, 34, 55) for d in drawn)
    assert len({d["fast_period"] for d in drawn}) > 3


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('objective = "sharpe"', 'objective = "alpha"'), "sweep.objective: 'alpha' is not one of"),
        (('sampler = "grid"', 'sampler = "random"'), "sweep.budget: the random sampler needs a trial budget"),
        (("train_days = 3", "train_days = -3"), "walk_forward.train_days: expected a number of days > 0"),
        (('kind = "trend_pullback"', 'kind = "martingale"'), "strategy[1].kind: 'martingale' is not one of"),
        (
            ("target_r = [1.5, 2.0]", "target_rr = [1.5]"),
            "strategy[1].space.target_rr: not a parameter of trend_pullback",
        ),
        (  # ema_cross's percent stop: a trend_pullback never reads it (its stop is in ATRs)
            ("target_r = [1.5, 2.0]", "stop_loss_pct = [0.5, 1.0]"),
            "strategy[1].space.stop_loss_pct: not a parameter of trend_pullback",
        ),
        (("slow_period = [21, 34, 55]", "slow_period = [0, 34]"), "strategy ema_cross with"),
        (('data = "candles.csv"', 'data = "missing.csv"'), "sweep.data: file not found"),
        (
            ('set = ["risk.max_loss_pct=100"]', 'set = ["session.run_dir=x"]'),
            "sweep.set: session.run_dir is set by the sweep",
        ),
        (("[walk_forward]", "[walkforward]"), "walkforward: unknown section"),
        (
            ("fast_period = [5, 9]", "fast_period = { low = 3, high = 9 }"),
            "strategy[0].space.fast_period: expected a list of values",
        ),
    ],
)
def test_every_problem_names_its_key(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    text = GOOD.format(sampler="grid", budget=0, fast="[5, 9]").replace(*edit)
    with pytest.raises(SpecError) as raised:
        load_spec(_spec(tmp_path, text))
    assert any(message in problem for problem in raised.value.problems), raised.value.problems


def test_the_cli_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    text = GOOD.format(sampler="tpe", budget=0, fast="[5, 9]").replace(
        'objective = "sharpe"', 'objective = "x"'
    )
    done = subprocess.run(
        [sys.executable, "-m", "tools.sweep", str(_spec(tmp_path, text))],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("spec error: sweep.") for line in lines), lines
    assert "Traceback" not in done.stderr


def test_a_spec_nested_too_deeply_is_a_spec_error(tmp_path: Path) -> None:
    """Found by an audit: tomllib's RecursionError on arrays nested by the thousand, a traceback."""
    with pytest.raises(SpecError) as raised:
        load_spec(_spec(tmp_path, "x = " + "[" * 5000 + "]" * 5000 + "\n"))
    assert raised.value.problems == [f"{tmp_path / 'spec.toml'}: not valid TOML here: nested too deeply"]


@pytest.mark.parametrize("data_filter", [True, False], ids=["tarfile-data-filter", "python-without-it"])
def test_a_packed_run_folder_unpacks_only_inside_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_filter: bool
) -> None:
    """A trial's run folder sent back from a worker node: files, folders and the `latest` link
    come back; a member outside the folder is refused (with tarfile's `data` filter, and by the
    same rule checked member by member on a Python without it, as the container's 3.11 base)."""
    import io
    import tarfile

    from tools.sweep.trial import pack_folder, unpack_folder

    if not data_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    source = tmp_path / "worker"
    (source / "run").mkdir(parents=True)
    (source / "run" / "events.jsonl").write_text('{"seq":1}\n')
    (source / "latest").symlink_to("run")
    out = tmp_path / "driver"
    unpack_folder(pack_folder(source), out)
    assert (out / "latest" / "events.jsonl").read_text() == '{"seq":1}\n'
    for name, link in (("../evil", None), ("run/up", "../../outside")):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            member = tarfile.TarInfo(name)
            if link is None:
                member.size = 1
                tar.addfile(member, io.BytesIO(b"x"))
            else:
                member.type, member.linkname = tarfile.SYMTYPE, link
                tar.addfile(member)
        with pytest.raises((ValueError, tarfile.TarError)):
            unpack_folder(buffer.getvalue(), tmp_path / "refused")
        assert not (tmp_path / "evil").exists() and not (tmp_path / "refused" / "run" / "up").exists()


# --- found by an audit of the sweep ------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampler", "edits", "message"),
    [
        # the TPE sampler seeds window i with seed + 1000 i: numpy takes 0 to 2**32 - 1 (a traceback)
        ("tpe", [("seed = 11", "seed = -1")], "sweep.seed: -1 is not allowed; expected an integer from 0 to 4294964295"),
        ("tpe", [("seed = 11", "seed = 4294967295")], "sweep.seed: 4294967295 is not allowed"),
        # a log range from 0 (a math domain error), a log that is not a bool (read as true)
        ("random", [("fast_period = [5, 9]", "fast_period = { low = 0, high = 9, log = true }")],
         "strategy[0].space.fast_period: log = true needs low > 0"),
        ("random", [("fast_period = [5, 9]", 'fast_period = { low = 2, high = 9, log = "no" }')],
         "strategy[0].space.fast_period: a range is"),
        # a data table without the traded symbol's file (every trial failed, KeyError, exit 0), or
        # with a file no strategy trades (the CLI the trial stands for refuses it)
        ("grid", [('data = "candles.csv"', 'data = { ETHUSDT = "candles.csv" }')],
         "sweep.data: no file for BTCUSDT, which strategy ema_cross trades"),
        ("grid", [('data = "candles.csv"', 'data = { BTCUSDT = "candles.csv", ETHUSDT = "candles.csv" }')],
         "sweep.data.ETHUSDT: no strategy of strategy ema_cross's trials trades it"),
        # a value between a list's ends that its key refuses (only the ends were checked: a text
        # among integers ran its trials, failed, and the table's writer raised once all had run)
        ("grid", [("fast_period = [5, 9]", 'fast_period = [5, "b", 9]')],
         "strategy ema_cross: strategy.fast_period: 'b' is not allowed (from the spec's list); expected an integer"),
        ("grid", [("slow_period = [21, 34, 55]", "slow_period = [21, 2000, 55]")],
         "strategy ema_cross: strategy.slow_period: 2000 is not allowed"),
    ],
)  # fmt: skip
def test_a_spec_the_sweep_cannot_run_is_refused_naming_the_key(
    tmp_path: Path, sampler: str, edits: list[tuple[str, str]], message: str
) -> None:
    text = GOOD.format(sampler=sampler, budget=4 if sampler != "grid" else 0, fast="[5, 9]")
    for edit in edits:
        text = text.replace(*edit)
    with pytest.raises(SpecError) as raised:
        load_spec(_spec(tmp_path, text))
    assert any(message in problem for problem in raised.value.problems), raised.value.problems


def test_every_strategys_bad_value_is_said(tmp_path: Path) -> None:
    """Only the first strategy's was (the check returned after it)."""
    text = GOOD.format(sampler="grid", budget=0, fast="[0, 9]").replace(
        "target_r = [1.5, 2.0]", "target_r = [-1]"
    )
    with pytest.raises(SpecError) as raised:
        load_spec(_spec(tmp_path, text))
    said = raised.value.problems
    assert any(p.startswith("strategy ema_cross with") for p in said), said
    assert any(p.startswith("strategy trend_pullback with") for p in said), said


def test_random_integer_draws_take_each_value_alike(tmp_path: Path) -> None:
    """round(uniform(1, 4)) drew 1 and 4 half as often as 2 and 3. Over 4,000 draws each of the
    four values comes about 1,000 times (binomial sd about 27: 800 is more than 7 sd off)."""
    import random

    from tools.sweep.spec import _draw

    rng = random.Random(3)
    drawn = [_draw(rng, Range(1, 4)) for _ in range(4000)]
    counts = {v: drawn.count(v) for v in (1, 2, 3, 4)}
    assert sum(counts.values()) == 4000 and all(count > 800 for count in counts.values()), counts


def test_random_draws_are_distinct_and_a_small_space_runs_each_set_once(tmp_path: Path) -> None:
    """A set drawn twice was two trials of one backtest: one trial id, two rows in trials.csv.
    fast_period 1 to 4 with slow_period's three values hold 12 sets: a budget of 20 runs those 12,
    each once; a budget of 8 draws 8 of them, none twice."""
    spec = load_spec(_good(tmp_path, "random", 20, "{ low = 1, high = 4 }"))
    drawn = spec.random_params(spec.strategies[0])
    pairs = sorted((d["fast_period"], d["slow_period"]) for d in drawn)
    assert pairs == [(f, s) for f in (1, 2, 3, 4) for s in (21, 34, 55)]
    spec = load_spec(_good(tmp_path, "random", 8, "{ low = 1, high = 4 }"))
    drawn = spec.random_params(spec.strategies[0])
    assert len(drawn) == 8 == len({(d["fast_period"], d["slow_period"]) for d in drawn})
    # trend_pullback's space (target_r: 1.5 or 2.0) holds two
    assert sorted(d["target_r"] for d in spec.random_params(spec.strategies[1])) == [1.5, 2.0]


def test_a_value_listed_twice_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as raised:
        load_spec(_good(tmp_path, fast="[5, 9, 5]"))
    assert raised.value.problems == [
        "strategy[0].space.fast_period: 5 is listed twice; list each value once"
    ], raised.value.problems


def test_the_verdict_counts_a_window_only_when_its_out_of_sample_run_ran(tmp_path: Path) -> None:
    """A failed out-of-sample run (no candles in its days) counted as 0 PnL beside its window's
    in-sample PnL, and said "2 windows" of one judged: the verdict of two windows, the second's
    test failed, is the first's alone (in-sample 10 + out-of-sample -3), one failed window."""
    from tools.sweep.results import summary

    spec = load_spec(_good(tmp_path, fast="[5]"))
    windows = spec.windows_from(0.0)[:2]

    def record(window: int, phase: str, status: str, pnl: float | None) -> dict[str, Any]:
        return {
            "key": f"{window}{phase}", "trial_id": f"{window}{phase}", "strategy": "ema_cross",
            "params": {"fast_period": 5}, "window": window, "phase": phase, "status": status,
            "net_pnl": pnl, "sharpe": pnl, "trade_count": 5 if pnl is not None else None,
        }  # fmt: skip

    records = [
        record(0, "train", "ok", 10.0),
        record(0, "test", "ok", -3.0),
        record(1, "train", "ok", 7.0),
        record(1, "test", "failed", None),
    ]
    verdict = summary(spec, windows, records)["verdict"]["ema_cross"]
    assert verdict == {
        "out_of_sample_net_pnl": -3.0,
        "in_sample_net_pnl": 10.0,
        "out_of_sample_trades": 5,
        "windows": 1,
        "failed_windows": 1,
        "no_best_windows": 0,
        "in_sample_trials": 2,
        "out_of_sample_days": 1.5,
        "in_sample_days": 3.0,
    }


def test_values_that_break_a_rule_between_keys_only_together_pass_the_spec(tmp_path: Path) -> None:
    """Each value is checked against its own key's rule: fast_period 30 is a valid value, and only
    with slow_period 21 breaks fast < slow (a trial recorded failed, docs/sweeps.md)."""
    spec = load_spec(_good(tmp_path, fast="[5, 30, 9]"))
    assert spec.strategies[0].space["fast_period"] == (5, 30, 9)


def _candles(path: Path, step_s: int, n: int = 300) -> Path:
    """`n` seeded random-walk candles `step_s` apart, from 2024-01-01."""
    import random

    rng = random.Random(5)
    price, lines = 60_000.0, ["open_time_ms,open,high,low,close,volume"]
    for i in range(n):
        close = price + rng.uniform(-30, 30)
        high, low = max(price, close) + rng.uniform(0, 10), min(price, close) - rng.uniform(0, 10)
        lines.append(f"{(1704067200 + i * step_s) * 1000},{price:.1f},{high:.1f},{low:.1f},{close:.1f},1.5")
        price = close
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.sweep  # the sweep's data columns are numpy arrays (the `sweep` extra: nox -s sweep)
@pytest.mark.parametrize(("step_s", "interval"), [(60, "5m"), (300, "1m")])
def test_data_of_another_interval_is_refused_as_the_cli_backtest_refuses_it(
    tmp_path: Path, step_s: int, interval: str
) -> None:
    """With session.interval = "5m" on 1m candles the sweep's reader skipped four rows of five and
    every trial ran on each fifth 1m candle taken as a 5m one (exit 0), where the CLI backtest a
    trial stands for exits 2: the sweep refuses the data with the CLI's own message (exit 2)."""
    from actors.config import interval_seconds
    from actors.feeds.history import DataError
    from tests.conftest import run_main
    from tools.sweep.trial import read_columns

    data = _candles(tmp_path / "candles.csv", step_s)
    cli = run_main(
        "--mode", "backtest", "--data", str(data), "--set", f"session.interval={interval}",
        "--run-dir", str(tmp_path / "runs"), cwd=tmp_path,
    )  # fmt: skip
    assert cli.returncode == 2, cli.stderr
    with pytest.raises(DataError) as refused:
        read_columns(data, interval_seconds(interval), "BTCUSDT")
    assert f"error: {refused.value}" in cli.stderr.splitlines()
    # and data of the session's interval reads whole
    assert len(read_columns(data, step_s, "BTCUSDT")["open_ts"]) == 300


def test_a_window_without_an_eligible_train_trial_is_said_in_the_verdict(tmp_path: Path) -> None:
    """A window whose train trials all failed (no candles in its days) or made fewer trades than
    min_trades has no out-of-sample run; the verdict counted it nowhere, and the console said
    "over 1 windows" of three with nothing about the others. Now the verdict counts it
    (no_best_windows) and how many in-sample trials its best were chosen from, and the console's
    line says over how many of the windows, why the others are not, and the trials tried."""
    from tools.sweep.__main__ import verdict_line
    from tools.sweep.results import summary

    spec = load_spec(_good(tmp_path, fast="[5, 9]"))  # min_trades = 3
    windows = spec.windows_from(0.0)[:3]

    def record(
        window: int, phase: str, fast: int, status: str, pnl: float | None, trades: int
    ) -> dict[str, Any]:
        return {
            "key": f"{window}{phase}{fast}", "trial_id": f"{window}{phase}{fast}", "strategy": "ema_cross",
            "params": {"fast_period": fast}, "window": window, "phase": phase, "status": status,
            "net_pnl": pnl, "sharpe": pnl, "trade_count": trades,
        }  # fmt: skip

    records = [
        record(0, "train", 5, "ok", 4.0, 6),
        record(0, "train", 9, "ok", 8.0, 6),
        record(0, "test", 9, "ok", -1.0, 3),
        record(1, "train", 5, "failed", None, 0),
        record(1, "train", 9, "failed", None, 0),
        record(2, "train", 5, "ok", 50.0, 2),  # below min_trades: not eligible
        record(2, "train", 9, "ok", 40.0, 1),
    ]
    document = summary(spec, windows, records)
    verdict = document["verdict"]["ema_cross"]
    assert verdict["windows"] == 1 and verdict["failed_windows"] == 0
    assert verdict["no_best_windows"] == 2
    assert verdict["in_sample_trials"] == 6
    assert document["windows"][0]["best"]["ema_cross"]["of_trials"] == 2
    line = verdict_line(verdict, len(document["windows"]))
    assert "over 1 of 3 windows (2 without an in-sample trial eligible to choose: not counted)" in line, line
    assert "best of 6 trials tried" in line, line
    # the days each side covers (train_days 3, test_days 1.5 a window): compared per day
    assert (verdict["out_of_sample_days"], verdict["in_sample_days"]) == (1.5, 3.0)
    assert (
        "of 3 windows (2 without" in line
        and ": not counted), 1.5 days, 3 trades; in-sample +8.00 over 3 days" in line
    ), line


def test_a_warm_up_long_against_the_test_days_is_said(tmp_path: Path) -> None:
    """Each out-of-sample run starts cold on its own days (as the CLI backtest of them): ema_cross
    with slow_period 200 on 3 h test days made no trade out of sample, a verdict of 0.00 over 2
    of 2 windows, with nothing said. The sweep now says so at its start (and in sweep.json) for a
    warm-up of 10 % of the test days or more: 300 one-minute candles are 5 h, 14 % of 36 h."""
    from tools.sweep.spec import cold_starts

    text = GOOD.format(sampler="grid", budget=0, fast="[5, 9]").replace(
        'set = ["risk.max_loss_pct=100"]', 'set = ["risk.max_loss_pct=100", "strategy.history=1000"]'
    )
    assert cold_starts(load_spec(_spec(tmp_path, text))) == []  # 55 minutes of 36 h
    text = text.replace("slow_period = [21, 34, 55]", "slow_period = [21, 300]")
    assert cold_starts(load_spec(_spec(tmp_path, text))) == [
        "ema_cross: each out-of-sample run starts cold on its test days and warms up on their first "
        "300 1m candles (5.0 h of 36.0 h), trading none before: 14% of them"
    ]
    said = cold_starts(load_spec(_spec(tmp_path, text.replace("test_days = 1.5", "test_days = 0.1"))))
    assert said == [
        "ema_cross: each out-of-sample run starts cold on its test days and warms up on their first "
        "300 1m candles (5.0 h of 2.4 h), trading none before: longer than them: it cannot trade out of sample",
        # trend_pullback's 50 candles (its EMA 50) are 50 minutes of 144
        "trend_pullback: each out-of-sample run starts cold on its test days and warms up on their first "
        "50 1m candles (0.8 h of 2.4 h), trading none before: 35% of them",
    ]


@pytest.mark.sweep  # the sweep's data columns are numpy arrays (the `sweep` extra: nox -s sweep)
def test_a_trials_report_counts_the_rows_skipped_as_the_cli_backtests_does(tmp_path: Path) -> None:
    """A trial's candles come from the data read once (not the file): its report said
    `malformed_dropped: {}` where the CLI backtest of the same window counted the file's rows
    that were not candles. The CLI's reader counts those it passes on its way to the first candle
    after the window: here a repeated row before the window, a broken one in it and one right
    after its last candle (3), not the broken one after the next candles."""
    from tests.conftest import run_main
    from tools.sweep.trial import Trial, read_columns, run_trial

    data = _candles(tmp_path / "clean.csv", 60, n=3 * 1440)
    lines = data.read_text().splitlines()  # the header, then candle i on line 1 + i
    lines = [
        *lines[:102], lines[101],  # candle 100 again
        *lines[102:2001], "garbage,row",  # before candle 2000, in the window (candles 1440 to 2879)
        *lines[2001:2881], "1,2,3",  # after its last candle
        *lines[2881:2886], "x",  # after candle 2884
        *lines[2886:],
    ]  # fmt: skip
    data = tmp_path / "candles.csv"
    data.write_text("\n".join(lines) + "\n")
    day = 86_400.0
    start = 1704067200.0 + day
    sets = ("risk.max_loss_pct=100", "strategy.name=ema_cross", "strategy.fast_period=5")
    trial = Trial("ab" * 32, "ema_cross", {"fast_period": 5}, 0, "test", start, start + day, sets)
    record = run_trial(
        trial, None, (("", data),), {str(data): read_columns(data, 60.0, "BTCUSDT")}, tmp_path / "trial"
    )
    assert record["status"] == "ok", record
    cli = run_main(
        *trial.cli(None, (("", data),), tmp_path / "cli"), cwd=tmp_path,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    swept = json.loads((Path(record["run_path"]) / "final_report.json").read_text())
    by_cli = json.loads((tmp_path / "cli" / "latest" / "final_report.json").read_text())
    assert by_cli["malformed_dropped"] == {"csv_not_six_numbers": 2, "csv_repeated_time": 1}
    assert swept["malformed_dropped"] == by_cli["malformed_dropped"]
    assert (swept["net_pnl"], swept["trade_count"]) == (by_cli["net_pnl"], by_cli["trade_count"])


def test_a_trials_run_folder_is_named_inside_the_sweeps_folder_wherever_the_log_was_written(
    tmp_path: Path,
) -> None:
    """The log keeps each trial's run folder as an absolute path: a sweep folder moved (or a log
    copied into another) and run again ended, once every trial had run, in a ValueError ('is not
    in the subpath'), no table, no sweep.json. The table names it trials/<trial id>/<run>."""
    from tools.sweep.results import rows

    spec = load_spec(_good(tmp_path, fast="[5]"))
    record = {
        "key": "k", "trial_id": "3104b67c77618f5a", "strategy": "ema_cross", "params": {"fast_period": 5},
        "window": 0, "phase": "train", "start": 0.0, "end": 86400.0, "status": "ok", "net_pnl": 1.0,
        "trade_count": 5, "run_path": "/elsewhere/old-sweep/trials/3104b67c77618f5a/backtest-20250510T000000Z-s42",
    }  # fmt: skip
    (row,) = rows([record], spec)
    assert row["run_folder"] == "trials/3104b67c77618f5a/backtest-20250510T000000Z-s42"


def _refused_as_the_cli_refuses_it(tmp_path: Path, data: Path) -> str:
    """The CLI backtest refuses `data` (exit 2) and the sweep's reader with the same words: what
    they said."""
    from actors.feeds.history import DataError
    from tests.conftest import run_main
    from tools.sweep.trial import read_columns

    cli = run_main(
        "--mode", "backtest", "--data", str(data), "--run-dir", str(tmp_path / "runs"), cwd=tmp_path
    )
    assert cli.returncode == 2, cli.stderr
    with pytest.raises(DataError) as refused:
        read_columns(data, 60.0, "BTCUSDT")
    assert f"error: {refused.value}" in cli.stderr.splitlines()
    return str(refused.value)


@pytest.mark.sweep  # the sweep's data columns are numpy arrays (the `sweep` extra: nox -s sweep)
@pytest.mark.parametrize("rows", ["", "x,1,2,3,4,5\n1,2\n"], ids=["header-only", "all-malformed"])
def test_data_without_a_candle_is_refused_as_the_cli_backtest_refuses_it(tmp_path: Path, rows: str) -> None:
    """A data file of no candle (its header alone, or every row malformed) ended the sweep in a
    traceback (ValueError: min() arg is an empty sequence), exit 1, once Ray had started; the
    CLI backtest exits 2 saying why. The sweep says the CLI's words (DataError: exit 2)."""
    data = tmp_path / "candles.csv"
    data.write_text("open_time_ms,open,high,low,close,volume\n" + rows)
    _refused_as_the_cli_refuses_it(tmp_path, data)


@pytest.mark.sweep  # the sweep's data columns are numpy arrays (the `sweep` extra: nox -s sweep)
def test_a_window_whose_data_is_short_is_said(tmp_path: Path) -> None:
    """Only a window ending after the data's last candle was said; one across a gap of the data
    (the shared perp file's, 2023-08-17 11:11 to 2025-05-04) was judged on a few hours of its
    days with nothing said. Each window's train and test days holding less than 90 % of their
    candles are said: here candles every minute from 00:00 to 12:00 of day 2 and from day 4 on."""
    import numpy as np

    from tools.sweep.runner import short_windows

    spec = load_spec(_good(tmp_path))  # train 3 days, test 1.5, from 2024-01-01
    windows = spec.windows_from(0.0)[:2]
    t0, day = datetime(2024, 1, 1, tzinfo=UTC).timestamp(), 86_400
    opens = [t0 + i * 60 for i in range(int((day + day / 2) / 60))]  # day 1 and half of day 2
    opens += [t0 + 3 * day + i * 60 for i in range(int(4 * day / 60))]  # days 4 to 7
    said = short_windows(windows, {"f": {"open_ts": np.asarray(opens, dtype=np.float64)}}, 60.0)
    # window 0 trains on days 1 to 3: 1.5 days of candles (2,160 of 4,320), tests on day 4 and
    # half of day 5: all there; window 1 trains from 12:00 on day 2 to 12:00 on day 5: day 4 and
    # half of day 5 there (2,160 of 4,320), tests on the rest of day 5 and day 6: all there
    assert said == [
        "window 0: its train days (2024-01-01T00:00:00Z to 2024-01-04T00:00:00Z) hold 2,160 of their 4,320 "
        "candles (50%: the data starts later, ends earlier or has gaps there): its in-sample figures cover that much",
        "window 1: its train days (2024-01-02T12:00:00Z to 2024-01-05T12:00:00Z) hold 2,160 of their 4,320 "
        "candles (50%: the data starts later, ends earlier or has gaps there): its in-sample figures cover that much",
    ]


def test_the_progress_line_says_the_trials_in_ray_are_running_or_queued() -> None:
    """Found by a docs audit: docs/sweeps.md's spec with `--workers 1` printed `trials 1/15 done, 11
    running`: the count is of the trials submitted to Ray and not back, of which one CPU runs one."""
    from tools.sweep.progress import _line
    from tools.sweep.runner import Counts

    line = _line(Counts(total=15, done=1, running=11))
    assert line.startswith("trials 1/15 done, 11 running or queued, 0 failed, 0 from the log; ")


@pytest.mark.sweep  # the sweep's data columns are numpy arrays (the `sweep` extra: nox -s sweep)
def test_data_newest_first_is_refused_as_the_cli_backtest_refuses_it(tmp_path: Path) -> None:
    """The CLI backtest refuses a file in descending time order (an export newest first), exit 2;
    the sweep's reader kept its first candle, skipped the rest (csv_time_backwards), and every
    trial failed (no candles in its window, or the CLI's refusal on the worker). It refuses the file at start with the CLI's own line (exit 2); a row out of order is
    still skipped, counted, and the rest read."""
    from tools.sweep.trial import read_columns

    rows = _candles(tmp_path / "asc.csv", 60, n=30).read_text().splitlines()
    data = tmp_path / "candles.csv"
    data.write_text("\n".join([rows[0], *reversed(rows[1:])]) + "\n")
    refused = _refused_as_the_cli_refuses_it(tmp_path, data)
    assert "29 of its first rows open before the row before them, 1 candle kept" in refused
    rows[11], rows[12] = rows[12], rows[11]  # one row out of order: skipped and counted
    data.write_text("\n".join(rows) + "\n")
    columns = read_columns(data, 60.0, "BTCUSDT")
    assert len(columns["open_ts"]) == 29 and columns["skip_reason"] == ["csv_time_backwards"]


def test_a_sweep_that_judged_no_window_out_of_sample_is_said_as_measuring_nothing(tmp_path: Path) -> None:
    """Found by an audit: a sweep whose train trials were ok but whose every out-of-sample run
    failed, or in which no window had an eligible train trial (`over 0 of 2 windows`), exited 0,
    and a script or CI job took it for a result. The CLI's line for it (exit 1) says why, in the
    words of the every-trial-failed line; one window judged, for one strategy, is a result."""
    from tools.sweep.__main__ import nothing_judged
    from tools.sweep.results import summary

    spec = load_spec(_good(tmp_path, fast="[5]"))  # min_trades = 3, objective sharpe
    windows = spec.windows_from(0.0)[:2]

    def record(window: int, phase: str, status: str, trades: int, name: str = "ema_cross") -> dict[str, Any]:
        ok = status == "ok"
        return {
            "key": f"{name}{window}{phase}", "trial_id": f"{name}{window}{phase}", "strategy": name,
            "params": {"fast_period": 5}, "window": window, "phase": phase, "status": status,
            "net_pnl": 1.0 if ok else None, "sharpe": 1.0 if ok else None, "trade_count": trades if ok else None,
            "error": None if ok else "session ended error: storage (low space: 1 MB)",
        }  # fmt: skip

    # every out-of-sample run failed: the first (window 0) named
    records = [
        record(0, "train", "ok", 5),
        record(0, "test", "failed", 0),
        record(1, "train", "ok", 5),
        record(1, "test", "failed", 0),
    ]
    assert nothing_judged(summary(spec, windows, records), records) == (
        "error: no window judged out of sample (0 of 2): the sweep measured nothing; ema_cross: 2 whose "
        "out-of-sample run failed; trend_pullback: 2 without an in-sample trial eligible to choose (at "
        'least sweep.min_trades = 3 trades and a defined sharpe); the first: ema_cross {"fast_period": 5} '
        "(window 0, test): session ended error: storage (low space: 1 MB)"
    )
    # no window with an eligible train trial (fewer than min_trades trades, or failed)
    records = [record(0, "train", "ok", 2), record(1, "train", "failed", 0)]
    records += [record(w, "train", "ok", 1, "trend_pullback") for w in (0, 1)]
    assert nothing_judged(summary(spec, windows, records), records) == (
        "error: no window judged out of sample (0 of 2): the sweep measured nothing; ema_cross: 2 without "
        "an in-sample trial eligible to choose (at least sweep.min_trades = 3 trades and a defined "
        "sharpe); trend_pullback: 2 without an in-sample trial eligible to choose (at least "
        "sweep.min_trades = 3 trades and a defined sharpe)"
    )
    # one window judged for one strategy, its other windows and the other strategy's not: a result
    records += [record(1, "train", "ok", 5, "trend_pullback"), record(1, "test", "ok", 4, "trend_pullback")]
    records.remove(record(1, "train", "ok", 1, "trend_pullback"))
    assert nothing_judged(summary(spec, windows, records), records) is None


def test_a_window_the_data_holds_no_candle_of_is_a_spec_error_naming_it() -> None:
    """Found by an audit: a walk-forward window outside the data (0 candles in its train or test
    days) was only a warning at start (`hold 0 of their 1,440 candles`), then its trials failed.
    It is a spec problem (exit 2) naming the window, its days, the data's span and the key; days
    held in part are not (only said, `short_windows`). Data: days 2 and 3 of 2024 and day 6,
    1m candles (plain lists: the function takes any sorted sequence)."""
    from tools.sweep.runner import empty_windows
    from tools.sweep.spec import Window

    t0, day = datetime(2024, 1, 1, tzinfo=UTC).timestamp(), 86_400
    opens = [t0 + day + i * 60 for i in range(2 * 1440)] + [t0 + 5 * day + i * 60 for i in range(1440)]
    columns = {"/d/candles.csv": {"open_ts": opens}}

    def window(index: int, train_day: float) -> Window:  # train 1 day, then test 1 day (days from t0)
        start = t0 + train_day * day
        return Window(index, start, start + day, start + 2 * day)

    assert empty_windows((window(0, 1), window(1, 1.5), window(2, 4.5)), columns, 60.0) == []
    said = empty_windows((window(0, 0), window(1, 3), window(2, 6)), columns, 60.0)
    span = "/d/candles.csv spans 2024-01-02T00:00:00Z to 2024-01-07T00:00:00Z"
    assert said == [
        "walk_forward.start: window 0's train days (2024-01-01T00:00:00Z to 2024-01-02T00:00:00Z) hold no "
        f"candle of the data ({span}; those days are before its first candle: a later start): its trials "
        "could not run",
        "walk_forward: window 1's train days (2024-01-04T00:00:00Z to 2024-01-05T00:00:00Z) hold no candle "
        f"of the data ({span}; those days are in a gap of it: windows around the gap): its trials could "
        "not run",
        "walk_forward: window 1's test days (2024-01-05T00:00:00Z to 2024-01-06T00:00:00Z) hold no candle "
        f"of the data ({span}; those days are in a gap of it: windows around the gap): its trials could "
        "not run",
        "walk_forward.windows: window 2's train days (2024-01-07T00:00:00Z to 2024-01-08T00:00:00Z) hold no "
        f"candle of the data ({span}; those days are after its last candle: fewer windows or an earlier "
        "start): its trials could not run",
        "walk_forward.windows: window 2's test days (2024-01-08T00:00:00Z to 2024-01-09T00:00:00Z) hold no "
        f"candle of the data ({span}; those days are after its last candle: fewer windows or an earlier "
        "start): its trials could not run",
    ]
