"""Built-in workloads and user entry points."""

from __future__ import annotations

import importlib
import inspect
import re
import typing
from collections.abc import Callable
from typing import Any

import pydantic

__all__ = [
    "BUILTIN_WORKLOADS", "Architecture", "Workload", "WorkloadError", "builtin_layer_graph", "check_workload_options",
    "load_workload", "pretrain_steps_of", "resolve_factory",
]

import torch

from search.quant.layers import LayerDiscoveryError, LayerGraph, discover_layers
from search.workloads.base import Architecture, Workload, WorkloadError, call_user_code

BUILTIN_WORKLOADS = ("digits", "denoise", "denoise-deep")
_ENTRY_POINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _builtin_module(name: str) -> Any:
    # module names cannot hold "-": denoise-deep lives in denoise_deep.py
    return importlib.import_module(f"search.workloads.{name.replace('-', '_')}")


def resolve_factory(name: str) -> Callable[..., Any]:
    """The factory behind a built-in name or an entry point ``package.module:factory``."""
    if name in BUILTIN_WORKLOADS:
        return _builtin_module(name).make_workload
    if _ENTRY_POINT.match(name):
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise WorkloadError(f"workload: cannot import {module_name!r}: {exc}") from None
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise WorkloadError(f"workload: {module_name!r} has no callable {attr!r}")
        return factory
    raise WorkloadError(
        f"workload: unknown workload {name!r}; built-in: {', '.join(BUILTIN_WORKLOADS)}, "
        "or an entry point 'package.module:factory'"
    )


def check_workload_options(name: str, options: dict[str, Any] | None = None) -> None:
    """Raise :class:`WorkloadError` naming ``workload_options`` if the factory does not take them
    (nothing is built or trained)."""
    factory = resolve_factory(name)
    try:  # a TypeError raised *inside* the factory later is its own, not the options'
        inspect.signature(factory).bind(**dict(options or {}))
    except TypeError as exc:
        raise WorkloadError(f"workload_options: {exc}") from None
    except ValueError:  # no introspectable signature: the call itself decides
        return
    _check_option_types(factory, options or {})
    if name in BUILTIN_WORKLOADS:
        _check_option_bounds(name, factory, options or {})


# activations one training batch of a DnCNN keeps (batch x patch^2 x width x depth floats, 8 GiB): the largest
# architecture (depth 200, width 1024) at the default batch and patch fits, 256 patches of 256 px of it do not
MAX_BATCH_ACTIVATIONS = 2**31


def _check_option_bounds(name: str, factory: Callable[..., Any], options: dict[str, Any]) -> None:
    """Every option of a built-in within its module's ``OPTION_BOUNDS``, and a DnCNN's training batch
    within :data:`MAX_BATCH_ACTIVATIONS`: a request cannot make a worker build, allocate or train without end."""
    bounds: dict[str, tuple[int, int]] = _builtin_module(name).OPTION_BOUNDS
    for key, value in options.items():
        if key in bounds and not bounds[key][0] <= value <= bounds[key][1]:
            lo, hi = bounds[key]
            raise WorkloadError(f"workload_options.{key}: {lo}..{hi} for workload {name!r}, got {value!r}")
    if "patch_size" in bounds:
        given = {k: p.default for k, p in inspect.signature(factory).parameters.items()} | options
        elements = given["batch_size"] * given["patch_size"] ** 2 * given["width"] * given["depth"]
        if elements > MAX_BATCH_ACTIVATIONS:
            raise WorkloadError(
                f"workload_options.batch_size: batch_size x patch_size^2 x width x depth = {given['batch_size']} x "
                f"{given['patch_size']}^2 x {given['width']} x {given['depth']} = {elements} activations per training "
                f"batch, above the limit of {MAX_BATCH_ACTIVATIONS}; lower batch_size, patch_size, width or depth"
            )


def _check_option_types(factory: Callable[..., Any], options: dict[str, Any]) -> None:
    """Each option against the factory's annotation of that parameter (strict: ``"8"`` is not an
    int), so a wrong type is named here rather than failing deep inside the factory."""
    try:
        hints = typing.get_type_hints(factory)
    except (NameError, TypeError, AttributeError):  # unresolvable annotations: the factory call decides
        return
    for key, value in options.items():
        if key not in hints:
            continue
        try:
            pydantic.TypeAdapter(hints[key]).validate_python(value, strict=True)
        except pydantic.ValidationError:
            want = getattr(hints[key], "__name__", None) or str(hints[key])
            raise WorkloadError(
                f"workload_options.{key}: expected {want}, got {value!r} ({type(value).__name__})"
            ) from None
        except pydantic.PydanticSchemaGenerationError:  # an annotation pydantic cannot check
            continue


def pretrain_steps_of(name: str, options: dict[str, Any] | None = None) -> int:
    """The pretraining steps a built-in workload with ``options`` runs (its default where not given); 0 for
    anything else (an upload is pretrained; an entry point's factory is not introspected here)."""
    if name not in BUILTIN_WORKLOADS:
        return 0
    given = (options or {}).get("pretrain_steps")
    if isinstance(given, int):
        return given
    default = inspect.signature(resolve_factory(name)).parameters["pretrain_steps"].default
    return int(default)


def builtin_layer_graph(name: str, options: dict[str, Any] | None = None) -> LayerGraph:
    """The layers a search of built-in workload ``name`` with ``options`` would see (execution order, kinds,
    shapes), from its architecture alone: built and run once on the meta device, so no weight is allocated
    or initialised, nothing is trained and no data is read (milliseconds).  Raises :class:`WorkloadError`
    naming ``workload_options`` for options the workload refuses.

    Only built-ins: an entry point's layers are known by importing and calling its code, which a caller
    that validates untrusted requests must not do."""
    if name not in BUILTIN_WORKLOADS:
        raise WorkloadError(f"workload: {name!r} is not built-in ({', '.join(BUILTIN_WORKLOADS)})")
    options = dict(options or {})
    check_workload_options(name, options)
    build = _builtin_module(name).make_architecture
    accepted = inspect.signature(build).parameters
    with torch.device("meta"):  # shapes flow through the forward; no memory is allocated for tensors
        architecture = build(**{k: v for k, v in options.items() if k in accepted})
        try:
            return discover_layers(architecture.model, architecture.example_inputs)
        except LayerDiscoveryError as exc:
            raise WorkloadError(f"workload_options: {exc}") from None


def load_workload(name: str, options: dict[str, Any] | None = None) -> Workload:
    """A built-in workload by name, or a user one by entry point ``package.module:factory``."""
    options = dict(options or {})
    check_workload_options(name, options)
    workload = call_user_code(f"workload {name!r}", resolve_factory(name), **options)
    if not isinstance(workload, Workload):
        raise WorkloadError(f"workload: {name!r} returned {type(workload).__name__}, expected search.Workload")
    workload.check_example_inputs()
    return workload
