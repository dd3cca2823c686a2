"""Benchmark ablations: a CPU config with one thing changed, for the comparisons in benchmarks/ (docs/benchmarks.md)."""
