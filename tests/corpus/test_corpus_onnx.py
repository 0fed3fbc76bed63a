"""The ONNX path on the model corpus (``tests/corpus/models.py``): every model, freshly initialised and with
trained-like weights, exported by torch's stock exporters -- the TorchScript one (``dynamo=False``) at
opsets 17 and 13 and the ``torch.export``-based one (``dynamo=True``, onnxscript) at opsets 18 and 20 -- imports
(:func:`load_onnx_model`), matches onnxruntime (max relative error <= 1e-4, default session options), and
every Conv / ConvTranspose / Gemm / MatMul with a constant weight is a searchable layer.  The files the
importer cannot take are listed in :data:`REFUSED`, and the test shows it refuses them naming node and
operator.  A few representative models go further: the sandboxed upload path, a 3-trial search on the
imported module and a QDQ export round trip."""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from search import SearchSpec, run_search
from search.quant.export_onnx import export_onnx, verify_onnx
from search.quant.formats import parse_format
from search.quant.layers import discover_layers
from search.quant.onnx_import import OnnxImportError, load_onnx_model
from search.quant.qat import calibrate, quantize_model
from tests.corpus.models import BATCH_DIM, CORPUS, build, corpus_workload, input_batch, weight_layers

torch.set_num_threads(1)
NAMES = sorted(CORPUS)
ATTENTION = {"vit": 2, "text_encoder": 2}  # nn.MultiheadAttention blocks
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# (exporter, opset): the TorchScript exporter at 17 (what the README says) and 13; the torch.export one at 18
# (its first opset: lower ones go through onnx's version converter) and 20.  scaled_dot_product_attention exports
# from opset 14 only: the attention models take 14 where the grid says 13.
EXPORTS = [("torchscript", 17), ("torchscript", 13), ("dynamo", 18), ("dynamo", 20)]
MIN_OPSET = {"vit": 14, "text_encoder": 14}
# what the importer refuses, with the message it gives (a regex): none now (the text encoder's int64 token
# input was refused until integer inputs were accepted)
REFUSED: dict[tuple[str, str], str] = {}


@functools.cache
def exported(name: str, trained: bool, exporter: str, opset: int) -> bytes:
    model, example = build(name, trained=trained)
    opset = max(opset, MIN_OPSET.get(name, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            level = logging.root.manager.disable
            logging.disable(logging.WARNING)  # its progress lines ("Obtain model graph ...") go to stdout
            try:
                program = torch.onnx.export(model.eval(), example, dynamo=True, opset_version=opset, verbose=False)
            finally:
                logging.disable(level)
            assert program is not None
            return program.model_proto.SerializeToString()  # type: ignore[no-any-return]
        buf = io.BytesIO()
        torch.onnx.export(model.eval(), example, buf, dynamo=False, opset_version=opset)
    return buf.getvalue()


def weighted_nodes(data: bytes) -> int:
    """Conv / ConvTranspose / Gemm / MatMul nodes of the file whose weight (input 1) is a constant: an
    initializer or a Constant, possibly through Identity / Transpose / Reshape / Cast of one (attention's
    Q K^T and A V, two activations, are not counted)."""
    graph = onnx.load_from_string(data).graph
    constant = {init.name for init in graph.initializer}
    for node in graph.node:  # topological order
        if node.op_type == "Constant" or (
            node.op_type in ("Identity", "Transpose", "Reshape", "Cast", "Unsqueeze", "Squeeze")
            and node.input and all(i in constant for i in node.input if i)
        ):
            constant.update(node.output)
    return sum(node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in constant
               for node in graph.node)


def max_relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-12))


GRID = [
    pytest.param(name, trained, exporter, opset, id=f"{name}-{'trained' if trained else 'fresh'}-{exporter}{opset}")
    for name in NAMES for exporter, opset in EXPORTS for trained in (False, True)
]


