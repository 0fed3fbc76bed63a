"""Every error the search library raises, in one place.

Bad input raises a ``ValueError`` subclass whose message names the field at fault, so a caller (the CLI,
the service) can show it as it is; a trial that fails on its own raises ``NonFiniteLossError``.  All of
them are ``MixqError``\\ s::

    MixqError
    ├── SearchError (ValueError)        the search cannot start; the message names the field
    │   └── StorageError                the Optuna storage cannot be opened (callers retry on this type)
    ├── SearchSpaceError (ValueError)   spec, profile and model leave nothing valid to search (``loc``)
    ├── ProfileError (ValueError)       a target profile is missing, malformed, or forbids what was asked
    ├── QConfigError (ValueError)       a qconfig file is invalid or does not fit the model
    ├── QuantizationError (ValueError)  a precision map cannot be applied to this model
    ├── LayerDiscoveryError (ValueError) the model's layers cannot be listed unambiguously
    ├── CheckpointError (ValueError)    a checkpoint cannot be read or belongs to another model
    ├── ExportError (ValueError)        the model cannot be exported as it stands
    ├── OnnxImportError (ValueError)    an ONNX file cannot be imported; names the node, operator, field
    ├── WorkloadError (ValueError)      a workload cannot be loaded or used, or its own code fails
    │   └── WorkloadTypeError (TypeError) a workload field has the wrong type
    └── NonFiniteLossError (RuntimeError) a trial's QAT produced a NaN or infinite loss: not bad input
                                        but a failed trial (the search records it and goes on)

The service adds its own (``service.uploads.UploadError``, a ``ValueError``) for what an upload breaks.
Each class is also importable from the module that raises it.
"""

from __future__ import annotations

Loc = tuple[str | int, ...]


class MixqError(Exception):
    """The base of every error raised on purpose by ``search``."""


class SearchError(MixqError, ValueError):
    """The search cannot start (bad spec, unreachable storage...); the message names the field."""


class StorageError(SearchError):
    """The storage URL cannot be opened (the database is unreachable, or refuses us).  Callers that
    retry on a lost database catch this type rather than reading the message."""


def loc_text(loc: Loc) -> str:
    """``("pins", 2, "match")`` -> ``pins[2].match``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


class SearchSpaceError(MixqError, ValueError):
    """The spec, profile and model leave nothing valid to search.

    ``loc`` is the request field at fault as a path (``("pins", 2)``, ``("groups", 0)``, ``("formats",)``,
    ``("profile",)``), for a service's error location; the message begins with it (``pins[2]: ...``)."""

    def __init__(self, loc: Loc, msg: str) -> None:
        self.loc = loc
        super().__init__(f"{loc_text(loc)}: {msg}")


class ProfileError(MixqError, ValueError):
    """A target profile is missing, malformed, or forbids what was asked."""


class QConfigError(MixqError, ValueError):
    """A qconfig file is malformed, from a newer version, or does not fit the model."""


class QuantizationError(MixqError, ValueError):
    """A qconfig map cannot be applied to this model."""


class LayerDiscoveryError(MixqError, ValueError):
    """The model's layers cannot be listed unambiguously."""


class CheckpointError(MixqError, ValueError):
    """A checkpoint cannot be read, or does not belong to the model it is loaded into."""


class ExportError(MixqError, ValueError):
    """The model cannot be exported as it stands (not calibrated, unsupported layout, ...)."""


class OnnxImportError(MixqError, ValueError):
    """The ONNX model cannot be imported; the message names the node, operator or field."""


class WorkloadError(MixqError, ValueError):
    """A workload cannot be loaded or used: a bad name, option or field, or its own code fails."""


class WorkloadTypeError(WorkloadError, TypeError):
    """A workload field has the wrong type."""


class NonFiniteLossError(MixqError, RuntimeError):
    """QAT produced a NaN or infinite loss (a failed trial, not bad input)."""
