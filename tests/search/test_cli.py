"""``mixq search`` / ``mixq export`` end to end on the digits workload (tiny budgets)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import onnx
import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import Tensor, nn
from typer.testing import CliRunner

from search import Workload, load_qconfig, run_search
from search.cli import format_duration
from search.spec import SearchSpec
from search.threads import THREADS_ENV, choose_torch_threads
from service.cli import app
from tests.search.user_workload import make_workload

# one torch thread: the command sets torch's thread count for the process, which here is pytest's
TINY = ["--workload", "digits", "--workload-option", "pretrain_steps=30", "--qat-steps", "3", "--reevaluate", "0",
        "--torch-threads", "1"]
USER = "tests.search.test_cli"


@pytest.fixture(scope="module")
def search_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("cli")
    storage = f"sqlite:///{out / 'study.db'}"
    result = CliRunner().invoke(
        app, ["search", *TINY, "--trials", "3", "--storage", storage, "--study-name", "cli", "--out", str(out / "run")]
    )
    assert result.exit_code == 0, result.output
    (out / "output.txt").write_text(result.output)
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
    # the maps per QAT pass it chose, said and recorded (digits on a CPU: 6M MACs per layer per step is
    # arithmetic, which batching does not share: one map per pass)
    assert "maps per QAT pass: 1 (automatic" in (out / "output.txt").read_text()
    assert summary["maps_per_pass"] == 1
    assert all(cfg["provenance"]["maps_per_pass"] >= 1 for cfg in (json.loads(f.read_text()) for f in files))


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
    weights = out / "run" / "weights" / qfile.with_suffix(".pt").name  # one name scheme: the qconfig's, .pt
    data = json.loads(qfile.read_text())
    assert data["on_front"] is True and isinstance(data["feasible"], bool)
    prov = data["provenance"]
    assert prov["qat_steps"] > 0 and isinstance(prov["seed"], int) and prov["spec"]["workload"] == "digits"
    assert "storage" not in prov["spec"] and "weights_dir" not in prov["spec"]  # no credentials, no local paths
    assert weights.exists()
    target = tmp_path / "m.onnx"
    result = CliRunner().invoke(
        app, ["export", "--qconfig", str(qfile), "--weights", str(weights), "--workload", "digits",
              "--workload-option", "pretrain_steps=30", "--out", str(target)],
    )
    assert result.exit_code == 0, result.output
    assert "static: the model fails on inputs of twice the example size" in result.output  # Flatten + Linear
    model = onnx.load(target)
    assert any(n.op_type == "DequantizeLinear" for n in model.graph.node)
    diff = float(result.output.split("difference:")[1].split()[0])
    assert diff < 1e-4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--workload", "nope"], "workload", id="unknown-workload"),
        pytest.param([*TINY, "--trials", "0"], "--trials: Input should be greater than or equal to 1", id="zero-budget"),
        pytest.param([*TINY, "--maps-per-pass", "0"], "--maps-per-pass: Input should be greater than or equal to 1",
                     id="zero-maps-per-pass"),
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


# ---------------------------------------------------------------------------------------------
# Failures are clear and cheap (issue 12).  User workloads below are entry points of this module.
# ---------------------------------------------------------------------------------------------

TRAINING_STARTS: list[str] = []  # a workload's train_batches appends its name when QAT asks for data


def _tiny(name: str, **changes: Any) -> Workload:
    workload = make_workload(width=2, pretrain_steps=5)
    stream = workload.train_batches

    def counted(gen: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        TRAINING_STARTS.append(name)
        return stream(gen)

    return dataclasses.replace(workload, train_batches=counted, **changes)


def nan_workload() -> Workload:
    return _tiny("nan", evaluate=lambda model: math.nan)


def raising_factory(width: int = 2) -> Workload:
    raise FileNotFoundError(2, "No such file or directory", "data/train.npz")


def wrong_inputs_workload() -> Workload:
    return _tiny("wrong_inputs", example_inputs=(torch.zeros(1, 3, 4, 4),))  # TinyNet takes 1 channel


def tensor_inputs_workload() -> Workload:
    return _tiny("tensor_inputs", example_inputs=torch.zeros(1, 1, 4, 4))


class SpareLayerNet(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.spare = nn.Linear(3, 3)  # defined, never called

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x)


def spare_layer_workload() -> Workload:
    workload = _tiny("spare")
    return dataclasses.replace(workload, model=SpareLayerNet(workload.model))


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_nan_fp32_metric_stops_before_any_training(tmp_path: Path) -> None:
    TRAINING_STARTS.clear()
    code, output = _invoke("search", "--workload", f"{USER}:nan_workload", "--trials", "3", "--qat-steps", "2",
                           "--torch-threads", "1", "--pin-first-last", "free", "--out", str(tmp_path))
    assert code == 2, output
    assert _error_lines(output) == ["error: evaluate: the fp32 model scores nan; the metric must be a finite number"]
    assert "Traceback" not in output and "failed" not in output
    assert TRAINING_STARTS == []  # no QAT step was taken
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--workload", f"{USER}:raising_factory"],
                     f"error: workload '{USER}:raising_factory': raised FileNotFoundError: "
                     "[Errno 2] No such file or directory: 'data/train.npz'", id="factory-raises"),
        pytest.param(["--workload", "tests.search.user_workload:make_workload", "--workload-option", "width=abc"],
                     "error: workload_options.width: expected int, got 'abc' (str)", id="option-of-wrong-type"),
        pytest.param(["--workload", f"{USER}:wrong_inputs_workload"],
                     "error: example_inputs: the model fails on them ((1, 3, 4, 4)): raised RuntimeError: ",
                     id="inputs-do-not-fit"),
        pytest.param(["--workload", f"{USER}:tensor_inputs_workload"],
                     "error: example_inputs: expected a tuple of positional inputs, e.g. (x,), got Tensor",
                     id="inputs-not-a-tuple"),
    ],
)
def test_user_errors_are_one_line_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    TRAINING_STARTS.clear()
    code, output = _invoke("search", *args, "--torch-threads", "1", "--pin-first-last", "free", "--trials", "2",
                           "--out", str(tmp_path))
    assert code == 2, output
    (line,) = _error_lines(output)
    assert line.startswith(message), line
    assert "Traceback" not in output
    assert TRAINING_STARTS == []


def test_tuple_check_names_the_field() -> None:
    with pytest.raises(TypeError, match=r"example_inputs: expected a tuple of positional inputs, e.g. \(x,\), got Tensor"):
        tensor_inputs_workload()


def test_debug_shows_the_traceback_of_the_users_code(tmp_path: Path) -> None:
    code, output = _invoke("search", "--workload", f"{USER}:raising_factory", "--torch-threads", "1", "--debug",
                           "--pin-first-last", "free", "--out", str(tmp_path))
    assert code == 2, output
    assert "Traceback (most recent call last)" in output
    assert "in raising_factory" in output  # the user's frame, not only mixq's wrapper
    assert len(_error_lines(output)) == 1


def test_a_layer_that_never_runs_is_named_once(tmp_path: Path) -> None:
    code, output = _invoke("search", "--workload", f"{USER}:spare_layer_workload", "--trials", "1", "--qat-steps", "1",
                           "--reevaluate", "0", "--torch-threads", "1", "--pin-first-last", "free", "--out", str(tmp_path))
    assert code == 0, output
    warnings = [line for line in output.splitlines() if "never run" in line]
    assert warnings == [("warning: 1 quantizable layer(s) never run on the example inputs and are left out of the "
                         "search (they stay fp32): 'spare'")]


def test_summary_json_is_strict_json(search_run: tuple[Path, str]) -> None:
    out, _ = search_run
    def refuse(constant: str) -> float:
        raise AssertionError(f"{constant} in summary.json is not JSON")

    for path in [out / "run" / "summary.json", *sorted((out / "run" / "qconfig").glob("*.json"))]:
        json.loads(path.read_text(), parse_constant=refuse)


def test_non_finite_values_are_written_as_null(tmp_path: Path) -> None:
    from search.cli import _strict_json

    text = _strict_json({"fp32_quality": math.nan, "front": [{"quality": math.inf, "n": 1}]})
    assert json.loads(text) == {"fp32_quality": None, "front": [{"quality": None, "n": 1}]}


def test_torch_threads_are_chosen_and_said(monkeypatch: pytest.MonkeyPatch, search_run: tuple[Path, str]) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads, why = choose_torch_threads(processes=64)
    assert threads == 1 and "/ 64 process(es)" in why
    monkeypatch.setenv(THREADS_ENV, "3")
    assert choose_torch_threads(processes=64) == (3, f"from {THREADS_ENV}")
    assert choose_torch_threads(processes=1, override=2) == (2, "as asked")
    monkeypatch.setenv(THREADS_ENV, "two")
    with pytest.raises(ValueError, match=f"{THREADS_ENV}: must be a whole number >= 1, got 'two'"):
        choose_torch_threads()
    code, output = _invoke("search", *TINY[:-2], "--trials", "1")  # without --torch-threads
    assert code == 2 and _error_lines(output) == [f"error: {THREADS_ENV}: must be a whole number >= 1, got 'two'"]


def test_the_search_says_its_thread_count(search_run: tuple[Path, str]) -> None:
    out, _ = search_run
    lines = [line for line in (out / "output.txt").read_text().splitlines() if line.startswith("torch threads:")]
    assert lines == [f"torch threads: 1 (as asked; set {THREADS_ENV} to change)"]


def test_export_refuses_weights_of_another_trial_or_model(search_run: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = search_run
    summary = json.loads((out / "run" / "summary.json").read_text())
    qfile = min((out / "run" / "qconfig").glob("*.json"))
    number = int(qfile.name[5:9])
    mine = next(t["assignment"] for t in summary["trials"] if t["number"] == number)
    other = next(t["number"] for t in summary["trials"] if t["assignment"] != mine)
    export = ["export", "--qconfig", str(qfile), "--workload", "digits", "--workload-option", "pretrain_steps=30",
              "--out", str(tmp_path / "m.onnx")]
    (other_weights,) = (out / "run" / "weights").glob(f"trial{other:04d}-*.pt")
    code, output = _invoke(*export, "--weights", str(other_weights))
    assert code == 2, output
    (line,) = _error_lines(output)
    assert line.startswith("error: weights: trained for another precision map or model") and "in the weights" in line
    assert not (tmp_path / "m.onnx").exists()

    foreign = tmp_path / "tiny.pt"
    torch.save(make_workload(width=2, pretrain_steps=1).model.state_dict(), foreign)
    code, output = _invoke(*export, "--weights", str(foreign))
    assert code == 2, output
    (line,) = _error_lines(output)
    assert "error: weights: they belong to another model" in line and "missing key(s): 'classifier.1.bias'" in line
    assert "unexpected key(s): 'bn.bias'" in line


def test_progress_lines_name_the_phase_elapsed_and_time_left(search_run: tuple[Path, str]) -> None:
    out, _ = search_run
    lines = (out / "output.txt").read_text().splitlines()
    trial_lines = [line for line in lines if re.match(r"\[(seeding|sampling)\] trial [1-3]/3 .*last: #", line)]
    assert len(trial_lines) == 3, lines
    assert all("elapsed " in line and re.search(r"~\d+s left", line) for line in trial_lines), trial_lines
    assert any(line.startswith("[fp32]") for line in lines) and any(line.startswith("[done]") for line in lines)


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (59.6, "1m00s"), (185, "3m05s"), (3720, "1h02m")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("load", [(0.1, 0.0, 0.0), (1.2, 0.0, 0.0), (7.9, 0.0, 0.0)])
def test_torch_threads_do_not_follow_the_machine_s_load(
    monkeypatch: pytest.MonkeyPatch, load: tuple[float, float, float],
) -> None:
    """4 usable cores: the same count however busy the machine is (a trial's numbers follow the count)."""
    import search.threads as threads_module

    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads_module, "usable_cores", lambda: 4)
    monkeypatch.setattr("search.threads.os.getloadavg", lambda: load)
    assert choose_torch_threads(processes=1)[0] == 4
    assert choose_torch_threads(processes=4)[0] == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the usual way to ask
    assert choose_torch_threads(processes=1) == (1, "from OMP_NUM_THREADS")


