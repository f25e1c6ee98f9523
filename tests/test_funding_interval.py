"""A symbol on another funding interval than 8 h (many exchanges settle some contracts every 4 h or
1 h): the broker charges it at the instants the exchange gives (the `price` channel's `nft`, and
every `nft - ft` from it), falls back to 00:00, 08:00 and 16:00 UTC while the exchange has said
nothing, and the strategies' funding gates see its rate per 8 h. Found by an audit: the broker
never read `nft`, so a 4 h symbol was charged at the 8 h instants only (half its funding), at a
rate per 4 h taken for one per 8 h by the gates."""

from __future__ import annotations

import json
import math
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest

from actors.broker.paper import PaperBroker
from actors.config import BrokerConfig
from actors.strategies.base import funding_size
from protocols.messages import Event, Funding, MarketEvent, Order, Tick
from protocols.records import iso, market_from_record, market_record
from tests.test_feed_multi_symbol import run_feed
from tests.test_multi_symbol_live import TWO_SYMBOLS, session_config
from tools.fake_bitunix import FakeBitunix
from tools.validate_session import check_funding_charges, funding_instants, funding_schedules

HOUR = 3600.0
QTY = {"BTCUSDT": 0.01, "ETHUSDT": 0.1}


def _broker(symbol: str) -> PaperBroker:
    config = attrs.evolve(BrokerConfig(), latency_ms=0.0, latency_jitter_ms=0.0)
    return PaperBroker(config, random.Random(1), symbol=symbol)


def _buy(symbol: str, ts: float) -> Order:
    return Order(
        id=f"{symbol}-1", ts=ts, side="buy", qty=QTY[symbol], decision_price=1.0, reason="test", symbol=symbol
    )


def _drive(records: list[dict[str, Any]]) -> tuple[dict[str, PaperBroker], list[Event]]:
    """Each symbol's broker through the market records, in their order, each at its arrival: a
    market buy at each symbol's first quote; the events they give."""
    brokers = {s: _broker(s) for s in QTY}
    events: list[Event] = []
    for record in records:
        event, ts = market_from_record(record), record["arrival_ts"]
        broker = brokers[event.symbol]
        events += broker.on_market(event, ts)
        if (
            isinstance(event, Tick)
            and not broker.working
            and broker.position_qty == 0
            and broker.fill_seq == 0
        ):
            events += broker.on_arrival(_buy(event.symbol, ts), ts)
    return brokers, events


def _funding(events: list[Event], symbol: str) -> list[dict[str, Any]]:
    return [e.fields for e in events if e.kind == "funding" and e.fields["symbol"] == symbol]


