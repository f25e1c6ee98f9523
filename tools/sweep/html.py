"""sweep.html: one self-contained page per sweep folder (plotly, its JavaScript inlined as in
report.html: it works offline), built from the folder's files only: `trials.csv`, `sweep.json` and
each charted trial's `metrics.json` and `final_report.json`. `write_sweep_html(DIR)` rebuilds it at
any time (`python -m tools.sweep.html DIR`).

What it shows, the verdict first:
- the verdict: each strategy's out-of-sample figures (every window's test period run with the
  parameters that scored best on its train period), then the in-sample ones;
- the walk-forward table and, per strategy, the best train trial's objective beside its test trial's
  per window (grouped bars);
- the objective over the parameter space, per strategy: the in-sample trials' objective against
  each parameter (a chart per parameter, a point per trial coloured by window), or a heatmap of the
  mean over the windows when exactly two parameters vary; failed trials and trials without an
  objective value are marked;
- the equity curves of the `TOP_CURVES` best in-sample trials and of every out-of-sample trial;
- the trials, best first (at most `MAX_TRIAL_ROWS`), each with the command that opens its run's
  report, and every failed trial with its error (at most `MAX_FAILED_ROWS`).

Charts are plain plotly figure dicts drawn by actors/recording/html_report.py's `_plot`, and the
page is written by its `_write` (atomic; secrets scrubbed; plotly.js copied in unparsed).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import html
import math
import re
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import orjson

from actors.recording.html_report import (
    CSS,
    SIGNED_STATISTICS,
    Page,
    _e,
    _fmt,
    _keep,
    _plot,
    _section,
    _write,
    _x,
)

SWEEP_HTML = "sweep.html"
TRIALS_CSV = "trials.csv"
SWEEP_JSON = "sweep.json"
TOP_CURVES = 5  # in-sample trials whose equity curve is drawn (the best by objective)
MAX_TRIAL_ROWS = 50  # rows of the trial table at most (the best by objective)
MAX_FAILED_ROWS = 200  # rows of the failed-trial table at most
# How a figure is shown (html_report's `_fmt`): the objectives and the trials' columns.
HOW = {
    "objective_value": "ratio",
    "net_pnl": "money",
    "return_pct": "pct",
    "sharpe": "ratio",
    "profit_factor": "ratio",
    "trade_count": "int",
    "max_drawdown_pct": "pct",
    "fees_paid": "money",
    "seconds": "seconds",
}
FIGURES = ("net_pnl", "return_pct", "sharpe", "profit_factor", "max_drawdown_pct", "fees_paid", "seconds")
PALETTE = ("#1f5fa8", "#d68910", "#11823b", "#7d3c98", "#c0392b", "#17a589", "#5d6d7e", "#b7950b")
IN_SAMPLE_COLOR, OUT_OF_SAMPLE_COLOR, FAILED_COLOR = "#7f9cc0", "#d68910", "#c0392b"
SWEEP_CSS = """
.verdict td, .verdict th { font-size: 1.05em; padding: 4px 10px; }
.verdict th.oos, td.oos { background: #fdf2e3; }
.warn { color: #c0392b; font-weight: bold; }
code { font-size: 0.85em; background: #f6f6f6; padding: 1px 4px; user-select: all; }
td.params { text-align: left; white-space: normal; max-width: 28em; }
td.error { text-align: left; white-space: normal; max-width: 50em; color: #c0392b; }
"""


@attrs.frozen
class Trial:
    """A row of trials.csv, typed: numbers are None where the file leaves them empty (undefined)."""

    trial_id: str
    strategy: str
    window: int | None
    phase: str  # "train" (in-sample) or "test" (out-of-sample)
    start: str
    end: str
    status: str
    error: str
    value: float | None  # objective_value
    trade_count: int | None
    figures: dict[str, float | None]  # FIGURES
    run_folder: str  # relative to the sweep folder
    params: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def label(self) -> str:
        """The trial on a chart (escaped: plotly reads its text as HTML)."""
        window = self.window if self.window is not None else "?"
        return _t(f"{self.strategy} w{window} {_params_text(self.params)}")


@attrs.frozen
class Sweep:
    """What the page is made of, read from a sweep folder."""

    path: Path
    name: str
    objective: str
    min_trades: int
    trials: list[Trial]
    windows: list[dict[str, Any]]  # sweep.json's
    verdict: dict[str, dict[str, Any]]  # sweep.json's
    strategies: list[str]  # in the order trials.csv first names them
    sampler: str  # sweep.json's ("" when it names none)
    # sweep.json's warnings: windows whose data is short, strategies whose warm-up is long
    warnings: list[str] = attrs.Factory(list)

    def of(self, strategy: str, phase: str) -> list[Trial]:
        return [t for t in self.trials if t.strategy == strategy and t.phase == phase]

    def rank(self, trial: Trial) -> tuple[int, float, str]:
        """Best first: ok trials with an objective value and at least `min_trades` trades, by
        value; then those with fewer trades; then those without a value; failed ones last."""
        if not trial.ok:
            return (3, 0.0, trial.trial_id)
        if trial.trade_count is not None and trial.trade_count < self.min_trades:
            # its objective_value is empty (never the best): ranked by the figure itself (an
            # audit found this tier never applied: they sat among the undefined ones, unordered)
            figure = trial.figures.get(self.objective)
            return (1, -figure if figure is not None else math.inf, trial.trial_id)
        if trial.value is None:
            return (2, 0.0, trial.trial_id)
        return (0, -trial.value, trial.trial_id)


# --- reading ---------------------------------------------------------------------------------------------


def load_sweep(sweep_dir: Path) -> Sweep:
    """The sweep folder's trials.csv (required) and sweep.json (the walk-forward and the verdict;
    a page without them when missing or unreadable)."""
    with (sweep_dir / TRIALS_CSV).open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    trials = [_trial(row) for row in rows]
    meta: dict[str, Any] = {}
    with contextlib.suppress(OSError, orjson.JSONDecodeError):
        loaded = orjson.loads((sweep_dir / SWEEP_JSON).read_bytes())
        meta = loaded if isinstance(loaded, dict) else {}
    windows = [w for w in meta.get("windows") or [] if isinstance(w, dict)]
    verdict = {k: v for k, v in (meta.get("verdict") or {}).items() if isinstance(v, dict)}
    strategies = list(dict.fromkeys([t.strategy for t in trials] + list(verdict)))
    objective = str(meta.get("objective") or "") or (rows[0].get("objective") or "" if rows else "")
    min_trades = meta.get("min_trades")
    return Sweep(
        path=sweep_dir,
        name=str(meta.get("name") or sweep_dir.name),
        objective=objective or "objective",
        min_trades=min_trades if isinstance(min_trades, int) else 0,
        trials=trials,
        windows=windows,
        verdict=verdict,
        strategies=strategies,
        sampler=str(meta.get("sampler") or ""),
        warnings=[
            line
            for key in ("short_windows", "cold_starts")
            for line in meta.get(key) or []
            if isinstance(line, str)
        ],
    )


def _trial(row: dict[str, str]) -> Trial:
    params: dict[str, Any] = {}
    with contextlib.suppress(ValueError):
        loaded = orjson.loads(row.get("params") or "")
        if isinstance(loaded, dict):
            params = loaded
    if not params:  # the columns, where the JSON is missing
        params = {
            k.removeprefix("param."): _scalar(v) for k, v in row.items() if k.startswith("param.") and v != ""
        }
    window, trades = _number(row.get("window")), _number(row.get("trade_count"))
    return Trial(
        trial_id=row.get("trial_id") or "",
        strategy=row.get("strategy") or "",
        window=int(window) if window is not None else None,
        phase=row.get("phase") or "",
        start=row.get("start") or "",
        end=row.get("end") or "",
        status=row.get("status") or "",
        error=row.get("error") or "",
        value=_number(row.get("objective_value")),
        trade_count=int(trades) if trades is not None else None,
        figures={name: _number(row.get(name)) for name in FIGURES},
        run_folder=row.get("run_folder") or "",
        params=params,
    )


def _number(text: Any) -> float | None:
    """A number of the CSV or JSON; None when empty, not a number or not finite (undefined)."""
    if text is None or text == "" or isinstance(text, bool):
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _scalar(text: str) -> Any:
    """A parameter's value from its CSV column: a JSON scalar (number, true/false) or the text."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    return value if isinstance(value, int | float | str | bool) else text


def _epoch(text: Any) -> float | None:
    """ISO-8601 (UTC when it names no zone) in seconds since the epoch; None when it is not one."""
    if not isinstance(text, str) or not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _json(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, orjson.JSONDecodeError):
        loaded = orjson.loads(path.read_bytes())
        if isinstance(loaded, dict):
            return loaded
    return {}


def equity_points(sweep_dir: Path, trial: Trial) -> list[tuple[float, float]]:
    """A trial's equity over time (epoch seconds, equity): its starting equity at the run's start
    (final_report.json), then metrics.json's rows (a row's `ts`, else the start plus `elapsed_s`).
    Empty when the run folder has no readable metrics."""
    if not trial.run_folder:
        return []
    folder = sweep_dir / trial.run_folder
    rows = _json(folder / "metrics.json").get("rows") or []
    report = _json(folder / "final_report.json")
    start = _epoch(report.get("started_at"))
    if start is None:
        start = _epoch(trial.start)
    points: list[tuple[float, float]] = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        equity = _number(row.get("equity"))
        ts = _epoch(row.get("ts"))
        elapsed = _number(row.get("elapsed_s"))
        if ts is None and start is not None and elapsed is not None:
            ts = start + elapsed
        if equity is not None and ts is not None:
            points.append((ts, equity))
    first = _number(report.get("starting_equity"))
    if points and start is not None and first is not None and start < points[0][0]:
        points.insert(0, (start, first))
    return points


# --- the page ---------------------------------------------------------------------------------------------


def write_sweep_html(sweep_dir: Path) -> Path:
    """Write `sweep_dir/sweep.html` (atomically) from the sweep folder's files; its path. Raises
    when trials.csv cannot be read (the caller says so)."""
    sweep = load_sweep(sweep_dir)
    out = sweep_dir / SWEEP_HTML
    _write(out, sweep_page(sweep))
    return out


def sweep_page(sweep: Sweep) -> Page:
    slugs = _slugs(sweep.strategies)
    sections = [
        _summary(sweep),
        _section("Verdict: out of sample", _verdict_table(sweep)),
        _section("Walk-forward: in sample against out of sample, per window", _walk_forward(sweep, slugs)),
        _section(
            f"{sweep.objective} over the parameter space (in sample)",
            "".join(_space_chart(sweep, s, slugs[s]) for s in sweep.strategies),
        ),
        _section("Equity curves", _equity_charts(sweep)),
        _section("Trials", _trial_table(sweep)),
        _section("Failed trials", _failed_table(sweep)),
        _section("Definitions", _definitions(sweep)),
    ]
    title = f"Sweep {sweep.name}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<title>{_e(title)}</title><style>{CSS}{SWEEP_CSS}</style><script type="text/javascript">',
        f"</script></head><body><h1>{_e(title)}</h1>{''.join(sections)}"
        f"<footer>Written {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} from the sweep "
        f"folder's {TRIALS_CSV} and {SWEEP_JSON} and the trials' metrics.json. Times are UTC.</footer>"
        "</body></html>\n",
    )


def _slugs(strategies: Sequence[str]) -> dict[str, str]:
    """Each strategy's part of its charts' ids: its name in [A-Za-z0-9_.-], unique."""
    slugs: dict[str, str] = {}
    for name in strategies:
        slug = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "strategy"
        while slug in slugs.values():
            slug += "_"
        slugs[name] = slug
    return slugs


def _summary(sweep: Sweep) -> str:
    ok = sum(t.ok for t in sweep.trials)
    failed = len(sweep.trials) - ok
    phases = {p: sum(t.phase == p for t in sweep.trials) for p in ("train", "test")}
    items = [
        ("objective", f"{sweep.objective} (higher is better)"),
        ("min trades", f"{sweep.min_trades:,} (a train trial with fewer cannot be a window's best)"),
        (
            "trials",
            f"{len(sweep.trials):,}: {ok:,} ok, {failed:,} failed "
            f"({phases['train']:,} in sample, {phases['test']:,} out of sample)",
        ),
        ("windows", f"{len(sweep.windows):,}" if sweep.windows else "-"),
        ("strategies", ", ".join(sweep.strategies) or "-"),
        *([("sampler", str(sweep.sampler))] if sweep.sampler else []),
    ]
    for strategy in sweep.strategies:
        items.append((f"parameters of {strategy}", _grid_text(sweep.of(strategy, "train")) or "-"))
    rows = "".join(f'<tr><th>{_e(k)}</th><td class="text">{_e(v)}</td></tr>' for k, v in items)
    warnings = []
    for strategy in sweep.strategies:
        mine = [t for t in sweep.trials if t.strategy == strategy]
        if mine and not any(t.ok for t in mine):
            warnings.append(f"Every trial of {strategy} failed ({len(mine)}): see the failed trials below.")
    if not sweep.windows:
        warnings.append(f"No walk-forward windows: {SWEEP_JSON} is missing, unreadable or has none.")
    warnings += [f"{line}." for line in sweep.warnings]
    notes = "".join(f'<p class="warn">{_e(w)}</p>' for w in warnings)
    return f'<section id="summary"><table>{rows}</table>{notes}</section>'


def _grid_text(trials: Sequence[Trial]) -> str:
    """The values each parameter took: `fast_period: 5, 9; slow_period: 20`."""
    return "; ".join(
        f"{name}: {', '.join(_value_text(v) for v in values)}" for name, values in _values(trials).items()
    )


def _values(trials: Iterable[Trial]) -> dict[str, list[Any]]:
    """Each parameter's distinct values among the trials, sorted (numbers before text)."""
    seen: dict[str, dict[str, Any]] = {}
    for trial in trials:
        for name, value in trial.params.items():
            seen.setdefault(name, {}).setdefault(_value_text(value), value)
    return {name: sorted(values.values(), key=_value_order) for name, values in seen.items()}


def _value_order(value: Any) -> tuple[int, float, str]:
    number = _number(value) if isinstance(value, int | float) else None
    return (0, number, "") if number is not None else (1, 0.0, _value_text(value))


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return f"{value:.1f}"
    return orjson.dumps(value).decode() if isinstance(value, list | dict) else str(value)


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_value_text(v)}" for k, v in params.items()) or "(no parameters)"


def _t(text: str) -> str:
    """Text for a chart: escaped, as plotly reads it as HTML (`<br>` and the like; entities)."""
    return html.escape(text, quote=False)


def _period(start: Any, end: Any) -> str:
    def day(text: Any) -> str:
        ts = _epoch(text)
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) if ts is not None else "?"

    return f"{day(start)} → {day(end)}"


