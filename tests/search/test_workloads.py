import dataclasses
import inspect
from pathlib import Path
from typing import Any, NoReturn

import pytest
import torch
from torch import nn

from search.quant.layers import discover_layers
from search.train import fp32_quality, run_trial
from search.workloads import BUILTIN_WORKLOADS, Workload, WorkloadError, builtin_layer_graph, load_workload
from search.workloads import denoise_deep as denoise_deep_module
from search.workloads import digits as digits_module
from search.workloads.cache import cache_dir
from search.workloads.denoise import DnCNN, noisy_input_psnr

DIGITS_OPTIONS: dict[str, Any] = {"pretrain_steps": 40}
DENOISE_OPTIONS: dict[str, Any] = {"depth": 3, "width": 16, "pretrain_steps": 150, "eval_size": 64}
DENOISE_DEEP_TINY: dict[str, Any] = {"depth": 3, "width": 8, "pretrain_steps": 300, "eval_size": 48}


@pytest.fixture(scope="module")
def digits() -> Workload:
    return load_workload("digits", DIGITS_OPTIONS)


def test_cache_dir_is_private_to_the_tests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_dir() != Path.home() / ".cache" / "mixq"  # tests/conftest.py's mixq_cache_dir
    monkeypatch.setenv("MIXQ_CACHE_DIR", str(tmp_path / "weights"))
    assert cache_dir() == tmp_path / "weights"
    assert (tmp_path / "weights").is_dir()  # created on demand


def test_digits_loads_with_sensible_accuracy(digits: Workload) -> None:
    assert digits.name == "digits" and digits.metric == "accuracy" and digits.higher_is_better
    assert digits.example_inputs[0].shape == (1, 1, 8, 8)
    assert float(digits.example_inputs[0].min()) >= 0.0 and float(digits.example_inputs[0].max()) <= 1.0
    graph = discover_layers(digits.model, digits.example_inputs)
    assert graph.fqns == ("features.0", "features.3", "features.7", "classifier.1", "classifier.3")
    assert not digits.model.training
    assert 0.8 < fp32_quality(digits) <= 1.0  # 10 classes: chance is 0.1


def test_digits_int8_trial_keeps_accuracy(digits: Workload) -> None:
    graph = discover_layers(digits.model, digits.example_inputs)
    run = run_trial(digits, {fqn: "int8" for fqn in graph.fqns}, qat_steps=3, seed=0)
    assert run.quality > fp32_quality(digits) - 0.05


def test_pretrained_cache_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXQ_CACHE_DIR", str(tmp_path))
    first = load_workload("digits", {"pretrain_steps": 5})
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("digits-") and files[0].suffix == ".pt"
    mtime = files[0].stat().st_mtime_ns

    def no_retraining(*args: object, **kwargs: object) -> NoReturn:
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


def test_denoise_beats_the_noisy_input() -> None:
    workload = load_workload("denoise", DENOISE_OPTIONS)
    assert workload.metric == "psnr_db" and workload.higher_is_better
    (x,) = workload.example_inputs
    assert x.shape == (1, 1, 40, 40)
    assert torch.equal(x * 255, (x * 255).round())  # the input really is 8-bit data
    baseline = noisy_input_psnr(DENOISE_OPTIONS["eval_size"])
    assert 15.0 < baseline < 25.0  # sigma 25/255 noise
    assert fp32_quality(workload) > baseline + 0.5


def test_denoise_deep_has_dncnn_depth_at_its_defaults() -> None:
    defaults = inspect.signature(denoise_deep_module.make_workload).parameters
    depth, width = defaults["depth"].default, defaults["width"].default
    graph = discover_layers(DnCNN(depth, width), (torch.rand(1, 1, 40, 40),))  # untrained: no pretraining
    assert len(graph.fqns) >= 17
    assert graph.first.input_shape == (1, 1, 40, 40) and graph.last.output_shape == (1, 1, 40, 40)


def test_denoise_deep_holds_photos_out_for_evaluation() -> None:
    train, held_out = denoise_deep_module.TRAIN_PHOTOS, denoise_deep_module.EVAL_PHOTOS
    assert len(held_out) >= 2 and len(train) >= 10
    assert not set(train) & set(held_out)
    assert "cat" not in train + held_out  # chelsea under another name
    noisy, clean = denoise_deep_module.held_out_pair(32)
    assert noisy.shape == clean.shape == (len(held_out), 1, 32, 32)
    assert torch.equal(noisy * 255, (noisy * 255).round()) and torch.equal(clean * 255, (clean * 255).round())
    with pytest.raises(ValueError, match=r"eval_size: at most 303 px \('coins' is 303x384\), got 400"):
        denoise_deep_module.held_out_pair(400)


