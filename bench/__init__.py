"""Benchmarks that print figures (not timed tests); never deployed. ``python -m bench.token_store``."""