@pytest.mark.parametrize(("name", "trained", "exporter", "opset"), GRID)
def test_exported_corpus_model_imports_matches_onnxruntime_and_lists_every_weight(
    name: str, trained: bool, exporter: str, opset: int
) -> None:
    data = exported(name, trained, exporter, opset)
    if (name, exporter) in REFUSED:
        with pytest.raises(OnnxImportError, match=REFUSED[name, exporter]):
            load_onnx_model(data)
        return
    module = load_onnx_model(data)
    model, (example,) = build(name, trained=trained)
    x = input_batch(name, example, 1, torch.Generator().manual_seed(1))  # the files are static in batch
    with torch.no_grad():
        got = module(x)
    outputs = got if isinstance(got, tuple) else (got,)
    session = ort.InferenceSession(data)  # onnxruntime's default options
    want = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert len(outputs) == len(want)
    for g, w in zip(outputs, want, strict=True):
        assert g.shape == w.shape and max_relative_error(g.numpy(), w) <= 1e-4
    graph = discover_layers(module, module.example_inputs())
    n_weighted = weighted_nodes(data)
    assert len(graph.layers) == n_weighted, (graph.fqns, n_weighted)
    # and that is every weight of the torch model: nn.MultiheadAttention exports q, k, v as one packed MatMul
    assert n_weighted == weight_layers(model) - 2 * ATTENTION.get(name, 0)


def test_the_refused_files_are_the_listed_ones() -> None:
    """REFUSED stays honest: each entry is a model and exporter of the corpus."""
    assert {name for name, _ in REFUSED} <= set(NAMES)
    assert {exporter for _, exporter in REFUSED} <= {exporter for exporter, _ in EXPORTS}


# ------------------------------------------------------------------ upload, search, QDQ export round trip

# a residual CNN, depthwise + SE (Hardswish), a UNet (ConvTranspose, Resize, cat), a two-output detector
# neck at the older opset; and the ViT exported with a symbolic batch (its class token and attention reshapes
# follow the batch: see test_vit_exported_with_a_dynamic_batch_runs_at_any_batch)
UPLOADED = [
    pytest.param("resnet18", "torchscript", 17, id="resnet18-torchscript17"),
    pytest.param("mobilenet_v3", "dynamo", 18, id="mobilenet_v3-dynamo18"),
    pytest.param("unet", "dynamo", 18, id="unet-dynamo18"),
    pytest.param("yolo_neck", "torchscript", 13, id="yolo_neck-torchscript13"),
    pytest.param("vit", "torchscript-dynamic", 17, id="vit-torchscript17-dynamic"),
]


@functools.cache
def exported_dynamic(name: str, exporter: str, opset: int, dtype: torch.dtype | None = None) -> bytes:
    """Corpus model ``name`` (trained-like) exported with a symbolic batch axis (named ``batch``); ``dtype``:
    the example's (token ids as int32, say)."""
    model, (example,) = build(name, trained=True)
    dim = BATCH_DIM.get(name, 0)
    example = input_batch(name, example, 2, torch.Generator().manual_seed(0))  # torch.export specialises a 1
    example = example.to(dtype) if dtype is not None else example
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            level = logging.root.manager.disable
            logging.disable(logging.WARNING)
            try:
                program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset, input_names=["x"],
                                            dynamic_shapes=({dim: torch.export.Dim("batch")},), verbose=False)
            finally:
                logging.disable(level)
            assert program is not None
            return program.model_proto.SerializeToString()  # type: ignore[no-any-return]
        buf = io.BytesIO()
        torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=opset, input_names=["x"],
                          dynamic_axes={"x": {dim: "batch"}})
    return buf.getvalue()


def _file(name: str, exporter: str, opset: int) -> bytes:
    if exporter.endswith("-dynamic"):
        return exported_dynamic(name, exporter.removesuffix("-dynamic"), opset)
    return exported(name, True, exporter, opset)


