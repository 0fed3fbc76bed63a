from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from search.study.sensitivity import LayerSensitivity, fisher_sensitivity, hessian_sensitivity, ptq_sensitivity
from search.workloads.base import Batch, Workload


class ThreeConvNet(nn.Module):
    """conv1 -> relu -> conv2 -> relu -> conv3; input (N, 1, 8, 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))

    @staticmethod
    def example_inputs() -> tuple[Tensor, ...]:
        return (torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)),)


def teacher_workload(model: nn.Module) -> Workload:
    """Regression onto the fp32 model's own outputs (so fp32 is perfect), metric MSE (lower is
    better, to exercise the sign of the drop)."""
    model = model.eval()
    eval_inputs = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eval_target = model(eval_inputs)

    def batches(gen: torch.Generator) -> Iterator[Batch]:
        while True:
            x = torch.rand(8, 1, 8, 8, generator=gen)
            # a target off the model's own output, so the loss has a gradient at the fp32 weights
            yield x, model(x).detach() + 0.1 * torch.randn(8, 1, 8, 8, generator=gen)

    def evaluate(m: nn.Module) -> float:
        with torch.no_grad():
            return float(F.mse_loss(m(eval_inputs), eval_target))

    return Workload(
        name="teacher", model=model, example_inputs=ThreeConvNet.example_inputs(),
        train_batches=batches, calibration_batches=[(torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(2)), eval_target[:8])],
        loss_fn=F.mse_loss, evaluate=evaluate, metric="mse", higher_is_better=False,
    )  # fmt: skip


class Proxy(Protocol):
    """What the three proxies share (each adds keyword-only options of its own)."""

    def __call__(
        self, workload: Workload, layers: Sequence[str] | None = ..., formats: Sequence[str] = ...
    ) -> list[LayerSensitivity]: ...


PROXIES: list[Proxy] = [ptq_sensitivity, fisher_sensitivity, hessian_sensitivity]
PROXY_IDS = ["ptq", "fisher", "hessian"]


def seeded_net() -> ThreeConvNet:
    torch.manual_seed(0)
    return ThreeConvNet()


def with_outlier_weights(net: ThreeConvNet) -> ThreeConvNet:
    """conv2 gets a 1000x outlier weight in every output channel, on an input channel conv1 keeps at
    zero (the fp32 function does not change): per-channel int4 (step max/7) then rounds all of
    conv2's real weights to zero, so conv2 is by far the most sensitive layer."""
    with torch.no_grad():
        net.conv1.weight[0] = 0.0
        assert net.conv1.bias is not None
        net.conv1.bias[0] = -1.0  # relu(-1) = 0: a dead channel
        net.conv2.weight[:, 0] = 1000.0 * net.conv2.weight.abs().amax()
    return net


def scores(records: list[LayerSensitivity], fmt: str) -> dict[str, float]:
    return {r.fqn: r.score for r in records if r.format == fmt}


@pytest.mark.parametrize("proxy", PROXIES, ids=PROXY_IDS)
def test_a_layer_with_outlier_weights_ranks_first(proxy: Proxy) -> None:
    workload = teacher_workload(with_outlier_weights(seeded_net()))
    int4 = scores(proxy(workload, formats=["int4"]), "int4")
    assert max(int4, key=int4.__getitem__) == "conv2"
    assert int4["conv2"] > 3 * max(int4["conv1"], int4["conv3"])


@pytest.mark.parametrize("proxy", PROXIES, ids=PROXY_IDS)
def test_int8_costs_no_more_than_int4(proxy: Proxy) -> None:
    records = proxy(teacher_workload(seeded_net()))
    assert [(r.fqn, r.format) for r in records] == [
        (fqn, fmt) for fqn in ("conv1", "conv2", "conv3") for fmt in ("int8", "int4")
    ]
    int8, int4 = scores(records, "int8"), scores(records, "int4")
    for fqn in int8:
        assert 0.0 <= int8[fqn] <= int4[fqn], fqn
    assert all(v > 0.0 for v in int4.values())


@pytest.mark.parametrize("proxy", PROXIES, ids=PROXY_IDS)
def test_deterministic_and_leaves_the_workload_model_alone(proxy: Proxy) -> None:
    workload = teacher_workload(seeded_net())
    before = {k: v.clone() for k, v in workload.model.state_dict().items()}
    first = proxy(workload, ["conv3", "conv1"], ["int4"])
    assert [r.fqn for r in first] == ["conv3", "conv1"]
    assert proxy(workload, ["conv3", "conv1"], ["int4"]) == first
    after = workload.model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert all(isinstance(m, (nn.Conv2d, ThreeConvNet)) and type(m).__name__ in ("Conv2d", "ThreeConvNet")
               for m in workload.model.modules())  # fmt: skip


