"""The project's fake Bitunix exchange (a real server on 127.0.0.1): see `server.py`."""

from tools.fake_bitunix.server import MALFORMED_KINDS, FakeBitunix, FakeStats, Faults

__all__ = ["MALFORMED_KINDS", "FakeBitunix", "FakeStats", "Faults"]
