"""Edits of exported ONNX graphs that several model types' trainers share (recsys, rnn). No torch here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["rank_top_k_from_input"]


def rank_top_k_from_input(path: Path, input_name: str, n_items: int, expected_top_ks: int) -> None:
    """Every TopK of the graph at `path` takes its k from the graph input `input_name` instead of the traced
    constant, and the file is rewritten.

    The runtime feeds the largest k its batch asks for, so ONNX Runtime sorts partially, which costs much less
    than ranking every item when k is small. ONNX's TopK specification orders equal scores by index, so a row is
    the prefix of the full ranking whatever k is. The input has a default, an initializer of the same name holding
    `n_items`: a caller that does not feed it (a service of an earlier version) still gets every item ranked.
    The outputs' second axis becomes `top_k`. ValueError when the graph has not `expected_top_ks` TopK nodes.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    top_ks = [node for node in graph.node if node.op_type == "TopK"]
    if len(top_ks) != expected_top_ks:
        raise ValueError(f"expected {expected_top_ks} TopK nodes in the exported graph, found {len(top_ks)}")
    for node in top_ks:
        node.input[1] = input_name
    graph.input.append(helper.make_tensor_value_info(input_name, TensorProto.INT64, [1]))
    graph.initializer.append(numpy_helper.from_array(np.array([n_items], np.int64), input_name))
    for output in graph.output:
        output.type.tensor_type.shape.dim[1].dim_param = "top_k"
    _drop_unused_nodes(graph)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def _drop_unused_nodes(graph: Any) -> None:
    """Remove nodes none of whose outputs is used (the constants that held the traced k)."""
    while True:
        used = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
        unused = [node for node in graph.node if not any(name in used for name in node.output)]
        if not unused:
            return
        for node in unused:
            graph.node.remove(node)
