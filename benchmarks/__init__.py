"""fleetscore's benchmarks: run from a source checkout against the installed package, never
shipped in the wheel (``fleetscore bench``, ``python -m benchmarks.bench_backfill``, ...;
docs/benchmarks.md)."""
