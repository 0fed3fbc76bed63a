"""The batched QAT engine (issue 22): K maps trained in one pass give, per map, the numbers of training
that map alone (``run_trial``): weights, quantizer scales / zero points / ranges, losses and the fake-quant
outputs on held-out inputs, within a max relative difference of 1e-5 (max |a - b| over max |b|, per tensor);
and where a model cannot be batched, ``run_trials`` falls back to one map at a time, says so once, and
still returns the one-map numbers."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from search.quant.layers import discover_layers
from search.train import TrialBatch, TrialRun, run_trial, run_trials
from search.workloads import load_workload
from search.workloads.base import Workload, random_batches
from tests.corpus.models import corpus_workload, input_batch

FORMATS = ("int4", "int8", "fp16", "w4a8", "w8a16")
TOL = 1e-5
STEPS = 6


def rel_diff(a: Tensor, b: Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape
    if torch.equal(a, b):  # also unused quantizers' infinite ranges
        return 0.0
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("inf")
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30) if b.numel() else 0.0


def flat(out: Any) -> Tensor:
    parts = out if isinstance(out, (tuple, list)) else (out,)
    return torch.cat([p.reshape(-1) for p in parts])


def format_maps(workload: Workload, mixed: int = 2) -> list[dict[str, str]]:
    """One map per format on every layer, then ``mixed`` maps with a different format per layer."""
    fqns = discover_layers(workload.model, workload.example_inputs).fqns
    maps = [dict.fromkeys(fqns, fmt) for fmt in FORMATS]
    maps += [{f: FORMATS[(i + 2 * j) % len(FORMATS)] for j, f in enumerate(fqns)} for i in range(mixed)]
    return maps


def assert_same_as_alone(batch: TrialBatch, alone: Sequence[TrialRun], held_out: Tensor) -> None:
    assert len(batch.runs) == len(alone)
    for k, (got, want) in enumerate(zip(batch.runs, alone, strict=True)):
        assert not got.model.training
        sg, sw = got.model.state_dict(), want.model.state_dict()
        assert list(sg) == list(sw), f"map {k}: other state keys"
        for key in sw:
            if sw[key].is_floating_point():
                assert rel_diff(sg[key], sw[key]) <= TOL, f"map {k}: {key} differs ({rel_diff(sg[key], sw[key]):.3g})"
            else:
                assert torch.equal(sg[key], sw[key]), f"map {k}: {key}"
        assert len(got.losses) == len(want.losses)
        assert rel_diff(torch.tensor(got.losses), torch.tensor(want.losses)) <= TOL, f"map {k}: losses"
        with torch.no_grad():
            out_got, out_want = flat(got.model(held_out)), flat(want.model(held_out))
        assert rel_diff(out_got, out_want) <= TOL, f"map {k}: fake-quant outputs differ"
        assert got.quality == pytest.approx(want.quality, rel=TOL, abs=1e-12)


def check_equal(workload: Workload, maps: list[dict[str, str]], held_out: Tensor, method: str = "minmax",
                steps: int = STEPS) -> TrialBatch:
    batch = run_trials(workload, maps, qat_steps=steps, seed=3, range_method=method)
    assert batch.batched is True, batch.fallback
    assert batch.fallback == ""
    assert batch.maps_per_pass == len(maps)
    alone = [run_trial(workload, m, qat_steps=steps, seed=3, range_method=method) for m in maps]
    assert_same_as_alone(batch, alone, held_out)
    return batch


@pytest.fixture(scope="module")
def denoise() -> Workload:
    return load_workload("denoise", {"depth": 4, "width": 8, "pretrain_steps": 30, "eval_size": 32})


@pytest.mark.parametrize("method", ["minmax", "lsq"])
def test_every_format_and_mixed_maps_train_in_one_pass_as_alone(denoise: Workload, method: str) -> None:
    held_out = torch.rand(3, 1, 20, 20, generator=torch.Generator().manual_seed(5))
    batch = check_equal(denoise, format_maps(denoise), held_out, method)
    # the maps really trained differently: int4 and fp16 end apart
    assert batch.runs[0].quality != batch.runs[2].quality


def test_digits_in_one_pass_as_alone() -> None:
    workload = load_workload("digits", {"width": 8, "pretrain_steps": 30, "batch_size": 16})
    held_out = workload.calibration_batches[0][0][:32]
    check_equal(workload, format_maps(workload, mixed=1)[2:], held_out, "lsq")


def test_denoise_deep_in_one_pass_as_alone() -> None:
    workload = load_workload("denoise-deep", {"depth": 4, "width": 8, "pretrain_steps": 20, "eval_size": 16,
                                              "patch_size": 16})
    held_out = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(6))
    maps = format_maps(workload, mixed=2)
    check_equal(workload, [maps[0], maps[3], maps[5], maps[6]], held_out)


# the corpus CNNs the batched path takes (the others: Dropout, unfolded BatchNorm, class tokens fall back)
CORPUS_BATCHED = {"resnet18": "minmax", "efficientnet": "lsq", "shufflenet": "minmax", "unet": "lsq",
                  "yolo_neck": "minmax", "kws": "lsq", "espcn": "minmax"}


@pytest.mark.parametrize("name", sorted(CORPUS_BATCHED))
def test_corpus_cnn_in_one_pass_as_alone(name: str) -> None:
    workload = corpus_workload(name, n_train=8, batch_size=2)
    fqns = discover_layers(workload.model, workload.example_inputs).fqns
    maps = [{f: FORMATS[(i + j) % len(FORMATS)] for j, f in enumerate(fqns)} for i in range(3)]
    held_out = input_batch(name, workload.example_inputs[0], 3, torch.Generator().manual_seed(9))
    check_equal(workload, maps, held_out, CORPUS_BATCHED[name], steps=4)


# ---------------------------------------------------------------------------------------------- fallback


class _PreNorm(nn.Module):
    """A BatchNorm before the first conv: nothing to fold it into, so it trains on batch statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(1)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(F.relu(self.conv(self.bn(x))), 1))


