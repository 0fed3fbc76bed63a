"""Layer discovery: the quantizable layers of a model, in the order they execute.

"First" and "last" mean first and last *executed*, which is what decides what sees the raw input
data and what produces the output.  Definition order in ``__init__`` says nothing about that, so we
run the model once on its example inputs with forward hooks.

Rules (documented, never silent):

* A module called more than once in one forward pass (a shared layer) is an error: it would need two
  activation quantizers but has one set of weights, and its position is ambiguous.
* A quantizable module that never runs on the example inputs is not a layer of the search; it is
  listed in :attr:`LayerGraph.unused` and a qconfig map that names it is rejected.
* Residual branches are fine: order is the order of the calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch
from torch import nn

from search.errors import LayerDiscoveryError as LayerDiscoveryError


class LayerKind(StrEnum):
    CONV1D = "conv1d"
    CONV2D = "conv2d"
    CONV2D_DEPTHWISE = "conv2d_depthwise"
    CONV2D_GROUPED = "conv2d_grouped"
    CONV_TRANSPOSE2D = "conv_transpose2d"
    LINEAR = "linear"
    CONV3D = "conv3d"
    CONV_TRANSPOSE1D = "conv_transpose1d"
    CONV_TRANSPOSE3D = "conv_transpose3d"


QUANTIZABLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear,
)



@dataclass(frozen=True)
class LayerInfo:
    fqn: str
    kind: LayerKind
    index: int  # position in execution order, 0-based
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    num_params: int
    macs: int  # multiply-accumulates for one forward pass of the example inputs

    @property
    def input_numel(self) -> int:
        n = 1
        for d in self.input_shape:
            n *= d
        return n

    @property
    def output_numel(self) -> int:
        n = 1
        for d in self.output_shape:
            n *= d
        return n

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (:meth:`LayerGraph.from_dicts` reads it back)."""
        return {
            "fqn": self.fqn, "kind": self.kind.value, "index": self.index, "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape), "num_params": self.num_params, "macs": self.macs,
        }


@dataclass(frozen=True)
class LayerGraph:
    layers: tuple[LayerInfo, ...]
    unused: tuple[str, ...] = field(default=())

    @property
    def first(self) -> LayerInfo:
        return self.layers[0]

    @property
    def last(self) -> LayerInfo:
        return self.layers[-1]

    @property
    def fqns(self) -> tuple[str, ...]:
        return tuple(layer.fqn for layer in self.layers)

    def as_dicts(self) -> list[dict[str, Any]]:
        """The layers' JSON form, execution order (the unused modules are not kept)."""
        return [layer.as_dict() for layer in self.layers]

    @classmethod
    def from_dicts(cls, rows: Any) -> LayerGraph:
        """The graph :meth:`as_dicts` wrote (stored JSON, so checked: a :class:`LayerDiscoveryError` names
        what is malformed)."""
        if not isinstance(rows, list) or not rows:
            raise LayerDiscoveryError("layers: a non-empty list of layers")
        layers = []
        for i, row in enumerate(rows):
            try:
                layers.append(LayerInfo(
                    fqn=str(row["fqn"]), kind=LayerKind(row["kind"]), index=i,
                    input_shape=tuple(int(d) for d in row["input_shape"]),
                    output_shape=tuple(int(d) for d in row["output_shape"]),
                    num_params=int(row["num_params"]), macs=int(row["macs"]),
                ))
            except (KeyError, TypeError, ValueError) as exc:
                raise LayerDiscoveryError(f"layers[{i}]: malformed ({type(exc).__name__}: {exc})") from None
        if len({layer.fqn for layer in layers}) != len(layers):
            raise LayerDiscoveryError("layers: each fqn may appear once")
        return cls(layers=tuple(layers))

    def by_fqn(self, fqn: str) -> LayerInfo:
        for layer in self.layers:
            if layer.fqn == fqn:
                return layer
        raise KeyError(fqn)


def layer_kind(module: nn.Module) -> LayerKind:
    if isinstance(module, nn.ConvTranspose1d):
        return LayerKind.CONV_TRANSPOSE1D
    if isinstance(module, nn.ConvTranspose2d):
        return LayerKind.CONV_TRANSPOSE2D
    if isinstance(module, nn.ConvTranspose3d):
        return LayerKind.CONV_TRANSPOSE3D
    if isinstance(module, nn.Conv3d):
        return LayerKind.CONV3D
    if isinstance(module, nn.Conv2d):
        if module.groups == 1:
            return LayerKind.CONV2D
        # depthwise (PyTorch's definition): groups == in_channels, out_channels = K * in_channels
        if module.groups == module.in_channels and module.out_channels % module.in_channels == 0:
            return LayerKind.CONV2D_DEPTHWISE
        return LayerKind.CONV2D_GROUPED
    if isinstance(module, nn.Conv1d):
        return LayerKind.CONV1D
    if isinstance(module, nn.Linear):
        return LayerKind.LINEAR
    raise LayerDiscoveryError(
        f"layer kind: {type(module).__name__} is not quantizable; supported: "
        + ", ".join(t.__name__ for t in QUANTIZABLE_TYPES)
    )


def _macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        # every output element needs in_features MACs
        return out.numel() * module.in_features
    k = 1
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        # each input element is scattered into out_channels/groups * prod(kernel) outputs
        for s in module.kernel_size:
            k *= s
        return inp.numel() * (module.out_channels // module.groups) * k
    assert isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    for s in module.kernel_size:
        k *= s
    return out.numel() * (module.in_channels // module.groups) * k


def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)


def discover_layers(model: nn.Module, example_inputs: Any) -> LayerGraph:
    """List the quantizable layers of ``model`` in execution order.

    ``example_inputs`` is a tensor or a tuple of positional inputs.  The model is run once under
    ``torch.no_grad()`` in eval mode; its training flag is restored afterwards.
    """
    calls: list[tuple[str, nn.Module, tuple[int, ...], tuple[int, ...], int]] = []
    seen: dict[str, int] = {}
    candidates = [(fqn, m) for fqn, m in model.named_modules() if isinstance(m, QUANTIZABLE_TYPES)]
    handles = []

    def hook_for(fqn: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:  # a forward hook
        def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            seen[fqn] = seen.get(fqn, 0) + 1
            inp = args[0]
            calls.append((fqn, module, tuple(inp.shape), tuple(out.shape), _macs(module, inp, out)))

        return hook

    for fqn, module in candidates:
        handles.append(module.register_forward_hook(hook_for(fqn)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*_as_tuple(example_inputs))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    shared = sorted(fqn for fqn, n in seen.items() if n > 1)
    if shared:
        raise LayerDiscoveryError(
            f"layer {shared[0]!r} runs {seen[shared[0]]} times in one forward pass; shared layers "
            "are not supported (give each call its own module)"
        )
    if not calls:
        raise LayerDiscoveryError(
            "model: no quantizable layer ran on the example inputs; supported: "
            + ", ".join(t.__name__ for t in QUANTIZABLE_TYPES)
        )
    layers = tuple(
        LayerInfo(
            fqn=fqn,
            kind=layer_kind(module),
            index=i,
            input_shape=in_shape,
            output_shape=out_shape,
            num_params=sum(p.numel() for p in module.parameters(recurse=False)),
            macs=macs,
        )
        for i, (fqn, module, in_shape, out_shape, macs) in enumerate(calls)
    )
    unused = tuple(fqn for fqn, _ in candidates if fqn not in seen)
    return LayerGraph(layers=layers, unused=unused)
