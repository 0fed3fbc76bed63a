"""The ``/pareto`` response of a job, kept serialized per API process and brought up to date
incrementally: a running job gains a trial every second or so, and rebuilding the JSON of 10,000
trials on each would cost hundreds of milliseconds.  New trial rows (by row id) are serialized once and
appended; the front is recomputed from cached objective vectors (``search.study.pareto``).  Anything else
that changes (the job finishes, the search reports its own front, re-evaluated qualities) rebuilds the
view from the database.
"""

from __future__ import annotations

import bisect
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from search import objective_vector, pareto_numbers
from service import store
from service.models import ArtefactKind, Job, JobStatus, Trial, TrialState
from service.schemas import ArtefactsOut, FloatLayerOut, LayerOut, TrialOut, split_layers


def trial_fragment(trial: Trial) -> bytes:
    """The Trial JSON without its closing ``,"on_front":...}``, which depends on the whole front."""
    return TrialOut.model_validate(trial).model_dump_json(exclude={"on_front"}).encode()[:-1]


@dataclass
class _View:
    version: tuple[Any, ...]
    incremental_key: tuple[Any, ...]
    last_row_id: int = 0
    numbers: list[int] = field(default_factory=list)  # sorted
    fragments: dict[int, bytes] = field(default_factory=dict)
    vectors: dict[int, tuple[float, ...]] = field(default_factory=dict)  # feasible trials with a quality
    final_front: set[int] = field(default_factory=set)
    front: set[int] = field(default_factory=set)  # what the body reports
    artefacts: dict[str, Any] = field(default_factory=dict)  # number -> ArtefactsOut JSON (succeeded jobs)
    body: bytes = b""


class ParetoViews:
    """Per-process cache of serialized Pareto responses, one per job."""

    def __init__(self, max_jobs: int = 64) -> None:
        self._views: dict[int, _View] = {}
        self._lock = threading.Lock()
        self.max_jobs = max_jobs

    def front(self, session: Session, job: Job) -> set[int]:
        """Trial numbers on the front as ``/pareto`` reports it (so ``/trials`` agrees with it)."""
        self.response(session, job)
        with self._lock:
            return set(self._views[job.id].front)

    def response(self, session: Session, job: Job) -> bytes:
        version = (job.updated_at, job.status, job.front_final, job.metric, job.fp32_quality)
        # what must stay equal for new rows to be appended rather than everything rebuilt
        incremental_key = (job.status, job.front_final, job.metric, job.higher_is_better, job.fp32_quality)
        with self._lock:
            view = self._views.get(job.id)
        if view is not None and view.version == version:
            return view.body
        if view is None or view.incremental_key != incremental_key or job.status != JobStatus.RUNNING:
            view = _View(version, incremental_key)
            rows: list[Trial] = list(store.complete_trials(session, job.id))
        else:
            view = _View(version, incremental_key, view.last_row_id, list(view.numbers), dict(view.fragments),
                         dict(view.vectors), set(view.final_front))
            rows = [t for t in store.trial_numbers_after(session, job.id, view.last_row_id)
                    if t.state == TrialState.COMPLETE]
        self._add(view, job, rows)
        if job.status == JobStatus.SUCCEEDED:
            view.artefacts = _artefacts(session, job.id)
        view.body = self._render(view, job)
        with self._lock:
            if len(self._views) >= self.max_jobs and job.id not in self._views:
                self._views.pop(next(iter(self._views)))
            self._views[job.id] = view
        return view.body

    @staticmethod
    def _add(view: _View, job: Job, rows: list[Trial]) -> None:
        objectives = [str(c) for c in job.spec.get("cost_objectives", ["bitops"])]
        hib = job.higher_is_better is not False
        for t in rows:
            view.last_row_id = max(view.last_row_id, t.id)
            if t.number not in view.fragments:
                bisect.insort(view.numbers, t.number)
            view.fragments[t.number] = trial_fragment(t)
            if t.feasible and t.quality is not None:
                view.vectors[t.number] = objective_vector(
                    t.quality, [float(t.costs.get(c, 0.0)) for c in objectives], hib
                )
            else:
                view.vectors.pop(t.number, None)
            if t.on_front:
                view.final_front.add(t.number)

    @staticmethod
    def _render(view: _View, job: Job) -> bytes:
        front = view.final_front if job.front_final else pareto_numbers(list(view.vectors.items()))
        view.front = front
        pinned = job.pinned or {}
        rows, float_rows = split_layers(job.layers or [])
        layers = [
            LayerOut(**{**layer, "pinned": layer.get("fqn") in pinned, "pin_reason": pinned.get(layer.get("fqn", ""))})
            .model_dump(mode="json")
            for layer in rows
        ]
        float_layers = [FloatLayerOut(**row).model_dump(mode="json") for row in float_rows]
        head = json.dumps({
            "job_id": job.id, "metric": job.metric, "higher_is_better": job.higher_is_better,
            "fp32_quality": job.fp32_quality,
            "cost_objectives": [str(c) for c in job.spec.get("cost_objectives", ["bitops"])], "layers": layers,
            "float_layers": float_layers, "artefacts": view.artefacts,
        })[:-1].encode()
        on, off = b',"on_front":true}', b',"on_front":false}'
        points = b",".join(view.fragments[n] + on for n in view.numbers if n in front)
        trials = b",".join(view.fragments[n] + (on if n in front else off) for n in view.numbers)
        return head + b',"points":[' + points + b'],"trials":[' + trials + b"]}"


def _artefacts(session: Session, job_id: int) -> dict[str, Any]:
    rows = store.artefacts_of_job(session, job_id)
    out: dict[str, Any] = {}
    for number in sorted({n for n, _ in rows}):
        onnx_row, weights_row = rows.get((number, ArtefactKind.ONNX)), rows.get((number, ArtefactKind.WEIGHTS))
        errors = [r.error for r in (weights_row, onnx_row) if r is not None and r.error]
        out[str(number)] = ArtefactsOut(
            onnx=onnx_row is not None and onnx_row.error is None,
            weights=weights_row is not None and weights_row.error is None,
            fingerprint=weights_row.fingerprint if weights_row is not None else None,
            max_abs_diff_default=(onnx_row.info or {}).get("max_abs_diff_default") if onnx_row else None,
            error=errors[0] if errors else None,
        ).model_dump(mode="json")
    return out