def _cell(field: str, value: Any, how: str, extra: str = "", signed: bool = False) -> str:
    """A figure's cell: shown rounded for people, its exact value in `data-value` ("" when
    undefined), green or red when a signed figure (a PnL, a return; `signed`) is positive or
    negative."""
    number = _number(value)
    classes = [extra] if extra else []
    if number and (signed or any(field.endswith(name) for name in SIGNED_STATISTICS)):
        classes.append("pos" if number > 0 else "neg")
    cls = f' class="{" ".join(classes)}"' if classes else ""
    raw = "" if number is None else repr(int(number) if how == "int" else number)
    shown = _fmt(int(number) if how == "int" and number is not None else number, how)
    return f'<td data-field="{_e(field)}" data-value="{raw}"{cls}>{_e(shown)}</td>'


def _objective_how(sweep: Sweep) -> str:
    return HOW.get(sweep.objective, "ratio")


# --- the verdict and the walk-forward ----------------------------------------------------------------------


def _entry(window: dict[str, Any], key: str, strategy: str) -> dict[str, Any]:
    """A window's `best` or `out_of_sample` entry of a strategy ({} when it has none)."""
    table = window.get(key)
    entry = table.get(strategy) if isinstance(table, dict) else None
    return entry if isinstance(entry, dict) else {}


