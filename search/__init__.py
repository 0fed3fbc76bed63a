"""mixq's search library: precision formats, layer discovery, the fake-quant QAT engine, cost
models and target profiles, built-in workloads, the qconfig JSON, ONNX export and the Optuna search.

It imports nothing from ``service`` (enforced by import-linter, see pyproject.toml).
"""

from search.cost import cost_model, model_cost, model_costs
from search.formats import LayerFormat, TensorFormat, parse_format
from search.layers import LayerDiscoveryError, LayerGraph, LayerInfo, LayerKind, discover_layers
from search.profiles import ProfileError, TargetProfile, builtin_profiles, load_profile, parse_profile_text
from search.qat import QuantizationError, RangeMethod, calibrate, dequantize_model, fold_batchnorm, quantize_model
from search.qconfig import (
    QConfigError,
    QConfigFile,
    apply_qconfig,
    build_qconfig,
    json_schema,
    load_qconfig,
    save_qconfig,
)
from search.runner import SearchError, pareto_front, run_search
from search.space import SearchSpace, SearchSpaceError, build_space
from search.spec import (
    CostObjective,
    Pin,
    SamplerName,
    SearchPhase,
    SearchProgress,
    SearchResult,
    SearchSpec,
    TrialOutcome,
)
from search.threads import set_torch_threads
from search.train import NonFiniteLossError, TrialRun, fp32_quality, run_trial
from search.workloads import BUILTIN_WORKLOADS, Workload, WorkloadError, check_workload_options, load_workload

__version__ = "0.1.0"

__all__ = [
    "BUILTIN_WORKLOADS",
    "CostObjective",
    "LayerDiscoveryError",
    "LayerFormat",
    "LayerGraph",
    "LayerInfo",
    "LayerKind",
    "NonFiniteLossError",
    "Pin",
    "ProfileError",
    "QConfigError",
    "QConfigFile",
    "QuantizationError",
    "RangeMethod",
    "SamplerName",
    "SearchError",
    "SearchPhase",
    "SearchProgress",
    "SearchResult",
    "SearchSpace",
    "SearchSpaceError",
    "SearchSpec",
    "TargetProfile",
    "TensorFormat",
    "TrialOutcome",
    "TrialRun",
    "Workload",
    "WorkloadError",
    "__version__",
    "apply_qconfig",
    "build_qconfig",
    "builtin_profiles",
    "calibrate",
    "check_workload_options",
    "cost_model",
    "dequantize_model",
    "discover_layers",
    "fold_batchnorm",
    "fp32_quality",
    "json_schema",
    "load_profile",
    "load_qconfig",
    "load_workload",
    "model_cost",
    "model_costs",
    "pareto_front",
    "parse_format",
    "parse_profile_text",
    "quantize_model",
    "run_search",
    "run_trial",
    "build_space",
    "save_qconfig",
    "set_torch_threads",
]
