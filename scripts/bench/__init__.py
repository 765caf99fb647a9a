"""oaknet's benchmarks: one module per group, run by ``python -m bench`` (see docs/benchmarks.md)."""
