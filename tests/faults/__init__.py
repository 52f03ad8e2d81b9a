"""The fault suite: the vision service against the real broker while workers, the broker and the reader fail.

Run it with `python -m tests.faults.run` (see docs/fault-suite.md); `test_faults.py` runs the same
scenarios with a smaller N under pytest (`slow`, `integration`).
"""
