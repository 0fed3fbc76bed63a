"""Models as users bring them (tests/models_onnx.py: ResNet blocks, MobileNetV3, a tiny ViT, ESPCN, a YOLO
neck, a 1-D conv audio net), freshly initialised and exported by torch's stock exporter at opset 17, 13 and
11 (11 is converted on import): each imports, matches onnxruntime (max relative error <= 1e-4), and every
Conv / Linear of the torch model is a searchable layer.  Also: Identity-shared initializers, shape-only
subgraphs, old-opset files, and hostile sizes refused before allocation."""

from __future__ import annotations

import importlib.util
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from search import discover_layers
from search.quant.export_onnx import onnxruntime_session
from search.quant.onnx_import import MAX_ELEMENTS, OnnxImportError, load_onnx_model
from tests.models_onnx import MODELS, weighted_layers

torch.set_num_threads(1)
HAS_ONNXSCRIPT = importlib.util.find_spec("onnxscript") is not None


def export(model: nn.Module, example: tuple[torch.Tensor, ...], opset: int, dynamo: bool = False) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(model.eval(), example, dynamo=True, opset_version=opset)
            assert program is not None
            return program.model_proto.SerializeToString()
        # the TorchScript exporter writes to file objects too
        torch.onnx.export(model.eval(), example, buf, dynamo=False, opset_version=opset)  # type: ignore[arg-type]
    return buf.getvalue()


def ort_outputs(data: bytes, x: np.ndarray) -> list[np.ndarray]:
    session = onnxruntime_session(data)
    return [np.asarray(o) for o in session.run(None, {session.get_inputs()[0].name: x})]


def max_relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-12))


@pytest.mark.parametrize("opset", [17, 13, 11])
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_exported_model_imports_matches_onnxruntime_and_lists_every_layer(name: str, opset: int, dynamo: bool) -> None:
    if dynamo and not HAS_ONNXSCRIPT:
        pytest.skip("torch.onnx.export(dynamo=True) needs onnxscript, which is not installed in this environment")
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    (example,) = MODELS[name].example_inputs()
    data = export(model, (example,), opset, dynamo)
    file_opset = {o.domain or "ai.onnx": o.version for o in onnx.load_from_string(data).opset_import}["ai.onnx"]
    assert file_opset == opset or dynamo
    if dynamo and opset == 17 and name in ("tiny_vit", "yolo_neck"):
        # torch.export's exporter writes opset 18 and onnx's C version converter takes it down to 17 leaving
        # Split's num_outputs (an opset-18 attribute): an invalid file, which onnxruntime refuses as well
        with pytest.raises(OnnxImportError, match=r"not a valid ONNX model: Unrecognized attribute: num_outputs "
                           r"for operator Split(.|\n)*Name: node_Split_0"):
            load_onnx_model(data)
        return
    module = load_onnx_model(data)
    x = torch.randn(example.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = module(x)
    outputs = got if isinstance(got, tuple) else (got,)
    want = ort_outputs(data, x.numpy())
    assert len(outputs) == len(want)
    for g, w in zip(outputs, want, strict=True):
        assert g.shape == w.shape and max_relative_error(g.numpy(), w) <= 1e-4
    graph = discover_layers(module, module.example_inputs())
    assert len(graph.layers) == weighted_layers(model), (graph.fqns, weighted_layers(model))
    torch.fx.symbolic_trace(module)  # the module-swap QAT folds BatchNorm by tracing: every step must trace


def test_fresh_init_shares_zero_biases_through_identity_and_still_imports() -> None:
    torch.manual_seed(0)
    model = MODELS["resnet_blocks"]()
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    data = export(model, MODELS["resnet_blocks"].example_inputs(), 17)
    proto = onnx.load_from_string(data)
    assert "Identity" in {n.op_type for n in proto.graph.node}  # what failed before: Conv's B from an Identity
    module = load_onnx_model(data)
    assert len(discover_layers(module, module.example_inputs()).layers) == weighted_layers(model)


def _graph_model(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    shape: list[int],
    out_shape: list[int | str],
    opset: int = 17,
) -> bytes:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


def test_shape_subgraph_is_folded_before_the_module_is_built() -> None:
    """Reshape's target from Shape -> Gather -> Unsqueeze -> Concat -> Cast: folded; no step remains of it."""
    i64 = np.int64
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="unsqueeze"),
        helper.make_node("Slice", ["s", "one", "big"], ["rest"], name="slice"),
        helper.make_node("ReduceProd", ["rest"], ["flat"], name="prod", keepdims=1),
        helper.make_node("Concat", ["n1", "flat"], ["target_i"], name="concat", axis=0),
        helper.make_node("Cast", ["target_i"], ["target"], name="cast", to=TensorProto.INT64),
        helper.make_node("Reshape", ["x", "target"], ["r"], name="reshape"),
        helper.make_node("MatMul", ["r", "w"], ["y"], name="fc"),
    ]
    inits = [
        numpy_helper.from_array(np.array(0, i64), "zero"),
        numpy_helper.from_array(np.array([0], i64), "axes0"),
        numpy_helper.from_array(np.array([1], i64), "one"),
        numpy_helper.from_array(np.array([99], i64), "big"),
        numpy_helper.from_array(np.ones((12, 3), np.float32), "w"),
    ]
    module = load_onnx_model(_graph_model(nodes, inits, [1, 3, 2, 2], [1, 3]))
    assert [step.node_name for step in module._steps] == ["reshape", "fc"]
    assert module(torch.ones(4, 3, 2, 2)).shape == (4, 3)  # the folded batch still follows the input's


