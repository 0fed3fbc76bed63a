"""The results report every benchmark writes: the exact command, the machine, then markdown tables.

Where things go: ``bench/results/<benchmark>/<setting>.{md,json,png}``, one folder per script
(``<benchmark>`` is the script's name) and one file name per setting (what differs between runs of
it: workload, space, seed, ...; ``fidelity/denoise.md``, ``baselines/denoise-deep_seed1.md``).  A rerun
of the same setting overwrites its files; the earlier versions are in git history.  Run caches
(trained runs a rerun reuses, expensive to recompute) are kept apart in ``bench/cache/``.

Speed numbers in mixq's benchmarks are ratios measured side by side in one process, so the machine
matters less than it would for absolute times; it is still recorded, with a note when it was shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
CACHE_DIR = BENCH_DIR / "cache"
BENCHMARKS = ("baselines", "batched_qat", "fidelity", "first_last", "multifidelity", "qat_step", "search_efficiency",
              "sensitivity", "service_latency", "short_recipes", "worker_scaling", "model_zoo")
SHARED_MACHINE_NOTE = (
    "The machine was shared with other jobs while this ran (2 cores, other engineers' work on them); "
    "torch used 1 thread.  Absolute times are indicative only."
)


def setting_name(text: str) -> str:
    """A setting's name as given on the command line (``--name`` / ``--out-name``): a plain file stem.

    Used as an argparse ``type``, so a bad name is refused before hours of training, not at the end."""
    if not text or "/" in text or "\\" in text or text.startswith(".") or text.endswith((".md", ".json", ".png")):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give the setting only (e.g. 'denoise_5seeds'), without a folder or suffix")
    for benchmark in BENCHMARKS:
        if text.startswith(benchmark + "_"):
            raise argparse.ArgumentTypeError(
                f"{text!r}: the folder bench/results/{benchmark}/ already names the benchmark; "
                f"give the setting only ({text.removeprefix(benchmark + '_')!r})")
    return text


def result_path(benchmark: str, setting: str, suffix: str = ".md") -> Path:
    """``bench/results/<benchmark>/<setting><suffix>`` (the folder is created)."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; one of {', '.join(BENCHMARKS)}")
    folder = RESULTS_DIR / benchmark
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{setting}{suffix}"


def cache_path(name: str) -> Path:
    """``bench/cache/<name>``: a run cache a rerun reuses (committed; the folder is created)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    return CACHE_DIR / name


def runs_cache(benchmark: str, setting: str) -> Path:
    """``bench/cache/<benchmark>_<setting>_runs.json``: the trained runs of one benchmark setting."""
    return cache_path(f"{benchmark}_{setting}_runs.json")


def repo_relative(path: Path) -> str:
    """``path`` as written from the repository root (for reports), or as is when outside it."""
    try:
        return str(path.resolve().relative_to(REPO_DIR))
    except ValueError:
        return str(path)


def command_line() -> str:
    """The command that reproduces this run, as typed from the repository root."""
    argv = sys.argv[:]
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return " ".join(["python", "-m", spec.name, *map(shlex.quote, argv[1:])])
    return " ".join(["python", *map(shlex.quote, argv)])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return (
        f"{platform.system()} {platform.machine()} ({cpu}), {os.cpu_count()} logical cores, "
        f"torch {torch.__version__} with {torch.get_num_threads()} thread(s), Python {platform.python_version()}"
    )


def code_version() -> str:
    """The commit measured, and whether ``search/`` had uncommitted changes (the code under test)."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "search")
    return f"commit {commit}" + (" with uncommitted changes in search/" if dirty else ", search/ clean")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def write_report(benchmark: str, setting: str, title: str, body: str, *, shared_machine: bool = True) -> Path:
    """Write ``bench/results/<benchmark>/<setting>.md`` (command, date, machine, body), print it, return the path."""
    parts = [
        f"# {title}",
        "",
        "```",
        command_line(),
        "```",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; mixq {code_version()}.",
    ]
    if shared_machine:
        parts += ["", SHARED_MACHINE_NOTE]
    parts += ["", body.rstrip(), ""]
    text = "\n".join(parts)
    path = result_path(benchmark, setting)
    path.write_text(text)
    print(text)
    return path


def write_json_summary(summary: dict[str, object], out: Path | None) -> None:
    """Print ``summary`` as JSON and, with ``out``, write it there too."""
    text = json.dumps(summary, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