def _verdict_table(sweep: Sweep) -> str:
    if not sweep.verdict:
        return f'<p class="note">No verdict ({SWEEP_JSON} has none).</p>'
    head = (
        "<tr><th>strategy</th>"
        '<th class="oos">out-of-sample net PnL</th><th class="oos">out-of-sample trades</th>'
        '<th class="oos">windows profitable out of sample</th>'
        '<th class="oos">days out of sample</th>'
        "<th>windows</th><th>in-sample net PnL</th><th>days in sample</th><th>in-sample trials tried</th></tr>"
    )

    def order(name: str) -> tuple[bool, float]:
        # a strategy judged in no window last (found by an audit: its 0.00 ranked above losses)
        v = sweep.verdict[name]
        pnl = _number(v.get("out_of_sample_net_pnl"))
        return (pnl is None or _number(v.get("windows")) == 0, -(pnl or 0.0))

    rows = []
    for name in sorted(sweep.verdict, key=order):
        v = sweep.verdict[name]
        pnls = [_number(_entry(w, "out_of_sample", name).get("net_pnl")) for w in sweep.windows]
        known = [p for p in pnls if p is not None]
        profitable = f"{sum(p > 0 for p in known)} of {len(known)}" if known else "-"
        judged = _number(v.get("windows")) != 0
        failed = _number(v.get("failed_windows")) or 0
        flag = "" if judged else ' <span class="warn">(no window had a best trial: nothing judged)</span>'
        if failed:
            flag += f' <span class="warn">({failed:g} out-of-sample run(s) failed: not counted)</span>'
        no_best = _number(v.get("no_best_windows")) or 0
        if no_best and judged:
            flag += (
                f' <span class="warn">({no_best:g} window(s) without an in-sample trial eligible to '
                "choose: not counted)</span>"
            )
        rows.append(
            f'<tr data-strategy="{_e(name)}"><td class="text"><b>{_e(name)}</b>{flag}</td>'
            + _cell("out_of_sample_net_pnl", v.get("out_of_sample_net_pnl"), "money", "oos")
            + _cell("out_of_sample_trades", v.get("out_of_sample_trades"), "int", "oos")
            + f'<td class="oos">{_e(profitable)}</td>'
            + _cell("out_of_sample_days", v.get("out_of_sample_days"), "ratio", "oos")
            + _cell("windows", v.get("windows"), "int")
            + _cell("in_sample_net_pnl", v.get("in_sample_net_pnl"), "money")
            + _cell("in_sample_days", v.get("in_sample_days"), "ratio")
            + _cell("in_sample_trials", v.get("in_sample_trials"), "int")
            + "</tr>"
        )
    note = (
        '<p class="note">Out of sample: each window\'s test period, run with the parameters that '
        "scored best on its train period; summed over the windows. In sample: the same best train "
        "trials' own net PnL (chosen on it: optimistic by construction, the more so the more "
        "trials were tried), over their train days: compare the two per day.</p>"
    )
    return f'<table class="verdict" id="verdict">{head}{"".join(rows)}</table>{note}'


