"""ONNX import: outputs equal onnxruntime's, layers are real modules named after the ONNX nodes, a search
and the QDQ export keep those names, and names or operators from the file never become code."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn

from search import SearchSpec, Workload, discover_layers, parse_format, run_search
from search.quant.export_onnx import export_onnx, onnxruntime_session
from search.quant.onnx_import import OnnxImportError, OnnxModule, load_onnx_model
from search.quant.qat import calibrate, quantize_model
from search.quant.qconfig import build_qconfig

torch.set_num_threads(1)


class EveryTorchOpNet(nn.Module):
    """Conv, Resize, MaxPool, ConvTranspose, Concat, DepthToSpace, LeakyRelu, Clip, Mul, Sub,
    GlobalAveragePool, Flatten, Sigmoid and Gemm, as torch.onnx.export writes them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.tconv = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.fc = nn.Linear(2, 10)

    def forward(self, x: Tensor) -> Tensor:
        y = F.max_pool2d(self.up(torch.relu(self.conv(x))), 2)  # (N, 8, 8, 8)
        y = F.pixel_shuffle(torch.cat([self.tconv(y)] * 2, 1), 2)  # (N, 2, 32, 32)
        y = torch.clamp(F.leaky_relu(y, 0.2), -1, 1) * 2 - 0.5
        return self.fc(torch.sigmoid(F.adaptive_avg_pool2d(y, 1).flatten(1)))

    @staticmethod
    def example_inputs() -> tuple[Tensor]:
        return (torch.randn(1, 3, 8, 8),)


def torch_exported(model: nn.Module, example: tuple[Tensor]) -> bytes:
    buf = io.BytesIO()
    # the TorchScript exporter writes to file objects too
    torch.onnx.export(model.eval(), example, buf, dynamo=False, opset_version=17)  # type: ignore[arg-type]
    return buf.getvalue()


def const(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array, name)