def test_denoise_deep_tiny_config_trains_and_quantizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXQ_CACHE_DIR", str(tmp_path))
    workload = load_workload("denoise-deep", DENOISE_DEEP_TINY)
    assert workload.name == "denoise-deep" and workload.metric == "psnr_db" and workload.higher_is_better
    (x,) = workload.example_inputs
    assert x.shape == (1, 1, 40, 40) and torch.equal(x * 255, (x * 255).round())
    baseline = denoise_deep_module.noisy_input_psnr(DENOISE_DEEP_TINY["eval_size"])
    assert 15.0 < baseline < 25.0  # sigma 25/255 noise
    fp32 = fp32_quality(workload)
    assert fp32 > baseline + 0.5
    graph = discover_layers(workload.model, workload.example_inputs)
    assert len(graph.fqns) == 3
    run = run_trial(workload, {fqn: "int8" for fqn in graph.fqns}, qat_steps=2, seed=0)
    assert abs(run.quality - fp32) < 1.0
    files = sorted(tmp_path.glob("denoise-deep-*.pt"))
    assert len(files) == 1

    def no_retraining(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("the cached weights should have been used")

    monkeypatch.setattr(denoise_deep_module, "_pretrain", no_retraining)
    again = load_workload("denoise-deep", DENOISE_DEEP_TINY)
    a, b = workload.model.state_dict(), again.model.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(tmp_path.glob("denoise-deep-*.pt")) == files
    with pytest.raises(WorkloadError, match=r"workload_options.depth: 3..200 convolutions \(first, one inner, last\)"):
        load_workload("denoise-deep", {**DENOISE_DEEP_TINY, "depth": 2})


def test_user_entry_point_loads_with_options() -> None:
    workload = load_workload("tests.search.user_workload:make_workload", {"width": 4, "pretrain_steps": 20})
    assert isinstance(workload, Workload)
    assert workload.name == "tiny"
    assert isinstance(workload.model.conv, nn.Conv2d)
    assert workload.model.conv.out_channels == 4
    assert 0.0 <= fp32_quality(workload) <= 1.0


def test_unknown_workload_lists_builtins() -> None:
    assert BUILTIN_WORKLOADS == ("digits", "denoise", "denoise-deep")
    with pytest.raises(
        WorkloadError, match=r"unknown workload 'mnist'; built-in: digits, denoise, denoise-deep, or an entry point"
    ):
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
def test_entry_point_errors(name: str, options: dict[str, Any] | None, message: str) -> None:
    with pytest.raises(WorkloadError) as err:
        load_workload(name, options)
    assert message in str(err.value)


def test_workload_validates_its_fields(digits: Workload) -> None:
    with pytest.raises(TypeError, match=r"model: expected torch\.nn\.Module"):
        dataclasses.replace(digits, model="not a model")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="example_inputs: expected a tuple"):
        dataclasses.replace(digits, example_inputs=torch.zeros(1, 1, 8, 8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="calibration_batches: at least one batch"):
        dataclasses.replace(digits, calibration_batches=[])
    with pytest.raises(ValueError, match="lr: must be > 0"):
        dataclasses.replace(digits, lr=0.0)
    assert isinstance(dataclasses.replace(digits, lr=1e-3).model, nn.Module)


def test_type_error_inside_a_factory_is_not_blamed_on_the_options() -> None:
    with pytest.raises(WorkloadError, match=r"workload 'tests.search.user_workload:broken_factory': raised TypeError: unsupported operand") as err:
        load_workload("tests.search.user_workload:broken_factory", {"width": 2})
    assert "workload_options" not in str(err.value)
    assert isinstance(err.value.__cause__, TypeError)  # the user's own error, for a --debug traceback


def test_pretraining_leaves_the_callers_rng_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXQ_CACHE_DIR", str(tmp_path))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_workload("digits", {"pretrain_steps": 3})  # a cache miss: trains (and seeds torch) inside
    assert torch.equal(torch.rand(3), expected)
    torch.manual_seed(123)
    load_workload("digits", {"pretrain_steps": 3})  # a cache hit
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(("name", "options"), [
    pytest.param("digits", DIGITS_OPTIONS, id="digits"),
    pytest.param("denoise", DENOISE_OPTIONS, id="denoise"),
])
def test_builtin_layer_graph_is_the_loaded_workloads(name: str, options: dict[str, Any]) -> None:
    """The architecture alone (meta device, untrained) gives the layers a search of the loaded workload sees."""
    workload = load_workload(name, options)  # cached weights where an earlier test trained them
    assert builtin_layer_graph(name, options) == discover_layers(workload.model, workload.example_inputs)


def test_builtin_layer_graph_of_a_large_net_and_bad_options() -> None:
    graph = builtin_layer_graph("denoise-deep", {"depth": 200, "width": 1024})  # ~190M weights if allocated
    assert len(graph.fqns) == 200 and graph.first.input_shape == (1, 1, 40, 40)
    assert graph.by_fqn("body.5").num_params == 1024 * 1024 * 9
    with pytest.raises(WorkloadError, match=r"workload_options.width: 1..1024 channels, got 0"):
        builtin_layer_graph("digits", {"width": 0})
    with pytest.raises(WorkloadError, match=r"workload_options.width: expected int"):
        builtin_layer_graph("denoise", {"width": "abc"})
    with pytest.raises(WorkloadError, match="is not built-in"):
        builtin_layer_graph("tests.search.user_workload:make_workload", {})
