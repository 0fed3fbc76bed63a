"""The README's service walk-through (``mixq jobs ...``), run as written against a real ``mixq serve`` (SQLite,
1 worker)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from search import load_qconfig

ROOT = Path(__file__).resolve().parents[1]


def _walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return next(b for b in blocks if "mixq jobs submit" in b)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_readme_walkthrough_downloads_qconfig_weights_and_onnx(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "MIXQ_DATA_DIR": str(tmp_path / "data"), "MIXQ_PORT": str(port), "MIXQ_LOCAL_WORKERS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("mixq serve did not become ready")
        # as written: `mixq` is the one beside this Python (the venv's); the server is named by MIXQ_SERVER
        script = "set -euo pipefail\n" + _walkthrough()
        work = tmp_path / "client"
        work.mkdir()
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        done = subprocess.run(["bash", "-c", script], cwd=work, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "PATH": path, "MIXQ_SERVER": f"http://127.0.0.1:{port}"}, check=False)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        files = {kind: sorted((work / "job-1" / kind).iterdir()) for kind in ("qconfig", "weights", "onnx")}
        assert files["qconfig"], done.stdout[-2000:]
        stems = {kind: [p.stem for p in paths] for kind, paths in files.items()}
        assert stems["qconfig"] == stems["weights"] == stems["onnx"]  # one name scheme
        for path_ in files["qconfig"]:
            cfg = load_qconfig(path_)
            assert cfg.provenance.workload == "digits" and cfg.on_front is True
            assert re.fullmatch(r"trial\d{4}-[a-z0-9x-]+\.json", path_.name)  # the server's file name
        assert "succeeded" in done.stdout
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


SETUP_LINE = ("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e '.[test]' "
              "&& mixq search --workload denoise --trials 24 --out mixq-out")
TEST_LINE = ". .venv/bin/activate && python -m pytest -q"
SECTIONS = ["Quick start", "What you get", "Concepts", "From qconfig to device model", "The service",
            "Bring your own model and data", "Security", "Benchmarks"]


def test_readme_opens_with_one_sentence_and_the_two_true_command_lines() -> None:
    """Issue 20 item 5: one sentence on what mixq is, then the quick start whose two lines come first
    and hold: the torch pin is the one installed, the test extra and the ``mixq`` script exist, and
    ``mixq search`` takes those flags and that workload."""
    import tomllib

    import torch
    import typer

    from search.workloads import BUILTIN_WORKLOADS
    from service.cli import app

    text = (ROOT / "README.md").read_text()
    intro, rest = text.split("\n## ", 1)
    sentence = " ".join(intro.removeprefix("# mixq").split())
    assert sentence.count(". ") == 0 and sentence.endswith("."), sentence  # one sentence
    assert rest.startswith("Quick start\n")
    first_block = re.search(r"```bash\n(.*?)```", rest, flags=re.S)
    assert first_block is not None and first_block.group(1).splitlines() == [SETUP_LINE, TEST_LINE]
    assert torch.__version__.split("+")[0] == "2.13.0"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "test" in project["optional-dependencies"] and project["scripts"]["mixq"] == "service.cli:app"
    search = typer.main.get_command(app).commands["search"]  # type: ignore[attr-defined]
    flags = {opt for p in search.params for opt in p.opts}
    assert {"--workload", "--trials", "--out"} <= flags and "denoise" in BUILTIN_WORKLOADS


def test_readme_sections_come_in_the_product_order_without_run_logs() -> None:
    text = (ROOT / "README.md").read_text()
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert [h for h in headings if h in SECTIONS] == SECTIONS, headings
    # the measurement history lives in bench/README.md: no commit hashes, clone timings or seed-by-seed ratios here
    assert not re.search(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b", text)
    for phrase in ("fresh clone", "the ratio flips", "per long seed"):
        assert phrase not in text, phrase
    bench = text.split("\n## Benchmarks\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in bench.splitlines() if line.startswith("| `")]
    assert 1 <= len(rows) <= 12 and "(bench/README.md)" in bench
    assert (ROOT / "bench" / "README.md").read_text().count("## The README's main job") == 1


def test_what_you_get_names_the_files_the_cli_writes() -> None:
    import inspect

    import search.cli

    text = (ROOT / "README.md").read_text()
    block = text.split("\n## What you get\n", 1)[1].split("```", 2)[1]
    source = inspect.getsource(search.cli)
    for name in ("front.md", "pareto.png", "pareto.html", "summary.json", '"qconfig"', '"weights"'):
        assert name.strip('"') in block and name in source, name
    assert "(docs/pareto-denoise.png)" in text and (ROOT / "docs" / "pareto-denoise.png").exists()
