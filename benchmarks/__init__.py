"""Benchmarks for the emoserve stack, run from the repository root: ``python -m benchmarks.run_all`` (``make bench``)
or one step, e.g. ``python -m benchmarks.perf_analyzer``."""