async def test_a_4h_symbol_is_charged_at_its_exchanges_instants_and_an_8h_one_is_not(tmp_path: Path) -> None:
    """Against the fake exchange, ETHUSDT settling every 4 h beside BTCUSDT every 8 h, the
    exchange's clock 3 s before a 4 h instant that is no 8 h one (04:00, 12:00 or 20:00 UTC), a
    long open in each: ETHUSDT is charged at that instant, at the rate the exchange settled then
    (the fake's own for the period from it) on the mark before it; BTCUSDT is charged nothing.
    Replaying the recorded market gives the same charges, and the validator holds them to the
    schedule market.jsonl says (and names them against the 8 h one)."""
    wall = time.time()
    instant = (math.floor((wall - 4 * HOUR) / (8 * HOUR)) + 1) * 8 * HOUR + 4 * HOUR
    if instant - wall < 60:
        instant += 8 * HOUR
    assert instant % (8 * HOUR) == 4 * HOUR and instant % (4 * HOUR) == 0
    fake = FakeBitunix(
        seed=5, symbols=tuple(QTY), funding_hours={"ETHUSDT": 4}, time_offset_s=instant - 3 - wall
    )

    def settled(events: list[MarketEvent]) -> bool:
        return any(
            isinstance(e, Funding) and e.symbol == "ETHUSDT" and e.settled_ts == instant for e in events
        )

    run = await run_feed(tmp_path, fake, tuple(QTY), seconds=20, until=settled)
    # the quotes and funding frames as market.jsonl records them, each arriving at its time
    records = [
        json.loads(json.dumps(market_record(e.ts, e))) for e in run.received if isinstance(e, Tick | Funding)
    ]
    eth = [r for r in records if r["type"] == "funding" and r["symbol"] == "ETHUSDT"]
    btc = [r for r in records if r["type"] == "funding" and r["symbol"] == "BTCUSDT"]
    assert eth[0]["arrival_ts"] < instant, "the exchange's schedule came before the instant"
    # the feed's reading of ft/nft: 4 h and 8 h
    assert {r["interval_s"] for r in eth} == {4 * HOUR} and {r["interval_s"] for r in btc} == {8 * HOUR}
    assert eth[-1]["next_ts"] == instant + 4 * HOUR and btc[-1]["next_ts"] == instant + 4 * HOUR

    brokers, events = _drive(records)
    assert _funding(events, "BTCUSDT") == []  # 12:00 (or 04:00, 20:00) is no 8 h instant
    (charge,) = _funding(events, "ETHUSDT")
    assert charge["instant"] == datetime.fromtimestamp(instant, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert charge["rate_settled_at"] == charge["instant"]
    want_rate = float(fake.markets["ETHUSDT"].price_data(round(instant * 1000) + 1000)["fr"])
    assert charge["rate_pct"] == pytest.approx(want_rate)
    marks_before = [r["mark_price"] for r in eth if r["arrival_ts"] < instant]
    quotes_before = [
        (r["bid"] + r["ask"]) / 2 for r in records if r["symbol"] == "ETHUSDT" and r["type"] == "tick"
    ]
    assert charge["position_qty"] == QTY["ETHUSDT"]
    assert charge["mark_price"] in marks_before + quotes_before
    assert charge["amount"] == pytest.approx(QTY["ETHUSDT"] * charge["mark_price"] * want_rate / 100)
    # the next instants: ETHUSDT's 4 h after, BTCUSDT's at the next 8 h one (also 4 h after)
    assert brokers["ETHUSDT"].next_funding_ts == instant + 4 * HOUR
    assert brokers["BTCUSDT"].next_funding_ts == instant + 4 * HOUR
    assert (brokers["ETHUSDT"].funding_every_s, brokers["BTCUSDT"].funding_every_s) == (4 * HOUR, 8 * HOUR)

    # a replay of the recorded market: the same charges
    replayed = _drive(json.loads(json.dumps(records)))[1]
    assert [e.fields for e in replayed if e.kind == "funding"] == [
        e.fields for e in events if e.kind == "funding"
    ]

    # the validator, with the schedule market.jsonl gives
    with (tmp_path / "market.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    schedules = funding_schedules(tmp_path)
    start = records[0]["arrival_ts"] - 1
    logged = [
        {"seq": n, "ts": iso(e.ts), "kind": e.kind, **e.fields}
        for n, e in enumerate([Event(start, "session.started", {"started_ts": start}), *events], 1)
    ]
    logged.append(
        {"seq": len(logged) + 1, "ts": iso(records[-1]["arrival_ts"] + 1), "kind": "session.stopped"}
    )
    report = {"funding_source": "feed", "status": "ok", "data_source": "bitunix"}
    assert check_funding_charges(logged, report, schedules) == []
    when = charge["instant"][:19] + "Z"
    assert check_funding_charges(logged, report) == [
        f"ETHUSDT: a funding charge at {when}, not one of its funding instants (00:00, 08:00 or 16:00 UTC)"
    ]
    moved = [dict(e) for e in logged]
    for e in moved:
        if e["kind"] == "funding":
            e["instant"] = iso(instant - 2 * HOUR)
    assert check_funding_charges(moved, report, schedules) == [
        f"ETHUSDT: a funding charge at {iso(instant - 2 * HOUR)[:19]}Z, not one of its funding instants "
        "(the exchange's schedule)",
        f"ETHUSDT: no funding charge at {when}, with the net position +0.10000000 open at it",
    ]


def test_the_broker_follows_the_exchanges_schedule_and_goes_on_with_it_through_an_outage() -> None:
    """Scripted: a 4 h symbol's frames say next 12:00, every 4 h. The 12:00 instant waits for its
    rate (the frame after it, `ft` 12:00) and is charged at it; then the feed is silent for 9 h:
    16:00 and 20:00 are charged at the next event (its rate then unknown: waiting, charged at the
    end at the last rate known), never 16:00 alone as on the 8 h schedule. A checkpoint keeps the
    schedule. Before any frame, the 8 h schedule: 08:00 is charged."""
    day = datetime(2026, 11, 24, tzinfo=UTC).timestamp()
    account = _broker("ETHUSDT")
    account.on_market(
        Tick(ts=day + 7 * HOUR, bid=99.9, ask=100.1, last=100.0, last_qty=0.0, symbol="ETHUSDT"),
        day + 7 * HOUR,
    )
    account.on_arrival(_buy("ETHUSDT", day + 7 * HOUR), day + 7 * HOUR)
    assert account.position_qty == QTY["ETHUSDT"]
    tick = Tick(ts=0.0, bid=99.9, ask=100.1, last=100.0, last_qty=0.0, symbol="ETHUSDT")
    events = account.on_market(tick, day + 8 * HOUR + 1)  # nothing said yet: the 8 h schedule
    assert [e.fields["instant"] for e in events if e.kind == "funding"] == ["2026-11-24T08:00:00Z"]

    def frame(at: float, settled: float, rate: float) -> list[Event]:
        said = Funding(
            ts=at, mark_price=100.0, rate_pct=rate, symbol="ETHUSDT", settled_ts=settled,
            next_ts=settled + 4 * HOUR, interval_s=4 * HOUR,
        )  # fmt: skip
        return account.on_market(said, at)

    assert frame(day + 9 * HOUR, day + 8 * HOUR, 0.01) == []
    assert account.next_funding_ts == day + 12 * HOUR
    restored = _broker("ETHUSDT")
    restored.restore(json.loads(json.dumps(account.state())))
    assert restored.next_funding_ts == day + 12 * HOUR
    account = restored
    assert [e for e in account.on_market(tick, day + 12 * HOUR + 0.5) if e.kind == "funding"] == []
    (charge,) = [e.fields for e in frame(day + 12 * HOUR + 1, day + 12 * HOUR, 0.02) if e.kind == "funding"]
    assert (charge["instant"], charge["rate_pct"]) == ("2026-11-24T12:00:00Z", 0.02)
    # silent until 21:00: 16:00 and 20:00 passed, their rates not known yet
    assert [e for e in account.on_market(tick, day + 21 * HOUR) if e.kind == "funding"] == []
    ended = account.settle_funding(day + 21 * HOUR + 1)
    assert [(e.fields["instant"], e.fields["rate_pct"]) for e in ended] == [
        ("2026-11-24T16:00:00Z", 0.02),
        ("2026-11-24T20:00:00Z", 0.02),
    ]


@pytest.mark.parametrize(
    ("interval_h", "rate", "per_8h", "scale"),
    [
        (8, 0.03, 0.03, 1.0),  # 0.03 % per 8 h: not above the half-size threshold
        (4, 0.03, 0.06, 0.0),  # 0.03 % per 4 h is 0.06 % per 8 h: above 0.05 %, no entry
        (4, 0.02, 0.04, 0.5),  # 0.04 % per 8 h: above 0.03 %, half size
        (1, 0.005, 0.04, 0.5),  # 0.005 % an hour, 8 of them: 0.04 %
        (1, -0.01, -0.08, 1.0),  # a long is paid: never held back
    ],
)
def test_the_funding_gates_see_a_rate_per_8h(
    interval_h: int, rate: float, per_8h: float, scale: float
) -> None:
    """The gates' thresholds are per 8 h (0.05 %: no entry, 0.03 %: half size); a symbol settling
    every 4 h or 1 h has its rate per interval scaled to 8 h in the snapshot the strategies read,
    the charge itself staying the rate per interval at each instant."""
    day = datetime(2026, 11, 24, tzinfo=UTC).timestamp()
    account = _broker("ETHUSDT")
    every = interval_h * HOUR
    account.on_market(
        Funding(ts=day + 1, mark_price=100.0, rate_pct=rate, symbol="ETHUSDT", settled_ts=day, next_ts=day + every, interval_s=every),
        day + 1,
    )  # fmt: skip
    seen = account.snapshot(day + 2, "ETHUSDT").funding_rate_pct
    assert seen == pytest.approx(per_8h)
    assert funding_size(seen, True, 0.05, 0.03) == scale


def test_the_validators_funding_instants() -> None:
    """8 h from 00:00 UTC until the exchange says otherwise; a schedule said at an instant
    applies after it (that instant is the old schedule's)."""
    day = datetime(2026, 11, 24, tzinfo=UTC).timestamp()
    assert funding_instants(day - 1, day + 17 * HOUR) == [day, day + 8 * HOUR, day + 16 * HOUR]
    changes = [(day + 8 * HOUR, day + 12 * HOUR, 4 * HOUR), (day + 13 * HOUR, day + 14 * HOUR, HOUR)]
    assert funding_instants(day - 1, day + 16.5 * HOUR, changes) == [
        day,
        day + 8 * HOUR,
        day + 12 * HOUR,
        day + 14 * HOUR,
        day + 15 * HOUR,
        day + 16 * HOUR,
    ]


def test_an_interval_the_exchange_cannot_mean_is_not_taken() -> None:
    """`nft - ft` from 1 h to 24 h is the symbol's interval; one of seconds (a garbled frame: it
    would charge every few seconds), none, or negative is not, and the one known before holds."""
    from actors.feeds.funding import funding_interval_s

    ft = 1_790_150_400_000
    assert funding_interval_s(ft, ft + 3_600_000) == HOUR
    assert funding_interval_s(ft, ft + 86_400_000) == 24 * HOUR
    for nft in (ft + 1000, ft + 3_599_999, ft, ft - 3_600_000, ft + 86_400_001, None):
        assert funding_interval_s(ft, nft) is None, nft
    assert funding_interval_s(None, ft) is None


def test_a_charge_off_its_instants_is_named_and_an_instant_missed_too() -> None:
    """Hand-built: a long from 07:00 charged at 08:00 and, wrongly, at 10:00 (no instant on the
    8 h schedule, nor on a 4 h one), and at 12:00 (one of a 4 h symbol's, as market.jsonl says):
    without the exchange's word 10:00 and 12:00 are named; with a 4 h schedule from 09:00, 10:00
    is named and 12:00 passes; its 12:00 charge left out is named as missing."""
    day = datetime(2026, 11, 24, tzinfo=UTC).timestamp()

    def charge(hour: int) -> dict[str, Any]:
        at = iso(day + hour * HOUR)
        return {"ts": at, "kind": "funding", "instant": at, "symbol": "ETHUSDT", "rate_pct": 0.01}

    fill = {"ts": iso(day + 7 * HOUR), "kind": "order.filled", "symbol": "ETHUSDT", "side": "buy", "qty": 0.1}
    stop = {"ts": iso(day + 13 * HOUR), "kind": "session.stopped"}
    started = {"ts": iso(day + 6 * HOUR), "kind": "session.started", "started_ts": day + 6 * HOUR}

    def events(*hours: int) -> list[dict[str, Any]]:
        listed = [started, fill, *(charge(h) for h in hours), stop]
        return [{"seq": n, **e} for n, e in enumerate(listed, 1)]

    report = {"funding_source": "feed", "status": "ok", "data_source": "bitunix"}
    four = {"ETHUSDT": [(day + 9 * HOUR, day + 12 * HOUR, 4 * HOUR)]}
    at = {h: f"2026-11-24T{h:02d}:00:00Z" for h in (8, 10, 12, 16)}
    assert check_funding_charges(events(8, 10, 12), report) == [
        f"ETHUSDT: a funding charge at {at[10]}, not one of its funding instants (00:00, 08:00 or 16:00 UTC)",
        f"ETHUSDT: a funding charge at {at[12]}, not one of its funding instants (00:00, 08:00 or 16:00 UTC)",
    ]
    assert check_funding_charges(events(8, 10, 12), report, four) == [
        f"ETHUSDT: a funding charge at {at[10]}, not one of its funding instants (the exchange's schedule)"
    ]
    assert check_funding_charges(events(8, 12), report, four) == []
    assert check_funding_charges(events(8), report, four) == [
        f"ETHUSDT: no funding charge at {at[12]}, with the net position +0.10000000 open at it"
    ]


@pytest.mark.slow
async def test_a_live_session_and_its_replay_charge_a_4h_symbol_at_its_exchanges_instant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole live session against the fake, ETHUSDT on 4 h funding beside BTCUSDT on 8 h, from
    70 s before a 4 h instant that is no 8 h one to 5 s after it (the session's clock the
    exchange's, as live): the zigzag's cross at the candle closing a minute before the instant
    opens a position in each; ETHUSDT's is charged at the instant, BTCUSDT's is not; the run is
    valid, and `--replay` books the same charge."""
    import types

    import trio

    import actors.clock
    from actors.session import run_session
    from tests.conftest import read_events
    from tests.test_feed_bitunix import replay_cli
    from tools.validate_session import validate

    lead = 70.0
    wall = time.time()
    instant = (math.floor((wall - 4 * HOUR) / (8 * HOUR)) + 1) * 8 * HOUR + 4 * HOUR
    offset = instant - lead - wall
    real = time.time
    monkeypatch.setattr(actors.clock, "time", types.SimpleNamespace(time=lambda: real() + offset))
    fake = FakeBitunix(
        seed=12, symbols=tuple(QTY), zigzag_pct=0.2, funding_hours={"ETHUSDT": 4}, time_offset_s=offset
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.run)
        config = session_config(TWO_SYMBOLS, fake, tmp_path, lead + 5)
        with trio.fail_after(lead + 60):
            result = await run_session(config, handle_signals=False, progress_mode="off")
        nursery.cancel_scope.cancel()
    events = read_events(result.run_path)
    charges = [e for e in events if e["kind"] == "funding"]
    when = datetime.fromtimestamp(instant, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert [(e["symbol"], e["instant"]) for e in charges] == [("ETHUSDT", when)]
    assert charges[0]["position_qty"] != 0
    want_rate = float(fake.markets["ETHUSDT"].price_data(round(instant * 1000) + 1000)["fr"])
    assert charges[0]["rate_pct"] == pytest.approx(want_rate)
    assert validate(result.run_path) == []
    replayed = await replay_cli(result.run_path, tmp_path)
    again = [e for e in read_events(replayed) if e["kind"] == "funding"]
    keys = ("symbol", "instant", "rate_pct", "mark_price", "position_qty", "amount", "rate_settled_at")
    assert [[e.get(k) for k in keys] for e in again] == [[e.get(k) for k in keys] for e in charges]
    assert validate(replayed) == []
