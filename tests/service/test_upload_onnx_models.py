"""Uploads of the models users bring (issue 19): an opset-11 torch export and an opset-8 model-zoo file are
converted and inspected in the sandbox, listing every weighted layer; a hostile size is a clear refusal."""

from __future__ import annotations

import functools
import io
import warnings
from pathlib import Path
from typing import Any

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


# --- integer token inputs (nn.Embedding -> nn.TransformerEncoder): uploaded, checked against datasets, searched


class _TokenClassifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(20, 8)
        layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(self.embed(tokens)).mean(1))


def _token_onnx(dynamic: bool) -> bytes:
    torch.manual_seed(0)
    model = _TokenClassifier().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randint(0, 20, (2 if dynamic else 1, 6)),), buf,  # type: ignore[arg-type]
                          dynamo=False,
                          opset_version=17, input_names=["x"], dynamic_axes={"x": {0: "batch"}} if dynamic else None)
    return buf.getvalue()


def _token_data(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x_train=x, y_train=np.random.default_rng(1).integers(0, 3, len(x)))
    return buf.getvalue()


def test_token_model_upload_says_its_input_is_int64_ids_of_its_embedding() -> None:
    _, info = inspect_model(_token_onnx(dynamic=True))  # refused before: 'graph input must be a float32 tensor'
    assert info["input_dtype"] == "int64" and info["index_limit"] == 20 and info["input_shape"] == [1, 6]
    assert "fixed_batch" not in info and info["n_layers"] == 5  # packed qkv, out, 2 MLP, classifier
    _, static = inspect_model(_token_onnx(dynamic=False))  # the exporter wrote the example's batch into Reshapes
    assert static["fixed_batch"]["batch"] == 1 and "does not run at batch 2" in static["fixed_batch"]["reason"]


@pytest.mark.parametrize(("x", "loc", "expected"), [
    pytest.param(np.random.default_rng(0).integers(0, 20, (16, 6)), None, None, id="ids-fit"),
    pytest.param(np.random.default_rng(0).standard_normal((16, 6)).astype(np.float32), "dataset",
                 "array 'x_train' holds float32 values; model 'wide' takes int64 ids", id="float-samples"),
    pytest.param(np.random.default_rng(0).integers(0, 25, (16, 6)), "dataset",
                 "array 'x_train' holds ids 0..24; model 'wide' looks them up in a table of 20: ids 0..19",
                 id="ids-beyond-the-embedding"),
    pytest.param(np.full((16, 6), -3, dtype=np.int64), "dataset",
                 "array 'x_train' holds ids -3..-3; model 'wide' looks them up in a table of 20: ids 0..19",
                 id="negative-ids"),  # torch would index from the end of the table: a hostile dataset's trick
])
def test_a_dataset_for_a_token_model_must_hold_its_ids(
        settings: Any, db: Any, x: np.ndarray, loc: str | None, expected: str | None) -> None:
    from test_limits import UPLOAD_JOB, _client, _store_uploads

    _store_uploads(db, _token_onnx(dynamic=True), _token_data(x))
    with _client(settings, db) as client:
        r = client.post("/v1/jobs", json={**UPLOAD_JOB, "workload_options": {"batch_size": 4}})
    if loc is None:
        assert r.status_code == 201, r.text
        return
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", loc] and expected in detail["msg"], detail


def test_a_model_fixed_at_its_batch_takes_that_batch_size_only(settings: Any, db: Any) -> None:
    from test_limits import UPLOAD_JOB, _client, _store_uploads

    _store_uploads(db, _token_onnx(dynamic=False), _token_data(np.random.default_rng(0).integers(0, 20, (16, 6))))
    with _client(settings, db) as client:
        r = client.post("/v1/jobs", json={**UPLOAD_JOB, "workload_options": {"batch_size": 4}})
        assert r.status_code == 422, r.text
        detail = r.json()["detail"][0]
        assert detail["loc"] == ["body", "workload_options", "batch_size"]
        assert "runs at batch 1 only" in detail["msg"] and "give batch_size 1" in detail["msg"], detail
        r = client.post("/v1/jobs", json={**UPLOAD_JOB, "workload_options": {"batch_size": 1}})
        assert r.status_code == 201, r.text


@functools.cache
def _token_search() -> Any:
    from search import SearchSpec, run_search
    from service.uploads import build_workload

    data = _token_data(np.random.default_rng(0).integers(0, 20, (24, 6)))
    workload = build_workload("tokens", _token_onnx(dynamic=True), data, {"batch_size": 4})
    x, _ = next(workload.train_batches(torch.Generator().manual_seed(0)))
    assert x.dtype == torch.int64 and x.shape == (4, 6) and workload.example_inputs[0].dtype == torch.int64
    spec = SearchSpec(workload="tokens", n_trials=2, qat_steps=2, reevaluate_front=0, seed_with_sensitivity=False,
                      formats=("int4", "int8"), pin_first_last=None)
    return run_search(spec, workload=workload)


def test_token_model_workload_trains_on_integer_batches_and_is_searched() -> None:
    result = _token_search()
    assert len(result.trials) == 2 and len(result.layers) == 5


def test_the_pareto_response_lists_the_float_layers_apart_from_the_searched_ones(settings: Any, db: Any) -> None:
    """The attention matmuls (Q K^T, A V) of the token model are counted in the costs but not searched: the
    API lists them under float_layers with kind, reason and MACs; the searched layers stay as they were."""
    from conftest import FAST_JOB
    from test_limits import _client

    from service import store
    from service.worker import _layers_with_pins

    result = _token_search()
    assert result.float_layers
    layers, pinned = _layers_with_pins(result)
    with db.session() as session:
        job_id = store.add_job(session, "local", FAST_JOB, 2, 0, None).id
        store.set_job_info(session, job_id, "accuracy", True, 0.5, layers, pinned)
    with _client(settings, db) as client:
        body = client.get(f"/v1/jobs/{job_id}/pareto").json()
    assert [layer["fqn"] for layer in body["layers"]] == [layer.fqn for layer in result.layers]
    assert body["float_layers"] == [
        {"fqn": f.fqn, "kind": str(f.kind), "reason": f.reason, "macs": f.macs, "num_params": f.num_params}
        for f in result.float_layers]
    assert body["float_layers"][0]["kind"] == "matmul" and body["float_layers"][0]["macs"] > 0
    assert "activation x activation" in body["float_layers"][0]["reason"]
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert "never searched" in schema["ParetoOut"]["properties"]["float_layers"]["description"]
    assert set(schema["FloatLayerOut"]["properties"]) == {"fqn", "kind", "reason", "macs", "num_params"}
