"""mixq's search library: the Optuna search over per-layer precision maps, its request and result,
workloads, target profiles, the qconfig JSON and the Pareto maths.

This is the public API (pinned by ``tests/search/test_public_api.py``).  The engine's parts (the
fake-quant modules in ``search.quant.qat``, the cost models in ``search.quant.cost``, the search space in
``search.study.space``, ONNX export in ``search.quant.export_onnx``) are imported from their modules.

Layout: ``search.quant`` is the quantization engine (formats, layers, QAT, qconfig, checkpoints, ONNX
import/export, cost models); ``search.study`` is the search over it (space, seeds, sensitivity,
objective, ledger, multi-fidelity, Pareto maths, storage, the runner); ``search.workloads`` holds the
built-in workloads and the training loop; ``search.spec`` the request and result types.

The service imports ``search`` by these names only (an import-linter contract in pyproject.toml).

Errors: every bad input raises a ``ValueError`` subclass whose message names the field; the whole tree,
drawn, is in ``search.errors``.

It imports nothing from ``service`` (enforced by import-linter, see pyproject.toml).
"""

from importlib import metadata as _metadata
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from search.errors import LayerDiscoveryError, OnnxImportError, SearchSpaceError, WorkloadError
from search.profiles import ProfileError, TargetProfile, builtin_profiles, load_profile, parse_profile_text
from search.quant.formats import LayerFormat, parse_format, summarize_assignment, trial_filename
from search.quant.layers import LayerGraph, LayerInfo, LayerKind, discover_layers
from search.quant.qconfig import QConfigError, QConfigFile, apply_qconfig, load_qconfig, save_qconfig
from search.quant.qconfig import json_schema as qconfig_json_schema
from search.results import (
    SearchLayer,
    SearchPhase,
    SearchProgress,
    SearchResult,
    TrialFailure,
    TrialOutcome,
    json_safe,
)
from search.spec import CostObjective, Pin, SamplerName, SearchError, SearchRequest, SearchSpec
from search.study.pareto import non_dominated, objective_vector, pareto_front, pareto_numbers
from search.study.runner import SearchObserver, run_search
from search.study.space import build_space
from search.study.storage import StorageError
from search.threads import set_torch_threads
from search.train import TrialBatch, run_trial, run_trials
from search.workloads import (
    BUILTIN_WORKLOADS,
    Workload,
    builtin_layer_graph,
    check_workload_options,
    load_workload,
    pretrain_steps_of,
)

if _TYPE_CHECKING:
    from search.quant.checkpoint import load_checkpoint, load_trained_weights
    from search.quant.export_onnx import StaticShapesWarning, export_onnx, verify_onnx
    from search.quant.onnx_import import OnnxModule, load_onnx_model

# ONNX import/export and checkpoints load onnx/onnxruntime: imported on first use (PEP 562), so that
# ``import search`` stays light for the CLI and the API process
_LAZY = {
    "load_checkpoint": "search.quant.checkpoint", "load_trained_weights": "search.quant.checkpoint",
    "StaticShapesWarning": "search.quant.export_onnx", "export_onnx": "search.quant.export_onnx",
    "verify_onnx": "search.quant.export_onnx",
    "OnnxModule": "search.quant.onnx_import", "load_onnx_model": "search.quant.onnx_import",
}


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'search' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__version__ = _metadata.version("mixq")

__all__ = [
    "BUILTIN_WORKLOADS",
    "CostObjective",
    "LayerDiscoveryError",
    "LayerFormat",
    "LayerGraph",
    "LayerInfo",
    "LayerKind",
    "OnnxImportError",
    "OnnxModule",
    "Pin",
    "ProfileError",
    "QConfigError",
    "QConfigFile",
    "SamplerName",
    "SearchError",
    "SearchLayer",
    "SearchObserver",
    "SearchPhase",
    "SearchProgress",
    "SearchRequest",
    "SearchResult",
    "SearchSpaceError",
    "SearchSpec",
    "StaticShapesWarning",
    "StorageError",
    "TargetProfile",
    "TrialBatch",
    "TrialFailure",
    "TrialOutcome",
    "Workload",
    "WorkloadError",
    "__version__",
    "apply_qconfig",
    "build_space",
    "builtin_layer_graph",
    "builtin_profiles",
    "check_workload_options",
    "discover_layers",
    "export_onnx",
    "json_safe",
    "load_checkpoint",
    "load_onnx_model",
    "load_profile",
    "load_qconfig",
    "load_trained_weights",
    "load_workload",
    "non_dominated",
    "objective_vector",
    "pareto_front",
    "pareto_numbers",
    "parse_format",
    "parse_profile_text",
    "pretrain_steps_of",
    "qconfig_json_schema",
    "run_search",
    "run_trial",
    "run_trials",
    "save_qconfig",
    "set_torch_threads",
    "summarize_assignment",
    "trial_filename",
    "verify_onnx",
]
