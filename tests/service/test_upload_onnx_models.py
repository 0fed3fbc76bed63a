"""Uploads of the models users bring (issue 19): an opset-11 torch export and an opset-8 model-zoo file are
converted and inspected in the sandbox, listing every weighted layer; a hostile size is a clear refusal."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from service.uploads import UploadError, inspect_model
from tests.models_onnx import MODELS, weighted_layers


def test_opset_11_export_is_converted_and_every_layer_listed() -> None:
    torch.manual_seed(0)
    model = MODELS["mobilenetv3_block"]().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        example = MODELS["mobilenetv3_block"].example_inputs()
        # the TorchScript exporter writes to file objects too
        torch.onnx.export(model, example, buf, dynamo=False, opset_version=11)  # type: ignore[arg-type]
    stored, info = inspect_model(buf.getvalue())
    assert stored == buf.getvalue()  # the file as uploaded; the worker converts again when it loads it
    assert info["n_layers"] == weighted_layers(model) and len(info["graph"]) == weighted_layers(model)


def test_model_zoo_file_at_opset_8_is_inspected() -> None:
    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_squeezenet.onnx"
    if not path.exists():
        pytest.skip(f"{path} is not in this onnx wheel")
    proto = onnx.load(str(path))
    _, info = inspect_model(path.read_bytes())
    assert info["n_layers"] == sum(n.op_type == "Conv" for n in proto.graph.node)


def test_hostile_expand_is_refused_naming_node_and_operator() -> None:
    shape = numpy_helper.from_array(np.array([1, 1, 1 << 20, 1 << 20], np.int64), "shape")
    graph = helper.make_graph([helper.make_node("Expand", ["x", "shape"], ["y"], name="blowup")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b", "c", "d"])], [shape])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    with pytest.raises(UploadError, match=r"node 'blowup' \(Expand\): input 1 \(shape\) asks for a tensor of"):
        inspect_model(data)
