"""The toy model under ONNX Runtime: `y = 2 x` for a float32 vector `x` of length 4."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aiaas.contract.envelopes import Job, Tensor
from aiaas.errors import InvalidJob
from aiaas.registry.store import Registry
from aiaas.serving.onnx_session import open_session
from aiaas.serving.runtime import Outputs
from aiaas_toy import MODEL


class ToyRuntime:
    model = MODEL

    def __init__(self, onnx_bytes: bytes, version: str) -> None:
        self._session = open_session(onnx_bytes, "cpu")
        self.version = version

    @classmethod
    def from_registry(cls, registry: Registry, ref: str) -> ToyRuntime:
        version, data = registry.load_verified(MODEL, ref)
        return cls(data, str(version.version))

    def serves(self, ref: str) -> bool:
        return ref in (self.version, f"v{self.version}", "production")

    def prepare(self, job: Job) -> np.ndarray:
        x = job.inputs.get("x")
        if not isinstance(x, Tensor) or tuple(x.shape) != (4,):
            raise InvalidJob("toy jobs need `x`: a tensor of shape [4]")
        return x.to_numpy().astype(np.float32)

    def infer(self, items: Sequence[np.ndarray]) -> list[Outputs]:
        (y,) = self._session.run(None, {"x": np.stack(items)})
        return [{"y": row} for row in Tensor.rows(y)]
