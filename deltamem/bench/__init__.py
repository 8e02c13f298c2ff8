"""Benchmarks (run as modules, e.g. `python -m deltamem.bench.ops`)."""
