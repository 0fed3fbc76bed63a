"""``mixq search`` / ``mixq export`` end to end on the digits workload (tiny budgets)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from search import load_qconfig
from service.cli import app

TINY = ["--workload", "digits", "--workload-option", "pretrain_steps=30", "--qat-steps", "3", "--reevaluate", "0"]


@pytest.fixture(scope="module")
def search_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("cli")
    storage = f"sqlite:///{out / 'study.db'}"
    result = CliRunner().invoke(
        app, ["search", *TINY, "--trials", "3", "--storage", storage, "--study-name", "cli", "--out", str(out / "run")]
    )
    assert result.exit_code == 0, result.output
    return out, storage


def test_search_writes_front_plot_and_qconfig_files(search_run: tuple[Path, str]) -> None:
    out, _ = search_run
    run = out / "run"
    assert (run / "pareto.png").stat().st_size > 10_000
    assert "plotly" in (run / "pareto.html").read_text()[:200_000].lower()
    summary = json.loads((run / "summary.json").read_text())
    files = sorted((run / "qconfig").glob("*.json"))
    assert len(files) == len(summary["front"]) >= 1
    for f in files:
        cfg = load_qconfig(f)  # validates against the schema
        number = int(f.name[5:9])
        assert cfg.provenance.trial_number == number
        point = next(p for p in summary["front"] if p["number"] == number)
        assert cfg.assignment() and {k: v.name for k, v in cfg.assignment().items()} == point["assignment"]
    table = (run / "front.md").read_text()
    assert table.count("\n| ") == len(summary["front"]) + 1  # header + one row per point


def test_search_resumes_the_same_study(search_run: tuple[Path, str]) -> None:
    out, storage = search_run
    result = CliRunner().invoke(
        app, ["search", *TINY, "--trials", "5", "--storage", storage, "--study-name", "cli", "--out", str(out / "run2")]
    )
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="cli", storage=storage)
    done = [t for t in study.trials if t.state is TrialState.COMPLETE and not t.user_attrs.get("cached")]
    assert len(done) == 5  # 3 from the first run + 2 more, not 5 more


def test_export_turns_qconfig_and_weights_into_onnx(search_run: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = search_run
    qfile = sorted((out / "run" / "qconfig").glob("*.json"))[0]
    number = int(qfile.name[5:9])
    weights = out / "run" / "weights" / f"trial-{number}.pt"
    assert weights.exists()
    target = tmp_path / "m.onnx"
    result = CliRunner().invoke(
        app, ["export", "--qconfig", str(qfile), "--weights", str(weights), "--workload", "digits",
              "--workload-option", "pretrain_steps=30", "--out", str(target)],
    )
    assert result.exit_code == 0, result.output
    model = onnx.load(target)
    assert any(n.op_type == "DequantizeLinear" for n in model.graph.node)
    diff = float(result.output.split("difference:")[1].split()[0])
    assert diff < 1e-4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--workload", "nope"], "workload", id="unknown-workload"),
        pytest.param([*TINY, "--trials", "0"], "n_trials", id="zero-budget"),
        pytest.param([*TINY, "--formats", "int4,int3"], "format", id="unknown-format"),
        pytest.param([*TINY, "--profile", "no-such-profile"], "profile", id="unknown-profile"),
        pytest.param([*TINY, "--formats", "int8"], "nothing to search", id="pins-leave-nothing"),
        pytest.param([*TINY, "--storage", "postgresql+psycopg://x@127.0.0.1:1/none"], "storage", id="bad-storage"),
    ],
)
def test_bad_input_is_a_clear_error_not_a_traceback(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["search", *args, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
