"""The on-disk formats: event times written as the datetime module would write them."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
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
