"""mixq's benchmarks: runnable scripts that print a markdown table and write it under
``bench/results/<benchmark>/<setting>.md`` (run caches in ``bench/cache/``).  Targets are reported, never asserted."""
