"""sweep.html (tools/sweep/html.py) of synthetic sweep folders written here (trials.csv, sweep.json
and run folders with metrics.json and final_report.json, as `python -m tools.sweep` writes them):
the page of 2 strategies x 4 parameter sets x 2 windows, their out-of-sample trials and a failed
trial, opened in headless Chromium with the harness of test_report_html (no console error, every
chart drew its data, the walk-forward table and the verdict show sweep.json's numbers); and pages of
the edge cases (no failure, a strategy whose every trial failed, undefined figures, one window)."""

from __future__ import annotations

import csv
import hashlib
import html
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.test_report_html import DevTools, assert_every_chart_drew, chromium, needs_chromium
from tools.sweep.html import MAX_TRIAL_ROWS, SWEEP_HTML, write_sweep_html
from tools.sweep.results import COLUMNS

T0 = 1_704_067_200  # 2024-01-01T00:00:00Z
DAY = 86_400
GRIDS: dict[str, list[dict[str, Any]]] = {
    # two parameters that vary: a heatmap
    "ema_cross": [{"fast_period": f, "slow_period": s} for f in (5, 9) for s in (20, 30)],
    # one that varies (and one that does not): a chart of the objective against each
    "breakout": [{"lookback": n, "atr_mult": 2.0} for n in (10, 20, 30, 40)],
}
FAILURE = "ValueError: lookback 40 > the window's bars <&> (see trials/...)"
HEADER = list(COLUMNS)  # trials.csv as tools/sweep/results.py writes it
# (strategy, window, phase, index of the parameter set) -> the error of a trial that fails, or None
Failing = Callable[[str, int, str, int], str | None]


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts))


