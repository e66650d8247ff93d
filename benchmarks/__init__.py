"""Benchmarks: scripts that measure and print tables; never part of the test run."""
