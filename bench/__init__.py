"""Benchmarks behind `make bench`: each reports a ratio against a baseline measured in the same run.

Absolute timings on a shared machine are noise; a ratio of two measurements taken side by side
is not. Never used by the tests.
"""
