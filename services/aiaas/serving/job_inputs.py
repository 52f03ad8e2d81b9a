"""Checks of a job's task and plain inputs that several model types' runtimes share (`prepare`): each raises
InvalidJob saying what is valid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aiaas.contract.envelopes import Job
from aiaas.errors import InvalidJob

__all__ = ["TaskInputs", "integer_input", "boolean_input"]


class TaskInputs:
    """The tasks of a model type and the inputs each one takes (sets made once: `check` runs for every job)."""

    def __init__(self, model: str, tasks: Mapping[str, Sequence[str]]) -> None:
        self._model = model
        self._tasks = dict(tasks)
        self._allowed = {task: frozenset(inputs) for task, inputs in tasks.items()}

    def check(self, job: Job) -> str:
        """The job's task, when it is one of the tasks and the job brings only that task's inputs."""
        allowed = self._allowed.get(job.task) if job.task is not None else None
        if job.task is None or allowed is None:
            wanted = f"the task {next(iter(self._tasks))}" if len(self._tasks) == 1 \
                else f"a task, one of {', '.join(self._tasks)}"
            raise InvalidJob(f"{self._model} jobs need {wanted}; got {job.task!r}")
        if not job.inputs.keys() <= allowed:
            raise InvalidJob(f"task {job.task!r} takes inputs {', '.join(self._tasks[job.task])}; "
                             f"unexpected: {', '.join(sorted(job.inputs.keys() - allowed))}")
        return job.task


def integer_input(job: Job, name: str, default: int | None = None) -> int:
    """A plain integer input, `default` when the job leaves it out (booleans are not integers here)."""
    value = job.inputs.get(name, default)
    if type(value) is int:  # the usual case, first
        return value
    if value is None:
        raise InvalidJob(f"task {job.task!r} needs an integer input `{name}`")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJob(f"`{name}` must be an integer; got {type(value).__name__}")
    return value


def boolean_input(job: Job, name: str, default: bool) -> bool:
    """A plain boolean input, `default` when the job leaves it out."""
    value = job.inputs.get(name, default)
    if not isinstance(value, bool):
        raise InvalidJob(f"`{name}` must be a boolean; got {type(value).__name__}")
    return value
