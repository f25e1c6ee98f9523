"""The on-disk formats: event times written as the datetime module would write them."""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.records import iso


def _reference(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@given(st.floats(min_value=0, max_value=4.1e9, allow_nan=False, allow_infinity=False))
def test_iso_is_the_datetime_modules_format(ts: float) -> None:
    assert iso(ts) == _reference(ts)


def test_iso_at_the_edges_of_a_millisecond_and_a_second() -> None:
    for ts in (1704067200.0, 1704067259.999, 1e9 + 0.9999995, 1e9 + 0.9999994, 1796158265.5706525):
        assert iso(ts) == _reference(ts)


# --- metrics.csv's figures, and a backtest quote's grid ------------------------------------------


def _fixed_reference(value: float, decimals: int) -> str:
    """What metrics.csv wrote before its writer took the format's own rounding: `round` first,
    and a zero without its sign."""
    rounded = round(value, decimals)
    return f"{rounded + 0.0 if rounded else 0.0:.{decimals}f}"


@given(
    st.one_of(
        st.floats(allow_nan=False), st.integers(-(10**12), 10**12), st.sampled_from([-0.0, -0.004, -0.005])
    ),
    st.integers(0, 8),
)
def test_a_metrics_figure_is_written_as_round_then_format_would(value: float, decimals: int) -> None:
    from protocols.records import _formatted

    assert _formatted(value, f".{decimals}f") == _fixed_reference(value, decimals)
    assert _formatted(None, f".{decimals}f") is None


def test_a_metrics_row_is_written_as_the_dict_writer_wrote_it() -> None:
    import csv
    import io

    from protocols.records import METRIC_COLUMNS, metrics_csv_row, metrics_csv_values

    rows = [
        {"ts": "2026-01-01T00:00:00.000Z", "elapsed_s": 1.23456, "price": 60000.04999, "equity": -0.001},
        {"mark_source": "candles", "cpu_pct": 3.25, "disk_free_mb": None, "position_qty": -0.00004},
    ]
    before, after = io.StringIO(newline=""), io.StringIO(newline="")
    old = csv.DictWriter(before, fieldnames=METRIC_COLUMNS)
    old.writeheader()
    old.writerows(metrics_csv_row(row, 1, 4) for row in rows)
    new = csv.writer(after)
    new.writerow(METRIC_COLUMNS)
    new.writerows(metrics_csv_values(row, 1, 4) for row in rows)
    assert after.getvalue() == before.getvalue()
    # a column the row lacks, or holds None, is empty; a figure rounded for people
    assert after.getvalue().splitlines()[1] == "2026-01-01T00:00:00.000Z,1.235,60000.0,,0.00,,,,,,,,,,"
    assert after.getvalue().splitlines()[2].split(",")[9:12] == ["0.0000", "", "3.25"]


def _grid_reference(price: float, scale: int) -> tuple[float, float]:
    """The quote's bid and ask on the grid, as `round` tells a price on it from one between ticks."""
    units = price * scale
    if -1e-6 < units - round(units) < 1e-6:
        return price, price
    return math.floor(units) / scale, math.ceil(units) / scale


@given(
    st.one_of(
        st.floats(min_value=1e-4, max_value=1e7, allow_nan=False),
        # prices a hair off a tick, both sides, at the edge of the tolerance
        st.builds(
            lambda n, d, k: (n + d) / 10**k,
            st.integers(1, 10**8),
            st.sampled_from([0.0, 1e-6, -1e-6, 9.9e-7, -9.9e-7, 1.01e-6, 0.5, -0.5, 1e-9]),
            st.integers(0, 6),
        ),
    ),
    st.sampled_from([1, 10, 100, 1000, 10**4, 10**5, 10**6]),
)
def test_a_backtest_quote_is_on_the_grid_as_the_round_formula_puts_it(price: float, scale: int) -> None:
    from actors.broker.paper import _grid_bid_ask

    assert _grid_bid_ask(price, scale) == _grid_reference(price, scale)


def _as_read(value: object) -> object:
    """A value as JSON reads it back: tuples are arrays."""
    if isinstance(value, dict):
        return {k: _as_read(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_as_read(v) for v in value]
    return value


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(st.dictionaries(st.text(min_size=1, max_size=6), _json_values, max_size=5))
def test_an_events_record_is_what_its_line_says(fields: dict[str, object]) -> None:
    """NaN and the infinities are written as null and read back as None, None as None: the record
    the report is folded from is the line's, whatever the fields hold."""
    import orjson

    from protocols.messages import Event
    from protocols.records import event_line

    record, line = event_line(7, Event(1704067200.25, "probe", dict(fields)))
    assert _as_read(record) == orjson.loads(line)


def _same_double(a: float, b: float) -> bool:
    return struct.pack("<d", a) == struct.pack("<d", b)


@settings(max_examples=2000)
@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        # whole steps of 10 ** -k, as a lot or a tick makes them, and their sums' float noise
        st.builds(lambda n, k: n / 10**k, st.integers(-(10**15), 10**15), st.integers(0, 12)),
        st.builds(
            lambda n, m, k: n / 10**k + m / 10**k,
            st.integers(-(10**6), 10**6),
            st.integers(0, 10**6),
            st.integers(0, 10),
        ),
        st.builds(lambda n, k: n * 10.0**-k, st.integers(-(10**9), 10**9), st.integers(0, 12)),
        # halves and a hair off them, zeros of both signs, values too small to keep
        st.builds(
            lambda n, d, k: (n + d) / 10**k,
            st.integers(-(10**8), 10**8),
            st.sampled_from([0.5, -0.5, 0.5000001, 1e-9]),
            st.integers(0, 10),
        ),
        st.sampled_from([0.0, -0.0, 1e-300, -1e-300, 2.0**40, -(2.0**40), 2.0**51, 0.125, 2.5, -2.5]),
    ),
    st.integers(0, 15),
)
def test_fast_round_is_round_to_the_bit(x: float, ndigits: int) -> None:
    # `round` is the reference (the module's shortcut takes a whole-number product's quotient)
    from protocols.instruments import fast_round

    assert _same_double(fast_round(x, ndigits), round(x, ndigits)), (x, ndigits)


def test_fast_round_takes_its_shortcut_on_grid_values_and_round_elsewhere() -> None:
    # the shortcut is the one taken for a quantity on its lot: 0.01 * 1e8 is a whole double
    from protocols.instruments import fast_round

    for x, ndigits in ((0.01, 8), (0.03, 8), (-0.0, 8), (59573.9, 1), (2700.0, 3)):
        assert _same_double(fast_round(x, ndigits), round(x, ndigits))
        assert (x * 10.0**ndigits) % 1.0 == 0.0  # the whole-number product: the quotient is returned
    assert fast_round(0.1 + 0.2, 8) == 0.3 and fast_round(2.675, 2) == round(2.675, 2) == 2.67


@settings(max_examples=2000, deadline=None)
@given(ts=st.one_of(st.floats(-3e9, 7e9), st.integers(-3 * 10**9, 7 * 10**9).map(float)))
def test_the_pages_times_are_strftimes(ts: float) -> None:
    """The report page's times, `utc_clock` and `utc_millis`, against `time.strftime` of
    `time.gmtime` (the reference; the milliseconds cut, not rounded)."""
    import time

    from protocols.records import utc_clock, utc_millis

    secs = math.floor(ts)
    clock = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(secs))
    assert utc_clock(secs) == clock
    assert utc_clock(secs) == time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))  # gmtime floors too
    assert utc_millis(ts) == f"{clock}.{int((ts - secs) * 1000):03d}"
