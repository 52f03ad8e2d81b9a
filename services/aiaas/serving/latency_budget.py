"""How many jobs the next batch may take so a job's time in the service stays within a latency budget.

A job waits in the queue for a model instance, then runs in its batch: with batches of `n`, both take about one
call of `n` jobs, so a call may take at most half of the budget (`LatencyBudget.most_jobs`). How long a call of `n`
jobs takes is learnt from the service's own recent calls (`BatchTimes`: a straight line, fixed cost plus a cost
per job, fitted to them), so the cap follows the model, the machine and its load as they change; until a few calls
were seen, and where not even one job's call fits in half the budget, batches go up to `max_batch`.

A cap trades throughput for latency: a smaller batch pays the call's fixed cost over fewer jobs, and with several
model instances a queue is shared among them instead of going whole to the first one free. Once the oldest waiting
job could no longer be answered within the budget even by a capped batch, the budget is lost for it and the jobs
behind it whatever the cut, and only throughput shortens the queue: the cut goes back to `max_batch` until the
backlog is gone. (The same while the service's in-flight window is full and jobs wait in Kafka, where their wait is
not seen: `JobPipeline` asks for no cap then.) So at light load a job's batch is small and its wait short, and a
load the capped batches cannot keep up with still gets the service's full throughput (Clipper's adaptive batching
adapts its batch size to a latency objective in the same spirit, by additive increase and multiplicative decrease;
Triton's and BentoML's batchers bound the wait instead). The oldest queued job is the oldest of any rank: with
urgent jobs queued, a backlog of ordinary ones lifts the cap for the urgent ones' batches too.
"""

from __future__ import annotations

import math

__all__ = ["BatchTimes", "LatencyBudget"]


class BatchTimes:
    """A call's duration as `fixed + per_job × n`, fitted by least squares to recent calls (older ones fade).

    Each new call weighs as much as all those `memory` calls before it together, so a model that slows down (a busy
    machine, longer inputs) is followed within a few dozen batches.
    """

    MIN_CALLS = 4
    """Calls seen before the fit is trusted."""

    def __init__(self, memory: int = 64) -> None:
        if memory < 1:
            raise ValueError(f"memory is a number of calls, at least 1; got {memory}")
        self._keep = 1 - 1 / memory  # each call's weight fades by this factor per later call
        self._weight = self._n = self._t = self._nn = self._nt = 0.0
        self.calls = 0

    def observe(self, jobs: int, seconds: float) -> None:
        """One call of `jobs` jobs took `seconds`."""
        if jobs < 1 or not math.isfinite(seconds) or seconds < 0:
            return
        k = self._keep
        self._weight = self._weight * k + 1
        self._n = self._n * k + jobs
        self._t = self._t * k + seconds
        self._nn = self._nn * k + jobs * jobs
        self._nt = self._nt * k + jobs * seconds
        self.calls += 1

    def line(self) -> tuple[float, float] | None:
        """(fixed seconds, seconds per job), neither below 0; None until `MIN_CALLS` calls were seen.

        Calls of one size only tell the time per job of that size: the fixed part is then taken as 0, which makes
        smaller batches look faster than they are; the first smaller calls correct it."""
        if self.calls < self.MIN_CALLS:
            return None
        mean_n, mean_t = self._n / self._weight, self._t / self._weight
        spread = self._nn / self._weight - mean_n * mean_n
        if spread > 1e-9 * mean_n * mean_n:
            per_job = (self._nt / self._weight - mean_n * mean_t) / spread
            if per_job > 0:
                fixed = mean_t - per_job * mean_n
                return (fixed, per_job) if fixed >= 0 else (0.0, mean_t / mean_n)
        return 0.0, mean_t / mean_n

class LatencyBudget:
    """The size of the next cut: small enough for the budget, or `max_batch` when it is unknown or already lost."""

    def __init__(self, budget_s: float, max_batch: int, times: BatchTimes | None = None) -> None:
        self.budget_s = budget_s
        self.max_batch = max_batch
        self.times = times or BatchTimes()

    def observe(self, jobs: int, seconds: float) -> None:
        """A batch of `jobs` jobs took `seconds` from its cut to its outcomes (`BatchTimes.observe`)."""
        self.times.observe(jobs, seconds)

    def most_jobs(self, oldest_wait_s: float) -> int:
        """Most jobs for the next batch, the oldest queued job having waited `oldest_wait_s`."""
        line = self.times.line()
        if line is None:
            return self.max_batch
        fixed, per_job = line
        room = self.budget_s / 2 - fixed
        if per_job <= 0 or room < per_job:
            return self.max_batch  # no cap: calls cost nothing per job, or not even one job's fits half the budget
        capped = min(self.max_batch, int(room / per_job + 1e-9))  # (26 / 4 ms is 6, not 5.999…)
        if oldest_wait_s + fixed + per_job * capped > self.budget_s:
            return self.max_batch  # too late for the budget: throughput is what shortens the queue now
        return capped
