"""mixq's search library: the Optuna search over per-layer precision maps, its request and result,
workloads, target profiles, the qconfig JSON and the Pareto maths.

This is the public API (pinned by ``tests/search/test_public_api.py``).  The engine's parts (the
fake-quant modules in ``search.quant.qat``, the cost models in ``search.quant.cost``, the search space in
``search.study.space``, ONNX export in ``search.quant.export_onnx``) are imported from their modules.

Layout: ``search.quant`` is the quantization engine (formats, layers, QAT, qconfig, checkpoints, ONNX
import/export, cost models); ``search.study`` is the search over it (space, seeds, sensitivity,
objective, ledger, multi-fidelity, Pareto maths, storage, the runner); ``search.workloads`` holds the
built-in workloads and the training loop; ``search.spec`` the request and result types.

Errors: every bad input raises a ``ValueError`` subclass whose message names the field; the whole tree,
drawn, is in ``search.errors``.

It imports nothing from ``service`` (enforced by import-linter, see pyproject.toml).
"""

from importlib import metadata as _metadata

from search.profiles import ProfileError, TargetProfile, builtin_profiles, load_profile, parse_profile_text
from search.quant.formats import LayerFormat, parse_format
from search.quant.layers import LayerInfo, LayerKind, discover_layers
from search.quant.qconfig import QConfigError, QConfigFile, apply_qconfig, load_qconfig, save_qconfig
from search.results import (
    SearchLayer,
    SearchPhase,
    SearchProgress,
    SearchResult,
    TrialFailure,
    TrialOutcome,
    json_safe,
)
from search.spec import CostObjective, Pin, SamplerName, SearchError, SearchSpec
from search.study.pareto import non_dominated, objective_vector, pareto_front, pareto_numbers
from search.study.runner import SearchObserver, run_search
from search.study.storage import StorageError
from search.threads import set_torch_threads
from search.train import run_trial
from search.workloads import BUILTIN_WORKLOADS, Workload, check_workload_options, load_workload

__version__ = _metadata.version("mixq")

__all__ = [
    "BUILTIN_WORKLOADS",
    "CostObjective",
    "LayerFormat",
    "LayerInfo",
    "LayerKind",
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
    "SearchResult",
    "SearchSpec",
    "StorageError",
    "TargetProfile",
    "TrialFailure",
    "TrialOutcome",
    "Workload",
    "__version__",
    "apply_qconfig",
    "builtin_profiles",
    "check_workload_options",
    "discover_layers",
    "json_safe",
    "load_profile",
    "load_qconfig",
    "load_workload",
    "non_dominated",
    "objective_vector",
    "pareto_front",
    "pareto_numbers",
    "parse_format",
    "parse_profile_text",
    "run_search",
    "run_trial",
    "save_qconfig",
    "set_torch_threads",
]
