"""The project's fake Bitunix exchange (a real server on 127.0.0.1): see `server.py`; its fault
schedules (deterministic by count, or by wall clock) are in `faults.py`.

`FakeBitunix` is imported on first use: the server needs hypercorn (the test extra), and
`python -m tools.fake_bitunix` says so in one line when it is missing (`__main__.py`)."""

from typing import TYPE_CHECKING, Any

from tools.fake_bitunix.faults import MALFORMED_KINDS, FakeStats, Faults

if TYPE_CHECKING:
    from tools.fake_bitunix.server import FakeBitunix


def __getattr__(name: str) -> Any:
    if name == "FakeBitunix":
        from tools.fake_bitunix.server import FakeBitunix

        return FakeBitunix
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MALFORMED_KINDS", "FakeBitunix", "FakeStats", "Faults"]
