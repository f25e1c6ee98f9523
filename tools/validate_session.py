"""Check a run folder for consistency: `python -m tools.validate_session RUN`.

RUN is a run folder (or `runs/latest`). Exit 0 when everything agrees, 1 with one line per
disagreement otherwise, 2 when RUN is not a readable run folder. Checked:

- `events.jsonl`: every line JSON, `seq` 1, 2, 3, ... with no gap or repeat, starts with
  `session.started` and (when the session finished) ends with `session.stopped`;
- every fill once (its `fill_id`, or order id, time, size and price, never repeated);
- position, realized PnL, fees and funding recomputed from the fills alone (average-cost netting,
  independent of the broker's code) equal the final report, to the cent;
- `net_pnl = ending_equity - starting_equity = realized_pnl - fees_paid - funding_paid + unrealized_pnl`;
- `funding_paid` is the sum of the `funding` events' amounts, and a report saying funding was not
  modelled (`funding_source` "none") has no `funding` event charging anything;
- the report equals the one derived again from the events;
- flat at a clean end: no position left and `open_positions` empty.

An abandoned run (status `abandoned`: its process was killed before its first checkpoint and the
next start closed it, see actors/recording/abandon.py) need not be flat: the position it had went
with its process. Everything else is checked as above, and its `session.stopped` must say
`abandoned` with nothing unrealized and nothing open.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from protocols.records import ReportBuilder

CENT = 0.01
EPS = 1e-9
ABANDONED = "abandoned"


class Ledger:
    """Position and PnL from fills alone (average cost, netting)."""

    def __init__(self) -> None:
        self.qty = 0.0
        self.avg = 0.0
        self.realized = 0.0
        self.fees = 0.0

    def fill(self, side: str, qty: float, price: float, fee: float) -> None:
        signed = qty if side == "buy" else -qty
        self.fees += fee
        if self.qty * signed < 0:
            closing = min(abs(self.qty), qty)
            self.realized += (price - self.avg) * closing * (1 if self.qty > 0 else -1)
            self.qty += closing if self.qty < 0 else -closing
            signed += -closing if signed > 0 else closing
            if abs(self.qty) < EPS:
                self.qty, self.avg = 0.0, 0.0
        if abs(signed) > EPS:
            new = self.qty + signed
            self.avg = (self.avg * abs(self.qty) + price * abs(signed)) / abs(new)
            self.qty = new


def load_events(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    events, problems = [], []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                problems.append(f"events.jsonl line {n}: not JSON (truncated write?)")
    return events, problems


def check_sequence(events: list[dict[str, Any]], finished: bool) -> list[str]:
    problems = []
    for expected, event in enumerate(events, 1):
        if event.get("seq") != expected:
            problems.append(f"events.jsonl: seq {event.get('seq')} where {expected} was expected")
            break
    if not events or events[0].get("kind") != "session.started":
        problems.append("events.jsonl: does not start with session.started")
    if finished and (not events or events[-1].get("kind") != "session.stopped"):
        problems.append("events.jsonl: a finished session must end with session.stopped")
    return problems


def check_fills(events: list[dict[str, Any]], report: dict[str, Any] | None) -> list[str]:
    problems = []
    ledger = Ledger()
    seen: Counter[str] = Counter()
    funding = 0.0
    charges = 0
    for e in events:
        if e["kind"] == "funding":
            funding += e.get("amount", 0.0)
            charges += e.get("amount", 0.0) != 0
        if e["kind"] != "order.filled":
            continue
        fill_id = str(e.get("fill_id") or f"{e['order_id']}@{e['ts']}:{e['qty']}@{e['fill_price']}")
        seen[fill_id] += 1
        if seen[fill_id] > 1:
            problems.append(f"fill {fill_id} recorded more than once (seq {e['seq']})")
        ledger.fill(e["side"], e["qty"], e["fill_price"], e["fee"])
    if report is None:
        return problems
    for key, value in (("realized_pnl", ledger.realized), ("fees_paid", ledger.fees)):
        if abs(report.get(key, 0.0) - value) > CENT:
            problems.append(f"report {key} = {report.get(key)} but the fills give {value:.6f}")
    if "funding_paid" in report and abs(report["funding_paid"] - funding) > CENT:
        problems.append(
            f"report funding_paid = {report['funding_paid']} but funding events give {funding:.6f}"
        )
    if report.get("funding_source") == "none" and charges:
        problems.append(f"report funding_source = 'none' (not modelled) but {charges} funding events charged")
    if report.get("status") == "ok" and abs(ledger.qty) > EPS:
        problems.append(f"session ended ok but the fills leave a position of {ledger.qty:+.8f} BTC")
    return problems


def check_report(events: list[dict[str, Any]], report: dict[str, Any]) -> list[str]:
    problems = []
    start, end = report["starting_equity"], report["ending_equity"]
    net = report["net_pnl"]
    funding = report.get("funding_paid", 0.0)
    if abs(net - (end - start)) > CENT:
        problems.append(f"net_pnl {net} != ending_equity - starting_equity ({end - start:.6f})")
    parts = report["realized_pnl"] - report["fees_paid"] - funding + report["unrealized_pnl"]
    if abs(net - parts) > CENT:
        problems.append(f"net_pnl {net} != realized - fees - funding + unrealized ({parts:.6f})")
    if report.get("status") == "ok" and report.get("open_positions"):
        problems.append(f"session ended ok but open_positions = {report['open_positions']}")
    builder = ReportBuilder()
    for e in events:
        builder.add(e)
    derived = builder.report()
    for key, value in derived.items():
        if report.get(key) != value:
            problems.append(f"report {key} = {report.get(key)!r} but the events give {value!r}")
    return problems


def check_abandoned(events: list[dict[str, Any]], report: dict[str, Any]) -> list[str]:
    """An abandoned run is closed by one session.stopped that says so, with nothing left open."""
    if report.get("status") != ABANDONED:
        return []
    problems = []
    stops = [e for e in events if e.get("kind") == "session.stopped"]
    if len(stops) != 1:
        problems.append(f"abandoned run: {len(stops)} session.stopped events where 1 was expected")
    if report.get("stop_reason") != ABANDONED:
        problems.append(f"abandoned run: stop_reason {report.get('stop_reason')!r}, not 'abandoned'")
    if report.get("unrealized_pnl") != 0.0 or report.get("open_positions") != []:
        problems.append(
            f"abandoned run: unrealized_pnl {report.get('unrealized_pnl')} and open_positions "
            f"{report.get('open_positions')} (nothing can be open after its process died)"
        )
    return problems


def validate(run: Path) -> list[str]:
    """All problems found in the run folder; an empty list means it is consistent."""
    events, problems = load_events(run / "events.jsonl")
    report_path = run / "final_report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    problems += check_sequence(events, finished=report is not None)
    problems += check_fills(events, report)
    if report is not None:
        problems += check_report(events, report)
        problems += check_abandoned(events, report)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.validate_session", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run", type=Path, help="run folder (e.g. runs/latest)")
    args = parser.parse_args(argv)
    if not (args.run / "events.jsonl").is_file():
        print(f"error: {args.run} is not a run folder (no events.jsonl)", file=sys.stderr)
        return 2
    problems = validate(args.run)
    for problem in problems:
        print(problem)
    print(f"{args.run}: {'OK' if not problems else f'{len(problems)} problem(s)'}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