def helper_model(conv_name: str = "conv1", fc_name: str = "fc", init_name: str = "conv1_w") -> bytes:
    """BatchNormalization, Pad, PRelu, AveragePool, Resize (linear), DepthToSpace (DCR), Transpose, Reshape,
    Div, Add, MatMul (a layer), Softmax, built with onnx.helper under the given names."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    inits = [
        const(init_name, rng.standard_normal((8, 2, 3, 3)).astype(f32)), const("conv1_b", rng.standard_normal(8).astype(f32)),
        const("bn_s", rng.random(8).astype(f32) + 0.5), const("bn_b", rng.standard_normal(8).astype(f32)),
        const("bn_m", rng.standard_normal(8).astype(f32)), const("bn_v", rng.random(8).astype(f32) + 0.5),
        const("pads", np.array([0, 0, 1, 2, 0, 0, 1, 2], np.int64)), const("slope", np.full((8, 1, 1), 0.1, f32)),
        const("scales", np.array([1, 1, 2, 2], f32)), const("perm_shape", np.array([1, 2, -1], np.int64)),
        const("two", np.array(2.0, f32)), const("fc_w", rng.standard_normal((480, 10)).astype(f32) / 20),
        const("fc_b", rng.standard_normal(10).astype(f32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", init_name, "conv1_b"], ["c"], name=conv_name, pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn_s", "bn_b", "bn_m", "bn_v"], ["b"], name="bn1"),
        helper.make_node("Pad", ["b", "pads"], ["p"], name="pad", mode="reflect"),
        helper.make_node("PRelu", ["p", "slope"], ["r"], name="prelu"),
        helper.make_node("AveragePool", ["r"], ["a"], name="avg", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Resize", ["a", "", "scales"], ["u"], name="resize", mode="linear"),
        helper.make_node("DepthToSpace", ["u"], ["d"], name="d2s", blocksize=2),
        helper.make_node("Div", ["d", "two"], ["h"], name="half"),
        helper.make_node("Transpose", ["h"], ["t0"], name="transpose", perm=[0, 1, 3, 2]),  # (1, 2, 24, 20)
        helper.make_node("Reshape", ["t0", "perm_shape"], ["t"], name="reshape"),  # (1, 2, 480)
        helper.make_node("MatMul", ["t", "fc_w"], ["m"], name=fc_name),
        helper.make_node("Add", ["m", "fc_b"], ["o"], name="bias"),
        helper.make_node("Softmax", ["o"], ["y"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "helper_net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 10])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def onnxruntime_output(data: bytes, x: Tensor) -> np.ndarray:
    session = onnxruntime_session(data)
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def test_torch_exported_model_matches_onnxruntime() -> None:
    data = torch_exported(EveryTorchOpNet(), EveryTorchOpNet.example_inputs())
    module = load_onnx_model(data)
    x = torch.randn(1, 3, 8, 8)
    np.testing.assert_allclose(module(x).detach().numpy(), onnxruntime_output(data, x), rtol=1e-5, atol=1e-6)
    assert module.onnx_names == {"conv_Conv": "/conv/Conv", "tconv_ConvTranspose": "/tconv/ConvTranspose", "fc_Gemm": "/fc/Gemm"}
    assert isinstance(module.conv_Conv, nn.Conv2d) and isinstance(module.fc_Gemm, nn.Linear)
    assert module(torch.randn(5, 3, 8, 8)).shape == (5, 10)  # exported with batch 1, runs any batch


def test_helper_built_model_matches_onnxruntime() -> None:
    data = helper_model()
    module = load_onnx_model(data)
    x = torch.randn(1, 2, 8, 8)
    np.testing.assert_allclose(module(x).detach().numpy(), onnxruntime_output(data, x), rtol=1e-5, atol=1e-6)
    assert [n for n, m in module.named_modules() if m is not module] == ["conv1", "bn1", "fc"]
    assert isinstance(module.bn1, nn.BatchNorm2d) and module(torch.randn(3, 2, 8, 8)).shape == (3, 2, 10)


def tiny_workload(module: OnnxModule) -> Workload:
    gen = torch.Generator().manual_seed(0)
    x_all = torch.randn(48, 2, 8, 8, generator=gen)
    y_all = torch.randint(0, 10, (48,), generator=gen)

    def train_batches(g: torch.Generator):  # type: ignore[no-untyped-def]
        while True:
            idx = torch.randint(0, 32, (8,), generator=g)
            yield x_all[idx], y_all[idx]

    def evaluate(model: nn.Module) -> float:
        with torch.no_grad():
            return float((model(x_all[32:]).reshape(16, -1)[:, :10].argmax(1) == y_all[32:]).float().mean())

    def loss_fn(out: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(out.reshape(len(y), -1)[:, :10], y)

    return Workload(name="onnx-upload", model=module, example_inputs=(x_all[:1],), train_batches=train_batches,
                    calibration_batches=[(x_all[:8], y_all[:8])], loss_fn=loss_fn, evaluate=evaluate,
                    metric="accuracy", higher_is_better=True, lr=1e-4)


def test_search_qconfig_and_qdq_export_keep_the_onnx_layer_names(tmp_path: Path) -> None:
    data = helper_model(conv_name="stem_conv", fc_name="head_fc")
    workload = tiny_workload(load_onnx_model(data))
    spec = SearchSpec(workload="onnx-upload", n_trials=2, qat_steps=2, reevaluate_front=0, seed_with_sensitivity=False,
                      formats=("int4", "int8"), pin_first_last=None)
    result = run_search(spec, workload=workload)
    assert [layer.fqn for layer in result.layers] == ["stem_conv", "head_fc"]
    assignment = dict(result.front[0].assignment)

    model = load_onnx_model(data)
    example = torch.randn(1, 2, 8, 8)
    graph = discover_layers(model, example)
    quantize_model(model, {fqn: parse_format(fmt) for fqn, fmt in assignment.items()}, example)
    calibrate(model, [torch.randn(8, 2, 8, 8)])
    qconfig = build_qconfig(model, graph, assignment)
    assert list(qconfig.layers) == ["stem_conv", "head_fc"]
    path = export_onnx(model, example, tmp_path / "qdq.onnx")
    proto = onnx.load(path)
    formats = json.loads(next(p.value for p in proto.metadata_props if p.key == "mixq.formats"))
    assert set(formats) == {"stem_conv", "head_fc"} and formats == assignment
    assert {n.op_type for n in proto.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    onnxruntime_output(path.read_bytes(), example)  # the QDQ model runs


EVIL = "x\"\n__import__('os').system('touch {marker}')\n#"


@pytest.mark.parametrize("where", ["node", "initializer"])
def test_malicious_names_become_safe_module_names(tmp_path: Path, where: str) -> None:
    marker = tmp_path / "pwned"
    evil = EVIL.format(marker=marker)
    data = helper_model(conv_name=evil) if where == "node" else helper_model(init_name=evil)
    module = load_onnx_model(data)
    names = [n for n, _ in module.named_modules() if n] + [n for n, _ in module.named_buffers()]
    assert all(n.replace("_", "a").replace(".", "a").isalnum() for n in names), names
    if where == "node":
        assert "conv1" not in module.onnx_names and evil in module.onnx_names.values()
    traced = torch.fx.symbolic_trace(module)  # fold_batchnorm traces; the generated code holds no file name
    assert "import" not in traced.code and "touch" not in traced.code
    example = torch.randn(1, 2, 8, 8)
    quantize_model(module, {fqn: parse_format("int8") for fqn in discover_layers(module, example).fqns}, example)
    calibrate(module, [torch.randn(4, 2, 8, 8)])
    proto = onnx.load(export_onnx(module, example, tmp_path / "q.onnx"))
    assert evil not in {n.name for n in proto.graph.node}
    assert not marker.exists()


def with_node(op: str, domain: str = "") -> bytes:
    node = helper.make_node(op, ["x"], ["y"], name="n", domain=domain)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(with_node("Loop"), "unsupported ONNX operator.*Loop", id="unsupported-op"),
        pytest.param(with_node("PyOp", "com.microsoft"), "com.microsoft::PyOp", id="custom-domain"),
        pytest.param(b"\x00garbage\xff" * 10, "not an ONNX model", id="garbage"),
        pytest.param(helper_model()[:300], "not an ONNX model|not a valid", id="truncated"),
    ],
)
def test_bad_models_are_refused_naming_why(data: bytes, message: str) -> None:
    with pytest.raises(OnnxImportError, match=message):
        load_onnx_model(data)


def test_old_opset_dynamic_shapes_and_external_data_are_refused(tmp_path: Path) -> None:
    model = onnx.load_from_string(helper_model())
    old = onnx.ModelProto()
    old.CopyFrom(model)
    old.opset_import[0].version = 6  # 7..12 are converted (tests/search/test_onnx_models.py)
    with pytest.raises(OnnxImportError, match="opset 6; opset >= 7 is required"):
        load_onnx_model(old.SerializeToString())
    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(model)
    dynamic.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "channels"  # a symbolic batch is fine
    with pytest.raises(OnnxImportError, match="static shape"):
        load_onnx_model(dynamic.SerializeToString())
    secret = tmp_path / "secret"
    secret.write_bytes(np.ones(8 * 2 * 9, np.float32).tobytes())
    external = onnx.ModelProto()
    external.CopyFrom(model)
    weight = external.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value=str(secret))
    with pytest.raises(OnnxImportError, match="external data"):
        load_onnx_model(external.SerializeToString())


def _batch_graph(reshape_target: list[int], input_dims: list[int | str]) -> bytes:
    """x (N, 4) -> Gemm (4 -> 6) -> Reshape(target) -> Relu: the Reshape's constant target decides whether the
    graph follows the batch."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc", transB=1),
             helper.make_node("Reshape", ["h", "shape"], ["r"], name="the_reshape"),
             helper.make_node("Relu", ["r"], ["y"], name="relu")]
    inits = [numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b"),
             numpy_helper.from_array(np.array(reshape_target, np.int64), "shape")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_a_reshape_that_hard_codes_the_batch_fixes_it_and_says_which_node() -> None:
    """A symbolic-batch file whose Reshape writes batch 1 into its target runs at batch 1 only: the module says
    so naming the node, and refuses batch 3 with that reason instead of a shape error deep in the forward."""
    module = load_onnx_model(_batch_graph([1, 2, 3], ["batch", 4]))
    assert module.fixed_batch is not None
    assert "node 'the_reshape' (Reshape) does not run at batch 2" in module.fixed_batch
    assert module(torch.randn(1, 4)).shape == (1, 2, 3)
    with pytest.raises(OnnxImportError, match=r"runs at batch 1 only, not 3 \(axis 0 of its input\): node "
                                              r"'the_reshape' \(Reshape\)"):
        module(torch.randn(3, 4))


@pytest.mark.parametrize("target", [[-1, 2, 3], [0, 2, 3]], ids=["minus-one", "copied-axis"])
def test_a_reshape_whose_target_leaves_the_batch_free_follows_it(target: list[int]) -> None:
    """-1 and 0 (copy the input's axis) are worked out at each forward, as onnxruntime does: the module matches
    onnxruntime at batch 1 and 5."""
    data = _batch_graph(target, ["batch", 4])
    module = load_onnx_model(data)
    assert module.fixed_batch is None
    session = onnxruntime_session(data)
    for batch in (1, 5):
        x = torch.randn(batch, 4)
        want = session.run(None, {"x": x.numpy()})[0]
        with torch.no_grad():
            got = module(x)
        assert got.shape == (batch, 2, 3) and np.allclose(got.numpy(), want, atol=1e-6)
