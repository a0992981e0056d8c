"""Benchmark loaders with their official metrics (registry filled by the loader modules)."""
