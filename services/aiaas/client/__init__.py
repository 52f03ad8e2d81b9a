"""The Python client: publish jobs and read results (`AiaasClient`), and remember what a reader has handed on
(`SeenFile`)."""

from .client import AiaasClient, JobHandle, StreamRestart
from .seen_file import SeenFile, SeenFileLocked

__all__ = ["AiaasClient", "JobHandle", "StreamRestart", "SeenFile", "SeenFileLocked"]