@pytest.mark.parametrize(("name", "exporter", "opset"), UPLOADED)
def test_upload_search_and_qdq_export_round_trip(name: str, exporter: str, opset: int, tmp_path: Path) -> None:
    from service.uploads import inspect_model, load_model

    data = _file(name, exporter, opset)
    stored, info = inspect_model(data)  # the sandboxed child imports it
    assert info["format"] == "onnx" and info["n_layers"] == weighted_nodes(data)
    module = load_model(stored)
    workload = dataclasses.replace(corpus_workload(name, n_train=8, batch_size=2), model=module,
                                   example_inputs=module.example_inputs(), name=f"onnx-{name}")
    spec = SearchSpec(workload=f"onnx-{name}", n_trials=3, qat_steps=2, reevaluate_front=0,
                      seed_with_sensitivity=False, formats=("int4", "int8"), pin_first_last=None)
    result = run_search(spec, workload=workload)
    assert len(result.trials) == 3 and result.front
    assert [layer.fqn for layer in result.layers] == info["layers"]
    assignment = dict(result.front[0].assignment)

    model = load_model(stored)
    example = model.example_inputs()
    graph = discover_layers(model, example)
    quantize_model(model, {fqn: parse_format(fmt) for fqn, fmt in assignment.items()}, example, graph=graph)
    calibrate(model, [input_batch(name, example[0], 4, torch.Generator().manual_seed(2))])
    model.eval()
    path = export_onnx(model, example, tmp_path / f"{name}.qdq.onnx", dynamic_spatial=False)
    proto = onnx.load(path)
    assert {n.op_type for n in proto.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    with torch.no_grad():
        scale = max(float(o.abs().max()) for o in (lambda out: out if isinstance(out, tuple) else (out,))(
            model(*example)))
    # onnxruntime's default optimizations fuse QDQ into integer kernels: a few output steps at most
    assert verify_onnx(model, example, path, optimized=True) <= 0.05 * max(scale, 1e-6)


@pytest.mark.parametrize("exporter, opset", [("torchscript", 17), ("dynamo", 18)])
def test_vit_exported_at_a_static_batch_runs_at_that_batch_and_says_why(exporter: str, opset: int) -> None:
    """Both exporters write the class token's expand(x.shape[0], ...) of a static-batch file as the constant
    batch 1 of the example: the file itself runs at batch 1 only, and the imported module says so, naming the
    node where the batch stops following, and refuses another batch with that reason."""
    module = load_onnx_model(exported("vit", True, exporter, opset))
    assert module.fixed_batch is not None and "does not run at batch 2" in module.fixed_batch
    assert module(torch.randn(1, 3, 16, 16)).shape == (1, 10)
    with pytest.raises(OnnxImportError, match=r"runs at batch 1 only, not 2 .*\(Concat\) does not run at batch 2.*"
                                              r"export with a symbolic batch"):
        module(torch.randn(2, 3, 16, 16))


@pytest.mark.parametrize("exporter, opset", [("torchscript", 17), ("dynamo", 18)])
def test_vit_exported_with_a_dynamic_batch_runs_at_any_batch(exporter: str, opset: int) -> None:
    """The batch axis left free: the class token's Expand and nn.MultiheadAttention's seq-first
    Reshape([L, batch * heads, E / heads]) follow the batch; the module matches onnxruntime at two batch sizes."""
    data = exported_dynamic("vit", exporter, opset)
    module = load_onnx_model(data)
    assert module.fixed_batch is None and module.input_shapes == [(1, 3, 16, 16)]
    session = ort.InferenceSession(data)
    for batch in (3, 5):
        x = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch))
        want = session.run(None, {"x": x.numpy()})[0]
        with torch.no_grad():
            got = module(x).numpy()
        assert got.shape == (batch, 10) and max_relative_error(got, want) <= 1e-4


@pytest.mark.parametrize("exporter, opset, dtype", [("torchscript", 17, torch.int64), ("dynamo", 18, torch.int64),
                                                     ("torchscript", 17, torch.int32)])
