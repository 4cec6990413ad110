"""Process helpers shared by the tests (tests/) and the benchmarks (bench/): not part of the product.

`harness.procs` starts the project's servers as real processes on loopback, waits for them and stops
them. bench/ scripts run as `python bench/x.py` put the repo root on sys.path to import it.
"""
