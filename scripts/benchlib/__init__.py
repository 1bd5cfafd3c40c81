"""The pieces of scripts/bench.py, one module per section of the benchmark (see BENCHMARKS.md)."""
