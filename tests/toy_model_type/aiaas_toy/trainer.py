"""`aiaas models build toy`: the one-node graph, exported with onnx and registered as production."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from aiaas.registry.store import ModelVersion, Registry
from aiaas_toy import MODEL


def build(registry: Registry) -> ModelVersion:
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "toy",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])], [two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "toy.onnx"
        onnx.save(model, path)
        return registry.register(MODEL, path, metrics={"accuracy": 1.0})
