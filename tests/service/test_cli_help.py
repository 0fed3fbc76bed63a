"""``mixq ... --help`` at 80 columns shows every flag name whole (issue 20: rich's option table cut
``--max-quality-drop`` to ``--max-quality-dr…``), for every command of the ``mixq`` tree."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from service.cli import app

REPO_ROOT = Path(__file__).resolve().parents[2]


# typer carries its own copy of click (typer._click): commands and options are read by their attributes
def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, group
    for name, command in sorted(getattr(group, "commands", {}).items()):
        yield from _commands(command, (*path, name))


def _flags(command: Any) -> list[str]:
    return [opt for p in command.params if p.param_type_name == "option"
            for opt in (*p.opts, *p.secondary_opts) if opt.startswith("-")]


COMMANDS = list(_commands(typer.main.get_command(app)))


def _missing(text: str, flags: list[str]) -> list[str]:
    """The flags that do not appear whole: followed by a space, '/', ',', '=' or the line's end."""
    return [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?=[\s/,=\]]|$)", text, re.MULTILINE)]


def test_every_command_is_covered() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"search", "export", "serve", "worker", "jobs submit", "jobs download", "token create"} <= names


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) or "mixq" for p, _ in COMMANDS])
def test_help_at_80_columns_shows_every_flag_whole(path: tuple[str, ...], command: Any) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert result.exit_code == 0, result.output
    assert "…" not in result.output, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80, result.output
    flags = _flags(command)
    assert not _missing(result.output, flags), result.output


def test_mixq_search_help_in_an_80_column_terminal() -> None:
    """The console command itself, as a person runs it: ``COLUMNS=80 mixq search --help``."""
    env = {**os.environ, "COLUMNS": "80",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    out = subprocess.run([sys.executable, "-m", "service.cli", "search", "--help"], env=env, cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    search = dict(COMMANDS)[("search",)]
    flags = _flags(search)
    assert {"--max-quality-drop", "--budget-qat-steps", "--workload-option", "--no-save-weights"} <= set(flags)
    assert not _missing(out, flags), out
