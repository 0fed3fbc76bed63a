"""The ONNX backend node tests (``onnx.backend.test``, generated in memory by ``collect_testcases``: this
``onnx`` wheel ships their generators, not the ``data/node`` files) run against the importer, for every
test whose operators the importer lists in ``OPERATORS``.

The importer takes one float32 graph input, so the first float32 input of a test stays the graph input
and the others become initializers (how models give weights, indices, shapes); a test with no such input,
and every test whose operators all fold, also runs with every input an initializer (plus an unused dummy
input), which exercises the numpy folding.  Each test must match ONNX's expected outputs (rtol/atol 1e-4),
or be refused with an OnnxImportError whose message names the operator; anything else fails.
"""

from __future__ import annotations

import collections
import warnings
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from search.quant.onnx_import import FOLDED_OPS, OPERATORS, OnnxImportError, load_onnx_model

# Cases that cannot apply, each with its reason; everything else supported must pass or be refused clearly.
SKIP: dict[str, str] = {
    # the expected output is random (dropout in training mode with a ratio) or depends on a seed
    "test_training_dropout": "random output (training mode)",
    "test_training_dropout_default": "random output (training mode)",
    "test_training_dropout_default_mask": "random output (training mode)",
    "test_training_dropout_mask": "random output (training mode)",
}
RTOL = ATOL = 1e-4
DTYPES = {np.dtype(t) for t in (np.float32, np.float64, np.int64, np.int32, np.int16, np.int8, np.uint8, np.bool_)}


def _cases() -> list[Any]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(collect_testcases(None))


def _array(value: Any) -> Any:
    """A test value as numpy (some cases store TensorProtos)."""
    if isinstance(value, TensorProto):
        return numpy_helper.to_array(value)
    return np.asarray(value) if isinstance(value, np.generic) else value


def _supported(model: onnx.ModelProto) -> bool:
    return all(n.domain in ("", "ai.onnx") and n.op_type in OPERATORS for n in model.graph.node)


def _rewrite(model: onnx.ModelProto, inputs: list[Any], keep: int | None) -> tuple[bytes, np.ndarray]:
    """The model with every graph input but ``keep`` made an initializer of its test value (``keep`` None:
    all of them, and an unused float input ``mixq_dummy`` to be the graph input)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    values = list(graph.input)
    del graph.input[:]
    for k, (value, array) in enumerate(zip(values, inputs, strict=True)):
        if k == keep:
            graph.input.append(value)
        else:
            graph.initializer.append(numpy_helper.from_array(np.asarray(array), value.name))
            if out.ir_version < 4:  # before IR 4 every initializer is also a graph input
                graph.input.append(value)
    x = np.asarray(inputs[keep]) if keep is not None else np.zeros((1,), np.float32)
    if keep is None:
        graph.input.append(helper.make_tensor_value_info("mixq_dummy", TensorProto.FLOAT, [1]))
    return out.SerializeToString(), x


def _runtime_input(model: onnx.ModelProto, inputs: list[Any]) -> int | None:
    for k, (value, array) in enumerate(zip(model.graph.input, inputs, strict=True)):
        if (value.type.tensor_type.elem_type == TensorProto.FLOAT and isinstance(array, np.ndarray)
                and array.ndim >= 1 and array.size > 0):
            return k
    return None


def _check(data: bytes, x: np.ndarray, expected: list[Any], op_types: set[str]) -> str:
    """'passed', 'refused' (an OnnxImportError naming an operator of the test) or raises AssertionError."""
    try:
        module = load_onnx_model(data)
    except OnnxImportError as exc:
        message = str(exc)
        assert any(op in message for op in op_types), f"refusal does not name the operator: {message}"
        return "refused"
    with torch.no_grad():
        got = module(torch.from_numpy(np.array(x)))
    outputs = got if isinstance(got, tuple) else (got,)
    assert len(outputs) == len(expected)
    for actual_t, want_value in zip(outputs, expected, strict=True):
        actual, want = actual_t.numpy(), np.asarray(want_value)
        assert actual.shape == want.shape, f"shape {actual.shape} != {want.shape}"
        if want.dtype == np.bool_:
            np.testing.assert_array_equal(actual, want)
        else:
            np.testing.assert_allclose(actual.astype(np.float64), want.astype(np.float64), rtol=RTOL, atol=ATOL,
                                       equal_nan=True)
    return "passed"


def test_backend_node_tests_pass_or_are_refused_naming_the_operator() -> None:
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    failures: list[str] = []
    for case in _cases():
        model = case.model
        if not _supported(model):
            continue
        op = model.graph.node[0].op_type if len(model.graph.node) == 1 else f"{case.name.split('_')[1]}(expanded)"
        op_types = {n.op_type for n in model.graph.node}
        if case.name in SKIP:
            counts[op]["skipped-listed"] += 1
            continue
        inputs, expected = ([_array(a) for a in values] for values in case.data_sets[0])
        if not all(isinstance(a, np.ndarray) for a in [*inputs, *expected]):
            counts[op]["skipped-sequence"] += 1  # sequences and optionals: no such values in the importer
            continue
        if not all(a.dtype in DTYPES for a in [*inputs, *expected]):
            counts[op]["skipped-dtype"] += 1  # float16, bfloat16, unsigned and string tensors: not in fp32 models
            continue
        opset = {o.domain or "ai.onnx": o.version for o in model.opset_import}.get("ai.onnx", 0)
        if opset < 7:
            counts[op]["skipped-opset"] += 1  # opsets < 7: refused as a whole (test_onnx_import.py)
            continue
        keep = _runtime_input(model, inputs)
        variants: list[int | None] = [keep] if keep is not None else []
        if keep is None or op_types <= FOLDED_OPS:
            variants.append(None)
        for variant in variants:
            label = f"{case.name}[{'runtime' if variant is not None else 'folded'}]"
            try:
                data, x = _rewrite(model, inputs, variant)
                counts[op][_check(data, x, expected, op_types)] += 1
            except AssertionError as exc:
                failures.append(f"{label}: {str(exc)[:300]}")
                counts[op]["failed"] += 1
            except Exception as exc:  # noqa: BLE001 - anything but an OnnxImportError is a crash
                failures.append(f"{label}: crashed with {type(exc).__name__}: {str(exc)[:300]}")
                counts[op]["failed"] += 1
    total: collections.Counter[str] = collections.Counter()
    for op in sorted(counts):
        total.update(counts[op])
        print(f"{op:28s} " + " ".join(f"{k}={v}" for k, v in sorted(counts[op].items())))
    print(f"TOTAL {dict(total)}")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)
    assert total["passed"] >= 1000  # 1073 variants pass with onnx 1.23.2
