"""``mixq search`` and ``mixq export``: the command-line face of the search library.

``register(app)`` adds both commands to the ``mixq`` Typer app (``service.cli``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from search.spec import SearchProgress, SearchResult, SearchSpec, TrialOutcome

console = Console(stderr=False, width=None if sys.stdout.isatty() else 140)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


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


def format_summary(assignment: dict[str, str]) -> str:
    """``int8x2-int4x3`` style summary of a map, in order of first appearance."""
    counts: dict[str, int] = {}
    for fmt in assignment.values():
        counts[fmt] = counts.get(fmt, 0) + 1
    return "-".join(f"{fmt}x{n}" for fmt, n in counts.items())


def qconfig_filename(outcome: TrialOutcome) -> str:
    return f"trial{outcome.number:04d}-{format_summary(dict(outcome.assignment))}.json"


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
        data = dict(point.qconfig)
        if data.get("quality"):
            data["quality"] = {**data["quality"], "value": point.quality, "std": point.quality_std,
                               "n_evaluations": point.n_evaluations}
        path = qdir / qconfig_filename(point)
        path.write_text(json.dumps(data, indent=2) + "\n")
        paths[f"qconfig:{point.number}"] = path
    paths["table"] = out_dir / "front.md"
    paths["table"].write_text(front_markdown(result))
    paths["png"] = plot_front_png(result, out_dir / "pareto.png")
    paths["html"] = plot_front_html(result, out_dir / "pareto.html")
    summary = {
        "workload": result.workload, "metric": result.metric_name, "higher_is_better": result.higher_is_better,
        "fp32_quality": result.fp32_quality, "study_name": result.study_name,
        "layers": [layer.as_dict() for layer in result.layers], "pinned": result.pinned,
        "front": [_outcome_json(o) for o in result.front],
        "trials": [_outcome_json(o) for o in result.trials],
    }
    paths["summary"] = out_dir / "summary.json"
    paths["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    return paths


def _outcome_json(o: TrialOutcome) -> dict[str, Any]:
    return {
        "number": o.number, "assignment": dict(o.assignment), "quality": o.quality, "quality_std": o.quality_std,
        "n_evaluations": o.n_evaluations, "costs": dict(o.costs), "feasible": o.feasible, "source": o.source,
        "cached": o.cached, "duration_s": o.duration_s,
    }


def print_front(result: SearchResult) -> None:
    table = Table(title=f"Pareto front ({result.metric_name}; fp32 = {result.fp32_quality:.4f})")
    table.add_column("trial", justify="right")
    table.add_column(result.metric_name, justify="right")
    table.add_column("± std", justify="right")
    for name in (result.front[0].costs if result.front else {}):
        table.add_column(name, justify="right")
    table.add_column("per-layer formats (execution order)")
    for p in result.front:
        table.add_row(
            str(p.number), f"{p.quality:.4f}", f"{p.quality_std:.4f}",
            *(f"{v:.4g}" for v in p.costs.values()),
            " ".join(p.assignment.values()) + ("" if p.feasible else "  [infeasible]"),
        )
    console.print(table)


def search_command(
    workload: Annotated[str, typer.Option(help="built-in workload (digits, denoise) or 'pkg.module:factory'")],
    profile: Annotated[str, typer.Option(help="built-in profile (generic, npu-int4) or a YAML/JSON file")] = "generic",
    trials: Annotated[int, typer.Option(help="budget: trials (QAT runs) for the whole study")] = 24,
    formats: Annotated[str, typer.Option(help="comma-separated formats to search")] = "int4,int8,fp16",
    pin: Annotated[
        list[str], typer.Option(help="MATCH=FORMAT (fqn glob, kind:KIND, @first, @last); FORMAT 'free' unpins")
    ] = [],  # noqa: B006 - Typer reads the default, never mutates it
    pin_first_last: Annotated[
        str, typer.Option(help="format for the first/last executed layers; 'free' to search them")
    ] = "int8",
    cost: Annotated[
        list[str], typer.Option(help="cost objective(s): bitops, weight_bytes, activation_bytes, latency_ms")
    ] = ["bitops"],  # noqa: B006 - Typer reads the default, never mutates it
    max_quality_drop: Annotated[
        float | None, typer.Option(help="trials losing more than this vs fp32 are infeasible")
    ] = None,
    qat_steps: Annotated[int, typer.Option(help="QAT steps per trial")] = 200,
    sampler: Annotated[str, typer.Option(help="tpe, nsga2 or random")] = "tpe",
    seed: Annotated[int, typer.Option()] = 0,
    timeout_s: Annotated[float | None, typer.Option(help="wall-time budget in seconds")] = None,
    reevaluate: Annotated[int, typer.Option(help="extra seeds per front point before reporting")] = 2,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL (sqlite:///f.db, postgresql+psycopg://...); resumes")
    ] = None,
    study_name: Annotated[str, typer.Option(help="study name in the storage")] = "mixq",
    workload_option: Annotated[list[str], typer.Option(help="KEY=VALUE passed to the workload factory")] = [],  # noqa: B006
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto")] = "cpu",
    out: Annotated[Path, typer.Option(help="output folder")] = Path("mixq-out"),
    save_weights: Annotated[
        bool, typer.Option(help="keep each trial's trained weights in OUT/weights (for mixq export)")
    ] = True,
) -> None:
    """Search per-layer int4/int8/fp16 maps; write the Pareto front, plots and qconfig JSON files."""
    from search.runner import run_search
    from search.spec import SearchError
    from search.workloads import WorkloadError, load_workload

    try:
        pins = [
            {"match": m, "format": None if f == "free" else f}
            for m, _, f in (p.rpartition("=") for p in pin)
        ]
        if any(not p["match"] for p in pins):
            _fail("pin: expected MATCH=FORMAT, e.g. --pin 'features.0=int8'")
        spec = SearchSpec(
            workload=workload, workload_options=_parse_kv(workload_option, "workload-option"), profile=profile,
            formats=tuple(f.strip() for f in formats.split(",") if f.strip()),
            pin_first_last=None if pin_first_last == "free" else pin_first_last, pins=tuple(pins),
            cost_objectives=tuple(cost), max_quality_drop=max_quality_drop, n_trials=trials, timeout_s=timeout_s,
            qat_steps=qat_steps, seed=seed, sampler=sampler, reevaluate_front=reevaluate, storage=storage,
            study_name=study_name, device=device, weights_dir=str(out / "weights") if save_weights else None,
        )
    except ValidationError as err:
        first = err.errors()[0]
        _fail(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}")
    except ValueError as err:
        _fail(str(err))
    try:
        wl = load_workload(spec.workload, spec.workload_options)
    except (WorkloadError, ValueError) as err:
        _fail(str(err))

    with Progress(
        TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[best]}"),
        TimeElapsedColumn(), console=console, transient=False,
    ) as bar:
        task = bar.add_task("search", total=spec.n_trials, best="starting (fp32 reference, first trial)...")

        def on_trial(outcome: TrialOutcome, progress: SearchProgress) -> None:
            best = f"best {wl.metric} {progress.best_quality:.4f}" if progress.best_quality is not None else ""
            last = f"last: #{outcome.number} {outcome.quality:.4f} ({outcome.source})"
            bar.update(task, completed=min(progress.finished, progress.total), best=f"{best}  {last}")
            if not console.is_terminal:  # a log file gets one line per trial instead of a live bar
                console.print(f"trial {progress.finished}/{progress.total}  {best}  {last}")

        def on_progress(progress: SearchProgress) -> None:
            bar.update(task, best=progress.message)
            if not console.is_terminal:
                console.print(progress.message)

        try:
            result = run_search(spec, workload=wl, on_trial=on_trial, on_progress=on_progress)
        except (SearchError, ValueError) as err:
            _fail(str(err))
        bar.update(task, completed=spec.n_trials)
    print_front(result)
    paths = write_outputs(result, out)
    console.print(f"front table: {paths['table']}\nplot: {paths['png']} and {paths['html']}")
    console.print(f"qconfig files ({len(result.front)}): {out / 'qconfig'}")
    if save_weights:
        console.print(f"trained weights: {out / 'weights'}/trial-N.pt  (mixq export --qconfig ... --weights ...)")


def export_command(
    qconfig: Annotated[Path, typer.Option(help="a qconfig JSON file")],
    weights: Annotated[Path, typer.Option(help="trained weights: a state dict saved with torch.save")],
    workload: Annotated[str, typer.Option(help="the workload whose model the weights belong to")],
    out: Annotated[Path, typer.Option(help="ONNX file to write")] = Path("model.onnx"),
    workload_option: Annotated[list[str], typer.Option(help="KEY=VALUE passed to the workload factory")] = [],  # noqa: B006
) -> None:
    """Turn a qconfig JSON plus trained weights into an ONNX QDQ model (opset 21), verified in onnxruntime."""
    import copy

    import torch

    from search.export_onnx import export_onnx, verify_onnx
    from search.qconfig import QConfigError, apply_qconfig
    from search.workloads import WorkloadError, load_workload

    try:
        wl = load_workload(workload, _parse_kv(workload_option, "workload-option"))
        model = copy.deepcopy(wl.model)
        apply_qconfig(model, qconfig, wl.example_inputs)
        state = torch.load(weights, weights_only=True, map_location="cpu")  # never a full unpickle
        model.load_state_dict(state, strict=False)
        model.eval()
        path = export_onnx(model, wl.example_inputs, out)
        diff = verify_onnx(model, wl.example_inputs, path)
    except (QConfigError, WorkloadError, ValueError, FileNotFoundError, RuntimeError) as err:
        _fail(str(err))
    console.print(f"wrote {path}; onnxruntime vs fake-quant max abs difference: {diff:.3g}")


def register(app: typer.Typer) -> None:
    app.command("search")(search_command)
    app.command("export")(export_command)


def main() -> None:  # ``python -m search.cli`` without the service installed
    app = typer.Typer(add_completion=False, no_args_is_help=True)
    register(app)
    app()


if __name__ == "__main__":
    main()
