"""The records of events.jsonl that report.html reads (actors/recording/html_report.py), collected
one at a time: as a run folder's file is read (`html_report.load_run`), or as the recorder writes
them (`Recorder`: the record of each line is what the line says, `protocols.records.event_line`,
so the page built from them is the one the file gives, without reading the file back: a long
backtest's events.jsonl is tens of MB). Compiled (setup.py): the recorder adds every record.
"""

from __future__ import annotations

from sys import intern
from typing import Any, Final

# Event kinds the page does not read: skipped unparsed (a long backtest writes hundreds of thousands).
UNREAD_KINDS: Final = (b"signal", b"order.submitted")
# The fields the page reads of the kinds a long run has by the ten thousand: the others are
# dropped as a record is read, and the values that repeat (kinds, sides, symbols, reasons) are
# shared, so that the page of a long backtest is built in a few tens of MB.
SLIM: Final[dict[str, tuple[str, ...]]] = {
    "order.filled": (
        "kind",
        "ts",
        "symbol",
        "qty",
        "order_id",
        "slippage_bps",
        "latency_ms",
        "fill_price",
        "fee",
        "requested_price",
        "type",
        "position_qty",
        "realized_pnl",
    ),
    "position.closed": (
        "kind",
        "ts",
        "symbol",
        "side",
        "qty",
        "entry_price",
        "exit_price",
        "realized_pnl",
        "fees",
        "net_pnl",
        "held_s",
        "opened_ts",
        "exit_reason",
    ),
    "heartbeat": ("kind", "ts", "price", "prices", "equity", "drawdown_pct"),
    "order.working": (
        "kind",
        "ts",
        "symbol",
        "order_id",
        "reason",
        "trigger_price",
        "limit_price",
        "side",
        "type",
        "qty",
    ),
    "order.cancelled": ("kind", "ts", "order_id", "reason"),
    "order.rejected": ("kind", "ts", "reason"),
}
SLIM["order.amended"] = SLIM["order.working"]
SHARED_STRINGS = frozenset(("kind", "symbol", "side", "reason", "type", "exit_reason"))
# Of each slimmed kind's fields, those whose values are shared.
SHARED: Final = {kind: tuple(f for f in fields if f in SHARED_STRINGS) for kind, fields in SLIM.items()}
# UNREAD_KINDS as a record says them (the bytes: as a line of the file is scanned, unparsed).
_UNREAD: Final = frozenset(kind.decode() for kind in UNREAD_KINDS)
_ABSENT: Final = object()  # a field a record does not have (None is a value)


class PageRecords:
    """The page's records in file order (without the kinds in UNREAD_KINDS), and by kind. The
    many records of a long run (fills, trades, heartbeats, orders) keep only the fields the page
    reads (SLIM), the values that repeat shared; any other record is kept whole (a copy)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.by_kind: dict[str, list[dict[str, Any]]] = {}

    def add(self, record: dict[str, Any]) -> None:
        kind: str = record["kind"]
        if kind in _UNREAD:
            return
        fields = SLIM.get(kind)
        kept = _slim(record, fields, SHARED[kind]) if fields is not None else dict(record)
        self.records.append(kept)
        by_kind = self.by_kind.get(kind)
        if by_kind is None:
            self.by_kind[kind] = [kept]
        else:
            by_kind.append(kept)


def _slim(record: dict[str, Any], fields: tuple[str, ...], shared: tuple[str, ...]) -> dict[str, Any]:
    """The record's `fields` (those the page reads), the values of the `shared` ones one string
    for every record."""
    slim = {}
    for k in fields:  # one lookup a field (`k in record` and `record[k]`: two)
        value = record.get(k, _ABSENT)
        if value is not _ABSENT:
            slim[k] = value
    for name in shared:
        value = slim.get(name)
        if isinstance(value, str):
            slim[name] = intern(value)
    return slim