def _walk_forward(sweep: Sweep, slugs: dict[str, str]) -> str:
    if not sweep.windows:
        return f'<p class="note">No windows ({SWEEP_JSON} is missing or has none).</p>'
    how = _objective_how(sweep)
    signed = sweep.objective in SIGNED_STATISTICS
    head = (
        "<tr><th>strategy</th><th>window</th>"
        f'<th class="oos">test period</th><th class="oos">out-of-sample objective ({_e(sweep.objective)})</th>'
        '<th class="oos">out-of-sample net PnL</th><th class="oos">out-of-sample trades</th>'
        f"<th>in-sample objective (best)</th><th>best parameters</th><th>train period</th>"
        "<th>trials (best, test)</th></tr>"
    )
    rows, charts = [], []
    for strategy in sweep.strategies:
        for w in sweep.windows:
            index = w.get("index")
            best = _entry(w, "best", strategy)
            oos = _entry(w, "out_of_sample", strategy)
            train, test = w.get("train") or {}, w.get("test") or {}
            params = best.get("params")
            ids = " / ".join(str(x) for x in (best.get("trial_id"), oos.get("trial_id")) if x)
            rows.append(
                f'<tr data-strategy="{_e(strategy)}" data-window="{_e(index)}">'
                f'<td class="text">{_e(strategy)}</td><td>{_e(index)}</td>'
                f'<td class="oos">{_e(_period(test.get("start"), test.get("end")))}</td>'
                + _cell("out_of_sample.objective_value", oos.get("objective_value"), how, "oos", signed)
                + _cell("out_of_sample.net_pnl", oos.get("net_pnl"), "money", "oos")
                + _cell("out_of_sample.trade_count", oos.get("trade_count"), "int", "oos")
                + _cell("best.objective_value", best.get("objective_value"), how, signed=signed)
                + f'<td class="params">{_e(_params_text(params) if isinstance(params, dict) else "-")}</td>'
                + f"<td>{_e(_period(train.get('start'), train.get('end')))}</td>"
                + f'<td class="text">{_e(ids or "-")}</td></tr>'
            )
        charts.append(_walk_forward_chart(sweep, strategy, slugs[strategy]))
    table = f'<div class="scroll"><table id="walk-forward">{head}{"".join(rows)}</table></div>'
    return table + "".join(charts)


