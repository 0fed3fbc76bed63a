"""``mixq search`` and ``mixq export``: the command-line face of the search library.

``register(app)`` adds both commands to the ``mixq`` Typer app (``service.cli``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from search.quant.formats import trial_filename
from search.results import SearchPhase, SearchProgress, SearchResult, TrialOutcome, json_safe
from search.spec import AUTO_FIDELITY_FREE_LAYERS, SearchSpec, field_help, first_error_text

if TYPE_CHECKING:
    from search.quant.layers import LayerGraph

console = Console(stderr=False, width=None if sys.stdout.isatty() else 140)


# the request model's defaults: the options below offer the same ones as the API (/v1/meta)
_DEFAULT: dict[str, Any] = {
    name: info.get_default(call_default_factory=True) for name, info in SearchSpec.model_fields.items()
}
def _help(field: str, form: str = "") -> str:
    """The option's help: the request field's description (one text for the CLI, the API and the dashboard),
    after how the flag spells it."""
    text = field_help(SearchSpec, field)
    return f"({form}) {text}" if form else text


_DEFAULT_FORMATS = ",".join(_DEFAULT["formats"])
_DEFAULT_PIN_FIRST_LAST = _DEFAULT["pin_first_last"] or "free"
_DEFAULT_COSTS = [str(c) for c in _DEFAULT["cost_objectives"]]



# request field -> the flag that sets it, where the flag is spelled otherwise than --field-name
_FLAG_OF = {"n_trials": "--trials", "reevaluate_front": "--reevaluate", "cost_objectives": "--cost",
            "pins": "--pin", "workload_options": "--workload-option", "weights_dir": "--save-weights/--out"}


def _flag_errors(err: ValidationError) -> str:
    """Every error of a search request, each named by the flag the user typed (not the API's field),
    with the value it got: ``--trials: must be >= 1, got 0; --cost: ...``."""
    parts = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        field = loc[0] if loc else ""
        flag = _FLAG_OF.get(field, "--" + field.replace("_", "-")) if field else "(options)"
        msg = str(e["msg"]).removeprefix("Value error, ").removeprefix(f"{field}: ")
        got = e.get("input")
        shown = "" if isinstance(got, dict) or got is None or "got " in msg else f", got {got!r}"
        parts.append(f"{flag}: {msg}{shown}")
    return "; ".join(parts)


def _check_out(out: Path) -> None:
    """``--out`` must be a folder mixq can write in: created if only its last level is missing; a file, a
    missing parent or a read-only place is refused before the search starts."""
    if out.exists() and not out.is_dir():
        _fail(f"--out: {out} is a file; give a folder")
    if not out.exists():
        if not out.parent.is_dir():
            _fail(f"--out: the folder {out.parent} does not exist; create it first (mkdir -p {out.parent})")
        try:
            out.mkdir()
        except OSError as exc:
            _fail(f"--out: cannot create {out}: {exc.strerror or exc}")
    try:
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        _fail(f"--out: cannot write in {out}: {exc.strerror or exc}")


def _interrupted(spec: SearchSpec) -> None:
    """Ctrl-C: say what was kept and how to go on, then exit 130 (the shell's code for SIGINT)."""
    if spec.storage is None:
        console.print("interrupted: nothing was kept (the study was in memory); to make a search resumable, "
                      "pass --storage sqlite:///mixq.db", soft_wrap=True)
    else:
        console.print(f"interrupted: the trials finished so far are kept in {spec.storage} (study "
                      f"{spec.study_name!r}); run the same command again to resume: the interrupted trial is "
                      "trained again, finished ones are not", soft_wrap=True)
    raise typer.Exit(130)


def _fail(message: str, code: int = 2) -> None:
    """One line (never wrapped), then exit: 2 for a user error."""
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def _warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def float_layer_lines(graph: LayerGraph, limit: int = 8) -> list[str]:
    """What stays float, one line each (the CLI prints them before a search): nothing is left out silently."""
    floats = graph.float_layers
    if not floats:
        return []
    lines = [f"{len(floats)} part(s) of the model stay float (not searched; counted in every map's cost at the "
             "float precision):"]
    for f in floats[:limit]:
        lines.append(f"  {f.fqn or '(model)'} [{f.kind}] {f.macs:,} MACs, {f.num_params:,} params: {f.reason}")
    if len(floats) > limit:
        lines.append(f"  ... and {len(floats) - limit} more (the qconfig files list them all under float_layers)")
    return lines


def _one_line(text: str) -> str:
    return " ".join(text.split())


@contextmanager
def _errors_reported(debug: bool) -> Iterator[None]:
    """User errors (mixq's ValueError family: bad options, workloads, qconfig or weights files,
    and failures in the user's own workload code, which mixq wraps) become one line and exit 2;
    anything else is a mixq bug: one line and exit 1.  ``debug`` prints the traceback first."""
    try:
        yield
    except typer.Exit:
        raise
    except Exception as err:  # noqa: BLE001 - the command's one failure boundary; it reports every error
        if debug:
            console.print(traceback.format_exc(), markup=False, highlight=False, soft_wrap=True)
        if isinstance(err, ValidationError):
            _fail(_one_line(first_error_text(err)))
        if isinstance(err, (ValueError, FileNotFoundError)):
            _fail(_one_line(str(err)))
        hint = "" if debug else " (rerun with --debug for the traceback)"
        _fail(f"internal error: {type(err).__name__}: {_one_line(str(err))}{hint}", code=1)


class _TrialFailures(logging.Handler):
    """Prints each failed trial as one warning line and keeps the last cause; the traceback optuna
    attaches to its own log record of the failure is dropped unless ``debug``."""

    def __init__(self, debug: bool) -> None:
        super().__init__(logging.WARNING)
        self.debug = debug
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.last = _one_line(record.getMessage())
        _warn(self.last)

    def optuna_filter(self, record: logging.LogRecord) -> bool:
        """For optuna's logger: its "Trial N failed with parameters..." record repeats ours."""
        return self.debug or not (record.getMessage().startswith("Trial ") and " failed" in record.getMessage())


@contextmanager
def _trial_failures_reported(debug: bool) -> Iterator[_TrialFailures]:
    handler = _TrialFailures(debug)
    ours, theirs = logging.getLogger("mixq.search"), logging.getLogger("optuna.study._optimize")
    ours.addHandler(handler)
    theirs.addFilter(handler.optuna_filter)
    try:
        yield handler
    finally:
        ours.removeHandler(handler)
        theirs.removeFilter(handler.optuna_filter)


def _strict_json(data: Any) -> str:
    """JSON text with every non-finite float written as null: ``NaN`` is not JSON."""
    return json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n"


def _parse_ints(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        _fail(f"{what}: expected comma-separated integers, e.g. 1,3,9; got {text!r}")
        raise  # unreachable: _fail exits


def _parse_kv(items: list[str], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"{what}: expected KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def qconfig_filename(outcome: TrialOutcome) -> str:
    """``trial0003-int8x2-int4x4.json``; the trial's weights are the same name with ``.pt`` (in OUT/weights),
    as the service names its downloads (:func:`search.quant.formats.trial_filename`)."""
    return trial_filename(outcome.number, outcome.assignment, "qconfig")


def write_outputs(result: SearchResult, out_dir: Path) -> dict[str, Path]:
    """Front table (markdown), plot (PNG + HTML), one qconfig JSON per front point, summary.json."""
    from search.report import front_markdown, plot_front_html, plot_front_png

    out_dir.mkdir(parents=True, exist_ok=True)
    qdir = out_dir / "qconfig"
    qdir.mkdir(exist_ok=True)
    paths: dict[str, Path] = {}
    for point in result.front:
        if point.qconfig is None:
            continue
        # the point's qconfig reports its mean over every evaluation already (search.study.objective.outcome_of)
        data = {**point.qconfig, "feasible": point.feasible, "on_front": True}  # only front points get a file
        path = qdir / qconfig_filename(point)
        path.write_text(_strict_json(data))
        paths[f"qconfig:{point.number}"] = path
    paths["table"] = out_dir / "front.md"
    paths["table"].write_text(front_markdown(result))
    paths["png"] = plot_front_png(result, out_dir / "pareto.png")
    paths["html"] = plot_front_html(result, out_dir / "pareto.html")
    summary = result.to_json()
    paths["summary"] = out_dir / "summary.json"
    paths["summary"].write_text(_strict_json(summary))
    return paths


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``: a progress line's elapsed time and estimate."""
    whole = max(round(seconds), 0)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def print_front(result: SearchResult) -> None:
    table = Table(title=f"Pareto front ({result.metric_name}; fp32 = {result.fp32_quality:.4f})")
    table.add_column("trial", justify="right")
    table.add_column(result.metric_name, justify="right")
    table.add_column("± std (runs)", justify="right")
    table.add_column("QAT steps", justify="right")
    for name in (result.front[0].costs if result.front else {}):
        table.add_column(name, justify="right")
    table.add_column("per-layer formats (execution order)")
    for p in result.front:
        table.add_row(
            str(p.number), f"{p.quality:.4f}", p.spread_text(), str(p.qat_steps),
            *(f"{v:.4g}" for v in p.costs.values()),
            " ".join(p.assignment.values()) + ("" if p.feasible else "  [infeasible]"),
        )
    console.print(table)
    check = result.fidelity
    if check is not None:
        tau = "n/a (fewer than 2 front points reached a longer rung)" if check.kendall_tau is None \
            else f"{check.kendall_tau:.2f}"
        console.print(f"fidelity check: {len(check.points)} front point(s) at {check.short_qat_steps} vs "
                      f"{', '.join(sorted({str(fp.long_qat_steps) for fp in check.points})) or '-'} QAT steps; "
                      f"Kendall tau {tau}")
        for fp in check.points:
            console.print(f"  trial {fp.number}: {fp.short_quality:.4f} -> {fp.long_quality:.4f}")
        if check.warning:
            console.print(f"[yellow]warning:[/] {check.warning}")
    if result.merged_within_noise:
        console.print(f"left off the front (gain over a cheaper point within noise): trials "
                      f"{', '.join(map(str, result.merged_within_noise))}")
    console.print(f"front check: {result.neighbour_checks} one-layer neighbour(s) of front points tried, none "
                  f"dominates a reported point; {result.neighbours_untried} untried"
                  + (f"; {result.repeats_skipped} sampler repeat(s) of trained maps skipped (no trial used)"
                     if result.repeats_skipped else ""))
    console.print(f"QAT steps used: {result.qat_steps_used}" + (f"; stopped: {result.stop_reason}"
                                                              if result.stop_reason else ""))


def search_command(
    workload: Annotated[str, typer.Option(help=_help("workload"))],
    profile: Annotated[
        str, typer.Option(help=_help("profile"))
    ] = _DEFAULT["profile"],
    trials: Annotated[int, typer.Option(help=_help("n_trials"))] = _DEFAULT["n_trials"],
    formats: Annotated[str, typer.Option(help=_help("formats", "comma-separated"))] = _DEFAULT_FORMATS,
    pin: Annotated[
        list[str], typer.Option(help=_help("pins", "MATCH=FORMAT, repeatable"))
    ] = [],  # noqa: B006
    pin_first_last: Annotated[
        str, typer.Option(help=_help("pin_first_last"))
    ] = _DEFAULT_PIN_FIRST_LAST,
    cost: Annotated[
        list[str], typer.Option(help=_help("cost_objectives", "repeatable, at most 2"))
    ] = _DEFAULT_COSTS,
    max_quality_drop: Annotated[
        float | None, typer.Option(help=_help("max_quality_drop"))
    ] = None,
    qat_steps: Annotated[int, typer.Option(help=_help("qat_steps"))] = _DEFAULT["qat_steps"],
    sampler: Annotated[str, typer.Option(help=_help("sampler"))] = _DEFAULT["sampler"],
    seed: Annotated[int, typer.Option(help=_help("seed"))] = _DEFAULT["seed"],
    timeout_s: Annotated[float | None, typer.Option(help=_help("timeout_s"))] = None,
    reevaluate: Annotated[int, typer.Option(help=_help("reevaluate_front"))] = _DEFAULT[
        "reevaluate_front"],
    fidelity_rungs: Annotated[str, typer.Option(help=_help("fidelity_rungs", "comma-separated, or auto"))] = "auto",
    promotion_eta: Annotated[int | None, typer.Option(help=_help("promotion_eta"))] = None,
    budget_qat_steps: Annotated[int | None, typer.Option(help=_help("budget_qat_steps"))] = None,
    min_gain: Annotated[float | None, typer.Option(help=_help("min_gain"))] = None,
    maps_per_pass: Annotated[int | None, typer.Option(help=_help("maps_per_pass"))] = None,
    storage: Annotated[
        str | None, typer.Option(help=_help("storage"))
    ] = None,
    study_name: Annotated[str, typer.Option(help=_help("study_name"))] = _DEFAULT["study_name"],
    workload_option: Annotated[list[str], typer.Option(help=_help("workload_options", "KEY=VALUE, repeatable"))] = [],  # noqa: B006
    device: Annotated[str, typer.Option(help=_help("device"))] = _DEFAULT["device"],
    out: Annotated[Path, typer.Option(help="output folder")] = Path("mixq-out"),
    save_weights: Annotated[
        bool, typer.Option(help="keep each trial's trained weights in OUT/weights (for mixq export)")
    ] = True,
    torch_threads: Annotated[
        int | None, typer.Option(help="torch threads for every trial, fixed for the whole search whatever the "
                                      "machine's load (default: $MIXQ_TORCH_THREADS, else all usable cores)")
    ] = None,
    debug: Annotated[bool, typer.Option(help="print the traceback of an error")] = False,
) -> None:
    """Search per-layer int4/int8/fp16 maps; write the Pareto front, plots and qconfig JSON files."""
    with _errors_reported(debug):
        from search.quant.layers import discover_layers
        from search.study.runner import SearchObserver, run_search
        from search.study.runner import maps_per_pass as resolve_maps_per_pass
        from search.threads import set_torch_threads
        from search.workloads import load_workload

        matches = [p.rpartition("=") for p in pin]
        if any(not m or not sep for m, sep, _ in matches):
            _fail("pin: expected MATCH=FORMAT, e.g. --pin 'features.0=int8'")
        try:
            spec = SearchSpec.model_validate({
                "workload": workload, "workload_options": _parse_kv(workload_option, "workload-option"),
                "profile": profile, "formats": [f.strip() for f in formats.split(",") if f.strip()],
                "pin_first_last": None if pin_first_last == "free" else pin_first_last,
                "pins": [{"match": m, "format": None if f == "free" else f} for m, _, f in matches],
                "cost_objectives": cost, "max_quality_drop": max_quality_drop, "n_trials": trials,
                "timeout_s": timeout_s, "qat_steps": qat_steps, "seed": seed, "sampler": sampler,
                "reevaluate_front": reevaluate, "storage": storage, "study_name": study_name, "device": device,
                "weights_dir": str(out / "weights") if save_weights else None,
                "fidelity_rungs": (None if fidelity_rungs.strip() == "auto"
                                   else _parse_ints(fidelity_rungs, "fidelity-rungs")),
                "promotion_eta": promotion_eta,
                "budget_qat_steps": budget_qat_steps, "min_gain": min_gain, "maps_per_pass": maps_per_pass,
            })
        except ValidationError as err:
            _fail(_flag_errors(err))
        _check_out(out)  # before any training: an unwritable --out must not cost the search
        if ":" in spec.workload and os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())  # a workload module in the current folder imports (as pytest does)
        console.print(set_torch_threads(processes=1, override=torch_threads))
        wl = load_workload(spec.workload, spec.workload_options)
        graph = discover_layers(wl.model, wl.example_inputs)
        unused = graph.unused
        if unused:
            more = f" ... and {len(unused) - 5} more" if len(unused) > 5 else ""
            shown = ", ".join(repr(f) for f in unused[:5]) + more
            _warn(f"{len(unused)} quantizable layer(s) never run on the example inputs and are left out of the "
                  f"search (they stay fp32): {shown}")
        for line in float_layer_lines(graph):
            _warn(line)
        hint = fidelity_line(spec, graph)
        if hint:
            console.print(hint)
        how = ("as asked" if spec.maps_per_pass is not None
               else "automatic: several only where a training step is overhead, not arithmetic, and fits in memory")
        console.print(f"maps per QAT pass: {resolve_maps_per_pass(spec, wl, graph)} ({how}; --maps-per-pass sets it)")

        with _trial_failures_reported(debug) as failures, Progress(
            TextColumn("[bold]{task.fields[phase]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[best]}"),
            TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), console=console, transient=False,
        ) as bar:
            task = bar.add_task("search", total=spec.n_trials, phase=SearchPhase.FP32.value, eta="",
                                best="starting (fp32 reference, first trial)...")

            def show(progress: SearchProgress, text: str) -> None:
                eta = f"~{format_duration(progress.eta_s)} left" if progress.eta_s is not None else ""
                bar.update(task, completed=min(progress.finished, progress.total), phase=progress.phase.value,
                           best=text, eta=eta)
                if not console.is_terminal:  # a log file gets one line per event instead of a live bar
                    console.print(escape(
                        f"[{progress.phase.value}] trial {progress.finished}/{progress.total}  {text}  "
                        f"elapsed {format_duration(progress.elapsed_s)}  {eta}"))

            class BarObserver(SearchObserver):
                def trial_done(self, outcome: TrialOutcome, progress: SearchProgress) -> None:
                    best = f"best {wl.metric} {progress.best_quality:.4f}" if progress.best_quality is not None else ""
                    show(progress, f"{best}  last: #{outcome.number} {outcome.quality:.4f} ({outcome.source})")

                def progress(self, progress: SearchProgress) -> None:
                    show(progress, progress.message)

            try:
                result = run_search(spec, workload=wl, observer=BarObserver())
            except KeyboardInterrupt:
                bar.stop()
                _interrupted(spec)
            bar.update(task, completed=spec.n_trials, eta="")
        if not result.front:
            cause = f"; the last failure: {failures.last}" if failures.last else ""
            _fail(f"no trial completed, so there is no Pareto front{cause}", code=1)
        print_front(result)
        paths = write_outputs(result, out)
    console.print(f"front table: {paths['table']}\nplot: {paths['png']} and {paths['html']}")
    console.print(f"qconfig files ({len(result.front)}): {out / 'qconfig'}")
    if save_weights:
        console.print(f"trained weights: {out / 'weights'}/<qconfig file name>.pt  "
                      "(mixq export --qconfig ... --weights ...)")


def fidelity_line(spec: SearchSpec, graph: LayerGraph) -> str | None:
    """What automatic ``fidelity_rungs`` chose, where it matters: the rungs, or for a one-rung search over
    many free layers, a hint (promotion ranked such maps better, measured); None for a small model."""
    from search.profiles import load_profile
    from search.study.space import build_space

    try:
        free = len(build_space(spec, graph, load_profile(spec.profile)).choices)
    except ValueError:  # a bad pin or profile: the search reports it as it starts
        return None
    if free < AUTO_FIDELITY_FREE_LAYERS:
        return None
    resolved = spec.resolve_fidelity(free)
    if len(resolved.rungs) > 1:
        if spec.fidelity_rungs is not None:
            return None  # the user's own rungs
        return (f"fidelity: automatic, rungs {','.join(map(str, resolved.rungs))} with promotion eta "
                f"{resolved.eta} ({free} free layers under a budget): the better maps are trained again longer")
    return (f"hint: {free} free layers. On a 15-free-layer denoiser one short QAT run per map mis-ranked maps of "
            "equal cost; retraining the better half 3x longer matched or beat every baseline there (README, "
            "Benchmarks). It is automatic under --timeout-s or --budget-qat-steps; with --trials alone pass "
            "--fidelity-rungs 1,3 --promotion-eta 2")


def export_command(
    qconfig: Annotated[Path, typer.Option(help="a qconfig JSON file")],
    weights: Annotated[Path, typer.Option(
        help="the trial's trained weights (OUT/weights/trialNNNN-....pt of mixq search: the qconfig's name, .pt)"
    )],
    workload: Annotated[str, typer.Option(help="the workload whose model the weights belong to")],
    out: Annotated[Path, typer.Option(help="ONNX file to write")] = Path("model.onnx"),
    workload_option: Annotated[list[str], typer.Option(help="KEY=VALUE passed to the workload factory")] = [],  # noqa: B006
    static_shapes: Annotated[bool, typer.Option(
        help="fix the spatial input sizes to the example inputs' (default: free where the model allows)"
    )] = False,
    debug: Annotated[bool, typer.Option(help="print the traceback of an error")] = False,
) -> None:
    """Turn a qconfig JSON plus trained weights into an ONNX QDQ model (opset 21), verified in onnxruntime.

    The weights must belong to the qconfig: same model, same per-layer formats (checked)."""
    with _errors_reported(debug):
        import copy

        import onnx

        from search.quant.checkpoint import load_trained_weights
        from search.quant.export_onnx import StaticShapesWarning, export_onnx, verify_onnx
        from search.quant.qconfig import apply_qconfig
        from search.workloads import load_workload

        wl = load_workload(workload, _parse_kv(workload_option, "workload-option"))
        model = copy.deepcopy(wl.model)
        apply_qconfig(model, qconfig, wl.example_inputs)
        note = load_trained_weights(model, weights)
        if note is not None:
            _warn(note)
        model.eval()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", StaticShapesWarning)
            path = export_onnx(model, wl.example_inputs, out, dynamic_spatial=not static_shapes)
        for w in caught:
            if issubclass(w.category, StaticShapesWarning):
                _warn(str(w.message))
        diff = verify_onnx(model, wl.example_inputs, path, what="fake-quant model")
        diff_default = verify_onnx(model, wl.example_inputs, path, what="fake-quant model",
                                   optimized=True)  # as a deployment opens it
        # and against the fp32 original: the same outputs, shaped alike (a quantized copy that lost a layer
        # agrees with its own export)
        diff_fp32 = verify_onnx(wl.model, wl.example_inputs, path, what="original fp32 model")
        props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
        axes = json.loads(props.get("mixq.dynamic_axes", "{}"))
    free = "; ".join(f"{name}: {', '.join(dims)}" for name, dims in axes.items()) or "none"
    console.print(f"wrote {path}; onnxruntime vs fake-quant max abs difference: {diff:.3g} (graph optimizations "
                  f"off), {diff_default:.3g} (default session options)", soft_wrap=True)
    console.print(f"onnxruntime vs the fp32 original: outputs shaped alike, max abs gap {diff_fp32:.3g} "
                  "(the quantization error)", soft_wrap=True)
    console.print(f"free axes: {free}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("search")(search_command)
    app.command("export")(export_command)


def main() -> None:  # ``python -m search.cli`` without the service installed
    app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None)  # as mixq's: flags whole
    register(app)
    app()


if __name__ == "__main__":
    main()
