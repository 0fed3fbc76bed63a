"""Checkpoints: trained weights carry their fingerprint, and never load into another precision map
or model (issue 12: the all-int8 trial's weights exported "cleanly" under an int4-inside qconfig)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from search import apply_qconfig, discover_layers, load_workload, run_trial, save_qconfig
from search.quant.checkpoint import (
    CheckpointError,
    check_belongs,
    load_checkpoint,
    load_trained_weights,
    save_state_dict,
    weights_fingerprint,
)
from search.quant.export_onnx import export_onnx, onnxruntime_session, verify_onnx
from search.quant.qconfig import build_qconfig
from search.workloads.base import Workload

ALL_INT8 = {"body.0": "int8", "body.2": "int8", "body.5": "int8"}
INT4_INSIDE = {"body.0": "int8", "body.2": "int4", "body.5": "int8"}


@pytest.fixture(scope="module")
def denoise() -> Workload:
    """The real denoise workload, tiny: depth 3 (conv, conv+BN, conv), width 8, a 32x32 eval crop."""
    return load_workload("denoise", {"depth": 3, "width": 8, "pretrain_steps": 10, "eval_size": 32, "batch_size": 2,
                                     "patch_size": 16})


@pytest.fixture(scope="module")
def trials(denoise: Workload, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Two trials as the search leaves them: name -> (qconfig file, weights file)."""
    out = tmp_path_factory.mktemp("trials")
    graph = discover_layers(denoise.model, denoise.example_inputs)
    files = {}
    for number, (name, assignment) in enumerate({"int8": ALL_INT8, "int4_inside": INT4_INSIDE}.items()):
        run = run_trial(denoise, assignment, qat_steps=2, seed=0)
        qconfig = build_qconfig(run.model, graph, assignment, workload="denoise", trial_number=number)
        files[name] = (save_qconfig(qconfig, out / f"{name}.json"),
                       save_state_dict(run.model, out / f"trial-{number}.pt", {"trial_number": str(number)}))
    return files


def _fresh(workload: Workload, qconfig: Path) -> nn.Module:
    return apply_qconfig(copy.deepcopy(workload.model), qconfig, workload.example_inputs)


def test_checkpoint_round_trip_keeps_tensors_and_metadata(denoise: Workload, trials: dict[str, tuple[Path, Path]]) -> None:
    qfile, wfile = trials["int4_inside"]
    raw = torch.load(wfile, weights_only=True)  # plain torch can read it without a full unpickle
    assert raw["mixq_checkpoint"] == 1 and set(raw["state_dict"]) == set(_fresh(denoise, qfile).state_dict())
    checkpoint = load_checkpoint(wfile)
    assert checkpoint.metadata["trial_number"] == "1"
    assert checkpoint.formats == {**INT4_INSIDE, "mixq_output_quant": "int8"}
    assert checkpoint.fingerprint == weights_fingerprint(_fresh(denoise, qfile))
    assert checkpoint.fingerprint != weights_fingerprint(_fresh(denoise, trials["int8"][0]))


def test_right_weights_load_and_export(denoise: Workload, trials: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    qfile, wfile = trials["int4_inside"]
    model = _fresh(denoise, qfile)
    assert load_trained_weights(model, wfile) is None  # fingerprint checked, nothing to note
    saved = load_checkpoint(wfile).state_dict
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    path = export_onnx(model.eval(), denoise.example_inputs, tmp_path / "denoise.onnx")
    assert verify_onnx(model, denoise.example_inputs, path) < 1e-4
    # DnCNN is fully convolutional: the graph takes another size than the 40x40 example
    x = torch.rand(1, 1, 64, 48)
    (got,) = onnxruntime_session(path).run(None, {"input_0": x.numpy()})
    assert got.shape == (1, 1, 64, 48) and np.isfinite(got).all()


def test_wrong_trials_weights_are_an_error_naming_the_layer(
    denoise: Workload, trials: dict[str, tuple[Path, Path]]
) -> None:
    model = _fresh(denoise, trials["int4_inside"][0])
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(CheckpointError, match=r"another precision map.*'body.2': int8 in the weights, int4 here"):
        load_trained_weights(model, trials["int8"][1])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "nothing may be loaded"


def test_another_models_weights_are_an_error_naming_keys(
    denoise: Workload, trials: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    digits = load_workload("digits", {"pretrain_steps": 3})
    other = tmp_path / "digits.pt"
    save_state_dict(digits.model, other)
    model = _fresh(denoise, trials["int8"][0])
    with pytest.raises(CheckpointError, match=r"another model \(\d+ missing key\(s\): 'body.0.bias', 'body.0.input_quant") as err:
        load_trained_weights(model, other)
    assert "unexpected key(s): 'classifier.1.bias'" in str(err.value)


def test_same_keys_other_shapes_and_plain_state_dicts(denoise: Workload, trials: dict[str, tuple[Path, Path]],
                                                      tmp_path: Path) -> None:
    qfile, wfile = trials["int8"]
    model = _fresh(denoise, qfile)
    state = load_checkpoint(wfile).state_dict
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)  # the user's own torch.save(model.state_dict())
    note = check_belongs(model, load_checkpoint(plain))
    assert note is not None and "formats not checked" in note
    shrunk = {k: (v[:4] if k == "body.0.weight" else v) for k, v in state.items()}
    torch.save(shrunk, plain)
    with pytest.raises(CheckpointError, match=r"another shape, e.g. 'body.0.weight': \(4, 1, 3, 3\) in the file"):
        load_trained_weights(model, plain)


def test_unreadable_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="weights: no such file"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="is not a torch state dict"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        load_checkpoint(tmp_path / "list.pt")
