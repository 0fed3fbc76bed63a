"""Built-in workloads and user entry points."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any

from search.workloads.base import Workload

__all__ = [
    "BUILTIN_WORKLOADS", "Workload", "WorkloadError", "check_workload_options", "load_workload", "resolve_factory",
]

BUILTIN_WORKLOADS = ("digits", "denoise")
_ENTRY_POINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class WorkloadError(ValueError):
    """A workload name or entry point cannot be loaded."""


def resolve_factory(name: str) -> Callable[..., Any]:
    """The factory behind a built-in name or an entry point ``package.module:factory``."""
    if name in BUILTIN_WORKLOADS:
        return importlib.import_module(f"search.workloads.{name}").make_workload
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
        pass


def load_workload(name: str, options: dict[str, Any] | None = None) -> Workload:
    """A built-in workload by name, or a user one by entry point ``package.module:factory``."""
    options = dict(options or {})
    check_workload_options(name, options)
    workload = resolve_factory(name)(**options)
    if not isinstance(workload, Workload):
        raise WorkloadError(f"workload: {name!r} returned {type(workload).__name__}, expected search.Workload")
    return workload