def _walk_forward_chart(sweep: Sweep, strategy: str, slug: str) -> str:
    labels, hover_in, hover_out = [], [], []
    ins: list[float | None] = []
    outs: list[float | None] = []
    for w in sweep.windows:
        best = _entry(w, "best", strategy)
        oos = _entry(w, "out_of_sample", strategy)
        labels.append(f"window {w.get('index')}")
        ins.append(_number(best.get("objective_value")))
        outs.append(_number(oos.get("objective_value")))
        params = best.get("params")
        text = _t(_params_text(params)) if isinstance(params, dict) else "no best trial"
        train, test = w.get("train") or {}, w.get("test") or {}
        hover_in.append(f"train {_period(train.get('start'), train.get('end'))}<br>{text}")
        hover_out.append(
            f"test {_period(test.get('start'), test.get('end'))}<br>{text}<br>"
            f"net PnL {_fmt(_number(oos.get('net_pnl')), 'money')}, trades {oos.get('trade_count', '-')}"
        )
    traces = []
    missing = []
    for name, ys, hover, color in (
        ("in sample (best train trial)", ins, hover_in, IN_SAMPLE_COLOR),
        ("out of sample (test trial)", outs, hover_out, OUT_OF_SAMPLE_COLOR),
    ):
        if any(y is not None for y in ys):
            traces.append(
                {
                    "type": "bar",
                    "name": name,
                    "x": labels,
                    "y": ys,
                    "text": hover,
                    "hoverinfo": "text+y+name",
                    "textposition": "none",
                    "marker": {"color": color},
                }
            )
        else:
            missing.append(name.split(" (")[0])
    if not traces:
        return f'<p class="note">{_e(strategy)}: no {_e(sweep.objective)} in any window.</p>'
    title = _t(f"{strategy}: {sweep.objective} per window")
    if missing:
        title += f" (no {' nor '.join(missing)} value: undefined or failed)"
    layout = {
        "title": {"text": title},
        "height": 340,
        "barmode": "group",
        "legend": {"orientation": "h"},
        "xaxis": {"type": "category"},
        "yaxis": {"title": {"text": sweep.objective}, "zeroline": True},
    }
    return _plot(f"chart-wf-{slug}", traces, layout)


# --- the parameter space -----------------------------------------------------------------------------------


def _space_chart(sweep: Sweep, strategy: str, slug: str) -> str:
    train = sweep.of(strategy, "train")
    valued = [t for t in train if t.ok and t.value is not None]
    if not valued:
        failed = sum(not t.ok for t in train)
        return (
            f'<h3>{_e(strategy)}</h3><p class="note">No in-sample trial of {_e(strategy)} has a '
            f"{_e(sweep.objective)} ({len(train)} trials, {failed} failed).</p>"
        )
    values = _values(train)
    grid = [name for name, vs in values.items() if len(vs) > 1]
    if len(grid) == 2:
        return _heatmap(sweep, strategy, slug, train, grid[0], grid[1], values)
    return _scatter(sweep, strategy, slug, train, grid or list(values))


def _unvalued(train: Sequence[Trial], min_trades: int) -> list[tuple[Trial, str, str]]:
    """The in-sample trials without an objective value: (trial, legend name, hover text)."""
    marks = []
    for t in train:
        if not t.ok:
            marks.append((t, "failed", f"{t.label}<br>failed: {_t(t.error or t.status or '?')}"))
        elif t.value is None:
            few = t.trade_count is not None and t.trade_count < min_trades
            why = f"{t.trade_count} trades, fewer than {min_trades}" if few else "the objective is undefined"
            marks.append((t, "no value", f"{t.label}<br>no value: {why}"))
    return marks


MARK_STYLE = {
    "failed": {"symbol": "x", "size": 11, "color": FAILED_COLOR},
    "no value": {"symbol": "circle-open", "size": 10, "color": "#888"},
}


