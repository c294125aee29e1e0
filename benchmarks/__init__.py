"""Throughput benchmarks: scripts that write JSON under ``benchmarks/results/`` (not timed tests)."""
