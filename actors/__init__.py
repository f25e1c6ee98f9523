"""btc-laptop-agents: the actors of an autonomous paper-trading session."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("btc-laptop-agents")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.1.0+source"