def _scatter(sweep: Sweep, strategy: str, slug: str, train: Sequence[Trial], names: list[str]) -> str:
    """One chart per parameter side by side (a shared objective axis), a point per trial coloured
    by window; trials without a value drawn at the lowest value."""
    valued = [t for t in train if t.ok and t.value is not None]
    floor = min(t.value for t in valued if t.value is not None)
    axes = names or ["window"]
    against = "against each parameter that varies" if names else "per window (no parameter varies)"
    windows = sorted({t.window for t in train}, key=lambda w: (w is None, w or 0))
    traces: list[dict[str, Any]] = []
    layout: dict[str, Any] = {
        "title": {"text": _t(f"{strategy}: {sweep.objective} of each in-sample trial, {against}")},
        "height": 380,
        "yaxis": {"title": {"text": sweep.objective}},
    }
    gap = 0.04 if len(axes) > 1 else 0.0
    for k, name in enumerate(axes):
        axis = "x" if k == 0 else f"x{k + 1}"

        raw = [_param(t, name) for t in train]
        linear = bool(names) and all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in raw if x is not None
        )

        def x_of(t: Trial, name: str = name, linear: bool = linear) -> Any:
            x = _param(t, name)
            return x if linear or x is None else _t(_value_text(x))

        layout[f"xaxis{k + 1 if k else ''}"] = {
            "domain": [
                k / len(axes) + (gap if k else 0),
                (k + 1) / len(axes) - (gap if k < len(axes) - 1 else 0),
            ],
            "anchor": "y",
            "title": {"text": _t(name)},
            "type": "linear" if linear else "category",
        }
        for n, window in enumerate(windows):
            mine = [t for t in valued if t.window == window and x_of(t) is not None]
            if not mine:
                continue
            traces.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "name": f"window {window}",
                    "legendgroup": f"w{window}",
                    "showlegend": k == 0,
                    "x": [x_of(t) for t in mine],
                    "y": [t.value for t in mine],
                    "text": [t.label for t in mine],
                    "hoverinfo": "text+y",
                    "marker": {"size": 9, "color": PALETTE[n % len(PALETTE)], "opacity": 0.85},
                    "xaxis": axis,
                    "yaxis": "y",
                }
            )
        for kind, style in MARK_STYLE.items():
            marks = [
                (t, text)
                for t, mark, text in _unvalued(train, sweep.min_trades)
                if mark == kind and x_of(t) is not None
            ]
            if marks:
                traces.append(
                    {
                        "type": "scatter",
                        "mode": "markers",
                        "name": f"{kind} (drawn at the lowest value)",
                        "legendgroup": kind,
                        "showlegend": k == 0,
                        "x": [x_of(t) for t, _ in marks],
                        "y": [floor] * len(marks),
                        "text": [text for _, text in marks],
                        "hoverinfo": "text",
                        "marker": style,
                        "xaxis": axis,
                        "yaxis": "y",
                    }
                )
    return _plot(f"chart-space-{slug}", traces, layout)


def _param(trial: Trial, name: str) -> Any:
    """A trial's value of a parameter (its window on the axis of a strategy without parameters)."""
    if name == "window" and name not in trial.params:
        return trial.window
    return trial.params.get(name)


def _heatmap(
    sweep: Sweep,
    strategy: str,
    slug: str,
    train: Sequence[Trial],
    x_name: str,
    y_name: str,
    values: dict[str, list[Any]],
) -> str:
    """The mean over the windows of each grid point's in-sample objective; trials without a value
    marked on their cell."""
    xs = [_t(_value_text(v)) for v in values[x_name]]
    ys = [_t(_value_text(v)) for v in values[y_name]]
    cells: dict[tuple[str, str], list[Trial]] = {}
    for t in train:
        if x_name in t.params and y_name in t.params:
            cells.setdefault(
                (_t(_value_text(t.params[x_name])), _t(_value_text(t.params[y_name]))), []
            ).append(t)
    z: list[list[float | None]] = []
    text: list[list[str]] = []
    for y in ys:
        z_row: list[float | None] = []
        text_row: list[str] = []
        for x in xs:
            mine = sorted(cells.get((x, y), []), key=lambda t: (t.window is None, t.window or 0))
            got = [t.value for t in mine if t.ok and t.value is not None]
            z_row.append(math.fsum(got) / len(got) if got else None)
            lines = [f"{_t(x_name)}={x}, {_t(y_name)}={y}"]
            if got:
                lines.append(
                    f"mean {_fmt(z_row[-1], _objective_how(sweep))} over {len(got)} of {len(mine)} windows"
                )
            for t in mine:
                shown = _fmt(t.value, _objective_how(sweep)) if t.ok else f"failed: {_t(t.error or t.status)}"
                lines.append(f"window {t.window}: {shown}")
            z_row_text = "<br>".join(lines)
            text_row.append(z_row_text)
        z.append(z_row)
        text.append(text_row)
    numbers = [v for row in z for v in row if v is not None]
    heat: dict[str, Any] = {
        "type": "heatmap",
        "name": sweep.objective,
        "x": xs,
        "y": ys,
        "z": z,
        "text": text,
        "hoverinfo": "text",
        "texttemplate": "%{z:.4g}",
        "colorscale": [[0.0, "#c0392b"], [0.5, "#f4f1e8"], [1.0, "#11823b"]],  # higher is better
        "colorbar": {"title": {"text": sweep.objective}},
    }
    middle = 1.0 if sweep.objective == "profit_factor" else 0.0
    if numbers and min(numbers) < middle < max(numbers):
        heat["zmid"] = middle
    traces: list[dict[str, Any]] = [heat]
    for kind, style in MARK_STYLE.items():
        marks = [
            (t, text)
            for t, mark, text in _unvalued(train, sweep.min_trades)
            if mark == kind and x_name in t.params and y_name in t.params
        ]
        if marks:
            traces.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "name": kind,
                    "x": [_t(_value_text(t.params[x_name])) for t, _ in marks],
                    "y": [_t(_value_text(t.params[y_name])) for t, _ in marks],
                    "text": [text for _, text in marks],
                    "hoverinfo": "text",
                    "marker": {**style, "size": 16, "line": {"width": 2}},
                }
            )
    layout = {
        "title": {"text": _t(f"{strategy}: {sweep.objective}, mean over the windows' in-sample trials")},
        "height": 420,
        "showlegend": len(traces) > 1,
        "legend": {"orientation": "h"},
        "xaxis": {
            "type": "category",
            "title": {"text": _t(x_name)},
            "categoryorder": "array",
            "categoryarray": xs,
        },
        "yaxis": {
            "type": "category",
            "title": {"text": _t(y_name)},
            "categoryorder": "array",
            "categoryarray": ys,
        },
    }
    return _plot(f"chart-space-{slug}", traces, layout)


