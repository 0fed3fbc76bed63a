"""mixq's search library: the Optuna search over per-layer precision maps, its request and result,
workloads, target profiles, the qconfig JSON and the Pareto maths.

This is the public API (pinned by ``tests/search/test_public_api.py``).  The engine's parts (the
fake-quant modules in ``search.qat``, the cost models in ``search.cost``, the search space in
``search.space``, ONNX export in ``search.export_onnx``) are imported from their modules.

Errors: every bad input raises a ``ValueError`` subclass whose message names the field::

    ValueError
    ├── SearchError        the search cannot start
    │   └── StorageError   the Optuna storage cannot be opened
    ├── ProfileError       a target profile is invalid
    ├── QConfigError       a qconfig file is invalid or does not fit the model
    └── WorkloadError      a workload cannot be loaded (in ``search.workloads``)

It imports nothing from ``service`` (enforced by import-linter, see pyproject.toml).
"""

from importlib import metadata as _metadata

from search.formats import LayerFormat, parse_format
from search.layers import LayerInfo, LayerKind, discover_layers
from search.pareto import non_dominated, objective_vector, pareto_front, pareto_numbers
from search.profiles import ProfileError, TargetProfile, builtin_profiles, load_profile, parse_profile_text
from search.qconfig import QConfigError, QConfigFile, apply_qconfig, load_qconfig, save_qconfig
from search.runner import run_search
from search.spec import (
    CostObjective,
    Pin,
    SamplerName,
    SearchError,
    SearchLayer,
    SearchPhase,
    SearchProgress,
    SearchResult,
    SearchSpec,
    TrialFailure,
    TrialOutcome,
)
from search.storage import StorageError
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