def test_a_search_runs_every_trial_at_one_recorded_thread_count(tmp_path: Path) -> None:
    """The count the spec fixes is the one trials run with, whatever the process had, and the result says it."""
    seen: list[int] = []

    def evaluate(assignment: Mapping[str, str], seed: int) -> float:
        seen.append(torch.get_num_threads())
        return float(list(assignment.values()).count("int8"))

    before = torch.get_num_threads()
    spec = SearchSpec(workload="digits", workload_options={"pretrain_steps": 10}, n_trials=3, qat_steps=1,
                      reevaluate_front=0, torch_threads=1 if before > 1 else 2)
    result = run_search(spec, evaluator=evaluate)
    assert set(seen) == {spec.torch_threads} and result.torch_threads == spec.torch_threads
    assert torch.get_num_threads() == before  # given back
    assert run_search(spec.model_copy(update={"torch_threads": None}), evaluator=evaluate).torch_threads == before


def test_many_free_layers_get_automatic_rungs_under_a_budget_and_a_hint_without() -> None:
    from search.cli import fidelity_line
    from search.workloads import builtin_layer_graph

    deep = builtin_layer_graph("denoise-deep", {})  # 17 layers, 15 free with first/last pinned
    hint = fidelity_line(SearchSpec(workload="denoise-deep"), deep)  # n_trials only: one rung
    assert hint is not None and hint.startswith("hint: 15 free layers.") and "--fidelity-rungs 1,3" in hint
    auto = fidelity_line(SearchSpec(workload="denoise-deep", timeout_s=600), deep)
    assert auto == ("fidelity: automatic, rungs 1,3 with promotion eta 2 (15 free layers under a budget): "
                    "the better maps are trained again longer")
    assert fidelity_line(SearchSpec(workload="denoise-deep", fidelity_rungs=(1, 3)), deep) is None
    assert fidelity_line(SearchSpec(workload="denoise-deep", fidelity_rungs=(1,)), deep) is not None  # one rung asked
    assert fidelity_line(SearchSpec(workload="denoise", timeout_s=600), builtin_layer_graph("denoise", {})) is None
    assert fidelity_line(SearchSpec(workload="denoise-deep", pins=[{"match": "nope*", "format": "int8"}]),
                         deep) is None  # a pin matching no layer: the search itself reports it