def test_attention_matmul_of_two_activations_is_float_and_listed() -> None:
    torch.manual_seed(0)
    module = load_onnx_model(export(MODELS["tiny_vit"](), MODELS["tiny_vit"].example_inputs(), 17))
    assert len(module.float_matmuls) == 2  # Q K^T and A V


def test_opset_9_file_with_old_style_operators_is_converted() -> None:
    """Upsample (opset 9), Dropout with its mask, Unsqueeze with an axes attribute, initializers as inputs."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Dropout", ["c"], ["d", "mask"], name="drop", ratio=0.5),
        helper.make_node("Upsample", ["d", "scales"], ["u"], name="up", mode="nearest"),
        helper.make_node("ReduceMean", ["u"], ["m"], name="mean", axes=[2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["m"], ["y"], name="unsq", axes=[2]),
    ]
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    graph = helper.make_graph(
        nodes,
        "old",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 2, 3, 3]),
            helper.make_tensor_value_info("scales", TensorProto.FLOAT, [4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1])],
        [w, scales],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=4)
    data = model.SerializeToString()
    module = load_onnx_model(data)
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    expected = ort_outputs(data, x)[0]
    np.testing.assert_allclose(module(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    assert list(module.onnx_names.values()) == ["conv"]


@pytest.mark.parametrize(
    ("node", "inits", "message"),
    [
        pytest.param(
            helper.make_node("MaxPool", ["x"], ["y"], name="m", kernel_shape=[1, 1], pads=[0, 0, 1 << 16, 1 << 16]),
            {},
            r"node 'm' \(MaxPool\): attribute pads asks for",
            id="maxpool-pads",
        ),
        pytest.param(
            helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="ct", strides=[1 << 15, 1 << 15]),
            {"w": np.ones((1, 1, 2, 2), np.float32)},
            r"node 'ct' \(ConvTranspose\): attributes strides",
            id="convt",
        ),
        pytest.param(
            helper.make_node("LRN", ["x"], ["y"], name="l", size=(1 << 30) + 1),
            {},
            r"node 'l' \(LRN\): attribute size asks for",
            id="lrn",
        ),
    ],
)
def test_hostile_attributes_are_refused_before_allocation(
    node: onnx.NodeProto, inits: dict[str, np.ndarray], message: str
) -> None:
    data = _graph_model(
        [node], [numpy_helper.from_array(v, k) for k, v in inits.items()], [1, 1, 4, 4], ["a", "b", "c", "d"]
    )
    with pytest.raises(OnnxImportError, match=message):
        load_onnx_model(data)


@pytest.mark.parametrize(
    ("node", "inits", "message"),
    [
        pytest.param(
            helper.make_node("Expand", ["x", "shape"], ["y"], name="e"),
            {"shape": np.array([1, 1, 1 << 20, 1 << 20], np.int64)},
            r"node 'e' \(Expand\): input 1 \(shape\).*elements",
            id="expand",
        ),
        pytest.param(
            helper.make_node("Tile", ["x", "reps"], ["y"], name="t"),
            {"reps": np.array([1, 1, 1 << 16, 1 << 16], np.int64)},
            r"node 't' \(Tile\): input 1 \(repeats\)",
            id="tile",
        ),
        pytest.param(
            helper.make_node("ConstantOfShape", ["shape"], ["big"], name="c"),
            {"shape": np.array([1, 1, 1 << 15, 1 << 15], np.int64)},
            r"node 'c' \(ConstantOfShape\): input 0 \(shape\)",
            id="constant-of-shape",
        ),
        pytest.param(
            helper.make_node("Range", ["zero", "limit", "one"], ["big"], name="r"),
            {"zero": np.array(0.0, np.float32), "limit": np.array(1e15, np.float32), "one": np.array(1.0, np.float32)},
            r"node 'r' \(Range\)",
            id="range",
        ),
        pytest.param(
            helper.make_node("Resize", ["x", "", "scales"], ["y"], name="rs", mode="nearest"),
            {"scales": np.array([1, 1, 1e5, 1e5], np.float32)},
            r"node 'rs' \(Resize\): input 2 \(scales\)",
            id="resize",
        ),
        pytest.param(
            helper.make_node("Pad", ["x", "pads"], ["y"], name="p"),
            {"pads": np.array([0, 0, 1 << 15, 1 << 15, 0, 0, 1 << 15, 1 << 15], np.int64)},
            r"node 'p' \(Pad\): input 1 \(pads\)",
            id="pad",
        ),
    ],
)
def test_hostile_sizes_are_refused_before_allocation(
    node: onnx.NodeProto, inits: dict[str, np.ndarray], message: str
) -> None:
    nodes = [node]
    if node.output[0] == "big":  # a constant chain: make the graph output depend on it
        nodes.append(helper.make_node("Identity", ["big"], ["y"], name="out"))
    out_rank = 1 if node.op_type == "Range" else 4
    data = _graph_model(
        nodes,
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
        [1, 1, 1, 1],
        [f"d{i}" for i in range(out_rank)],
    )
    with pytest.raises(OnnxImportError, match=message) as info:
        load_onnx_model(data)
    assert f"at most {MAX_ELEMENTS}" in str(info.value)


@pytest.mark.parametrize(
    ("node", "inits", "message"),
    [
        pytest.param(
            helper.make_node("Resize", ["x", "", "scales"], ["y"], name="rs", mode="linear", antialias=1),
            {"scales": np.array([1, 1, 0.5, 0.5], np.float32)},
            r"node 'rs' \(Resize\): attribute antialias=1",
            id="antialias",
        ),
        pytest.param(
            helper.make_node(
                "Resize",
                ["x", "", "scales"],
                ["y"],
                name="rs",
                mode="linear",
                coordinate_transformation_mode="tf_crop_and_resize",
            ),
            {"scales": np.array([1, 1, 2, 2], np.float32)},
            r"\(Resize\): attribute coordinate_transformation_mode",
            id="ctm",
        ),
        pytest.param(
            helper.make_node("Resize", ["x", "", "scales"], ["y"], name="rs", mode="cubic", cubic_coeff_a=-0.5),
            {"scales": np.array([1, 1, 2, 2], np.float32)},
            r"\(Resize\): attribute cubic_coeff_a=-0.5",
            id="cubic",
        ),
        pytest.param(
            helper.make_node("LRN", ["x"], ["y"], name="l", size=4),
            {},
            r"node 'l' \(LRN\): attribute size=4",
            id="lrn-even",
        ),
        pytest.param(
            helper.make_node("MaxPool", ["x"], ["y"], name="m", kernel_shape=[2, 2], storage_order=1),
            {},
            r"node 'm' \(MaxPool\): attribute storage_order=1",
            id="maxpool",
        ),
        pytest.param(
            helper.make_node("Relu", ["x"], ["y"], name="r", bogus=1),
            {},
            r"(?s)attribute: bogus.*Name: r OpType: Relu",
            id="unknown-attr",
        ),  # onnx.checker's words
    ],
)
def test_unsupported_attributes_are_refused_naming_node_operator_and_attribute(
    node: onnx.NodeProto, inits: dict[str, np.ndarray], message: str
) -> None:
    data = _graph_model(
        [node], [numpy_helper.from_array(v, k) for k, v in inits.items()], [1, 1, 4, 4], ["a", "b", "c", "d"], opset=19
    )
    with pytest.raises(OnnxImportError, match=message):
        load_onnx_model(data)


LIGHT_ZOO = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.mark.parametrize(
    "name",
    ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet", "squeezenet", "zfnet512"],
)  # light_vgg19 also imports, in ~5 s: left out for time
def test_model_zoo_classics_at_opsets_8_and_9_are_converted_and_match(name: str) -> None:
    """The ``light`` model-zoo files that onnx ships (opsets 8-9, weights from ConstantOfShape: LRN, Sum, Dropout,
    Concat, Reshape...): converted to opset 17, they import, match onnxruntime on the original file and the
    stored output, and every Conv/Gemm is a layer."""
    path = LIGHT_ZOO / f"light_{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} is not in this onnx wheel")
    data = path.read_bytes()
    proto = onnx.load_from_string(data)
    assert {o.domain or "ai.onnx": o.version for o in proto.opset_import}["ai.onnx"] < 13
    module = load_onnx_model(data)
    stored = numpy_helper.to_array(onnx.load_tensor(str(path).replace(".onnx", "_output_0.pb")))
    with torch.no_grad():
        assert max_relative_error(module(torch.zeros(module.input_shapes[0])).numpy(), stored) <= 1e-4
        x = np.random.default_rng(0).standard_normal(module.input_shapes[0]).astype(np.float32)
        assert max_relative_error(module(torch.from_numpy(x)).numpy(), ort_outputs(data, x)[0]) <= 1e-4
    weighted = sum(n.op_type in ("Conv", "Gemm", "MatMul") for n in proto.graph.node)
    assert len(discover_layers(module, module.example_inputs()).layers) == weighted


def test_symbolic_batch_vit_follows_the_batch_it_is_given() -> None:
    """A ViT exported with a symbolic batch: its class token is expanded to Shape(x)[0], which is folded at
    batch 1 and at batch 2 (the importer's shadow build), so the Expand follows the batch; Reshapes follow it too."""
    torch.manual_seed(0)
    model = MODELS["tiny_vit"]().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            MODELS["tiny_vit"].example_inputs(),
            buf,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects too
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
        )
    module = load_onnx_model(buf.getvalue())
    assert module.input_shapes == [(1, 3, 16, 16)] and module.fixed_batch is None
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        got = module(x).numpy()
    assert max_relative_error(got, ort_outputs(buf.getvalue(), x.numpy())[0]) <= 1e-4
    assert max_relative_error(got, model(x).detach().numpy()) <= 1e-4
    torch.fx.symbolic_trace(module)