def test_fisher_is_zero_where_quantization_is_exact() -> None:
    net = seeded_net()
    with torch.no_grad():  # integers in -7..7 with a 7 in every output channel: int4 scale 1, exact
        w = torch.randint(-7, 8, net.conv2.weight.shape, generator=torch.Generator().manual_seed(3)).float()
        w[:, 0, 0, 0] = 7.0
        net.conv2.weight.copy_(w)
    workload = teacher_workload(net)
    weight_only = scores(fisher_sensitivity(workload, formats=["w4a32"]), "w4a32")  # inputs left fp32
    assert weight_only["conv2"] == 0.0
    assert weight_only["conv1"] > 0.0 and weight_only["conv3"] > 0.0
    assert scores(ptq_sensitivity(workload, formats=["w4a32"]), "w4a32")["conv2"] == 0.0
    hessian = scores(hessian_sensitivity(workload, formats=["int4"]), "int4")  # HAWQ scores weights only
    assert hessian["conv2"] == 0.0
    assert hessian["conv1"] > 0.0 and hessian["conv3"] > 0.0


def test_fp32_costs_nothing() -> None:
    records = [r for proxy in PROXIES for r in proxy(teacher_workload(seeded_net()), formats=["fp32"])]
    assert [r.score for r in records] == [0.0] * 9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"layers": ["conv9"]}, "layers: 'conv9' is not a quantizable layer of this model; known layers: conv1, conv2, conv3", id="unknown-layer"),
        pytest.param({"layers": "conv1"}, "layers: a list of layer fqns", id="layers-string"),
        pytest.param({"formats": ["int3"]}, "formats: format: unknown format 'int3'", id="unknown-format"),
        pytest.param({"formats": []}, "formats: a non-empty list", id="no-formats"),
        pytest.param({"formats": "int4"}, "formats: a non-empty list", id="formats-string"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("proxy", PROXIES, ids=PROXY_IDS)
def test_bad_arguments_name_the_field(proxy: Proxy, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        proxy(teacher_workload(seeded_net()), **kwargs)


def test_fisher_needs_a_batch() -> None:
    with pytest.raises(ValueError, match="num_batches: at least 1, got 0"):
        fisher_sensitivity(teacher_workload(seeded_net()), num_batches=0)


def test_hessian_needs_a_sample() -> None:
    with pytest.raises(ValueError, match="samples: at least 1, got 0"):
        hessian_sensitivity(teacher_workload(seeded_net()), samples=0)


def test_hessian_trace_of_a_quadratic_loss_is_exact() -> None:
    """One linear-in-weights layer with MSE loss: the Hessian of the loss in the weights is
    constant, so Hutchinson's estimate averages to its trace; conv2's score is then
    ``trace / numel * ||Q(W) - W||^2`` with the trace computed here independently
    (the mean of v^T H v over many Rademacher v, H from torch.autograd.functional.hessian)."""
    torch.manual_seed(0)
    first, second = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 1, 1)  # built in the same order as before
    net = nn.Sequential(first, second)
    workload = teacher_workload(net)
    workload.example_inputs = ThreeConvNet.example_inputs()
    gen = torch.Generator().manual_seed(0)
    x, target = next(workload.train_batches(gen))
    w0 = first.weight.detach().clone()

    def loss_of(w: Tensor) -> Tensor:
        return F.mse_loss(second(F.conv2d(x, w, first.bias, padding=1)), target)

    exact_trace = float(torch.autograd.functional.hessian(loss_of, w0).reshape(w0.numel(), -1).trace())
    est = scores(hessian_sensitivity(workload, layers=["0"], formats=["int4"], samples=200), "int4")["0"]
    from search.quant.formats import parse_format
    from search.quant.qat import FakeQuantMixin, RangeMethod, to_fake_quant
    twin = to_fake_quant(first, parse_format("int4"), RangeMethod.MINMAX)
    assert isinstance(twin, FakeQuantMixin)
    perturbation = float((twin.weight_quant(w0) - w0).square().sum())
    # each sample draws its own batch and the Hessian depends on the inputs, so the estimate is
    # compared with one batch's trace (the batches are alike: uniform noise of one size)
    assert est == pytest.approx(exact_trace / w0.numel() * perturbation, rel=0.05)
