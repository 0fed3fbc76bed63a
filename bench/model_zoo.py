"""The torch path on the model corpus (``tests/corpus/models.py``, issue 19): per model, the layers mixq
finds vs the layers that have weights (a walk of the modules as built), what stays float and its share of
the MACs, the time of each sensitivity proxy (PTQ, Fisher, Hessian; int8 and int4 per layer) and of a
short search at a fixed budget (``--trials`` trials of ``--qat-steps`` QAT steps, no proxy seeding).

Run on one core for comparable numbers::

    OMP_NUM_THREADS=1 python -m bench.model_zoo            # writes bench/results/model_zoo/corpus.md
    OMP_NUM_THREADS=1 python -m bench.model_zoo --models resnet50 vit --trials 3
    OMP_NUM_THREADS=1 python -m bench.model_zoo --onnx     # the ONNX side: bench/results/model_zoo/onnx.md

The ONNX side (``--onnx``): each model exported by torch's TorchScript exporter with a symbolic batch, imported
(:func:`search.quant.onnx_import.load_onnx_model`), its output against onnxruntime's at batch 1 and 4, and one
fake-quant forward (every layer int8, calibrated) against onnxruntime running its QDQ export.

Tiny widths and inputs (the corpus's), trained-like weights, random data with the fp32 model's outputs as
targets: the times are the machinery's cost at these sizes, not accuracy results.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.report import RESULTS_DIR
from search import SearchSpec, run_search
from search.quant.attention import prepare_model
from search.quant.layers import discover_layers
from search.study.sensitivity import fisher_sensitivity, hessian_sensitivity, ptq_sensitivity
from tests.corpus.models import CORPUS, build, corpus_workload, weight_layers

RESULTS = RESULTS_DIR / "model_zoo" / "corpus.md"
ONNX_RESULTS = RESULTS_DIR / "model_zoo" / "onnx.md"


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _timed_or_why(fn: Callable[[], Any]) -> float | str:
    """Seconds, or the first line of the error that stopped it (reported in the table, not hidden)."""
    try:
        return _timed(fn)
    except Exception as exc:  # noqa: BLE001 - any failure is a table entry
        return f"fails: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def measure(name: str, trials: int, qat_steps: int) -> dict[str, Any]:
    model, inputs = build(name, trained=True)
    truth = weight_layers(model)
    raw = discover_layers(model, inputs)
    prepare_model(model)
    start = time.perf_counter()
    graph = discover_layers(model, inputs)
    discover_s = time.perf_counter() - start
    float_macs = sum(f.macs for f in graph.float_layers)
    total_macs = float_macs + sum(la.macs for la in graph.layers)
    row: dict[str, Any] = {
        "model": name, "weights": truth, "found_before": len(raw.layers), "found": len(graph.layers),
        "float": ", ".join(sorted({f.kind.value for f in graph.float_layers})) or "-",
        "float_macs_pct": 100.0 * float_macs / max(total_macs, 1), "macs": total_macs, "discover_s": discover_s,
    }
    workload = corpus_workload(name, n_train=16, batch_size=4)
    row["ptq_s"] = _timed_or_why(lambda: ptq_sensitivity(workload))
    row["fisher_s"] = _timed_or_why(lambda: fisher_sensitivity(workload, num_batches=2))
    row["hessian_s"] = _timed_or_why(lambda: hessian_sensitivity(workload, samples=2))
    spec = SearchSpec(workload=f"corpus-{name}", n_trials=trials, qat_steps=qat_steps, reevaluate_front=0,
                      seed_with_sensitivity=False, formats=("int4", "int8", "fp16"))
    result: list[Any] = []
    row["search_s"] = _timed(lambda: result.append(run_search(spec, workload=workload)))
    row["trials_done"] = len(result[0].trials)
    return row


def markdown(rows: list[dict[str, Any]], trials: int, qat_steps: int) -> str:
    lines = [
        "# Model zoo: the torch path on the corpus",
        "",
        f"`OMP_NUM_THREADS=1 python -m bench.model_zoo --trials {trials} --qat-steps {qat_steps}` "
        f"(torch {torch.__version__}, {torch.get_num_threads()} thread).  Models: `tests/corpus/models.py`, tiny "
        "widths and inputs, trained-like weights; data random, targets the fp32 outputs.  *weights*: Conv/"
        "ConvTranspose/Linear modules plus 4 per nn.MultiheadAttention, by walking the modules as built; "
        "*found before*: layers discovered without the attention swap (as main before issue 19); *found*: "
        "after it; *float*: what stays float (listed, counted in the cost), its share of all MACs.  Proxy "
        "times: int8 and int4 for every layer (PTQ: one evaluation each; Fisher: 2 batches; Hessian: 2 "
        "Hutchinson samples).  Search: the trial budget at the QAT steps, no proxy seeding.",
        "",
        "| model | weights | found before | found | float | float MACs % | MACs | discover s | PTQ s | Fisher s "
        "| Hessian s | search s (trials) |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    def sec(v: float | str) -> str:
        return f"{v:.2f}" if isinstance(v, float) else v

    for r in rows:
        lines.append(
            f"| {r['model']} | {r['weights']} | {r['found_before']} | {r['found']} | {r['float']} | "
            f"{r['float_macs_pct']:.1f} | {r['macs']:,} | {r['discover_s']:.3f} | {sec(r['ptq_s'])} | "
            f"{sec(r['fisher_s'])} | {sec(r['hessian_s'])} | {r['search_s']:.1f} ({r['trials_done']}) |")
    return "\n".join(lines) + "\n"


def measure_onnx(name: str, tmp: Path) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    from search.quant.export_onnx import export_onnx, verify_onnx
    from search.quant.formats import parse_format
    from search.quant.onnx_import import load_onnx_model
    from search.quant.qat import calibrate, quantize_model
    from tests.corpus.models import input_batch
    from tests.corpus.test_corpus_onnx import MIN_OPSET, exported_dynamic, weighted_nodes

    opset = max(17, MIN_OPSET.get(name, 0))
    data = exported_dynamic(name, "torchscript", opset)
    start = time.perf_counter()
    module = load_onnx_model(data)
    row: dict[str, Any] = {"model": name, "opset": opset, "import_s": time.perf_counter() - start,
                           "weighted": weighted_nodes(data), "batch": "any" if module.fixed_batch is None else "fixed"}
    example = module.example_inputs()
    row["layers"] = len(discover_layers(module, example).layers)
    session = ort.InferenceSession(data)
    errors = []
    for batch in (1, 4):
        x = input_batch(name, example[0], batch, torch.Generator().manual_seed(batch))
        want = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            got = module(x)
        outs = got if isinstance(got, tuple) else (got,)
        errors.append(max(float(np.max(np.abs(g.numpy() - w)) / max(float(np.max(np.abs(w))), 1e-12))
                          for g, w in zip(outs, want, strict=True)))
    row["fp32_rel_err"] = max(errors)
    graph = discover_layers(module, example)
    quantize_model(module, {fqn: parse_format("int8") for fqn in graph.fqns}, example, graph=graph)
    calibrate(module, [input_batch(name, example[0], 4, torch.Generator().manual_seed(2))])
    module.eval()
    sample = (input_batch(name, example[0], 1, torch.Generator().manual_seed(3)),)  # not the zeros of example
    start = time.perf_counter()
    with torch.no_grad():
        out = module(*sample)
    row["fq_forward_s"] = time.perf_counter() - start
    scale = max(float(o.abs().max()) for o in (out if isinstance(out, tuple) else (out,)))
    path = export_onnx(module, example, tmp / f"{name}.qdq.onnx", dynamic_spatial=False)
    row["qdq_rel_diff"] = verify_onnx(module, sample, path) / max(scale, 1e-6)
    row["qdq_opt_rel_diff"] = verify_onnx(module, sample, path, optimized=True) / max(scale, 1e-6)
    return row


def onnx_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Model zoo: the ONNX path on the corpus",
        "",
        f"`OMP_NUM_THREADS=1 python -m bench.model_zoo --onnx` (torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread).  Each corpus model (trained-like weights) exported by "
        "`torch.onnx.export(..., dynamo=False, dynamic_axes={'x': {batch axis: 'batch'}})`; *import s*: "
        "`load_onnx_model` (parse, fold, build, the shadow build at batch 2 and the check at batch 3); "
        "*weighted*: Conv/ConvTranspose/Gemm/MatMul nodes of the file with a constant weight; *layers*: the "
        "searchable layers found; *batch*: whether the module runs at any batch; *fp32 rel err*: max relative "
        "error of the module vs onnxruntime, at batch 1 and 4; *fake-quant*: every layer int8, calibrated on 4 "
        "inputs, one forward of a random input at batch 1 (s), and its QDQ export run by onnxruntime on that input, "
        "with graph optimizations off "
        "(the QDQ definition) and at onnxruntime's defaults (QDQ fused into integer kernels): max abs difference "
        "over the output's max.",
        "",
        "| model | opset | import s | weighted | layers | batch | fp32 rel err | fake-quant forward s "
        "| QDQ vs onnxruntime | QDQ vs onnxruntime (default opts) |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['opset']} | {r['import_s']:.2f} | {r['weighted']} | {r['layers']} | "
                     f"{r['batch']} | {r['fp32_rel_err']:.1e} | {r['fq_forward_s']:.4f} | {r['qdq_rel_diff']:.1e} | "
                     f"{r['qdq_opt_rel_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=sorted(CORPUS))
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--qat-steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--onnx", action="store_true", help="the ONNX side (writes onnx.md unless --out)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.onnx:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            onnx_rows = [measure_onnx(name, Path(tmp)) for name in args.models]
        for row in onnx_rows:
            print(row, flush=True)
        out = args.out if args.out != RESULTS else ONNX_RESULTS
        out.write_text(onnx_markdown(onnx_rows))
        print(f"wrote {out}")
        return
    rows = []
    for name in args.models:
        row = measure(name, args.trials, args.qat_steps)
        print(row, flush=True)
        rows.append(row)
    args.out.write_text(markdown(rows, args.trials, args.qat_steps))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
