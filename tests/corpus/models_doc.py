"""docs/models.md: the models mixq is tested on, generated from the corpus (``tests/corpus/models.py``) and
the grids its tests run (``test_corpus_torch.py``, ``test_corpus_onnx.py``), so that the list cannot drift:
``tests/corpus/test_models_doc.py`` fails when the file differs.  Regenerate with
``python -m tests.corpus.models_doc > docs/models.md``."""

from __future__ import annotations

import re

from tests.corpus import models, test_corpus_onnx, test_corpus_torch
from tests.corpus.models import CORPUS, build, weight_layers


def descriptions() -> dict[str, str]:
    """What each corpus model exercises: the table of ``tests/corpus/models.py``'s docstring (a row's
    continuation lines joined)."""
    lines = (models.__doc__ or "").splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("=====")]
    out: dict[str, str] = {}
    name = ""
    for line in lines[rules[1] + 1:rules[2]] if len(rules) >= 3 else []:
        head, text = line[:20].strip(), line[20:].strip()
        if head:
            name = head
            out[name] = text
        elif name and text:
            out[name] += " " + text
    return out


def _onnx_files(name: str) -> str:
    files = []
    for exporter, grid_opset in test_corpus_onnx.EXPORTS:
        opset = max(grid_opset, test_corpus_onnx.MIN_OPSET.get(name, 0))
        if (name, exporter) not in test_corpus_onnx.REFUSED:
            files.append(f"{exporter} {opset}")
    return ", ".join(files) or "refused"


def _uploaded(name: str) -> str:
    params = [p.values for p in test_corpus_onnx.UPLOADED if p.values[0] == name]
    return ", ".join(f"{exporter} {opset}" for _, exporter, opset in params) or "-"


def models_markdown() -> str:
    text = descriptions()
    lines = [
        "# Models mixq is tested on",
        "",
        "Generated from the model corpus (`tests/corpus/models.py`) and the grids of its tests by "
        "`python -m tests.corpus.models_doc > docs/models.md`; `tests/corpus/test_models_doc.py` fails when this "
        "file drifts. Each model is written after its published architecture at a tiny width and input size (no "
        "downloads): the architecture is what the tests exercise.",
        "",
        "*Torch path* (`test_corpus_torch.py`): every weight layer is found (the q/k/v/out projections of "
        "`nn.MultiheadAttention` after its swap for `Linear`s), the model quantizes at int8 and int4 (forward and "
        "backward) and its QDQ ONNX export matches onnxruntime; *searched*: a 3-trial search runs on it too.",
        "*ONNX files* (`test_corpus_onnx.py`): the files of torch's two stock exporters (TorchScript, "
        "`dynamo=False`; `torch.export`, `dynamo=True`) at the listed opsets, fresh and trained-like weights, "
        "import, match onnxruntime (max relative error <= 1e-4) and have every weighted "
        "Conv/ConvTranspose/Gemm/MatMul as a searchable layer; *uploaded*: the file also goes through the "
        "sandboxed upload, a 3-trial search and a QDQ export round trip (`-dynamic`: exported with a symbolic "
        "batch axis, which a model whose exporter writes the batch into constants needs to train at another "
        "batch). *Input*: the example's shape and type (the batch is 1).",
        "",
        "| model | what it exercises | input | weight layers | torch path | ONNX files (exporter opset) | uploaded |",
        "|---|---|---|---:|---|---|---|",
    ]
    for name in sorted(CORPUS):
        model, (example,) = build(name)
        shape = "x".join(str(d) for d in example.shape)
        dtype = str(example.dtype).removeprefix("torch.")
        torch_path = "searched" if name in test_corpus_torch.SEARCHED else "quantized, exported"
        row = (f"| {name} | {re.sub(r'[|]', '/', text.get(name, ''))} | {shape} {dtype} | {weight_layers(model)} | "
               f"{torch_path} | {_onnx_files(name)} | {_uploaded(name)} |")
        lines.append(row)
    lines += ["", f"{len(CORPUS)} models."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(models_markdown(), end="")