class _BatchCentred(nn.Module):
    """A forward that mixes the batch: every sample centred on the batch mean."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv(x))
        return self.fc(torch.flatten(h - h.mean(dim=0, keepdim=True), 1))


class _Dropped(_BatchCentred):
    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(torch.flatten(F.relu(self.conv(x)), 1)))


def _tiny_workload(model: nn.Module) -> Workload:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 1, 6, 6, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    return Workload(
        name="tiny", model=model.eval(), example_inputs=(x[:1],), train_batches=lambda g: random_batches(x, y, 8, g),
        calibration_batches=[(x[:16], y[:16])], loss_fn=F.cross_entropy,
        evaluate=lambda m: float((m(x[16:]).argmax(1) == y[16:]).float().mean()), metric="accuracy",
    )


@pytest.mark.parametrize(("model", "reason"), [
    (_PreNorm, "BatchNorm2d left unfolded"),
    (_BatchCentred, "mixes or fixes the batch"),
    (_Dropped, "Dropout with p=0.3"),
])
def test_unbatchable_models_fall_back_say_so_once_and_give_the_one_map_numbers(model: type[nn.Module],
                                                                                reason: str) -> None:
    torch.manual_seed(0)
    workload = _tiny_workload(model())
    maps = [{"conv": "int8", "fc": "int4"}, {"conv": "int4", "fc": "fp16"}, {"conv": "w4a8", "fc": "int8"}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = run_trials(workload, maps, qat_steps=4, seed=1)
    said = [w for w in caught if issubclass(w.category, RuntimeWarning) and "one at a time" in str(w.message)]
    assert len(said) == 1 and reason in str(said[0].message)
    assert batch.batched is False and reason in batch.fallback and batch.maps_per_pass == 1
    alone = [run_trial(workload, m, qat_steps=4, seed=1) for m in maps]
    for got, want in zip(batch.runs, alone, strict=True):
        assert got.losses == want.losses and got.quality == want.quality
        sg, sw = got.model.state_dict(), want.model.state_dict()
        assert all(torch.equal(sg[k], sw[k]) for k in sw)


def test_one_map_is_not_batched_and_not_warned(denoise: Workload) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch = run_trials(denoise, format_maps(denoise)[:1], qat_steps=2, seed=0)
    assert batch.batched is False and batch.fallback.startswith("one map")
    assert len(batch.runs) == 1