# --- equity curves -----------------------------------------------------------------------------------------


def _equity_charts(sweep: Sweep) -> str:
    ranked = sorted(
        (t for t in sweep.trials if t.phase == "train" and t.ok and t.value is not None), key=sweep.rank
    )
    top = ranked[:TOP_CURVES]
    tests = sorted(
        (t for t in sweep.trials if t.phase == "test" and t.ok),
        key=lambda t: (sweep.strategies.index(t.strategy), t.window is None, t.window or 0),
    )
    how = _objective_how(sweep)
    parts = []
    traces: list[dict[str, Any]] = []
    unread: list[str] = []
    for n, t in enumerate(top, 1):
        trace = _curve_trace(sweep, t, f"#{n} {t.label}", PALETTE[(n - 1) % len(PALETTE)])
        if trace is None:
            unread.append(t.trial_id)
            continue
        trace["text"] = f"#{n} {t.label}: {sweep.objective} {_fmt(t.value, how)}"
        traces.append(trace)
    if traces:
        layout = _equity_layout(f"The {len(top)} best in-sample trials by {sweep.objective}")
        parts.append(_plot("chart-equity-train", traces, layout))
    else:
        parts.append('<p class="note">No in-sample trial to draw (none ok with an objective value).</p>')
    traces = []
    shown: set[str] = set()
    for t in tests:
        color = PALETTE[sweep.strategies.index(t.strategy) % len(PALETTE)]
        trace = _curve_trace(sweep, t, _t(t.strategy), color)
        if trace is None:
            unread.append(t.trial_id)
            continue
        trace.update(
            legendgroup=t.strategy,
            showlegend=t.strategy not in shown,
            text=f"{t.label}: {sweep.objective} {_fmt(t.value, how)}",
        )
        shown.add(t.strategy)
        traces.append(trace)
    if traces:
        layout = _equity_layout("Every out-of-sample trial (each window's test period)")
        layout["shapes"] = [
            {
                "type": "rect",
                "xref": "x",
                "yref": "paper",
                "x0": _x(start),
                "x1": _x(end),
                "y0": 0,
                "y1": 1,
                "fillcolor": "#f0f0f0" if n % 2 else "#fafafa",
                "line": {"width": 0},
                "layer": "below",
            }
            for n, w in enumerate(sweep.windows)
            if (start := _epoch((w.get("test") or {}).get("start"))) is not None
            and (end := _epoch((w.get("test") or {}).get("end"))) is not None
        ]
        parts.append(_plot("chart-equity-test", traces, layout))
    else:
        parts.append('<p class="note">No out-of-sample trial to draw (none ran ok).</p>')
    if unread:
        parts.append(
            f'<p class="note">No readable metrics.json for {len(unread)} trial(s): '
            f"{_e(', '.join(unread[:20]))}{' …' if len(unread) > 20 else ''}.</p>"
        )
    return "".join(parts)


def _curve_trace(sweep: Sweep, trial: Trial, name: str, color: str) -> dict[str, Any] | None:
    points = equity_points(sweep.path, trial)
    if not points:
        return None
    equity = [e for _, e in points]
    keep = _keep(len(points), [equity])
    return {
        "type": "scatter",
        "mode": "lines",
        "name": name,
        "x": [_x(points[i][0]) for i in keep],
        "y": [equity[i] for i in keep],
        "hoverinfo": "text+x+y",
        "line": {"color": color, "width": 1.5},
    }


def _equity_layout(title: str) -> dict[str, Any]:
    return {
        "title": {"text": title},
        "height": 420,
        "legend": {"orientation": "h"},
        "xaxis": {"type": "date"},
        "yaxis": {"title": {"text": "equity (USDT)"}, "tickformat": ",.0f", "hoverformat": ",.2f"},
    }


# --- the trial tables --------------------------------------------------------------------------------------


def _command(sweep: Sweep, trial: Trial) -> str:
    """The command that (re)builds and names the trial's report.html, and a link to it when there."""
    if not trial.run_folder:
        return "<td></td>"
    folder = sweep.path / trial.run_folder
    command = f"python -m tools.report {shlex.quote(str(folder.absolute()))}"
    link = ""
    if (folder / "report.html").is_file():
        link = f' <a href="{_e(Path(trial.run_folder).as_posix())}/report.html">report</a>'
    return f'<td class="text"><code>{_e(command)}</code>{link}</td>'


