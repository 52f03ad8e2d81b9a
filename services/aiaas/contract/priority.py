"""How soon a waiting job runs, read before its body is: its lane (topic) and its `aiaas.priority` header.

A service holds at most its in-flight window of jobs; the rest wait in Kafka, in partition order. A priority
only in the job's body could not help a job stuck in a partition behind a backlog, and it is read only once the
job is decoded. So a job's urgency travels where the pipeline sees it without decoding anything:

* **the lane**: a job of priority > 0 is published to the model's urgent topic
  (`<prefix>.<model>.infer-urgent`, a tenant's `….infer-urgent.<tenant>`; `ModelTopics.job_topic`). The service
  takes the urgent lane's records before the infer topics' whenever its window has room, and under back-pressure
  pauses the infer topics while the urgent lane goes on fetching;
* **the header** `aiaas.priority` (the job's `priority`, a whole number from -100 to 100; absent means 0): the
  queue of taken jobs is cut highest rank first, where a job's rank is its priority, plus `URGENT_RANK` on an
  urgent topic (`rank`).

Neither starves the rest: a quarter of every batch goes to the oldest jobs whatever their ranks (`JobQueue`), and
urgent records take at most three quarters of the window and of each fetch's room (`serving/pipeline.py`).
Between tenants, batches still take each tenant's jobs in turn, and a tenant's urgent lane counts against its share
of the window: a tenant's priorities order only its own jobs. A retry record keeps the header (not the lane).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from aiaas.errors import InvalidHeaders

__all__ = ["PRIORITY_HEADER", "PRIORITY_PATTERN", "LOWEST", "HIGHEST", "URGENT_RANK", "priority_headers",
           "check_priority", "rank"]

PRIORITY_HEADER = "aiaas.priority"
"""The job's priority as decimal text: which waiting jobs the service cuts into its next batch first."""
LOWEST, HIGHEST = -100, 100
"""The range of `Job.priority` and of the header."""
PRIORITY_PATTERN = r"-?[0-9]{1,3}"
"""What the header's value looks like (then checked against LOWEST and HIGHEST)."""
_PRIORITY = re.compile(PRIORITY_PATTERN)
URGENT_RANK = 1_000
"""Added to the rank of a job on an urgent topic: above every priority on an infer topic."""


def priority_headers(priority: int) -> list[tuple[str, bytes]]:
    """The header a publisher adds for `priority` (none for 0, the default)."""
    return [(PRIORITY_HEADER, str(priority).encode())] if priority else []


def check_priority(value: str) -> int:
    """The header's priority; raises InvalidHeaders when it is not a whole number from LOWEST to HIGHEST."""
    if not _PRIORITY.fullmatch(value):
        raise InvalidHeaders(f"header {PRIORITY_HEADER} is not a whole number")
    priority = int(value)
    if not LOWEST <= priority <= HIGHEST:
        raise InvalidHeaders(f"header {PRIORITY_HEADER} is {priority}: a priority is from {LOWEST} to {HIGHEST}")
    return priority


def rank(urgent: bool, headers: Iterable[tuple[object, object]] | None) -> int:
    """How early a taken record is cut into a batch: higher first. Never raises: a header that is missing or not a
    priority counts as 0 here (the worker dead-letters a job whose header is not one)."""
    base = URGENT_RANK if urgent else 0
    for key, value in headers or ():
        if key == PRIORITY_HEADER and isinstance(value, (bytes, bytearray)):
            try:
                return base + check_priority(value.decode("ascii"))
            except (InvalidHeaders, UnicodeDecodeError):
                return base
    return base
