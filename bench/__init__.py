"""mixq's benchmarks: runnable scripts that print a markdown table and write it under
``bench/results/``.  Targets are reported, never asserted."""