def _run_folder(root: Path, trial_id: str, start: float, end: float, net: float) -> str:
    """A trial's run folder: metrics.json (a row an hour) and final_report.json."""
    relative = f"trials/{trial_id}/backtest-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(start))}-s42"
    folder = root / relative
    folder.mkdir(parents=True)
    rng = random.Random(trial_id)
    hours = int((end - start) // 3600)
    rows = []
    for h in range(1, hours + 1):
        equity = 10_000.0 + net * h / hours + (rng.uniform(-8, 8) if h < hours else 0.0)
        rows.append(
            {"ts": iso(start + h * 3600), "elapsed_s": h * 3600.0, "equity": equity, "drawdown_pct": 0.0}
        )
    metrics = {"fields": ["ts", "elapsed_s", "equity", "drawdown_pct"], "columns": {}, "rows": rows}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    report = {
        "status": "ok",
        "started_at": iso(start),
        "ended_at": iso(end),
        "starting_equity": 10_000.0,
        "ending_equity": 10_000.0 + net,
        "net_pnl": net,
    }
    (folder / "final_report.json").write_text(json.dumps(report))
    return relative


def write_sweep(
    root: Path,
    *,
    windows: int = 2,
    grids: dict[str, list[dict[str, Any]]] = GRIDS,
    failing: Failing = lambda s, w, phase, i: None,
    objective: str = "net_pnl",
    undefined: bool = False,
    min_trades: int = 5,
) -> dict[str, Any]:
    """A sweep folder as `python -m tools.sweep` writes it (tools/sweep/results.py), figures drawn
    from a seeded generator (with `undefined`: sharpe and profit factor empty in every other
    trial); its sweep.json."""
    root.mkdir(parents=True, exist_ok=True)
    names = sorted({name for grid in grids.values() for params in grid for name in params})
    rows: list[dict[str, Any]] = []

    def trial(strategy: str, w: int, phase: str, i: int, start: float, end: float) -> dict[str, Any]:
        params = grids[strategy][i]
        trial_id = hashlib.sha1(f"{strategy}{w}{phase}{i}".encode()).hexdigest()[:12]
        row: dict[str, Any] = dict.fromkeys(HEADER, "")
        row.update(
            trial_id=trial_id,
            strategy=strategy,
            window=w,
            phase=phase,
            start=iso(start),
            end=iso(end),
            objective=objective,
            params=json.dumps(params),
            **{f"param.{k}": v for k, v in params.items()},
        )
        error = failing(strategy, w, phase, i)
        if error:
            row.update(status="failed", error=error)
        else:
            rng = random.Random(trial_id)
            net = rng.uniform(-150, 250)
            figures = {
                "net_pnl": net,
                "return_pct": net / 100,
                "sharpe": rng.uniform(-2, 3),
                "profit_factor": rng.uniform(0.5, 2.5),
                "trade_count": rng.randint(3, 40),
                "max_drawdown_pct": rng.uniform(0, 3),
                "fees_paid": rng.uniform(5, 50),
                "seconds": rng.uniform(0.5, 2),
            }
            if undefined and len(rows) % 2:
                figures.update(sharpe="", profit_factor="")
            row.update(
                status="ok",
                # as tools.sweep writes it: none with fewer than min_trades trades (never the best)
                objective_value=figures[objective] if figures["trade_count"] >= min_trades else "",
                stop_reason="end_of_data",
                run_folder=_run_folder(root, trial_id, start, end, net),
                **figures,
            )
        rows.append(row)
        return row

    def value(row: dict[str, Any], column: str = "objective_value") -> float | None:
        v = row[column]
        return None if v == "" else float(v)

    spans = []
    for w in range(windows):
        train = (T0 + 2 * w * DAY, T0 + (2 * w + 4) * DAY)
        spans.append({"index": w, "train": train, "test": (train[1], train[1] + 2 * DAY)})
    meta_windows = []
    verdict: dict[str, dict[str, Any]] = {}
    for span in spans:
        w = span["index"]
        best: dict[str, Any] = {}
        oos: dict[str, Any] = {}
        for strategy, grid in grids.items():
            train = [trial(strategy, w, "train", i, *span["train"]) for i in range(len(grid))]
            totals = verdict.setdefault(
                strategy,
                {
                    "out_of_sample_net_pnl": 0.0,
                    "in_sample_net_pnl": 0.0,
                    "out_of_sample_trades": 0,
                    "windows": 0,
                },
            )
            eligible = [r for r in train if value(r) is not None]
            if not eligible:
                continue
            top = max(eligible, key=lambda r: value(r) or 0.0)
            best[strategy] = {
                "trial_id": top["trial_id"],
                "params": json.loads(top["params"]),
                "objective_value": value(top),
            }
            test = trial(strategy, w, "test", grid.index(json.loads(top["params"])), *span["test"])
            ok = test["status"] == "ok"
            oos[strategy] = {
                "trial_id": test["trial_id"],
                "objective_value": value(test, objective) if ok else None,
                "net_pnl": test["net_pnl"] if ok else None,
                "trade_count": test["trade_count"] if ok else None,
            }
            totals["in_sample_net_pnl"] += top["net_pnl"]
            totals["out_of_sample_net_pnl"] += test["net_pnl"] if ok else 0.0
            totals["out_of_sample_trades"] += test["trade_count"] if ok else 0
            totals["windows"] += 1
        meta_windows.append(
            {
                "index": w,
                "train": {"start": iso(span["train"][0]), "end": iso(span["train"][1])},
                "test": {"start": iso(span["test"][0]), "end": iso(span["test"][1])},
                "best": best,
                "out_of_sample": oos,
            }
        )
    with (root / "trials.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, HEADER + [f"param.{n}" for n in names], restval="")
        writer.writeheader()
        writer.writerows(rows)
    meta = {
        "name": f"test sweep {root.name}",
        "objective": objective,
        "min_trades": min_trades,
        "windows": meta_windows,
        "verdict": verdict,
    }
    (root / "sweep.json").write_text(json.dumps(meta))
    return meta


def one_failure(strategy: str, w: int, phase: str, i: int) -> str | None:
    return FAILURE if (strategy, w, phase, i) == ("breakout", 1, "train", 3) else None


def _csv_rows(root: Path) -> list[dict[str, str]]:
    with (root / "trials.csv").open(newline="") as f:
        return list(csv.DictReader(f))


# --- without a browser -------------------------------------------------------------------------------------


def _page(root: Path) -> str:
    out = write_sweep_html(root)
    assert out == root / SWEEP_HTML and out.is_file()
    assert not list(root.glob(".*.tmp"))  # written atomically
    text = out.read_text()
    assert "Plotly.newPlot" in text and "<script src=" not in text  # plotly.js inlined: offline
    assert "NaN" not in text.split("</script>", 1)[1]  # no undefined figure reached a chart as NaN
    return text


def test_the_pages_of_the_edge_cases(tmp_path: Path) -> None:
    # no failed trial, one window
    meta = write_sweep(tmp_path / "one", windows=1)
    text = _page(tmp_path / "one")
    assert all(name in text for name in GRIDS)
    assert "No trial failed." in text and len(meta["windows"]) == 1
    assert 'data-window="0"' in text and 'data-window="1"' not in text
    rows = _csv_rows(tmp_path / "one")
    for row in rows:  # each trial's command opens its run
        assert f"python -m tools.report {(tmp_path / 'one' / row['run_folder']).absolute()}" in text

    # some failed trials: their errors shown (escaped)
    write_sweep(tmp_path / "some", failing=one_failure)
    text = _page(tmp_path / "some")
    assert html.escape(FAILURE) in text and FAILURE not in text
    assert "1 of 20 trials failed." in text

    # a strategy whose every trial failed: no best, no out-of-sample trial, no verdict
    def every_breakout(strategy: str, w: int, phase: str, i: int) -> str | None:
        return f"RuntimeError: breakout {i} broke in window {w}" if strategy == "breakout" else None

    meta = write_sweep(tmp_path / "all", failing=every_breakout)
    assert meta["verdict"]["breakout"]["windows"] == 0
    text = _page(tmp_path / "all")
    assert all(name in text for name in GRIDS)
    assert "Every trial of breakout failed (8)" in text and "nothing judged" in text
    assert html.escape("RuntimeError: breakout 2 broke in window 1") in text
    assert 'id="chart-space-ema_cross"' in text and 'id="chart-space-breakout"' not in text
    assert "No in-sample trial of breakout has a net_pnl" in text
    assert "breakout: no net_pnl in any window." in text

    # undefined figures (empty in trials.csv), the objective among them; a failed out-of-sample trial
    def a_test_trial(strategy: str, w: int, phase: str, i: int) -> str | None:
        return "OSError: disk full" if (strategy, w, phase) == ("ema_cross", 0, "test") else None

    write_sweep(tmp_path / "empty", failing=a_test_trial, objective="profit_factor", undefined=True)
    text = _page(tmp_path / "empty")
    assert all(name in text for name in GRIDS) and "OSError: disk full" in text
    assert 'data-field="profit_factor" data-value=""' in text  # shown as "-"

    # a long sweep: the trial table capped, and saying so
    many = {"ema_cross": [{"fast_period": f, "slow_period": 20} for f in range(2, 62)]}
    write_sweep(tmp_path / "many", grids=many, windows=1)
    text = _page(tmp_path / "many")
    assert f"The best {MAX_TRIAL_ROWS} of 61 trials" in text
    assert text.count('<tr data-trial="') == MAX_TRIAL_ROWS


# --- in the browser -------------------------------------------------------------------------------------


# For each chart: its id, the points of each trace, and the drawn marks of each trace (SVG paths of
# more than a point; a heatmap is drawn as an image in its `g.hm`): test_report_html's CHARTS_JS, with
# heatmaps.
CHARTS_JS = """JSON.stringify(Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => ({
  id: gd.id,
  types: gd.data.map(t => t.type),
  points: gd.data.map(t => (t.x || []).filter(v => v !== null).length),
  drawn: Array.from(gd.querySelectorAll('.cartesianlayer g.trace, .cartesianlayer g.hm')).map(g =>
    Array.from(g.querySelectorAll('path, image')).filter(p =>
      p.tagName === 'image' ? !!p.getAttribute('href') : (p.getAttribute('d') || '').length > 4).length),
})))"""
# A table's rows as [data-strategy, data-window, {field: [exact value, text shown]}].
TABLE_JS = """JSON.stringify(Array.from(document.querySelectorAll('#%s tr[data-strategy]')).map(tr =>
  [tr.dataset.strategy, tr.dataset.window ?? null, Object.fromEntries(
    Array.from(tr.querySelectorAll('td[data-field]')).map(td => [td.dataset.field, [td.dataset.value, td.textContent]]))]))"""


async def open_sweep(tools: DevTools, page: Path) -> dict[str, Any]:
    """Open a sweep.html in the browser; wait until every chart drew; assert no console error.
    Its charts, walk-forward table and verdict (as CHARTS_JS and TABLE_JS read them)."""
    await tools.call("Page.navigate", url=page.as_uri())
    with trio.fail_after(30):
        await tools.loaded.wait()
    expected = await tools.evaluate("document.querySelectorAll('div.chart').length")
    charts: list[dict[str, Any]] = []
    with trio.move_on_after(30):
        while not (  # plotly draws each chart once its data is in
            len(charts) == expected and all(len(c["drawn"]) == len(c["points"]) for c in charts)
        ):
            await trio.sleep(0.1)
            charts = json.loads(await tools.evaluate(CHARTS_JS))
    assert len(charts) == expected and all(len(c["drawn"]) == len(c["points"]) for c in charts), (
        charts,
        tools.errors,
    )
    tables = {name: json.loads(await tools.evaluate(TABLE_JS % name)) for name in ("walk-forward", "verdict")}
    await trio.sleep(0.2)  # late console messages
    assert tools.errors == [], tools.errors
    return {"charts": charts, **tables}


def _shown(value: Any, how: str) -> str:
    if value is None:
        return "-"
    if how == "money":
        return f"{round(value, 2) + 0.0:,.2f}"
    return f"{value:,}" if how == "int" else f"{value:.2f}"


def assert_walk_forward_shown(seen: dict[str, Any], meta: dict[str, Any]) -> None:
    """The walk-forward table's and the verdict's numbers are sweep.json's, exactly (data-value)
    and as shown (rounded)."""
    expected = {}
    for w in meta["windows"]:
        for strategy in GRIDS:
            best = w["best"].get(strategy, {})
            oos = w["out_of_sample"].get(strategy, {})
            expected[(strategy, str(w["index"]))] = {
                "out_of_sample.objective_value": (oos.get("objective_value"), "money"),
                "out_of_sample.net_pnl": (oos.get("net_pnl"), "money"),
                "out_of_sample.trade_count": (oos.get("trade_count"), "int"),
                "best.objective_value": (best.get("objective_value"), "money"),
            }
    rows = {(strategy, window): cells for strategy, window, cells in seen["walk-forward"]}
    assert set(rows) == set(expected)
    for key, fields in expected.items():
        assert set(rows[key]) == set(fields), key
        for field, (want, how) in fields.items():
            value, text = rows[key][field]
            assert (float(value) if value else None) == want, (key, field)  # exactly: repr round-trips
            assert text == _shown(want, how), (key, field)
    verdict = {strategy: cells for strategy, _, cells in seen["verdict"]}
    assert set(verdict) == set(meta["verdict"])
    for strategy, figures in meta["verdict"].items():
        for field, want in figures.items():
            value, text = verdict[strategy][field]
            assert float(value) == want, (strategy, field)
            assert text == _shown(want, "int" if isinstance(want, int) else "money"), (strategy, field)


@needs_chromium
@pytest.mark.slow  # a browser
async def test_a_sweeps_page_in_chromium(tmp_path: Path) -> None:
    meta = write_sweep(tmp_path / "sweep", failing=one_failure)
    rows = _csv_rows(tmp_path / "sweep")
    assert len(rows) == 2 * 4 * 2 + 4 and sum(r["status"] == "failed" for r in rows) == 1
    page = write_sweep_html(tmp_path / "sweep")
    async with chromium(tmp_path / "chromium-profile") as tools:
        seen = await open_sweep(tools, page)

    charts = {c["id"]: c for c in seen["charts"]}
    assert_every_chart_drew(
        seen["charts"],
        {
            "chart-space-ema_cross",
            "chart-space-breakout",
            "chart-wf-ema_cross",
            "chart-wf-breakout",
            "chart-equity-train",
            "chart-equity-test",
        },
    )
    assert charts["chart-space-ema_cross"]["types"] == ["heatmap"]  # a 2 x 2 grid, no failure
    assert charts["chart-space-ema_cross"]["points"] == [2]
    # breakout: the objective against the parameter that varies, by window, and the failed trial
    assert charts["chart-space-breakout"]["points"] == [4, 3, 1]
    assert charts["chart-wf-ema_cross"]["points"] == [2, 2]  # in and out of sample, per window
    assert len(charts["chart-equity-train"]["points"]) == 5  # the five best in-sample trials
    assert len(charts["chart-equity-test"]["points"]) == 4  # every out-of-sample trial
    assert all(n == 2 * 24 + 1 for n in charts["chart-equity-test"]["points"])  # start + a row an hour
    assert_walk_forward_shown(seen, meta)


def test_trials_with_fewer_than_min_trades_rank_after_the_valued_and_before_the_undefined(
    tmp_path: Path,
) -> None:
    """The page's order (its trial table, best first): trials with an objective value by it; then
    those with fewer than min_trades trades, by their own figure (an audit found this tier never
    applied: their objective_value is empty, so they sat among the undefined ones, unordered);
    then the undefined; failed ones last. Expected from the CSV rows, not from `rank`."""
    from tools.sweep.html import load_sweep

    root = tmp_path / "few"
    write_sweep(root, objective="sharpe", undefined=True, min_trades=20, failing=one_failure)
    rows = _csv_rows(root)

    def tier(row: dict[str, str]) -> int:
        if row["status"] != "ok":
            return 3
        if int(row["trade_count"]) < 20:
            return 1
        return 0 if row["objective_value"] != "" else 2

    tiers = {t: [r for r in rows if tier(r) == t] for t in range(4)}
    assert all(tiers.values()), {t: len(v) for t, v in tiers.items()}  # every tier has trials
    few_undefined = [r for r in tiers[1] if r["sharpe"] == ""]
    few_valued = sorted((r for r in tiers[1] if r["sharpe"] != ""), key=lambda r: -float(r["sharpe"]))
    assert few_valued and few_undefined
    expected = (
        sorted(tiers[0], key=lambda r: -float(r["objective_value"]))
        + few_valued
        + sorted(few_undefined, key=lambda r: r["trial_id"])
        + sorted(tiers[2], key=lambda r: r["trial_id"])
        + sorted(tiers[3], key=lambda r: r["trial_id"])
    )
    sweep = load_sweep(root)
    ranked = sorted(sweep.trials, key=sweep.rank)
    assert [t.trial_id for t in ranked] == [r["trial_id"] for r in expected]
    # and the trial table shows them in that order
    page = _page(root)
    shown = [row.split('"', 1)[0] for row in page.split('<tr data-trial="')[1:]]
    table = shown[: len(rows)]
    assert table == [r["trial_id"] for r in expected][: len(table)]


def test_the_verdict_says_windows_without_a_best_and_the_trials_tried(tmp_path: Path) -> None:
    """A window without an in-sample trial eligible to choose was counted nowhere and not said;
    the in-sample figures did not say how many trials they were the best of; a strategy whose
    warm-up is long against the test days was said on the console only."""
    write_sweep(tmp_path)
    meta = json.loads((tmp_path / "sweep.json").read_text())
    meta["verdict"]["ema_cross"].update(
        no_best_windows=1, in_sample_trials=24, out_of_sample_days=2.0, in_sample_days=4.0
    )
    meta["cold_starts"] = ["ema_cross: each out-of-sample run starts cold <on its test days>"]
    meta["short_windows"] = ["window 1: its test days (...) hold 660 of their 1,440 candles"]
    (tmp_path / "sweep.json").write_text(json.dumps(meta))
    text = _page(tmp_path)
    row = text.split('<tr data-strategy="ema_cross">', 1)[1].split("</tr>", 1)[0]
    assert "(1 window(s) without an in-sample trial eligible to choose: not counted)" in row
    assert '<td data-field="in_sample_trials" data-value="24">24</td>' in row
    assert "in-sample trials tried" in text
    assert 'data-field="out_of_sample_days" data-value="2.0"' in row
    assert 'data-field="in_sample_days" data-value="4.0"' in row
    # and a warm-up long against the test days, as the sweep warned at its start
    assert (
        '<p class="warn">ema_cross: each out-of-sample run starts cold &lt;on its test days&gt;.</p>' in text
    )
    # and a window whose data is short
    assert '<p class="warn">window 1: its test days (...) hold 660 of their 1,440 candles.</p>' in text
