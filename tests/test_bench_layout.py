"""bench/'s layout: results in ``bench/results/<benchmark>/<setting>.*``, run caches in ``bench/cache/``, and
every path the scripts default to and the docs point at exists."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from bench.report import BENCHMARKS, CACHE_DIR, RESULTS_DIR, cache_path, result_path, runs_cache, setting_name

ROOT = Path(__file__).resolve().parents[1]


def test_every_result_is_in_its_benchmarks_folder_and_no_cache_is_among_them() -> None:
    scripts = {p.stem for p in (ROOT / "bench").glob("*.py")} - {"__init__", "report"}
    assert set(BENCHMARKS) == scripts
    for path in RESULTS_DIR.rglob("*"):
        if path.is_dir():
            assert path.parent == RESULTS_DIR and path.name in BENCHMARKS, path
            continue
        assert path.parent.parent == RESULTS_DIR, f"{path}: not bench/results/<benchmark>/<setting>.*"
        assert not path.name.endswith("_runs.json") and not path.name.startswith("exhaustive_"), path
    assert not list(CACHE_DIR.glob("*/")), "bench/cache/ is flat"


def test_result_path_and_setting_names() -> None:
    assert result_path("fidelity", "denoise_5seeds", ".png") == RESULTS_DIR / "fidelity" / "denoise_5seeds.png"
    assert runs_cache("baselines", "denoise-deep") == CACHE_DIR / "baselines_denoise-deep_runs.json"
    with pytest.raises(ValueError, match="unknown benchmark"):
        result_path("fidelity_denoise", "x")
    assert setting_name("denoise-deep_seed1") == "denoise-deep_seed1"
    for bad in ("fidelity_denoise_v2", "fidelity/denoise", "denoise.md", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            setting_name(bad)


def test_the_caches_the_scripts_reuse_by_default_are_committed() -> None:
    import bench.fidelity as fidelity
    import bench.first_last as first_last
    import bench.search_efficiency as search_efficiency
    import bench.sensitivity as sensitivity

    expected = [
        fidelity.RUNS_FILE,
        first_last.RUNS_FILE,
        runs_cache("first_last", "denoise-deep"),
        sensitivity.RUNS_FILE,
        cache_path("short_recipes_long_runs.json"),  # bench/short_recipes.py's --runs
        runs_cache("short_recipes", "denoise-deep"),
        runs_cache("baselines", "denoise-deep"),
        runs_cache("baselines", "denoise-deep_seed1"),
        *(search_efficiency.table_path(c) for c in search_efficiency.CONFIGS.values()),
    ]
    missing = [str(p.relative_to(ROOT)) for p in expected if not p.exists()]
    assert not missing
    # each search-efficiency space has its report where the script writes it
    for space in search_efficiency.CONFIGS:
        assert result_path("search_efficiency", space).exists(), space


def _links(path: Path) -> list[str]:
    text = path.read_text()
    links = re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text)
    return [link for link in links if not re.match(r"[a-z]+:", link)]


@pytest.mark.parametrize("doc", ["README.md", "bench/README.md", *sorted(
    str(p.relative_to(ROOT)) for p in [*(ROOT / "docs").glob("*.md"), *RESULTS_DIR.rglob("*.md")])])
def test_relative_links_resolve(doc: str) -> None:
    path = ROOT / doc
    broken = [link for link in _links(path) if not (path.parent / link).exists()]
    assert not broken, f"{doc}: {broken}"


@pytest.mark.parametrize("doc", ["README.md", "bench/README.md", *sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))])
def test_bench_paths_named_in_the_docs_exist(doc: str) -> None:
    text = (ROOT / doc).read_text()
    # `bench/results/...` or `bench/cache/...` in backticks or a link; `git show REV:bench/...` is history
    named = re.findall(r"(?<![:\w/])(bench/(?:results|cache)/[\w+.*/-]*[\w*])(?![\w+.*/<-])", text)
    # a path may be named without its suffix, as in `bench/results/fidelity/denoise_5seeds.{md,json,png}`
    missing = sorted({p for p in named if "*" not in p and not (ROOT / p).exists()
                      and not list((ROOT / p).parent.glob((ROOT / p).name.rstrip(".") + ".*"))})
    assert not missing, f"{doc}: {missing}"


def test_a_report_is_written_into_its_benchmarks_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.report as report

    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    path = report.write_report("fidelity", "denoise_5seeds", "Fidelity", "body", shared_machine=False)
    assert path == tmp_path / "fidelity" / "denoise_5seeds.md"
    assert path.read_text().startswith("# Fidelity\n") and "body" in path.read_text()
