"""``mixq jobs submit|list|show|watch|cancel|download --server URL [--token T]``: a remote mixq service
from the command line, through :class:`service.client.Client`.

    mixq jobs submit --workload digits --set n_trials=12 --set qat_steps=100 --watch
    mixq jobs show 1
    mixq jobs download 1 --out job-1/      # job-1/{qconfig,weights,onnx}/trial0003-....{json,pt,onnx}

``--server`` defaults to ``$MIXQ_SERVER`` (else http://127.0.0.1:8000), ``--token`` to ``$MIXQ_TOKEN``.
Exit status: 0 done, 1 the job failed or was cancelled (``watch``, ``submit --watch``), 2 a bad request
or an unreachable server (the server's message is printed, naming the field).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from service.client import DEFAULT_URL, ApiError, Client, ClientError, Event, TrialFile
from service.schemas import JobOut

jobs_app = typer.Typer(help="Jobs on a mixq server (submit, list, show, watch, cancel, download)",
                       no_args_is_help=True, rich_markup_mode=None)  # plain help: flag names whole at 80 columns
console = Console(highlight=False)

Server = Annotated[str, typer.Option("--server", envvar="MIXQ_SERVER", help="the service's base URL")]
Token = Annotated[str | None, typer.Option("--token", envvar="MIXQ_TOKEN", help="a token from `mixq token create`")]
JobIdArg = Annotated[int, typer.Argument(help="job id", min=1)]


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def _client(server: str, token: str | None) -> Iterator[Client]:
    try:
        with Client(server, token) as client:
            yield client
    except ApiError as exc:
        _fail(f"{exc.status}: {exc.message}")
    except ClientError as exc:
        _fail(str(exc))


def _parse_set(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--set: expected KEY=VALUE (a JobCreate field), got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _progress_text(job: JobOut) -> str:
    p = job.progress
    parts = [job.status, f"{p.finished}/{p.total}"]
    if p.phase:
        parts.append(p.phase)
    if p.eta_s is not None and job.status == "running":
        parts.append(f"eta {p.eta_s:.0f}s")
    return " ".join(parts)


def _watch(client: Client, job_id: int, quiet: bool = False) -> JobOut:
    """Follow the job with a progress bar (trials finished of the budget); return it when it ends."""
    job = client.get(job_id)
    with Progress(TextColumn("job {task.fields[job]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=False,
                  disable=quiet) as bar:
        task = bar.add_task(_progress_text(job), total=job.progress.total, completed=job.progress.finished,
                            job=job_id)

        def on_event(event: Event) -> None:
            current = event.job
            if current is not None:
                bar.update(task, completed=current.progress.finished, total=current.progress.total,
                           description=_progress_text(current))

        job = client.wait(job_id, on_event=on_event)
        bar.update(task, completed=job.progress.finished, total=job.progress.total, description=_progress_text(job))
    return job


def _report_end(job: JobOut) -> None:
    if job.status == "succeeded":
        best = "" if job.best is None else f"; best {job.metric or 'quality'} {job.best.quality:.4g} (trial " \
            f"{job.best.trial_number})"
        console.print(f"job {job.id} succeeded{best}; `mixq jobs show {job.id}` for the front")
        return
    console.print(f"job {job.id} {job.status}" + (f": {job.error}" if job.error else ""))
    raise typer.Exit(1)


@jobs_app.command("submit")
def submit(
    spec: Annotated[Path | None, typer.Argument(help="a JSON file with the job spec (JobCreate)")] = None,
    workload: Annotated[str | None, typer.Option(help="the workload (sets spec.workload)")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="KEY=VALUE of the spec; VALUE as JSON where it parses")] = [],  # noqa: B006
    idempotency_key: Annotated[str | None, typer.Option(help="the same key returns the same job")] = None,
    watch: Annotated[bool, typer.Option(help="follow the job until it ends")] = False,
    server: Server = DEFAULT_URL, token: Token = None,
) -> None:
    """Submit a job; prints its id (with --watch, follows it to the end)."""
    body: dict[str, Any] = {}
    if spec is not None:
        try:
            body = json.loads(spec.read_text())
        except OSError as exc:
            _fail(f"spec: cannot read {str(spec)!r}: {exc.strerror or exc}")
        except json.JSONDecodeError as exc:
            _fail(f"spec: {str(spec)!r} is not JSON: {exc}")
        if not isinstance(body, dict):
            _fail(f"spec: {str(spec)!r} must hold a JSON object")
    body.update(_parse_set(set_))
    if workload is not None:
        body["workload"] = workload
    if "workload" not in body:
        _fail("--workload (or a spec file with \"workload\") is required")
    with _client(server, token) as client:
        job = client.submit(body, idempotency_key=idempotency_key)
        console.print(f"job {job.id} {job.status}: {client.url}/jobs/{job.id}")
        if watch:
            _report_end(_watch(client, job.id))


@jobs_app.command("list")
def list_jobs(
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed or cancelled")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 20,
    server: Server = DEFAULT_URL, token: Token = None,
) -> None:
    """The newest jobs."""
    with _client(server, token) as client:
        page = client.list(status, limit=limit)
    # the front's size and its cheapest point within the quality-drop limit (what a user picks from)
    table = Table("id", "status", "workload", "progress", "front · cheapest", "created")
    for job in page.items:
        front, cheapest = job.front, job.front.cheapest if job.front else None
        best = "-" if front is None or front.size is None else str(front.size)
        if cheapest is not None:
            best += f" · #{cheapest.trial_number} {cheapest.quality:.4g}"
        table.add_row(str(job.id), job.status, str(job.spec.get("workload", "")),
                      f"{job.progress.finished}/{job.progress.total}" + (f" {job.progress.phase}"
                                                                         if job.progress.phase else ""),
                      best, job.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)
    console.print(f"{len(page.items)} of {page.total} jobs")


@jobs_app.command("show")
def show(job_id: JobIdArg, server: Server = DEFAULT_URL, token: Token = None) -> None:
    """A job's state and its Pareto front, with what each point can be downloaded as."""
    with _client(server, token) as client:
        job = client.get(job_id)
        front = client.front(job_id)
    console.print(f"job {job.id}: {_progress_text(job)}; workload {job.spec.get('workload')}"
                  + (f"; error: {job.error}" if job.error else ""))
    if job.fp32_quality is not None:
        console.print(f"fp32 {front.metric or 'quality'}: {job.fp32_quality:.4g}")
    if not front.points:
        console.print("no front yet")
        return
    costs = front.cost_objectives
    table = Table("trial", front.metric or "quality", "runs", *costs, "formats", "files")
    for t in sorted(front.points, key=lambda t: t.costs.get(costs[0], 0.0)):
        files = front.artefacts.get(str(t.number))
        have = ["qconfig"] + [w for w, ok in (("onnx", files and files.onnx), ("weights", files and files.weights))
                              if ok]
        quality = "" if t.quality is None else f"{t.quality:.4g}"
        if t.n_evaluations > 1 and t.quality_std is not None:
            quality += f" ± {t.quality_std:.2g}"
        table.add_row(str(t.number), quality, str(t.n_evaluations), *(f"{t.costs.get(c, 0.0):.4g}" for c in costs),
                      t.assignment_summary, " ".join(have))
    console.print(table)