def test_mutated_attributes_and_constants_import_or_are_refused_never_crash() -> None:
    """Random integer attributes and integer Constant entries of an exported net set to 0, -1, huge...: each file
    imports or raises OnnxImportError, nothing else."""
    import random

    rng = random.Random(0)
    weird = [0, -1, -7, 1, 2, 3, 1 << 20, 1 << 40, -(1 << 40)]
    base = export(MODELS["tiny_vit"](), MODELS["tiny_vit"].example_inputs(), 17)
    outcomes = {"imported": 0, "refused": 0}
    for _ in range(120):
        model = onnx.load_from_string(base)
        node = rng.choice(list(model.graph.node))
        if node.op_type == "Constant":
            array = numpy_helper.to_array(node.attribute[0].t).copy()
            if array.dtype.kind in "iu" and array.size:
                array.flat[rng.randrange(array.size)] = rng.choice(weird)
                node.attribute[0].t.CopyFrom(numpy_helper.from_array(array))
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.INT:
                attr.i = rng.choice(weird)
            elif attr.type == onnx.AttributeProto.INTS and attr.ints:
                attr.ints[rng.randrange(len(attr.ints))] = rng.choice(weird)
        try:
            load_onnx_model(model.SerializeToString())
            outcomes["imported"] += 1
        except OnnxImportError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0
