"""Each front point's deployable files, made by the worker that finalizes a job: the trained weights (a
mixq checkpoint, with its fingerprint) and the QDQ ONNX model, exported from them and checked in
onnxruntime, both with the QDQ definition (graph optimizations off) and with onnxruntime's default
session options, as a deployment script opens the file.

The weights come from the search's ``weights_dir`` (:func:`trial_weights_dir`, on the worker's own
machine).  Every worker of a job, when its search returns, exports the front points whose weights it
holds; one that leaves while others still run stores those (``Worker._finalize``), and the last one
stores the rest with the job's final state, so a front point trained on another machine is not lost.
A front point whose weights no live worker held (its worker died) gets a row with ``error`` saying so
instead of bytes; nothing here fails the job.  The finalizer removes its machine's working copies; a
worker that left first leaves its machine's folder (``MIXQ_TRIAL_WEIGHTS_DIR``) to the operator.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

from search import TrialOutcome, Workload, trial_filename
from service.models import ArtefactKind
from service.settings import Settings
from service.store import ArtefactRecord

log = logging.getLogger("mixq.worker")


def trial_weights_dir(settings: Settings, job_id: int) -> Path:
    """Where the job's search saves each trial's trained weights (``SearchSpec.weights_dir``)."""
    root = settings.trial_weights_dir or settings.data_dir / "trial-weights"
    return root / f"job-{job_id}"


def remove_trial_weights(settings: Settings, job_id: int) -> None:
    """The job's working copies, once the front's weights are in the database."""
    folder = trial_weights_dir(settings, job_id)
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):  # the parent too once no job uses it (not if it holds anything)
        folder.parent.rmdir()


def _weights_file(weights_dir: Path, point: TrialOutcome) -> Path | None:
    """The point's weights; a cached repeat of an earlier trial's map has that trial's (its qconfig
    names the trial that trained it)."""
    numbers = [point.number]
    trained_by = ((point.qconfig or {}).get("provenance") or {}).get("trial_number")
    if isinstance(trained_by, int) and trained_by != point.number:
        numbers.append(trained_by)
    for number in numbers:
        path = weights_dir / trial_filename(number, point.assignment, "weights")
        if path.is_file():
            return path
    return None


def _point_artefacts(workload: Workload, point: TrialOutcome, weights_dir: Path) -> list[ArtefactRecord]:
    from search import (
        StaticShapesWarning,
        apply_qconfig,
        export_onnx,
        load_checkpoint,
        load_trained_weights,
        verify_onnx,
    )

    n = point.number
    path = _weights_file(weights_dir, point)
    if path is None or point.qconfig is None:
        why = (f"trial {n}: no qconfig (not trained by a worker)" if point.qconfig is None else
               f"trial {n}: its trained weights are not in {weights_dir} (trained by a worker on another "
               "machine that does not share MIXQ_TRIAL_WEIGHTS_DIR?)")
        return [ArtefactRecord(n, ArtefactKind.WEIGHTS, None, error=why),
                ArtefactRecord(n, ArtefactKind.ONNX, None, error=why)]
    data = path.read_bytes()
    checkpoint = load_checkpoint(path)
    weights = ArtefactRecord(n, ArtefactKind.WEIGHTS, data, fingerprint=checkpoint.fingerprint,
                             info={"trained_by_trial": int(path.name[5:9]) if path.name[5:9].isdigit() else n,
                                   "qat_steps": point.qat_steps})
    try:
        model = copy.deepcopy(workload.model)
        apply_qconfig(model, point.qconfig, workload.example_inputs)
        note = load_trained_weights(model, checkpoint)
        model.eval()
        with tempfile.TemporaryDirectory(prefix="mixq-export-") as tmp:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", StaticShapesWarning)
                onnx_path = export_onnx(model, workload.example_inputs, Path(tmp) / "model.onnx")
            diff = verify_onnx(model, workload.example_inputs, onnx_path)
            diff_default = verify_onnx(model, workload.example_inputs, onnx_path, optimized=True)
            onnx_bytes = onnx_path.read_bytes()
        import onnx

        props = {p.key: p.value for p in onnx.load_from_string(onnx_bytes).metadata_props}
        info = {
            "qat_steps": point.qat_steps,  # the rung the weights were trained at (a promotion replaces them)
            "max_abs_diff": diff, "max_abs_diff_default": diff_default, "opset": 21,
            "dynamic_axes": json.loads(props.get("mixq.dynamic_axes", "{}")),
            "warnings": [str(w.message) for w in caught if issubclass(w.category, StaticShapesWarning)]
            + ([note] if note else []),
        }
        return [weights, ArtefactRecord(n, ArtefactKind.ONNX, onnx_bytes, fingerprint=checkpoint.fingerprint,
                                        info=info)]
    except Exception as exc:  # noqa: BLE001 - one point's export failing leaves the others and the job
        log.warning("trial %d: ONNX export failed: %s", n, exc)
        return [weights, ArtefactRecord(n, ArtefactKind.ONNX, None, error=f"trial {n}: ONNX export failed: "
                                        f"{type(exc).__name__}: {exc}")]


def front_artefacts(workload: Workload, front: Sequence[TrialOutcome], weights_dir: Path) -> list[ArtefactRecord]:
    """Weights and ONNX of every front point (an error row where one cannot be made)."""
    records: list[ArtefactRecord] = []
    for point in front:
        try:
            records.extend(_point_artefacts(workload, point, weights_dir))
        except Exception as exc:  # noqa: BLE001 - e.g. an unreadable weights file: say so, keep the rest
            why = f"trial {point.number}: {type(exc).__name__}: {exc}"
            records.extend([ArtefactRecord(point.number, ArtefactKind.WEIGHTS, None, error=why),
                            ArtefactRecord(point.number, ArtefactKind.ONNX, None, error=why)])
    return records