@jobs_app.command("watch")
def watch_job(job_id: JobIdArg, server: Server = DEFAULT_URL, token: Token = None) -> None:
    """Follow a job with a progress bar until it ends (exit 1 if it failed or was cancelled)."""
    with _client(server, token) as client:
        job = _watch(client, job_id)
    _report_end(job)


@jobs_app.command("cancel")
def cancel(job_id: JobIdArg, server: Server = DEFAULT_URL, token: Token = None) -> None:
    """Cancel a queued or running job."""
    with _client(server, token) as client:
        job = client.cancel(job_id)
    console.print(f"job {job.id} {job.status}")


@jobs_app.command("download")
def download(
    job_id: JobIdArg,
    trial: Annotated[list[int], typer.Option(help="trial number (repeat); default: every front point")] = [],  # noqa: B006
    what: Annotated[list[str], typer.Option(help="qconfig, weights, onnx (repeat); default: all three")] = [],  # noqa: B006
    out: Annotated[Path, typer.Option(help="folder; files go to OUT/qconfig, OUT/weights, OUT/onnx")] = Path("."),
    server: Server = DEFAULT_URL, token: Token = None,
) -> None:
    """Save front points' qconfig, trained weights and QDQ ONNX, named as `mixq search` names them."""
    kinds: list[TrialFile] = []
    for w in what or ["qconfig", "weights", "onnx"]:
        if w not in ("qconfig", "weights", "onnx"):
            _fail(f"--what: {w!r} is not one of qconfig, weights, onnx")
        kinds.append(w)  # type: ignore[arg-type]
    if out.exists() and not out.is_dir():
        _fail(f"--out: {str(out)!r} is a file, not a folder")
    with _client(server, token) as client:
        numbers = list(trial) or [p.number for p in client.front(job_id).points]
        if not numbers:
            _fail(f"job {job_id} has no front points yet")
        for number in numbers:
            for kind in kinds:
                console.print(str(client.save(job_id, number, kind, out / kind)))
