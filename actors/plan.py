"""What kind of session to run: a new live session, a resumed one, a replay or a backtest.

The CLI turns flags into a `Plan`; the session reads it. Finding the session to resume and the
recording to replay happens here, before anything starts, so that every problem is a clear message
and exit code 2, never a half-started session.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any, Literal

import attrs
from loguru import logger

from actors.feeds.funding import FundingRates
from actors.lock import SessionLocked, is_locked
from actors.recording import checkpoint
from actors.recording.abandon import close_and_warn, has_checkpoint
from actors.recording.html_report import write_report_html
from actors.secrets import STATE_KEY

Mode = Literal["live", "replay", "backtest"]


class PlanError(Exception):
    """The flags ask for something that cannot be done; the message says why and what to do."""


@attrs.frozen
class Recording:
    """A finished run folder to replay."""

    run_path: Path
    run_id: str
    config: dict[str, Any]
    started_ts: float
    ended_ts: float
    stop_reason: str
    funding_source: str | None = None  # the original's report field (None: recorded before it existed)
    resumes: int = 0  # the original was killed and resumed this many times (`session.resumed`)
    # whether the original's broker charged funding: its source of rates is not "none", or it
    # recorded a funding event (a live session that fell back to the mock source, recorded by a
    # version before the broker stopped charging after a fallback, and a replay of one, say "none"
    # but charged at the last rate known)
    funding_modelled: bool = True

    @property
    def market_path(self) -> Path:
        return self.run_path / "market.jsonl"


@attrs.frozen
class Plan:
    mode: Mode = "live"
    resume: Path | None = None  # live: the run folder to resume
    data: str | None = None  # backtest: the candle file (several symbols: the first symbol's)
    # backtest of several symbols: (symbol, candle file) for each, in the order of config.symbols
    data_by_symbol: tuple[tuple[str, str], ...] = ()
    recording: Recording | None = None  # replay
    funding: FundingRates | None = None  # backtest: the same rates for every symbol
    # backtest: (symbol, the rates of its --funding [SYMBOL=]FILE) for the symbols given one (read at
    # planning)
    funding_by_symbol: tuple[tuple[str, FundingRates], ...] = ()
    # backtests and replays: "kernel" (the default, a plain loop) or "actors" (the live Trio actors
    # on the data's clock, to check one against the other)
    runtime: Literal["kernel", "actors"] = "kernel"
    # backtest: the candles it runs over, by their open time: from (inclusive), until (exclusive)
    window: tuple[float, float] = (-math.inf, math.inf)

    @property
    def virtual_time(self) -> bool:
        return self.mode != "live"


def parse_when(text: str, flag: str) -> float:
    """A flag's ISO-8601 date or date and time (`2024-01-31`, `2024-01-31T12:00`, with `Z` or an
    offset; UTC when it has none) as a Unix time; PlanError naming the flag otherwise."""
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise PlanError(
            f"{flag}: not an ISO-8601 date or date and time (e.g. 2024-01-31 or 2024-01-31T12:00Z): "
            f"{short_path(text, 60)}"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def short_path(path: str | Path, limit: int = 120) -> str:
    """A path as a message quotes it: its end, at most `limit` characters."""
    text = str(path)
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


def is_file(path: str | Path, flag: str) -> bool:
    """Whether `path` (given by `flag`) is a file; PlanError naming the flag when it cannot be
    looked at (a name too long, no permission)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PlanError(f"{flag}: cannot use {short_path(path)}: {reason}") from None


