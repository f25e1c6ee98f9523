"""The project's fake Bitunix exchange (a real server on 127.0.0.1): see `server.py`; its fault
schedules (deterministic by count, or by wall clock) are in `faults.py`."""

from tools.fake_bitunix.faults import MALFORMED_KINDS, FakeStats, Faults
from tools.fake_bitunix.server import FakeBitunix

__all__ = ["MALFORMED_KINDS", "FakeBitunix", "FakeStats", "Faults"]
