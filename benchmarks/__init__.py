"""Benchmarks for the emoserve stack (run from the repository root: ``python -m benchmarks.a2e_bench``)."""
