"""Benchmarks beside the profiler: our losses against open_clip's, and the one-GPU check."""