def _trial_table(sweep: Sweep) -> str:
    if not sweep.trials:
        return f'<p class="note">No trials in {TRIALS_CSV}.</p>'
    ranked = sorted(sweep.trials, key=sweep.rank)
    how = _objective_how(sweep)
    head = (
        "<tr><th>#</th><th>trial</th><th>strategy</th><th>window</th><th>phase</th><th>status</th>"
        f"<th>objective ({_e(sweep.objective)})</th><th>net PnL</th><th>return</th><th>sharpe</th>"
        "<th>profit factor</th><th>trades</th><th>max drawdown</th><th>fees</th><th>time</th>"
        "<th>parameters</th><th>open its run</th></tr>"
    )
    rows = []
    for n, t in enumerate(ranked[:MAX_TRIAL_ROWS], 1):
        status = "ok" if t.ok else f"{t.status or 'failed'}"
        rows.append(
            f'<tr data-trial="{_e(t.trial_id)}"><td>{n}</td><td class="text">{_e(t.trial_id)}</td>'
            f'<td class="text">{_e(t.strategy)}</td><td>{_e(t.window if t.window is not None else "-")}</td>'
            f'<td class="text">{_e(t.phase)}</td>'
            f'<td class="text{"" if t.ok else " error"}" title="{_e(t.error)}">{_e(status)}</td>'
            + _cell("objective_value", t.value, how, signed=sweep.objective in SIGNED_STATISTICS)
            + "".join(_cell(name, t.figures[name], HOW[name]) for name in FIGURES[:4])
            + _cell("trade_count", t.trade_count, "int")
            + "".join(_cell(name, t.figures[name], HOW[name]) for name in FIGURES[4:])
            + f'<td class="params">{_e(_params_text(t.params))}</td>'
            + _command(sweep, t)
            + "</tr>"
        )
    note = (
        f'<p class="note">The best {MAX_TRIAL_ROWS:,} of {len(ranked):,} trials by {_e(sweep.objective)} '
        f"(in and out of sample; trials with fewer than {sweep.min_trades:,} trades after the others, "
        f"failed trials last); every trial is in {TRIALS_CSV}.</p>"
        if len(ranked) > MAX_TRIAL_ROWS
        else f'<p class="note">Every trial, best first by {_e(sweep.objective)} (trials with fewer than '
        f"{sweep.min_trades:,} trades after the others, failed trials last).</p>"
    )
    return f'{note}<div class="scroll"><table id="trials">{head}{"".join(rows)}</table></div>'


def _failed_table(sweep: Sweep) -> str:
    failed = [t for t in sweep.trials if not t.ok]
    if not failed:
        return '<p class="note">No trial failed.</p>'
    head = (
        "<tr><th>trial</th><th>strategy</th><th>window</th><th>phase</th><th>parameters</th>"
        "<th>error</th><th>open its run</th></tr>"
    )
    rows = "".join(
        f'<tr data-trial="{_e(t.trial_id)}"><td class="text">{_e(t.trial_id)}</td>'
        f'<td class="text">{_e(t.strategy)}</td><td>{_e(t.window if t.window is not None else "-")}</td>'
        f'<td class="text">{_e(t.phase)}</td><td class="params">{_e(_params_text(t.params))}</td>'
        f'<td class="error">{_e(t.error or t.status or "?")}</td>' + _command(sweep, t) + "</tr>"
        for t in failed[:MAX_FAILED_ROWS]
    )
    note = (
        f'<p class="note">The first {MAX_FAILED_ROWS:,} of {len(failed):,} failed trials; every one is in '
        f"{TRIALS_CSV}.</p>"
        if len(failed) > MAX_FAILED_ROWS
        else f'<p class="note">{len(failed):,} of {len(sweep.trials):,} trials failed.</p>'
    )
    return f'{note}<div class="scroll"><table id="failed">{head}{rows}</table></div>'


def _definitions(sweep: Sweep) -> str:
    return (
        '<p class="note">A trial is one backtest of one strategy with one parameter set over one '
        "window's period. In sample (train): every parameter set over the window's train period; the "
        f"best by {_e(sweep.objective)} among those with at least {sweep.min_trades:,} trades is run "
        "again over the window's test period, which it never saw: out of sample (test). The verdict "
        "sums the out-of-sample trials. An empty figure is undefined (a profit factor without a "
        "losing trade, a Sharpe ratio of too few returns or of less than a day). Equity curves: at most "
        f"{TOP_CURVES} in-sample trials, each from its run folder's metrics.json (a point per "
        f"heartbeat). The trial table shows at most {MAX_TRIAL_ROWS:,} rows. `python -m tools.report "
        "RUN` (re)builds a trial's report.html (its trades, fills and statistics).</p>"
    )


# --- the command ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.sweep.html", description=f"Rebuild a sweep folder's {SWEEP_HTML}."
    )
    parser.add_argument("sweep_dir", type=Path, metavar="DIR", help=f"a sweep folder (with {TRIALS_CSV})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.sweep_dir / TRIALS_CSV).is_file():
        print(f"tools.sweep.html: {args.sweep_dir} is not a sweep folder (no {TRIALS_CSV})", file=sys.stderr)
        return 2
    print(write_sweep_html(args.sweep_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
