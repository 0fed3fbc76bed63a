"""Built-in workloads and user entry points."""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

from search.workloads.base import Workload

BUILTIN_WORKLOADS = ("digits", "denoise")
_ENTRY_POINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class WorkloadError(ValueError):
    """A workload name or entry point cannot be loaded."""


def load_workload(name: str, options: dict[str, Any] | None = None) -> Workload:
    """A built-in workload by name, or a user one by entry point ``package.module:factory``."""
    options = dict(options or {})
    if name in BUILTIN_WORKLOADS:
        module = importlib.import_module(f"search.workloads.{name}")
        factory = module.make_workload
    elif _ENTRY_POINT.match(name):
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise WorkloadError(f"workload: cannot import {module_name!r}: {exc}") from None
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise WorkloadError(f"workload: {module_name!r} has no callable {attr!r}")
    else:
        raise WorkloadError(
            f"workload: unknown workload {name!r}; built-in: {', '.join(BUILTIN_WORKLOADS)}, "
            "or an entry point 'package.module:factory'"
        )
    try:  # check the options against the signature; a TypeError raised *inside* the factory is its own
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise WorkloadError(f"workload_options: {exc}") from None
    except ValueError:  # no introspectable signature: the call itself decides
        pass
    workload = factory(**options)
    if not isinstance(workload, Workload):
        raise WorkloadError(f"workload: {name!r} returned {type(workload).__name__}, expected search.Workload")
    return workload


__all__ = ["BUILTIN_WORKLOADS", "Workload", "WorkloadError", "load_workload"]