def test_text_encoder_takes_integer_tokens_at_any_batch_and_is_searched(
        exporter: str, opset: int, dtype: torch.dtype) -> None:
    """nn.Embedding -> seq-first nn.TransformerEncoder, its (sequence, batch) token ids int64 or int32, the batch
    axis symbolic (axis 1, named batch): the file imports (refused before: 'graph input must be a float32
    tensor'), matches onnxruntime at two batch sizes, says which ids its embedding takes, and a 3-trial search
    runs on the imported module."""
    data = exported_dynamic("text_encoder", exporter, opset, dtype)
    module = load_onnx_model(data)
    assert module.input_dtypes == [dtype] and module.batch_axis == 1 and module.fixed_batch is None
    assert module.index_limit == 50  # the vocabulary of the embedding
    session = ort.InferenceSession(data)
    for batch in (2, 5):
        tokens = torch.randint(0, 50, (12, batch), generator=torch.Generator().manual_seed(batch), dtype=dtype)
        want = session.run(None, {"x": tokens.numpy()})[0]
        with torch.no_grad():
            got = module(tokens).numpy()
        assert got.shape == (batch, 4) and max_relative_error(got, want) <= 1e-4
    workload = dataclasses.replace(corpus_workload("text_encoder", n_train=8, batch_size=2), model=module,
                                   example_inputs=module.example_inputs(), name="onnx-text_encoder")
    spec = SearchSpec(workload="onnx-text_encoder", n_trials=3, qat_steps=2, reevaluate_front=0,
                      seed_with_sensitivity=False, formats=("int4", "int8"), pin_first_last=None)
    result = run_search(spec, workload=workload)
    assert len(result.trials) == 3 and result.front
    assert len(result.layers) == weighted_nodes(data) == 9  # 2 x (packed qkv, out, 2 MLP) + the classifier


def test_lrn_if_on_a_static_condition_is_inlined() -> None:
    """The TorchScript exporter writes LocalResponseNorm with an If on Equal(Gather(Shape(x)), 3): the
    condition folds, the taken branch is built in its place (refused before: 'unsupported ONNX operator If')."""
    data = exported("inception", False, "torchscript", 17)
    assert "If" in {n.op_type for n in onnx.load_from_string(data).graph.node}
    module = load_onnx_model(data)
    names = [step.node_name for step in module._steps]
    assert "/stem/stem.3/Squeeze" in names  # the then branch (input of rank 4), built in the If's place


def _if_model(cond_from_input: bool, depth: int = 1) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    def branch(d: int, tag: str) -> onnx.GraphProto:
        out = helper.make_tensor_value_info(f"{tag}_y{d}", TensorProto.FLOAT, [1, 4])
        if d < depth:
            inner = helper.make_node("If", ["c"], [f"{tag}_y{d}"], name=f"{tag}_if{d}",
                                     then_branch=branch(d + 1, f"{tag}t"), else_branch=branch(d + 1, f"{tag}e"))
            return helper.make_graph([inner], f"{tag}{d}", [], [out])
        return helper.make_graph([helper.make_node("Relu", ["x"], [f"{tag}_y{d}"], name=f"{tag}_relu{d}")],
                                 f"{tag}{d}", [], [out])

    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c_computed"], name="gt")] if cond_from_input else []
    cond = "c_computed" if cond_from_input else "c"
    nodes.append(helper.make_node("If", [cond], ["y"], name="the_if", then_branch=branch(1, "t"),
                                  else_branch=branch(1, "e")))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(np.array(True), "c"),
                               numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_if_on_a_computed_condition_or_nested_too_deep_is_refused_naming_the_node() -> None:
    module = load_onnx_model(_if_model(cond_from_input=False, depth=2))
    assert torch.equal(module(torch.tensor([[-1.0, 2.0, -3.0, 4.0]])), torch.tensor([[0.0, 2.0, 0.0, 4.0]]))
    with pytest.raises(OnnxImportError, match=r"node 'the_if' \(If\): input 0 \(cond\) must be a single constant"):
        load_onnx_model(_if_model(cond_from_input=True))
    with pytest.raises(OnnxImportError, match=r"\(If\): If nested more than 4 deep"):
        load_onnx_model(_if_model(cond_from_input=False, depth=6))
