"""docs/onnx-operators.md is generated from the importer's operator table and must not drift."""

from __future__ import annotations

from pathlib import Path

from search.quant.onnx_import import OPERATORS, operators_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "onnx-operators.md"


def test_operator_doc_is_generated_from_the_table() -> None:
    assert DOC.read_text() == operators_markdown(), (
        "docs/onnx-operators.md drifted: python -m search.quant.onnx_import > docs/onnx-operators.md")
    for name in OPERATORS:
        assert f"| {name} |" in DOC.read_text()
