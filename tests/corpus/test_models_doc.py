"""docs/models.md is generated from the model corpus and the grids of its tests, and must not drift; the
README points to it and counts the same models."""

from __future__ import annotations

from pathlib import Path

from tests.corpus.models import CORPUS
from tests.corpus.models_doc import descriptions, models_markdown

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "models.md"


def test_model_doc_is_generated_from_the_corpus() -> None:
    assert DOC.read_text() == models_markdown(), (
        "docs/models.md drifted: python -m tests.corpus.models_doc > docs/models.md")
    assert set(descriptions()) == set(CORPUS)  # every model has its line in the corpus table, and only they
    for name in CORPUS:
        assert f"| {name} |" in DOC.read_text()


def test_the_readme_points_to_the_generated_list() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "[docs/models.md](docs/models.md)" in readme
    assert f"the {len(CORPUS)} architectures of `tests/corpus/`" in readme