def test_the_summary_and_the_output_say_how_the_front_was_checked(search_run: tuple[Path, str]) -> None:
    out, _ = search_run
    summary = json.loads((out / "run" / "summary.json").read_text())
    neighbours = sum(t["source"] == "neighbour" for t in summary["trials"])
    assert summary["neighbour_checks"] == neighbours
    assert isinstance(summary["neighbours_untried"], int) and isinstance(summary["repeats_skipped"], int)
    text = " ".join((out / "output.txt").read_text().split())  # rich wraps long lines
    assert f"front check: {neighbours} one-layer neighbour(s) of front points tried" in text
    assert f"{summary['neighbours_untried']} untried" in text


def test_the_search_options_say_what_the_request_fields_say() -> None:
    """One text per field: ``mixq search --help`` shows the request model's description of each field
    it sets, and the model's default."""
    import inspect
    from typing import get_args

    import typer

    from search.cli import search_command
    from search.spec import field_help

    flag_to_field = {"workload": "workload", "profile": "profile", "trials": "n_trials", "formats": "formats",
                     "pin": "pins", "pin_first_last": "pin_first_last", "cost": "cost_objectives",
                     "max_quality_drop": "max_quality_drop", "qat_steps": "qat_steps", "sampler": "sampler",
                     "seed": "seed", "timeout_s": "timeout_s", "reevaluate": "reevaluate_front",
                     "fidelity_rungs": "fidelity_rungs", "promotion_eta": "promotion_eta",
                     "budget_qat_steps": "budget_qat_steps", "min_gain": "min_gain", "storage": "storage",
                     "study_name": "study_name", "workload_option": "workload_options", "device": "device"}
    params = inspect.signature(search_command, eval_str=True).parameters
    for flag, field in flag_to_field.items():
        option = next(a for a in get_args(params[flag].annotation)[1:] if isinstance(a, typer.models.OptionInfo))
        assert option.help is not None and option.help.endswith(field_help(SearchSpec, field)), flag
        default = params[flag].default
        model_default = SearchSpec.model_fields[field].get_default(call_default_factory=True)
        if isinstance(default, int | float | str) and not isinstance(model_default, tuple | list) and default != "auto":
            assert default == model_default or str(default) == str(model_default), flag


