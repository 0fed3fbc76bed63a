"""The search space: which layers are free, which formats each may take, which are pinned, and
which must share a format.

Formats per layer = the spec's formats (by default every format the profile runs, fp32 aside: the
reference is not a quantization choice) that the target profile allows for the layer's kind.  Pins
apply in order (later pins win): the first/last-layer anchor (``spec.pin_first_last``, int8 by
default), then ``spec.pins``; a pin with ``format=None`` unpins.

Layer groups (``spec.groups`` and the profile's ``layer_groups``) tie layers to one format, as
hardware that needs equal scales on both inputs of a residual add does.  Each group is a list of
patterns (an fqn glob, ``kind:<layer kind>``, ``@first``, ``@last``: the pins' syntax); every layer
any of them matches is in the group, and groups that share a layer merge.  A group takes the formats
all its members allow; a pin on one member pins the whole group.  The sampler then suggests one
format per group: only the group's first layer (execution order) is in :attr:`SearchSpace.choices`,
the others follow it (:attr:`SearchSpace.tied`, :meth:`SearchSpace.expand`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from search.errors import Loc as Loc
from search.errors import SearchSpaceError as SearchSpaceError
from search.errors import loc_text as loc_text
from search.profiles import TargetProfile
from search.quant.layers import LayerGraph, LayerInfo
from search.spec import Pin, SearchRequest


@dataclass(frozen=True)
class SearchSpace:
    choices: dict[str, tuple[str, ...]]  # free fqn -> allowed format names (execution order); one per group
    pinned: dict[str, str]  # fqn -> format name
    pin_reasons: dict[str, str]  # fqn -> why
    tied: dict[str, str] = field(default_factory=dict)  # free fqn -> the fqn in ``choices`` whose format it takes

    @property
    def size(self) -> int:
        n = 1
        for c in self.choices.values():
            n *= len(c)
        return n

    def expand(self, free: Mapping[str, str]) -> dict[str, str]:
        """A free assignment (fqn in :attr:`choices` -> format) with every tied layer filled in."""
        return {**free, **{fqn: free[leader] for fqn, leader in self.tied.items() if leader in free}}

    def options(self, fqn: str) -> tuple[str, ...]:
        """The formats a free layer may take (its group's when tied); () for a pinned layer."""
        return self.choices.get(self.tied.get(fqn, fqn), ())


def _matches(pattern: str, layer: LayerInfo, graph: LayerGraph) -> bool:
    if pattern == "@first":
        return layer.fqn == graph.first.fqn
    if pattern == "@last":
        return layer.fqn == graph.last.fqn
    if pattern.startswith("kind:"):
        return layer.kind.value == pattern.removeprefix("kind:")
    return fnmatch.fnmatchcase(layer.fqn, pattern)


def _field(where: Loc, name: str) -> Loc:
    """A pin's field: ``pins[i].<name>``; the first/last anchor is one field, ``pin_first_last``."""
    return (*where, name) if where[0] == "pins" else where


def _layer_list(graph: LayerGraph) -> str:
    return ", ".join(graph.fqns[:12]) + (" ..." if len(graph.fqns) > 12 else "")


def resolve_groups(
    groups: Sequence[tuple[Loc, str, Sequence[str]]], graph: LayerGraph
) -> list[tuple[str, ...]]:
    """Layer groups as fqn tuples in execution order, overlapping groups merged.

    ``groups``: (the request field it came from and a note on where in it, for errors; its patterns).  A
    pattern that matches no layer is an error naming it; a group of one layer constrains nothing and is dropped."""
    parent = {fqn: fqn for fqn in graph.fqns}  # union-find over layers

    def root(fqn: str) -> str:
        while parent[fqn] != fqn:
            parent[fqn] = parent[parent[fqn]]
            fqn = parent[fqn]
        return fqn

    for where, note, patterns in groups:
        if isinstance(patterns, str) or not patterns:
            raise SearchSpaceError(where, f"{note}a list of layer patterns, e.g. ['block1.conv1', 'block1.conv2']")
        members: list[str] = []
        for pattern in patterns:
            matched = [layer.fqn for layer in graph.layers if _matches(pattern, layer, graph)]
            if not matched:
                raise SearchSpaceError(where, f"{note}{pattern!r} matches no layer; layers: {_layer_list(graph)}")
            members += matched
        for fqn in members[1:]:
            parent[root(fqn)] = root(members[0])
    by_root: dict[str, list[str]] = {}
    for fqn in graph.fqns:
        by_root.setdefault(root(fqn), []).append(fqn)
    return [tuple(members) for members in by_root.values() if len(members) > 1]


def _pin_groups(
    layer_groups: Sequence[tuple[str, ...]], pinned: dict[str, str], reasons: dict[str, str]
) -> None:
    """A pin on one member pins its whole group (in place); two different pins in a group are an error."""
    for members in layer_groups:
        pins = {pinned[fqn] for fqn in members if fqn in pinned}
        if len(pins) > 1:
            detail = ", ".join(f"{fqn}={pinned[fqn]}" for fqn in members if fqn in pinned)
            raise SearchSpaceError(
                ("groups",),
                f"layers {', '.join(members)} must share a format but are pinned to different ones ({detail})",
            )
        if pins:
            source = next(fqn for fqn in members if fqn in pinned)
            for fqn in members:
                if fqn not in pinned:
                    pinned[fqn] = pinned[source]
                    reasons[fqn] = f"in a layer group with {source!r} ({reasons[source]})"


def searched_formats(spec: SearchRequest, profile: TargetProfile) -> tuple[str, ...]:
    """The spec's formats, or when it names none, the profile's (split formats such as w4a8 included)."""
    return spec.formats or tuple(name for name in profile.formats if name != "fp32")


def _emptied_by(spec: SearchRequest, formats: tuple[str, ...]) -> Loc:
    """The field to blame for a space with nothing to search: the first of these the request sets."""
    if len(formats) < 2:
        return ("formats",)
    if spec.pins:
        return ("pins",)
    if spec.pin_first_last is not None:
        return ("pin_first_last",)
    return ("groups",) if spec.groups else ("profile",)


def build_space(spec: SearchRequest, graph: LayerGraph, profile: TargetProfile) -> SearchSpace:
    """The search space of ``spec`` over ``graph`` on ``profile``; a :class:`SearchSpaceError` naming the
    request field (:attr:`SearchSpaceError.loc`) when a pin or group matches no layer, a format or pin is
    not allowed, or nothing is left to search.  The one home of these rules: the runner builds the space
    with it, and a service can check a request against a model's layers before queueing it."""
    formats = searched_formats(spec, profile)
    for i, name in enumerate(formats):
        if name not in profile.formats:
            raise SearchSpaceError(
                ("formats", i) if spec.formats else ("profile",),
                f"{name!r} is not supported by profile {profile.name!r}; allowed: {', '.join(profile.formats)}",
            )
    # (pin, why, its place in the request)
    pins: list[tuple[Pin, str, Loc]] = []
    if spec.pin_first_last is not None:
        pins += [
            (Pin(match="@first", format=spec.pin_first_last), "first executed layer (sees the raw input data)",
             ("pin_first_last",)),
            (Pin(match="@last", format=spec.pin_first_last), "last executed layer (produces the output)",
             ("pin_first_last",)),
        ]
    pins += [(p, f"pinned by {p.match!r}", ("pins", i)) for i, p in enumerate(spec.pins)]
    for pin, _, where in pins[2 if spec.pin_first_last else 0 :]:
        if not any(_matches(pin.match, layer, graph) for layer in graph.layers):
            raise SearchSpaceError((*where, "match"), f"{pin.match!r} matches no layer; layers: {_layer_list(graph)}")
    layer_groups = resolve_groups(
        [(("groups", i), "", g) for i, g in enumerate(spec.groups)]
        + [(("profile",), f"layer_groups[{i}] of profile {profile.name!r}: ", g)
           for i, g in enumerate(profile.layer_groups)],
        graph,
    )

    pinned: dict[str, str] = {}
    reasons: dict[str, str] = {}
    pin_locs: dict[str, Loc] = {}
    for layer in graph.layers:
        for pin, reason, where in pins:
            if _matches(pin.match, layer, graph):
                if pin.format is None:
                    pinned.pop(layer.fqn, None)
                    reasons.pop(layer.fqn, None)
                else:
                    pinned[layer.fqn] = pin.format
                    reasons[layer.fqn] = reason
                    pin_locs[layer.fqn] = where
    _pin_groups(layer_groups, pinned, reasons)
    options_of: dict[str, tuple[str, ...]] = {}
    for layer in graph.layers:
        allowed = profile.allowed_formats(layer.kind)
        if layer.fqn in pinned:
            if pinned[layer.fqn] not in allowed:
                raise SearchSpaceError(
                    _field(pin_locs.get(layer.fqn, ("groups",)), "format"),  # a group member: pinned by its group
                    f"layer {layer.fqn!r} ({layer.kind}) is pinned to {pinned[layer.fqn]!r}, which profile "
                    f"{profile.name!r} forbids for {layer.kind}; allowed: {', '.join(allowed)}",
                )
            continue
        options = tuple(f for f in formats if f in allowed)
        if not options:
            raise SearchSpaceError(
                ("formats",) if spec.formats else ("profile",),
                f"none of {', '.join(formats)} is allowed for layer {layer.fqn!r} ({layer.kind}) "
                f"by profile {profile.name!r}; allowed there: {', '.join(allowed)}",
            )
        options_of[layer.fqn] = options
    tied: dict[str, str] = {}
    for members in layer_groups:
        if members[0] in pinned:
            continue
        common = tuple(f for f in options_of[members[0]] if all(f in options_of[m] for m in members))
        if not common:
            detail = "; ".join(f"{m}: {', '.join(options_of[m])}" for m in members)
            raise SearchSpaceError(
                ("groups",), f"layers {', '.join(members)} must share a format but have none in common ({detail})"
            )
        options_of[members[0]] = common
        for fqn in members[1:]:
            tied[fqn] = members[0]
            del options_of[fqn]
    if not any(len(c) > 1 for c in options_of.values()):
        raise SearchSpaceError(
            _emptied_by(spec, formats),
            "the pins, groups and formats leave nothing to search (every layer has one possible format); "
            "unpin layers, drop groups or allow more formats",
        )
    return SearchSpace(choices=options_of, pinned=pinned, pin_reasons=reasons, tied=tied)
