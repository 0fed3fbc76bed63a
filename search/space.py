"""The search space: which layers are free, which formats each may take, and which are pinned.

Formats per layer = the spec's formats (by default every format the profile runs, fp32 aside: the
reference is not a quantization choice) that the target profile allows for the layer's kind.  Pins
apply in order (later pins win): the first/last-layer anchor (``spec.pin_first_last``, int8 by
default), then ``spec.pins``; a pin with ``format=None`` unpins.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from search.layers import LayerGraph, LayerInfo
from search.profiles import ProfileError, TargetProfile
from search.spec import Pin, SearchSpec


class SearchSpaceError(ValueError):
    """The spec, profile and model leave nothing valid to search."""


@dataclass(frozen=True)
class SearchSpace:
    choices: dict[str, tuple[str, ...]]  # free fqn -> allowed format names (execution order)
    pinned: dict[str, str]  # fqn -> format name
    pin_reasons: dict[str, str]  # fqn -> why

    @property
    def size(self) -> int:
        n = 1
        for c in self.choices.values():
            n *= len(c)
        return n


def _matches(pin: Pin, layer: LayerInfo, graph: LayerGraph) -> bool:
    if pin.match == "@first":
        return layer.fqn == graph.first.fqn
    if pin.match == "@last":
        return layer.fqn == graph.last.fqn
    if pin.match.startswith("kind:"):
        return layer.kind.value == pin.match.removeprefix("kind:")
    return fnmatch.fnmatchcase(layer.fqn, pin.match)


def searched_formats(spec: SearchSpec, profile: TargetProfile) -> tuple[str, ...]:
    """The spec's formats, or when it names none, the profile's (split formats such as w4a8 included)."""
    return spec.formats or tuple(name for name in profile.formats if name != "fp32")


def build_space(spec: SearchSpec, graph: LayerGraph, profile: TargetProfile) -> SearchSpace:
    formats = searched_formats(spec, profile)
    for name in formats:
        if name not in profile.formats:
            raise SearchSpaceError(
                f"formats: {name!r} is not supported by profile {profile.name!r}; allowed: {', '.join(profile.formats)}"
            )
    pins: list[tuple[Pin, str]] = []
    if spec.pin_first_last is not None:
        pins += [
            (Pin(match="@first", format=spec.pin_first_last), "first executed layer (sees the raw input data)"),
            (Pin(match="@last", format=spec.pin_first_last), "last executed layer (produces the output)"),
        ]
    pins += [(p, f"pinned by {p.match!r}") for p in spec.pins]
    for pin, _ in pins[2 if spec.pin_first_last else 0 :]:
        if not any(_matches(pin, layer, graph) for layer in graph.layers):
            raise SearchSpaceError(f"pins: {pin.match!r} matches no layer; layers: {', '.join(graph.fqns[:12])}")

    pinned: dict[str, str] = {}
    reasons: dict[str, str] = {}
    for layer in graph.layers:
        for pin, reason in pins:
            if _matches(pin, layer, graph):
                if pin.format is None:
                    pinned.pop(layer.fqn, None)
                    reasons.pop(layer.fqn, None)
                else:
                    pinned[layer.fqn] = pin.format
                    reasons[layer.fqn] = reason
    choices: dict[str, tuple[str, ...]] = {}
    for layer in graph.layers:
        allowed = profile.allowed_formats(layer.kind)
        if layer.fqn in pinned:
            if pinned[layer.fqn] not in allowed:
                raise ProfileError(
                    f"pins: layer {layer.fqn!r} ({layer.kind}) is pinned to {pinned[layer.fqn]!r}, which profile "
                    f"{profile.name!r} forbids for {layer.kind}; allowed: {', '.join(allowed)}"
                )
            continue
        options = tuple(f for f in formats if f in allowed)
        if not options:
            raise SearchSpaceError(
                f"formats: none of {', '.join(formats)} is allowed for layer {layer.fqn!r} ({layer.kind}) "
                f"by profile {profile.name!r}; allowed there: {', '.join(allowed)}"
            )
        choices[layer.fqn] = options
    if not any(len(c) > 1 for c in choices.values()):
        raise SearchSpaceError(
            "pins: the pins and formats leave nothing to search (every layer has one possible format); "
            "unpin layers or allow more formats"
        )
    return SearchSpace(choices=choices, pinned=pinned, pin_reasons=reasons)
