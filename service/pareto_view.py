"""The ``/pareto`` response of a job, kept serialized per API process and brought up to date
incrementally: a running job gains a trial every second or so, and rebuilding the JSON of 10,000
trials on each would cost hundreds of milliseconds.  New trial rows (by row id) are serialized once and
appended; the front is read from the database, where ``store.record_trial`` keeps it as each trial is
recorded (``mixq_trials.live_front``; the search's own front, ``on_front``, once it is final), and the list
of trials is joined again only when rows came or the front moved.  Anything else that changes (the job
finishes, the search reports its own front) rebuilds the view from the database.
"""

from __future__ import annotations

import bisect
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from service import store
from service.models import ArtefactKind, Job, JobStatus, TrialState
from service.schemas import ArtefactsOut, FloatLayerOut, LayerOut, TrialOut, split_layers

ON, OFF = b',"on_front":true}', b',"on_front":false}'


def trial_fragment(trial: Any) -> bytes:
    """The Trial JSON without its closing ``,"on_front":...}``, which depends on the whole front."""
    return TrialOut.model_validate(trial).model_dump_json(exclude={"on_front"}).encode()[:-1]


@dataclass
class _View:
    version: tuple[Any, ...]
    incremental_key: tuple[Any, ...]
    last_row_id: int = 0
    numbers: list[int] = field(default_factory=list)  # sorted
    items: list[bytes] = field(default_factory=list)  # each number's Trial JSON with its on_front, in that order
    fragments: dict[int, bytes] = field(default_factory=dict)
    final_front: set[int] = field(default_factory=set)  # the search's own (on_front)
    front: set[int] = field(default_factory=set)  # what the body reports
    artefacts: dict[str, Any] = field(default_factory=dict)  # number -> ArtefactsOut JSON (succeeded jobs)
    lists: bytes = b""  # '"points":[...],"trials":[...]}' for ``items``
    body: bytes = b""


class ParetoViews:
    """Per-process cache of serialized Pareto responses, one per job."""

    def __init__(self, max_jobs: int = 64) -> None:
        self._views: dict[int, _View] = {}
        self._lock = threading.Lock()
        self.max_jobs = max_jobs

    def front(self, session: Session, job: Job) -> set[int]:
        """Trial numbers on the front as ``/pareto`` reports it."""
        self.response(session, job)
        with self._lock:
            return set(self._views[job.id].front)

    def response(self, session: Session, job: Job) -> bytes:
        version = (job.updated_at, job.status, job.front_final, job.metric, job.fp32_quality)
        # what must stay equal for new rows to be appended rather than everything rebuilt
        incremental_key = (job.status, job.front_final, job.metric, job.higher_is_better, job.fp32_quality)
        with self._lock:
            old = self._views.get(job.id)
        if old is not None and old.version == version:
            return old.body
        if old is None or old.incremental_key != incremental_key or job.status != JobStatus.RUNNING:
            view = _View(version, incremental_key)
            rows = list(store.complete_trials(session, job.id))
        else:  # copies: the old view may still be serving another request
            view = _View(version, incremental_key, old.last_row_id, list(old.numbers), list(old.items),
                         dict(old.fragments), set(old.final_front), set(old.front), lists=old.lists)
            rows = [t for t in store.trial_numbers_after(session, job.id, view.last_row_id)
                    if t.state == TrialState.COMPLETE]
        changed = self._add(view, rows)
        front = set(view.final_front) if job.front_final else store.live_front_numbers(session, job.id)
        front &= view.fragments.keys()  # a trial recorded after the rows were read comes with the next version
        changed |= front ^ view.front  # entered or left the front: its item changes
        view.front = front
        for number in changed:
            at = bisect.bisect_left(view.numbers, number)
            view.items[at] = view.fragments[number] + (ON if number in front else OFF)
        if changed or not view.lists:
            view.lists = self._lists(view)
        if job.status == JobStatus.SUCCEEDED:
            view.artefacts = _artefacts(session, job.id)
        view.body = self._head(view, job) + view.lists
        with self._lock:
            if len(self._views) >= self.max_jobs and job.id not in self._views:
                self._views.pop(next(iter(self._views)))
            self._views[job.id] = view
        return view.body

    @staticmethod
    def _add(view: _View, rows: list[Any]) -> set[int]:
        """New or changed rows into ``view``; returns their numbers (their items are filled by the caller)."""
        changed: set[int] = set()
        for t in rows:
            view.last_row_id = max(view.last_row_id, t.id)
            if t.number not in view.fragments:
                at = bisect.bisect_left(view.numbers, t.number)
                view.numbers.insert(at, t.number)
                view.items.insert(at, b"")
            view.fragments[t.number] = trial_fragment(t)
            changed.add(t.number)
            if t.on_front:
                view.final_front.add(t.number)
        return changed

    @staticmethod
    def _lists(view: _View) -> bytes:
        points = b",".join(view.items[bisect.bisect_left(view.numbers, n)] for n in sorted(view.front))
        return b'"points":[' + points + b'],"trials":[' + b",".join(view.items) + b"]}"

    @staticmethod
    def _head(view: _View, job: Job) -> bytes:
        pinned = job.pinned or {}
        rows, float_rows = split_layers(job.layers or [])
        layers = [
            LayerOut(**{**layer, "pinned": layer.get("fqn") in pinned, "pin_reason": pinned.get(layer.get("fqn", ""))})
            .model_dump(mode="json")
            for layer in rows
        ]
        float_layers = [FloatLayerOut(**row).model_dump(mode="json") for row in float_rows]
        return json.dumps({
            "job_id": job.id, "metric": job.metric, "higher_is_better": job.higher_is_better,
            "fp32_quality": job.fp32_quality,
            "cost_objectives": [str(c) for c in job.spec.get("cost_objectives", ["bitops"])], "layers": layers,
            "float_layers": float_layers, "artefacts": view.artefacts,
        })[:-1].encode() + b","


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


class TrialPages:
    """Per-process cache of serialized ``/trials`` pages, keyed by the job's ``updated_at`` (every write of
    its trials moves it: ``store.record_trial``, ``record_failed_trial``, ``mark_front``, ``set_job_info``,
    the status transitions) and the page's query.  The dashboard asks for the same pages again and again
    between two trials; each is read and serialized once per job version."""

    def __init__(self, max_pages: int = 256) -> None:
        self._pages: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.max_pages = max_pages

    def get(self, key: tuple[Any, ...]) -> bytes | None:
        with self._lock:
            body = self._pages.get(key)
            if body is not None:
                self._pages.move_to_end(key)
            return body

    def put(self, key: tuple[Any, ...], body: bytes) -> None:
        with self._lock:
            self._pages[key] = body
            self._pages.move_to_end(key)
            while len(self._pages) > self.max_pages:
                self._pages.popitem(last=False)
