import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from search.layers import discover_layers
from search.train import fp32_quality, run_trial
from search.workloads import BUILTIN_WORKLOADS, Workload, WorkloadError, load_workload
from search.workloads import digits as digits_module
from search.workloads.cache import cache_dir
from search.workloads.denoise import noisy_input_psnr

DIGITS_OPTIONS = {"pretrain_steps": 40}
DENOISE_OPTIONS = {"depth": 3, "width": 16, "pretrain_steps": 150, "eval_size": 64}


@pytest.fixture(scope="module")
def digits():
    return load_workload("digits", DIGITS_OPTIONS)


def test_cache_dir_is_private_to_the_tests(tmp_path, monkeypatch):
    assert cache_dir() != Path.home() / ".cache" / "mixq"  # tests/conftest.py's mixq_cache_dir
    monkeypatch.setenv("MIXQ_CACHE_DIR", str(tmp_path / "weights"))
    assert cache_dir() == tmp_path / "weights"
    assert (tmp_path / "weights").is_dir()  # created on demand


def test_digits_loads_with_sensible_accuracy(digits):
    assert digits.name == "digits" and digits.metric == "accuracy" and digits.higher_is_better
    assert digits.example_inputs[0].shape == (1, 1, 8, 8)
    assert 0.0 <= float(digits.example_inputs[0].min()) and float(digits.example_inputs[0].max()) <= 1.0
    graph = discover_layers(digits.model, digits.example_inputs)
    assert graph.fqns == ("features.0", "features.3", "features.7", "classifier.1", "classifier.3")
    assert not digits.model.training
    assert 0.8 < fp32_quality(digits) <= 1.0  # 10 classes: chance is 0.1


def test_digits_int8_trial_keeps_accuracy(digits):
    graph = discover_layers(digits.model, digits.example_inputs)
    run = run_trial(digits, {fqn: "int8" for fqn in graph.fqns}, qat_steps=3, seed=0)
    assert run.quality > fp32_quality(digits) - 0.05


def test_pretrained_cache_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXQ_CACHE_DIR", str(tmp_path))
    first = load_workload("digits", {"pretrain_steps": 5})
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("digits-") and files[0].suffix == ".pt"
    mtime = files[0].stat().st_mtime_ns

    def no_retraining(*args, **kwargs):
        raise AssertionError("the cached weights should have been used")

    monkeypatch.setattr(digits_module, "_pretrain", no_retraining)
    second = load_workload("digits", {"pretrain_steps": 5})
    assert sorted(tmp_path.iterdir()) == files
    assert files[0].stat().st_mtime_ns == mtime
    a, b = first.model.state_dict(), second.model.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    # other options are another cache entry (and do train)
    monkeypatch.undo()
    monkeypatch.setenv("MIXQ_CACHE_DIR", str(tmp_path))
    load_workload("digits", {"pretrain_steps": 6})
    assert len(list(tmp_path.glob("digits-*.pt"))) == 2
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, nothing left behind


def test_denoise_beats_the_noisy_input():
    workload = load_workload("denoise", DENOISE_OPTIONS)
    assert workload.metric == "psnr_db" and workload.higher_is_better
    (x,) = workload.example_inputs
    assert x.shape == (1, 1, 40, 40)
    assert torch.equal(x * 255, (x * 255).round())  # the input really is 8-bit data
    baseline = noisy_input_psnr(DENOISE_OPTIONS["eval_size"])
    assert 15.0 < baseline < 25.0  # sigma 25/255 noise
    assert fp32_quality(workload) > baseline + 0.5


def test_user_entry_point_loads_with_options():
    workload = load_workload("tests.search.user_workload:make_workload", {"width": 4, "pretrain_steps": 20})
    assert isinstance(workload, Workload)
    assert workload.name == "tiny"
    assert workload.model.conv.out_channels == 4
    assert 0.0 <= fp32_quality(workload) <= 1.0


def test_unknown_workload_lists_builtins():
    assert BUILTIN_WORKLOADS == ("digits", "denoise")
    with pytest.raises(WorkloadError, match=r"unknown workload 'mnist'; built-in: digits, denoise, or an entry point"):
        load_workload("mnist")


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("tests.search.no_such_module:make_workload", None, "workload: cannot import 'tests.search.no_such_module'"),
        ("tests.search.user_workload:nope", None, "workload: 'tests.search.user_workload' has no callable 'nope'"),
        ("tests.search.user_workload:N_CLASSES", None, "has no callable 'N_CLASSES'"),
        ("tests.search.user_workload:not_a_workload", None, "returned int, expected search.Workload"),
        ("tests.search.user_workload:make_workload", {"colour": "red"}, "workload_options: "),
        ("digits", {"widht": 8}, "workload_options: "),
    ],
)
def test_entry_point_errors(name, options, message):
    with pytest.raises(WorkloadError) as err:
        load_workload(name, options)
    assert message in str(err.value)


def test_workload_validates_its_fields(digits):
    with pytest.raises(TypeError, match="model: expected torch.nn.Module"):
        dataclasses.replace(digits, model="not a model")
    with pytest.raises(TypeError, match="example_inputs: expected a tuple"):
        dataclasses.replace(digits, example_inputs=torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="calibration_batches: at least one batch"):
        dataclasses.replace(digits, calibration_batches=[])
    with pytest.raises(ValueError, match="lr: must be > 0"):
        dataclasses.replace(digits, lr=0.0)
    assert isinstance(dataclasses.replace(digits, lr=1e-3).model, nn.Module)


def test_type_error_inside_a_factory_is_not_blamed_on_the_options():
    with pytest.raises(WorkloadError, match=r"workload 'tests.search.user_workload:broken_factory': raised TypeError: unsupported operand") as err:
        load_workload("tests.search.user_workload:broken_factory", {"width": 2})
    assert "workload_options" not in str(err.value)
    assert isinstance(err.value.__cause__, TypeError)  # the user's own error, for a --debug traceback


def test_pretraining_leaves_the_callers_rng_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXQ_CACHE_DIR", str(tmp_path))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_workload("digits", {"pretrain_steps": 3})  # a cache miss: trains (and seeds torch) inside
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(123)
    load_workload("digits", {"pretrain_steps": 3})  # a cache hit
    assert torch.equal(torch.rand(3), expected)
