"""The torch path on the model corpus (``tests/corpus/models.py``): every weight layer is found, every
model quantizes at int8 and int4 (forward and backward), exports to QDQ ONNX and round-trips through
onnxruntime; a 3-trial search completes on a representative subset."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from search import SearchSpec, run_search
from search.quant.attention import prepare_model
from search.quant.export_onnx import export_onnx, verify_onnx
from search.quant.formats import parse_format
from search.quant.layers import FloatKind, discover_layers
from search.quant.qat import calibrate, fake_quant_layers, quantize_model
from tests.corpus.models import CORPUS, QUANTIZABLE, build, corpus_workload, input_batch, weight_layers

torch.set_num_threads(1)
NAMES = sorted(CORPUS)
# the 3-trial search on a few (one core: the whole corpus file stays within ~2 minutes): a residual CNN,
# ResNet-50 depth at its 32x32 input, depthwise + SE, a transformer with attention, a two-output detector
# neck, a 1-D net, a UNet
SEARCHED = ("resnet18", "resnet50", "mobilenet_v3", "vit", "yolo_neck", "kws", "unet")


def _outputs(out: Tensor | tuple[Tensor, ...]) -> list[Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


@pytest.mark.parametrize("name", NAMES)
def test_every_weight_layer_is_found(name: str) -> None:
    model, inputs = build(name)
    truth = weight_layers(model)
    prepare_model(model)
    graph = discover_layers(model, inputs)
    assert len(graph.layers) == truth, (name, graph.fqns)
    assert graph.unused == ()
    # and each found layer is a module of a quantizable type: the fqns are the Conv/Linear modules
    modules = dict(model.named_modules())
    assert all(isinstance(modules[f], QUANTIZABLE) for f in graph.fqns)
    # no weight is applied outside a layer (an embedding is the one listed exception)
    kinds = {f.kind for f in graph.float_layers}
    assert kinds <= {FloatKind.ATTENTION_MATMUL, FloatKind.EMBEDDING}, graph.float_layers
    has_attention = any(isinstance(m, nn.MultiheadAttention) for m in build(name)[0].modules())
    assert (FloatKind.ATTENTION_MATMUL in kinds) == has_attention


def test_attention_projections_are_found_only_after_the_swap() -> None:
    """Fails on a mixq without the swap: nn.MultiheadAttention hides its four projections."""
    model, inputs = build("vit")
    raw = discover_layers(model, inputs)
    assert len(raw.layers) == weight_layers(model) - 8  # 2 blocks x (q, k, v, out)
    assert {f.kind for f in raw.float_layers} == {FloatKind.MULTIHEAD_ATTENTION}


@pytest.mark.parametrize("trained", [False, True], ids=["fresh", "trained"])
@pytest.mark.parametrize("name", NAMES)
def test_quantize_int8_int4_forward_backward_and_export(name: str, trained: bool, tmp_path: Path) -> None:
    model, inputs = build(name, trained=trained)
    prepare_model(model)
    graph = discover_layers(model, inputs)
    gen = torch.Generator().manual_seed(3)
    batch = input_batch(name, inputs[0], 2, gen)
    for fmt in ("int4", "int8"):
        qmodel = copy.deepcopy(model)
        quantize_model(qmodel, {f: parse_format(fmt) for f in graph.fqns}, inputs, graph=graph)
        assert len(list(fake_quant_layers(qmodel))) == len(graph.layers)
        calibrate(qmodel, [batch])
        # train mode (QAT: batch statistics in unfolded BNs, dropout): finite forward and backward
        qmodel.train()
        outs = _outputs(qmodel(batch))
        assert all(torch.isfinite(o).all() for o in outs)
        sum(o.float().pow(2).mean() for o in outs).backward()  # type: ignore[union-attr]
        # eval mode (the calibrated ranges hold): the gradient reaches the weights of most layers
        qmodel.zero_grad(set_to_none=True)
        qmodel.eval()
        sum(o.float().pow(2).mean() for o in _outputs(qmodel(batch))).backward()  # type: ignore[union-attr]
        grads = [m.weight.grad for _, m in fake_quant_layers(qmodel)]
        reached = sum(g is not None and bool(torch.isfinite(g).all()) and bool(g.abs().sum() > 0) for g in grads)
        assert reached >= len(grads) // 2, (name, fmt, reached, len(grads))
        if fmt == "int8":
            qmodel.eval()
            path = export_onnx(qmodel, inputs, tmp_path / f"{name}.onnx", dynamic_spatial=False)
            with torch.no_grad():
                scale = max(float(o.abs().max()) for o in _outputs(qmodel(*inputs)))
            # the model output is quantized: a flipped rounding upstream costs at most a few output steps
            assert verify_onnx(qmodel, inputs, path) <= 0.02 * max(scale, 1e-6), name


@pytest.mark.parametrize("name", SEARCHED)
def test_three_trial_search_completes(name: str) -> None:
    workload = corpus_workload(name, n_train=8, batch_size=2)
    spec = SearchSpec(workload=f"corpus-{name}", n_trials=3, qat_steps=2, reevaluate_front=0,
                      seed_with_sensitivity=False, formats=("int4", "int8", "fp16"))
    result = run_search(spec, workload=workload)
    assert len(result.trials) == 3
    assert result.front
    assert len(result.layers) == weight_layers(build(name)[0])
    has_attention = name == "vit"
    assert bool(result.float_layers) == has_attention
    for trial in result.trials:
        assert set(trial.assignment) == {la.fqn for la in result.layers}
        assert trial.qconfig is not None and trial.qconfig["schema_version"] == 2
        assert bool(trial.qconfig["float_layers"]) == has_attention


def test_sensitivity_proxies_on_a_two_output_model() -> None:
    """The YOLO neck returns two tensors: the proxies used to read the output's range as one tensor."""
    from search.study.sensitivity import fisher_sensitivity, hessian_sensitivity, ptq_sensitivity

    workload = corpus_workload("yolo_neck", n_train=4, batch_size=2)
    layers = ["stem.0", "head4"]
    for proxy in (ptq_sensitivity, fisher_sensitivity, hessian_sensitivity):
        records = proxy(workload, layers=layers, formats=("int4",))
        assert [r.fqn for r in records] == layers


@pytest.mark.parametrize("trained", [False, True], ids=["fresh", "trained"])
def test_builders_are_deterministic_and_leave_the_global_rng(trained: bool) -> None:
    state = torch.random.get_rng_state()
    for name in NAMES:
        (a, xa), (b, xb) = build(name, trained=trained), build(name, trained=trained)
        assert all(torch.equal(xa[i], xb[i]) for i in range(len(xa)))
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert torch.equal(torch.random.get_rng_state(), state)
    fresh, trained_model = build("resnet18")[0], build("resnet18", trained=True)[0]
    assert not torch.equal(fresh.state_dict()["bn1.running_var"], trained_model.state_dict()["bn1.running_var"])
