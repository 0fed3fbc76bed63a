"""The exported QDQ graph loads and matches in onnxruntime with its *default* session options
(``ORT_ENABLE_ALL``), as every deployment script opens it: over the built-in workloads, int4, int8
and mixed maps.  A 4-bit activation behind ``MaxPool`` used to fail there with INVALID_GRAPH
``tensor(uint4)`` of operator MaxPool (see ``export_onnx._keep_4bit_off_pools``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from search import load_workload, run_trial
from search.quant.export_onnx import export_onnx, verify_onnx
from search.quant.qat import OUTPUT_QUANT_ATTR

WORKLOADS = ("digits", "denoise", "denoise-deep")


def _layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear)]


def _maps(layers: list[str]) -> dict[str, dict[str, str]]:
    cycle = ("int8", "w4a8", "int4", "fp16")  # digits: the int4 layer sits behind MaxPool
    return {
        "int4": dict.fromkeys(layers, "int4"),
        "int8": dict.fromkeys(layers, "int8"),
        "mixed": {fqn: cycle[i % len(cycle)] for i, fqn in enumerate(layers)},
    }


@pytest.fixture(scope="module")
def workloads(mixq_cache_dir: Path) -> dict[str, object]:
    return {name: load_workload(name, {"pretrain_steps": 40}) for name in WORKLOADS}


@pytest.mark.parametrize("name", WORKLOADS)
def test_export_loads_and_matches_with_default_session_options(
    workloads: dict[str, object], name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workload = workloads[name]
    inputs = workload.example_inputs  # type: ignore[attr-defined]
    x = inputs if isinstance(inputs, torch.Tensor) else inputs[0]
    report = []
    for label, qmap in _maps(_layers(workload.model)).items():  # type: ignore[attr-defined]
        trial = run_trial(workload, qmap, qat_steps=3, seed=0)  # type: ignore[arg-type]
        path = export_onnx(trial.model, inputs, tmp_path / f"{name}-{label}.onnx", dynamic_spatial=False)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # the defaults
        got = session.run(None, {"input_0": x.numpy()})[0]
        with torch.no_grad():
            want = trial.model.eval()(x).numpy()
        diff = float(np.max(np.abs(got.astype(np.float64) - want)))
        assert diff == verify_onnx(trial.model, inputs, path, optimized=True)
        step = getattr(trial.model, OUTPUT_QUANT_ATTR).qparams()[0]
        # integer kernels may requantize an 8-bit layer in their own way: at most a few output steps
        assert diff <= 4 * step + 1e-6, f"{name} {label}: max difference {diff} ({diff / step:.2f} output steps)"
        assert verify_onnx(trial.model, inputs, path) <= step + 1e-6  # the QDQ definition, as before
        maxes = sum(n.op_type == "Max" for n in onnx.load(path).graph.node)
        report.append(f"{name} {label}: max |ort default - fake-quant| = {diff:.3g} ({diff / step:.2f} steps), "
                      f"{maxes} keep-float Max")
    with capsys.disabled():
        print("\n" + "\n".join(report))


class _PoolThenReshape(nn.Module):
    """MaxPool -> Flatten or Reshape -> Linear: the Linear's input comes from the pool through a reshape."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(torch.relu(self.conv(x)))
        return self.fc(torch.flatten(y, 1) if self.how == "flatten" else y.reshape(-1, 64))


def _pool_model(how: str, fmt: str, tmp_path: Path) -> tuple[nn.Module, torch.Tensor, Path]:
    from search import parse_format
    from search.quant.qat import calibrate, quantize_model

    torch.manual_seed(0)
    model, x = _PoolThenReshape(how), torch.randn(4, 1, 8, 8)
    quantize_model(model, {"conv": parse_format(fmt), "fc": parse_format(fmt)}, x)
    calibrate(model, [torch.randn(16, 1, 8, 8)])
    return model, x, export_onnx(model, x, tmp_path / f"{how}-{fmt}.onnx", dynamic_spatial=False)


@pytest.mark.parametrize(("how", "fmt", "maxes"), [("reshape", "int4", 1), ("flatten", "int4", 0),
                                                   ("reshape", "int8", 0)])
def test_pool_behind_a_reshape_loads_with_default_options(tmp_path: Path, how: str, fmt: str, maxes: int) -> None:
    """Only a 4-bit point onnxruntime would carry a Q to the pool from gets the keep-float Max: through a
    Reshape (propagated), not a Flatten (not propagated), never an 8-bit one."""
    model, x, path = _pool_model(how, fmt, tmp_path)
    assert [n.op_type for n in onnx.load(path).graph.node].count("Max") == maxes
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # the defaults
    step = getattr(model, OUTPUT_QUANT_ATTR).qparams()[0]
    assert verify_onnx(model, x, path, optimized=True) <= 4 * step + 1e-6


def test_without_the_max_onnxruntime_refuses_a_4bit_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why the Max is there (onnxruntime 1.32): the same graph without it fails to load with the defaults."""
    import search.quant.export_onnx as export_module

    monkeypatch.setattr(export_module, "_NO_4BIT", frozenset())
    _, _, path = _pool_model("reshape", "int4", tmp_path)
    with pytest.raises(Exception, match=r"tensor\(uint4\).*MaxPool"):
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
