"""Parameter sweeps and walk-forward over backtests, on Ray: `python -m tools.sweep SPEC.toml`
(docs/sweeps.md)."""
