import copy
import dataclasses
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from search import Workload
from search.errors import NonFiniteLossError
from search.quant.layers import discover_layers
from search.quant.qat import OUTPUT_QUANT_ATTR, FakeQuantConv2d, FakeQuantLinear
from search.train import fp32_quality, run_trial
from search.workloads.training import QatRecipe, resolve_device
from tests.search.user_workload import make_workload

ASSIGNMENT = {"conv": "int8", "fc": "int4"}


@pytest.fixture(scope="module")
def tiny() -> Workload:
    return make_workload()


def test_tiny_workload_layers(tiny: Workload) -> None:
    assert discover_layers(tiny.model, tiny.example_inputs).fqns == tuple(ASSIGNMENT)


def test_run_trial_trains_a_fake_quant_copy(tiny: Workload) -> None:
    before = copy.deepcopy(tiny.model.state_dict())
    run = run_trial(tiny, ASSIGNMENT, qat_steps=5, seed=0)
    assert type(run.model.conv) is FakeQuantConv2d and type(run.model.fc) is FakeQuantLinear
    assert hasattr(run.model, OUTPUT_QUANT_ATTR)
    assert not run.model.training
    assert len(run.losses) == 5 and all(loss > 0 for loss in run.losses)
    assert 0.0 <= run.quality <= 1.0
    assert run.duration_s > 0
    # the workload's pretrained model is untouched (deep-copied, BN not folded in place)
    after = tiny.model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert isinstance(tiny.model.bn, torch.nn.BatchNorm2d)


def test_same_seed_same_result_different_seed_differs(tiny: Workload) -> None:
    a = run_trial(tiny, ASSIGNMENT, qat_steps=8, seed=3)
    b = run_trial(tiny, ASSIGNMENT, qat_steps=8, seed=3)
    c = run_trial(tiny, ASSIGNMENT, qat_steps=8, seed=4)
    assert a.quality == b.quality
    assert a.losses == b.losses
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert c.losses != a.losses  # another seed draws other batches


def test_lsq_trial_learns_scales(tiny: Workload) -> None:
    run = run_trial(tiny, ASSIGNMENT, qat_steps=0, seed=0, range_method="lsq")
    assert isinstance(run.model.fc, FakeQuantLinear)
    calibrated = run.model.fc.input_quant.scale.detach().clone()
    trained = run_trial(tiny, ASSIGNMENT, qat_steps=10, seed=0, range_method="lsq")
    assert isinstance(trained.model.fc, FakeQuantLinear)
    assert trained.model.fc.input_quant.scale.requires_grad
    assert not torch.equal(trained.model.fc.input_quant.scale.detach(), calibrated)


def test_zero_qat_steps(tiny: Workload) -> None:
    run = run_trial(tiny, {"conv": "fp32", "fc": "fp32"}, qat_steps=0, seed=0)
    assert run.losses == []
    assert run.quality == pytest.approx(fp32_quality(tiny))


def test_fp32_quality_is_sensible(tiny: Workload) -> None:
    assert 0.7 < fp32_quality(tiny) <= 1.0


def test_nan_loss_raises_a_clear_error(tiny: Workload) -> None:
    def nan_loss(out: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(out, target) * float("nan")

    broken = dataclasses.replace(tiny, loss_fn=nan_loss)
    with pytest.raises(NonFiniteLossError, match=r"loss: nan at QAT step 0; lower the workload's lr"):
        run_trial(broken, ASSIGNMENT, qat_steps=3, seed=0)


def test_nan_metric_raises(tiny: Workload) -> None:
    broken = dataclasses.replace(tiny, evaluate=lambda m: float("nan"))
    with pytest.raises(NonFiniteLossError, match="metric: evaluation returned NaN"):
        run_trial(broken, ASSIGNMENT, qat_steps=1, seed=0)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: 'cuda' asked for but CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.parametrize(
    ("recipe", "steps", "factors"),
    [
        pytest.param(QatRecipe(), 4, [1.0, 1.0, 1.0, 1.0], id="constant"),
        # 0.5 * (1 + cos(pi * step / 4))
        pytest.param(QatRecipe(schedule="cosine"), 4, [1.0, 0.853553, 0.5, 0.146447], id="cosine"),
        # 2 warm-up steps (1/2, 2/2), then cosine over the other 2
        pytest.param(QatRecipe(schedule="cosine", warmup_frac=0.5), 4, [0.5, 1.0, 1.0, 0.5], id="warmup-cosine"),
    ],
)
def test_recipe_lr_factor(recipe: QatRecipe, steps: int, factors: list[float]) -> None:
    assert [recipe.lr_factor(step, steps) for step in range(steps)] == pytest.approx(factors, abs=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"lr_scale": 0}, "lr_scale"), ({"schedule": "step"}, "schedule"), ({"warmup_frac": 1.0}, "warmup_frac")],
)
def test_bad_recipe_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        QatRecipe(**kwargs)


def test_recipe_changes_training_and_default_is_the_old_behaviour(tiny: Workload) -> None:
    plain = run_trial(tiny, ASSIGNMENT, qat_steps=6, seed=0)
    default = run_trial(tiny, ASSIGNMENT, qat_steps=6, seed=0, recipe=QatRecipe())
    cosine = run_trial(tiny, ASSIGNMENT, qat_steps=6, seed=0, recipe=QatRecipe(schedule="cosine", lr_scale=3))
    assert default.losses == plain.losses
    assert cosine.losses[0] == plain.losses[0]  # same data and start; the rate acts from the first update
    assert cosine.losses[1:] != plain.losses[1:]
