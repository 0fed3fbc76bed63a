"""The public API of ``search``: what the service, the CLI, the benchmarks and users import from the
package.  Adding or removing a name is a decision: change the pinned list here in the same commit."""

import types

import search

PUBLIC_API = [
    # the request, the run, the result
    "SearchSpec", "Pin", "CostObjective", "SamplerName", "run_search", "SearchProgress", "SearchPhase", "SearchResult",
    "SearchLayer", "TrialOutcome", "TrialFailure", "SearchError", "StorageError", "SearchObserver",
    # Pareto fronts
    "pareto_front", "pareto_numbers", "non_dominated", "objective_vector", "json_safe",
    # workloads and one trial
    "Workload", "BUILTIN_WORKLOADS", "load_workload", "check_workload_options", "run_trial",
    "run_trials", "TrialBatch",
    "set_torch_threads",
    # target profiles
    "TargetProfile", "ProfileError", "builtin_profiles", "load_profile", "parse_profile_text",
    # formats and layers
    "LayerFormat", "parse_format", "LayerInfo", "LayerKind", "discover_layers",
    # the qconfig file
    "QConfigFile", "QConfigError", "load_qconfig", "save_qconfig", "apply_qconfig", "qconfig_json_schema",
    # what the service needs: the request it extends, submission checks, uploads, the front's files
    "SearchRequest", "SearchSpaceError", "WorkloadError", "LayerDiscoveryError", "OnnxImportError", "LayerGraph",
    "build_space", "builtin_layer_graph", "pretrain_steps_of", "summarize_assignment", "trial_filename",
    "OnnxModule", "load_onnx_model", "export_onnx", "verify_onnx", "StaticShapesWarning", "load_checkpoint",
    "load_trained_weights",
    "__version__",
]


def test_all_is_the_pinned_public_api() -> None:
    assert sorted(search.__all__) == sorted(PUBLIC_API)
    assert len(set(search.__all__)) == len(search.__all__)


def test_every_exported_name_exists() -> None:
    missing = [name for name in search.__all__ if not hasattr(search, name)]
    assert not missing


def test_no_public_name_outside_all() -> None:
    """Anything else the package namespace holds is a submodule (``search.quant.qat``...) or private."""
    extra = [
        name for name, value in vars(search).items()
        if not name.startswith("_") and name not in search.__all__ and not isinstance(value, types.ModuleType)
    ]
    assert not extra, extra


def test_errors_are_value_errors_naming_their_kind() -> None:
    assert issubclass(search.StorageError, search.SearchError)
    for error in (search.SearchError, search.ProfileError, search.QConfigError):
        assert issubclass(error, ValueError)


def test_version_comes_from_the_package_metadata() -> None:
    from importlib.metadata import version

    assert search.__version__ == version("mixq")
