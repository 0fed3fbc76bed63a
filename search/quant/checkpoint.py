"""Checkpoint files: a model's state dict plus what it belongs to.

A mixq checkpoint is what ``torch.save`` writes for the dict ``{"mixq_checkpoint": 1, "metadata":
{str: str}, "state_dict": {str: Tensor}}``, so ``torch.load(path, weights_only=True)`` reads it
(nothing is ever fully unpickled).  A plain state dict (a file saved before checkpoints carried
metadata, or by the user's own ``torch.save(model.state_dict())``) still loads, without a fingerprint.

The fingerprint (:func:`weights_fingerprint`) is the sha256 of the model's per-layer formats and its
state dict layout (every key with its shape and dtype).  Weights trained for one precision map or
model therefore never load silently into another: :func:`load_trained_weights` compares the
fingerprint and the keys and names what differs.  Writes go through a temporary file and
``os.replace``, so concurrent workers never read a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from search.errors import CheckpointError as CheckpointError

CHECKPOINT_VERSION = 1
_VERSION_KEY = "mixq_checkpoint"
_FINGERPRINT = "fingerprint"
_FORMATS = "formats"
_NAMES_SHOWN = 3  # how many keys an error names before "... and N more"



@dataclass(frozen=True)
class Checkpoint:
    state_dict: dict[str, Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str | None:
        return self.metadata.get(_FINGERPRINT)

    @property
    def formats(self) -> dict[str, str] | None:
        """fqn -> layer format name the weights were trained with (None for a plain state dict)."""
        text = self.metadata.get(_FORMATS)
        return None if text is None else dict(json.loads(text))


def layer_formats(model: nn.Module) -> dict[str, str]:
    """fqn -> layer format name of every fake-quant layer (empty for a float model)."""
    from search.quant.qat import OUTPUT_QUANT_ATTR, FakeQuantMixin

    formats = {fqn: m.layer_format.name for fqn, m in model.named_modules() if isinstance(m, FakeQuantMixin)}
    out_quant = getattr(model, OUTPUT_QUANT_ATTR, None)
    if out_quant is not None:  # the output format is part of what the weights were trained for
        formats[OUTPUT_QUANT_ATTR] = out_quant.fmt.name
    return formats


def weights_fingerprint(model: nn.Module) -> str:
    """``sha256:...`` of the model's per-layer formats and state-dict layout (keys, shapes, dtypes):
    equal for two models exactly when one's weights are meant for the other."""
    layout = [[k, list(v.shape), str(v.dtype)] for k, v in sorted(model.state_dict().items())]
    text = json.dumps({"formats": dict(sorted(layer_formats(model).items())), "tensors": layout}, sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def save_state_dict(model: nn.Module, path: Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Trained weights, quantizer state and the model's fingerprint, atomically (workers may share
    the folder).  ``metadata`` adds string entries (e.g. the trial number)."""
    meta = {**dict(metadata or {}), _FINGERPRINT: weights_fingerprint(model),
            _FORMATS: json.dumps(layer_formats(model), sort_keys=True)}
    payload = {
        _VERSION_KEY: CHECKPOINT_VERSION,
        "metadata": meta,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a mixq checkpoint or a plain state dict (``weights_only=True``: never a full unpickle)."""
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"weights: no such file {str(path)!r}") from None
    # what torch raises for a bad file
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"weights: {str(path)!r} is not a torch state dict ({first_line})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"weights: {str(path)!r} holds a {type(data).__name__}, not a state dict")
    if _VERSION_KEY in data:
        version = data[_VERSION_KEY]
        if not isinstance(version, int) or version > CHECKPOINT_VERSION:
            raise CheckpointError(
                f"weights: checkpoint version {version!r}; this mixq reads versions 1..{CHECKPOINT_VERSION}"
            )
        state, metadata = data.get("state_dict"), data.get("metadata", {})
    else:
        state, metadata = data, {}
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"weights: {str(path)!r} is not a state dict (name -> tensor)")
    if not isinstance(metadata, dict):
        raise CheckpointError(f"weights: {str(path)!r} has malformed metadata")
    return Checkpoint(state_dict=dict(state), metadata={str(k): str(v) for k, v in metadata.items()})


def _names(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_NAMES_SHOWN])
    return shown + (f" ... and {len(keys) - _NAMES_SHOWN} more" if len(keys) > _NAMES_SHOWN else "")


def check_belongs(model: nn.Module, checkpoint: Checkpoint) -> str | None:
    """Raise :class:`CheckpointError` saying what differs if ``checkpoint`` was not saved from a
    model like ``model`` (same keys and shapes; same per-layer formats when the checkpoint has a
    fingerprint).  Returns a note when there was no fingerprint to compare, else None."""
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in checkpoint.state_dict)
    unexpected = sorted(k for k in checkpoint.state_dict if k not in expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_names(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_names(unexpected)}")
        raise CheckpointError(f"weights: they belong to another model ({'; '.join(parts)})")
    shapes = [k for k, v in expected.items() if tuple(checkpoint.state_dict[k].shape) != tuple(v.shape)]
    if shapes:
        k = shapes[0]
        raise CheckpointError(
            f"weights: they belong to another model ({len(shapes)} tensor(s) of another shape, e.g. {k!r}: "
            f"{tuple(checkpoint.state_dict[k].shape)} in the file, {tuple(expected[k].shape)} in the model)"
        )
    if checkpoint.fingerprint is None:
        return "weights: a plain state dict (no mixq fingerprint): keys and shapes match, formats not checked"
    if checkpoint.fingerprint != weights_fingerprint(model):
        want, have = layer_formats(model), checkpoint.formats or {}
        differ = [f for f in sorted(set(want) | set(have)) if want.get(f) != have.get(f)]
        detail = ", ".join(f"{f!r}: {have.get(f, 'none')} in the weights, {want.get(f, 'none')} here"
                           for f in differ[:_NAMES_SHOWN])
        more = f" ... and {len(differ) - _NAMES_SHOWN} more" if len(differ) > _NAMES_SHOWN else ""
        raise CheckpointError(
            "weights: trained for another precision map or model (fingerprint "
            f"{checkpoint.fingerprint[:19]}... != {weights_fingerprint(model)[:19]}...)"
            + (f"; layers that differ: {detail}{more}" if differ else "")
        )
    return None


def load_trained_weights(model: nn.Module, weights: str | Path | Checkpoint) -> str | None:
    """Load weights into ``model`` (already quantized as its qconfig says) after
    :func:`check_belongs`; strict, so nothing is silently left at its old value.  Returns
    :func:`check_belongs`'s note."""
    checkpoint = weights if isinstance(weights, Checkpoint) else load_checkpoint(weights)
    note = check_belongs(model, checkpoint)
    model.load_state_dict(checkpoint.state_dict, strict=True)
    return note


__all__ = [
    "Checkpoint",
    "CheckpointError",
    "check_belongs",
    "layer_formats",
    "load_checkpoint",
    "load_trained_weights",
    "save_state_dict",
    "weights_fingerprint",
]
