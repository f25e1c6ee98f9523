"""btc-laptop-agents: the actors of an autonomous paper-trading session."""

# The one place the version is written (pyproject.toml reads it from here): no package metadata
# lookup at start-up.
__version__ = "0.1.0"
