"""The benchmark suite: `python -m bench --help`, and docs/benchmarks.md."""