def test_a_bad_out_folder_is_refused_before_any_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file, a missing parent, an unwritable folder: one line naming --out, exit 2, nothing trained."""

    afile = tmp_path / "afile"
    afile.write_text("x")
    code, output = _invoke("search", *TINY, "--out", str(afile))
    assert code == 2 and _error_lines(output) == [f"error: --out: {afile} is a file; give a folder"]
    deep = tmp_path / "no" / "such" / "run"
    code, output = _invoke("search", *TINY, "--out", str(deep))
    assert code == 2 and "--out: the folder" in output and not (tmp_path / "no").exists()

    def read_only(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("search.cli.tempfile.TemporaryFile", read_only)
    trained: list[object] = []
    monkeypatch.setattr("search.workloads.load_workload", lambda *a, **k: trained.append(a))
    code, output = _invoke("search", *TINY, "--no-save-weights", "--out", str(tmp_path / "ro"))
    assert code == 2 and _error_lines(output) == [f"error: --out: cannot write in {tmp_path / 'ro'}: Permission denied"]
    assert not trained  # refused before the workload was even loaded


def test_errors_name_the_flag_the_user_typed_and_every_problem() -> None:
    code, output = _invoke("search", *TINY, "--trials", "0", "--cost", "speed", "--out", "/tmp")
    assert code == 2
    (line,) = _error_lines(output)
    assert "--trials: Input should be greater than or equal to 1, got 0" in line
    assert "--cost: Input should be 'bitops', 'weight_bytes', 'activation_bytes' or 'latency_ms', got 'speed'" in line
    assert "n_trials" not in line and "cost_objectives" not in line and "more)" not in line


def test_a_workload_module_in_the_current_folder_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_local_workload.py").write_text(
        "from tests.search.user_workload import make_workload as _make\n"
        "def make(**options):\n    return _make(**options)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    code, output = _invoke("search", "--workload", "my_local_workload:make", "--trials", "1", "--qat-steps", "1",
                           "--reevaluate", "0", "--torch-threads", "1", "--pin-first-last", "free",
                           "--no-save-weights", "--out", str(tmp_path / "run"))
    assert code == 0, output
    assert (tmp_path / "run" / "summary.json").exists()


def test_ctrl_c_says_what_was_kept_and_a_resumed_search_trains_the_interrupted_map_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from search.study.attrs import TrialKey

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    calls: list[dict[str, str]] = []

    def interrupt_third(assignment: Mapping[str, str], seed: int) -> float:
        calls.append(dict(assignment))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return float(list(assignment.values()).count("int8"))

    spec = SearchSpec(workload="digits", workload_options={"pretrain_steps": 10}, n_trials=5, qat_steps=1,
                      reevaluate_front=0, storage=storage, study_name="ctrl-c")
    with pytest.raises(KeyboardInterrupt):
        run_search(spec, evaluator=interrupt_third)
    interrupted = calls[2]
    result = run_search(spec, evaluator=lambda a, s: float(list(a.values()).count("int8")))
    study = optuna.load_study(study_name="ctrl-c", storage=storage)
    again = [t for t in study.get_trials() if t.user_attrs.get(TrialKey.REQUEUE_OF) is not None]
    assert len(again) == 1 and again[0].state is TrialState.COMPLETE
    assert {o.number for o in result.trials} >= {again[0].number}
    trained = next(o for o in result.trials if o.number == again[0].number)
    assert dict(trained.assignment) == interrupted

    import search.study.runner

    def ctrl_c(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(search.study.runner, "run_search", ctrl_c)
    code, output = _invoke("search", *TINY, "--storage", storage, "--study-name", "cli-ctrl-c",
                           "--out", str(tmp_path / "run"))
    assert code == 130 and "interrupted: the trials finished so far are kept in" in output and "resume" in output
    code, output = _invoke("search", *TINY, "--out", str(tmp_path / "run"))
    assert code == 130 and "nothing was kept" in output and "--storage" in output