def what_is(path: str | Path) -> str | None:
    """What `path`, not a regular file, is, as a message says it (`... is a directory`, `... is
    not a regular file (a FIFO)`); None when there is nothing there (found by an audit: `--data`
    given a FIFO said "file not found")."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "not a regular file (a FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "not a regular file (a device)"
    if stat.S_ISSOCK(mode):
        return "not a regular file (a socket)"
    return "not a regular file"


def load_recording(target: Path) -> Recording:
    """A run folder (or its events.jsonl) of a finished session, for --replay."""
    # the folder itself, not a link to it: `runs/latest` moves to the replay's own new folder
    # before its market data is read (found by an audit: a replay of nothing, exit 0)
    run_path = (target.parent if target.name == "events.jsonl" else target).resolve()
    events_path = run_path / "events.jsonl"
    if not is_file(events_path, "--replay"):
        raise PlanError(f"--replay: {short_path(target)} is not a run folder or events.jsonl")
    if not is_file(run_path / "market.jsonl", "--replay"):
        raise PlanError(f"--replay: {run_path} has no market.jsonl (recorded by an older version?)")
    started: dict[str, Any] | None = None
    stopped: dict[str, Any] | None = None
    resumes = 0
    funded = False
    try:
        with events_path.open(encoding="utf-8") as f:
            for line in f:
                event = json.loads(line)
                if event["kind"] == "session.started" and started is None:
                    started = event
                elif event["kind"] == "session.stopped":
                    stopped = event
                elif event["kind"] == "session.resumed":
                    resumes += 1
                elif event["kind"] == "funding":
                    funded = True
        if started is None or stopped is None:
            raise PlanError(f"--replay: {run_path} is not a finished session (no session.started/stopped)")
        run_id = started["run_id"]
        source = started.get("data_source", "")
        replay = run_id.startswith(RUN_ID_PREFIXES["replay"])
        # found by an audit: a replay of nothing, exit 0. A replay records the market it acted on
        # (so it can be replayed in turn); one from an older version has an empty market.jsonl
        if run_id.startswith(RUN_ID_PREFIXES["backtest"]):
            raise PlanError(
                f"--replay: {run_path.name} is a backtest's run folder: it recorded no market data "
                f"(live sessions and replays record theirs, in market.jsonl); run the backtest again ({source})"
            )
        if replay and not (run_path / "market.jsonl").stat().st_size:
            raise PlanError(
                f"--replay: {run_path.name} is a replay's run folder with no market data (it acted on "
                f"none, or an older version's replay recorded none); replay the session it replayed ({source})"
            )
        # found by an audit: a replay killed and closed as abandoned replayed "ok" with fewer fills
        # (its market.jsonl, flushed apart from its events, was cut further back by the kill)
        if stopped.get("stop_reason") == "abandoned":
            again = f"; replay the session it replayed ({source})" if replay else ""
            raise PlanError(
                f"--replay: {run_path.name} was killed before its end and closed as abandoned: its "
                f"market.jsonl may stop short of what it did, so no replay reproduces it{again}"
            )
        return Recording(
            run_path=run_path,
            run_id=started["run_id"],
            config=started["config"],
            # the full-precision times (`ts` is cut to the ms: a replay cut short or long of the
            # session ran its last timers and heartbeats otherwise); older recordings: `ts`
            started_ts=float(started.get("started_ts", _ts(started["ts"]))),
            ended_ts=float(stopped.get("ended_ts", _ts(stopped["ts"]))),
            stop_reason=stopped["stop_reason"],
            funding_source=stopped.get("funding_source", started.get("funding_source")),
            resumes=resumes,
            funding_modelled=funded or stopped.get("funding_source", started.get("funding_source")) != "none",
        )
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise PlanError(
            f"--replay: {events_path} is not an events.jsonl this program wrote ({exc!r})"
        ) from None


def is_unfinished(run_path: Path) -> bool:
    return (run_path / "events.jsonl").is_file() and not (run_path / "final_report.json").exists()


def finish_report_page(run_dir: Path) -> None:
    """`report.html` of `<run_dir>/latest` when its process wrote `final_report.json` (the run is
    finished) and was killed before the page, which it writes right after: written now, by the
    next start (a run that another process still holds is left to it)."""
    latest = run_dir / "latest"
    try:
        path = latest.resolve()
        missing = (path / "final_report.json").exists() and not (path / "report.html").exists()
    except OSError:
        return
    if missing and not is_locked(path):
        logger.info(
            "{} finished but its process was killed before it wrote report.html: writing it now",
            short_path(path),
        )
        write_report_html(path)


def close_killed_batches(run_dir: Path) -> None:
    """Every backtest and replay of the run dir killed before its end (unfinished and owned by
    no process; they keep no checkpoint, nothing resumes them) closed as abandoned by whichever
    start comes next, wherever `latest` points since (a live start after a killed backtest moved
    `latest` on and left it unfinished for good). A folder whose process died before it recorded
    anything is left to `tools.cleanup`."""
    try:
        found = sorted(
            p
            for p in run_dir.iterdir()
            if p.name.startswith(BATCH_RUN_PREFIXES) and p.is_dir() and not p.is_symlink()
        )
    except OSError:
        return
    for path in found:
        try:
            if not is_unfinished(path) or (path / "events.jsonl").stat().st_size == 0 or is_locked(path):
                continue
            close_and_warn(path)
        except SessionLocked:  # started meanwhile: its own
            continue
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning(
                "{} was killed before it ended and could not be closed as abandoned ({!r})", path, exc
            )


def settle_latest(run_dir: Path, *, live: bool = False) -> None:
    """Before a backtest, a replay or a `--fresh` start (which resume nothing, and move
    `<run_dir>/latest` to their own folder): an unfinished, unowned `latest` without a checkpoint
    (a backtest, a replay or a live session killed before its first one) is closed as abandoned,
    as a live start closes it; one with a checkpoint is left for a live start to resume
    (`find_resumable` looks past a backtest's or replay's `latest` for the newest live session),
    and the warning says so. A folder owned by a live process is left alone (a backtest beside a
    running session is allowed)."""
    finish_report_page(run_dir)
    close_killed_batches(run_dir)
    latest = run_dir / "latest"
    if not latest.exists() or not is_unfinished(latest) or is_locked(latest.resolve()):
        return
    path = latest.resolve()
    if has_checkpoint(path):
        unusable = _unusable_checkpoint(path)
        if unusable is not None:
            # (found by the stop audit: told to resume it with --resume, which refuses it the same way)
            logger.warning(
                "{} is an unfinished session that cannot be resumed: {}. This {} leaves it as it is; "
                "{}it can be resumed (--resume {}) only once a usable checkpoint is back in it (from an "
                "archive of the run, python -m tools.archive; a signed one under the {} it was "
                "written with)",
                short_path(path),
                unusable,
                "--fresh start" if live else "run",
                "" if live else "a live start without --fresh refuses while it is the newest live session; ",
                path.name,
                STATE_KEY,
            )
            return
        if live:  # a --fresh start: the newest live session from now on is the new one
            logger.warning(
                "{} is an unfinished session: this --fresh start leaves it as it is; resume it "
                "later with --resume {}",
                short_path(path),
                path.name,
            )
        else:
            logger.warning(
                "{} is an unfinished session: this run moves {} to its own folder, and the next "
                "live start without --fresh still resumes that session (the newest live one; or "
                "--resume {})",
                short_path(path),
                short_path(latest),
                path.name,
            )
        return
    try:
        close_and_warn(path)
    except SessionLocked:  # taken by a live start meanwhile: it is that start's to decide
        return
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("{} was killed before it ended and could not be closed as abandoned ({!r})", path, exc)


def _unusable_checkpoint(run_path: Path) -> str | None:
    """Why the checkpoints of `run_path` cannot be resumed (none usable, or one refused as
    tampered: `checkpoint.load`), as a message says it; None when one can be."""
    try:
        checkpoint.load(run_path)
    except checkpoint.CheckpointError as exc:
        why = str(exc)
        return why.split(". Nothing was started")[0]  # (its own advice is for a start it refused)
    except OSError as exc:
        return f"its checkpoints cannot be read ({exc.strerror or exc})"
    return None


# Run ids by mode (`actors.session.new_run_id`): a live session's has no prefix.
RUN_ID_PREFIXES = {"live": "", "replay": "replay-", "backtest": "backtest-"}
_LIVE_RUN_ID = re.compile(r"^\d{8}T\d{6}Z-s\d+(-\d+)?$")
BATCH_RUN_PREFIXES = tuple(prefix for prefix in RUN_ID_PREFIXES.values() if prefix)


def is_run_id(name: str) -> bool:
    """Whether `name` is a live session's run id (`actors.session.new_run_id`), the name of its
    folder in the run dir: never a path."""
    return re.fullmatch(r"[0-9]{8}T[0-9]{6}Z-s[0-9]+(-[0-9]+)?", name) is not None


def newest_live_run(run_dir: Path) -> Path | None:
    """The live session a plain start is about: `<run_dir>/latest`, or when that is a backtest's
    or a replay's folder (they move `latest` too), the newest live session's folder (run ids
    start with their UTC start time)."""
    latest = run_dir / "latest"
    if not latest.exists():
        return None
    path = latest.resolve()
    if not path.name.startswith(BATCH_RUN_PREFIXES):
        return path
    try:
        live = [
            p for p in run_dir.iterdir() if _LIVE_RUN_ID.match(p.name) and p.is_dir() and not p.is_symlink()
        ]
    except OSError:
        return None
    return max(live, key=lambda p: p.name, default=None)


def _traded_symbols(config: dict[str, Any]) -> list[str] | None:
    """The symbols a config's (`to_dict`'s) strategies trade, as `Config.symbols` resolves them
    (a strategy with no `symbol` trades session.symbol); None for a config naming no
    session.symbol (not compared)."""
    default = config.get("session", {}).get("symbol")
    if not isinstance(default, str) or not default:
        return None
    tables = config.get("strategies") or [{}]
    return sorted({str(table.get("symbol") or default).upper() for table in tables})


def _resume_keys(config: dict[str, Any]) -> dict[str, Any]:
    """A config's (`to_dict`'s) keys a resumed session's state depends on, by their names in
    errors: the candle interval; each strategy's kind, symbol, interval and parameters (their
    indicators and setups were built for them); the symbols traded (the account holds positions
    of those); and every `broker` key: the paper account's starting equity, fees, leverage,
    funding, latency and fill rules, which its checkpointed account was built with and which
    the validator and a replay read from `session.started` (found by an audit: a resume with
    another starting_equity moved the equity by the difference, with other fees or another
    symbol its fills failed the validator, the latter closing a BTCUSDT position at ETHUSDT's
    price)."""
    keys: dict[str, Any] = {
        "session.interval": config.get("session", {}).get("interval"),
        "symbols traded": _traded_symbols(config),
    }
    for name, value in (config.get("strategy") or {}).items():
        keys[f"strategy.{name}"] = value
    for table in config.get("strategies") or []:
        for name, value in table.items():
            if name != "id":
                keys[f"strategies[{table.get('id')}].{name}"] = value
    for name, value in (config.get("broker") or {}).items():
        keys[f"broker.{name}"] = value
    return keys


def check_resume_config(run_path: Path, config: dict[str, Any]) -> None:
    """PlanError when the session to resume ran otherwise than `config` (`to_dict`) would run it
    (`_resume_keys`): its strategies' state (indicators, windows, pending entries) was built for
    their parameters, and a strategy restored under others decides wrongly or never again (an EMA
    period made shorter never seeds); its account for its symbols and broker keys. Keys the
    session's config did not have (a newer version's) are not compared."""
    try:
        with (run_path / "events.jsonl").open(encoding="utf-8") as f:
            started = json.loads(f.readline())
    except (OSError, ValueError):
        return
    if not isinstance(started, dict) or not isinstance(started.get("config"), dict):
        return
    # `config` as the session's was recorded (through JSON: tuples are lists there)
    then, now = _resume_keys(started["config"]), _resume_keys(json.loads(json.dumps(config)))
    changed = [
        f"{key}: {then[key]!r} in the session, {now.get(key)!r} now"
        for key in then
        if then[key] is not None and key in now and now[key] != then[key]
    ]
    changed += [f"{key}: not in the session" for key in now if key not in then and key.endswith(".kind")]
    changed += [f"{key}: in the session, not now" for key in then if key not in now and key.endswith(".kind")]
    if changed:
        raise PlanError(
            f"cannot resume {run_path.name}: it ran on another configuration "
            f"({'; '.join(changed[:3])}{'; ...' if len(changed) > 3 else ''}); resume it with the "
            "configuration it started with, or start a new session with --fresh"
        )


def find_resumable(run_dir: Path, run_id: str | None, *, look_only: bool = False) -> Path | None:
    """The session to resume: `--resume RUN_ID`, or the newest live session (`newest_live_run`:
    `<run_dir>/latest`, or the newest live one when a backtest or replay ran since) when
    unfinished and unowned; PlanError when that session is owned by a live process (the CLI calls
    this under the run dir's start lock, actors/lock.py, so a session being started is already
    locked: refused, not missed).

    An unfinished, unowned `latest` without any checkpoint (its process was killed before the
    first one) cannot be resumed: it is closed as abandoned (actors/recording/abandon.py), with a
    warning, and None is returned so that a new session starts.

    `look_only` (`--check-config`): the same answer, changing nothing in the run dir (no killed
    backtest closed, no report page written, no session closed as abandoned).
    """
    if run_id is not None:
        if run_id != "latest" and not is_run_id(run_id):  # a name in the run dir, never a path
            raise PlanError(f"--resume {short_path(run_id, 60)}: expected a live session's run id or latest")
        path = run_dir / run_id
        try:
            found = path.is_dir()
        except (OSError, ValueError) as exc:
            raise PlanError(f"--resume: cannot use {short_path(path)}: {exc}") from None
        if not found:
            raise PlanError(f"--resume: no run folder {short_path(path)}")
        if not is_unfinished(path):
            raise PlanError(f"--resume: {path} finished already (final_report.json exists)")
        if is_locked(path):
            raise PlanError(f"--resume: {path} is running in another process")
        return path
    if not look_only:
        finish_report_page(run_dir)
        close_killed_batches(run_dir)
    found_live = newest_live_run(run_dir)
    if found_live is None or (found_live / "final_report.json").exists():
        return None
    path = found_live
    running = f"session {path.name} is running in another process; use --fresh to start a second session"
    if is_locked(path):  # running, or starting (locked before its events.jsonl is made)
        raise PlanError(running)
    if not is_unfinished(path):  # its process died before it recorded anything: a new session
        return None
    if not has_checkpoint(path):
        # killed before its first checkpoint: nothing to resume from; closed so it never blocks a start
        if look_only:
            return None
        try:
            close_and_warn(path)
        except SessionLocked:
            raise PlanError(running) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PlanError(
                f"{path} was killed before its first checkpoint and could not be closed as abandoned "
                f"({exc!r}); start a new session with --fresh"
            ) from exc
        return None
    return path
