"""The results report every benchmark writes: the exact command, the machine, then markdown tables.

Speed numbers in mixq's benchmarks are ratios measured side by side in one process, so the machine
matters less than it would for absolute times; it is still recorded, with a note when it was shared.
"""

from __future__ import annotations

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

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SHARED_MACHINE_NOTE = (
    "The machine was shared with other jobs while this ran (2 cores, other engineers' work on them); "
    "torch used 1 thread.  Absolute times are indicative only."
)


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


def write_report(name: str, title: str, body: str, *, shared_machine: bool = True) -> Path:
    """Write ``bench/results/<name>.md`` (command, date, machine, body), print it, return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
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
    path = RESULTS_DIR / f"{name}.md"
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
