"""The tests' process helpers: the one copy lives in harness/procs.py (shared with bench/)."""

from harness.procs import PY, ROOT, free_port, running, start, stop, wait_http, wait_until

__all__ = ["PY", "ROOT", "free_port", "running", "start", "stop", "wait_http", "wait_until"]
