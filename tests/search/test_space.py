"""Layer groups in the search space: layers that must share a format get one suggestion."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
import torch.nn.functional as F

from search import SearchSpec, Workload, discover_layers, load_profile, run_search
from search.profiles import parse_profile_text
from search.quant.layers import LayerGraph
from search.study.seeds import sensitivity_assignments
from search.study.space import SearchSpaceError, build_space
from search.workloads.base import random_batches
from tests.search.models import DepthwiseNet, ResidualNet

RESIDUAL_ADD = ("branch_b", "skip")  # the two convs whose outputs ResidualNet adds


def residual_graph() -> LayerGraph:
    return discover_layers(ResidualNet(), ResidualNet.example_inputs())


def spec(**overrides: object) -> SearchSpec:
    return SearchSpec(**{"workload": "residual", "formats": ("int4", "int8", "fp16"), **overrides})


def test_a_group_is_one_choice_and_its_members_follow() -> None:
    graph = residual_graph()
    space = build_space(spec(groups=[list(RESIDUAL_ADD)]), graph, load_profile("generic"))
    ungrouped = build_space(spec(), graph, load_profile("generic"))
    leader = next(f for f in graph.fqns if f in RESIDUAL_ADD)  # first of the two in execution order
    follower = next(f for f in RESIDUAL_ADD if f != leader)
    assert space.tied == {follower: leader}
    assert follower not in space.choices and leader in space.choices
    assert space.size * 3 == ungrouped.size  # one free layer fewer, 3 formats each
    assert space.options(follower) == space.options(leader) == ("int4", "int8", "fp16")
    assert space.expand({f: "int4" for f in space.choices})[follower] == "int4"
    # the sensitivity sweep flips the group as one
    flips = [space.expand(a) for a in sensitivity_assignments(space)]
    assert {a[follower] == a[leader] for a in flips} == {True}


def test_glob_patterns_and_overlapping_groups_merge() -> None:
    graph = residual_graph()
    space = build_space(
        spec(pin_first_last=None, groups=[["branch_*"], ["branch_b", "skip"]]), graph, load_profile("generic")
    )
    members = {"branch_a", "branch_b", "skip"}
    leader = next(f for f in graph.fqns if f in members)
    assert set(space.tied) == members - {leader}
    assert set(space.tied.values()) == {leader}


def test_profile_layer_groups_apply() -> None:
    profile = parse_profile_text(
        "name: resnet-npu\npeak_macs_per_ms: 1000\nformats: {int4: {throughput: 4}, int8: {throughput: 2}}\n"
        "layer_groups: [[branch_b, skip]]\n"
    )
    space = build_space(spec(formats=("int4", "int8")), residual_graph(), profile)
    assert len(space.tied) == 1 and set(space.tied) | set(space.tied.values()) == set(RESIDUAL_ADD)


def test_a_pin_on_one_member_pins_the_group() -> None:
    space = build_space(
        spec(pins=[{"match": "skip", "format": "fp16"}], groups=[list(RESIDUAL_ADD)]), residual_graph(),
        load_profile("generic"),
    )
    assert space.pinned["branch_b"] == space.pinned["skip"] == "fp16"
    assert "skip" in space.pin_reasons["branch_b"]
    assert not space.tied


def test_group_with_the_first_layer_takes_its_anchor_pin() -> None:
    graph = residual_graph()
    space = build_space(spec(groups=[[graph.first.fqn, "branch_a"]]), graph, load_profile("generic"))
    assert space.pinned["branch_a"] == "int8"


@pytest.mark.parametrize(
    ("groups", "pins", "message"),
    [
        pytest.param([["branch_b", "nope"]], [], "'nope' matches no layer", id="unknown-layer"),
        pytest.param([["trunk.*"]], [], "groups[0]: 'trunk.*' matches no layer", id="glob-matches-nothing"),
        pytest.param(
            [list(RESIDUAL_ADD)], [{"match": "skip", "format": "fp16"}, {"match": "branch_b", "format": "int4"}],
            "pinned to different ones", id="conflicting-pins",
        ),
    ],
)
def test_bad_groups_name_the_layer(groups: list[list[str]], pins: list[dict[str, str]], message: str) -> None:
    with pytest.raises(SearchSpaceError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_space(spec(groups=groups, pins=pins), residual_graph(), load_profile("generic"))


def test_group_without_a_common_format_is_an_error() -> None:
    graph = discover_layers(DepthwiseNet(), DepthwiseNet.example_inputs())
    depthwise = next(layer.fqn for layer in graph.layers if layer.kind.value == "conv2d_depthwise")
    other = next(layer.fqn for layer in graph.layers if layer.kind.value == "conv2d" and layer.fqn != depthwise)
    profile = parse_profile_text(
        "name: split-npu\npeak_macs_per_ms: 1000\nformats: {int4: {throughput: 4}, int8: {throughput: 2}}\n"
        "layer_kinds: {conv2d: {formats: [int4]}, conv2d_depthwise: {formats: [int8]}}\n"
    )
    with pytest.raises(SearchSpaceError, match=f"{other}.*none in common.*{depthwise}: int8"):
        build_space(spec(formats=("int4", "int8"), pin_first_last=None, groups=[[depthwise, other]]), graph, profile)


def test_spec_rejects_an_empty_group() -> None:
    with pytest.raises(ValueError, match="groups"):
        spec(groups=[[]])


def residual_workload() -> Workload:
    torch.manual_seed(0)
    model = ResidualNet().eval()
    x = torch.rand(16, 1, 5, 5, generator=torch.Generator().manual_seed(1))
    y = torch.rand(16, 2, 5, 5, generator=torch.Generator().manual_seed(2))
    return Workload(
        name="residual", model=model, example_inputs=ResidualNet.example_inputs(),
        train_batches=lambda gen: random_batches(x, y, 4, gen), calibration_batches=[(x, y)], loss_fn=F.mse_loss,
        evaluate=lambda m: -float(F.mse_loss(m(x), y).detach()), metric="neg_mse", higher_is_better=True,
    )


def test_search_only_tries_maps_where_the_group_agrees() -> None:
    def evaluator(assignment: Mapping[str, str], seed: int) -> float:  # fewer int4 layers = better, no QAT
        return -float(sum(f == "int4" for f in assignment.values())) + 0.01 * seed

    result = run_search(
        # 5 trials: the seeds reach 5 distinct maps; beyond them the sampler rarely offers fp16, which the
        # seeds show costs more than int8 for the same quality (dominated formats are thinned)
        spec(groups=[list(RESIDUAL_ADD)], n_trials=5, sampler="random", reevaluate_front=0),
        workload=residual_workload(), evaluator=evaluator,
    )
    assert len(result.trials) == 5
    assert {t.assignment["branch_b"] == t.assignment["skip"] for t in result.trials} == {True}
    assert {t.assignment["branch_b"] for t in result.trials} > {"int8"}  # the group did move
    by_fqn = {layer.fqn: layer for layer in result.layers}
    assert by_fqn["skip"].choices == by_fqn["branch_b"].choices == ("int4", "int8", "fp16")


@pytest.mark.parametrize(
    ("overrides", "loc", "text"),
    [
        pytest.param({"pins": [{"match": "skip", "format": "int4"}, {"match": "nope*", "format": "int8"}]},
                     ("pins", 1, "match"), "pins[1].match: 'nope*' matches no layer", id="pin"),
        pytest.param({"groups": [list(RESIDUAL_ADD), ["nope"]]}, ("groups", 1), "groups[1]: 'nope'", id="group"),
        pytest.param({"pins": [{"match": "*", "format": "int8"}]}, ("pins",), "pins: the pins, groups and formats",
                     id="all-pinned"),
        pytest.param({"formats": ("int8",)}, ("formats",), "formats: the pins", id="one-format"),
        pytest.param({"formats": ("int4", "fp32")}, ("formats", 1), "formats[1]: 'fp32' is not supported",
                     id="format"),
    ],
)
def test_errors_carry_the_request_field(overrides: dict[str, object], loc: tuple[object, ...], text: str) -> None:
    profile = parse_profile_text("name: no-fp32\npeak_macs_per_ms: 1000\nformats: {int4: {throughput: 4}, "
                                 "int8: {throughput: 2}, fp16: {throughput: 1}}\n")
    with pytest.raises(SearchSpaceError) as err:
        build_space(spec(**overrides), residual_graph(), profile)
    assert err.value.loc == loc
    assert str(err.value).startswith(text)


def test_a_profile_forbidden_pin_names_the_pin() -> None:
    profile = parse_profile_text(
        "name: int8-conv\npeak_macs_per_ms: 1000\nformats: {int4: {throughput: 4}, int8: {throughput: 2}}\n"
        "layer_kinds: {conv2d: {formats: [int8]}}\n"
    )
    graph = residual_graph()
    conv = next(layer.fqn for layer in graph.layers if layer.kind.value == "conv2d")
    with pytest.raises(SearchSpaceError) as err:
        build_space(spec(formats=("int4", "int8"), pin_first_last=None, pins=[{"match": conv, "format": "int4"}]),
                    graph, profile)
    assert err.value.loc == ("pins", 0, "format")


def test_a_pin_s_format_is_spelled_as_the_formats_are() -> None:
    """``--pin conv=INT8`` was refused with "profile forbids" while ``--formats INT8`` worked: the pin's
    format was checked but kept as written, and the profile knows ``int8``."""
    graph = residual_graph()
    conv = next(layer.fqn for layer in graph.layers if layer.kind.value == "conv2d")
    space = build_space(spec(formats=("INT4", "Int8"), pins=[{"match": conv, "format": " INT8"}]), graph,
                        load_profile("generic"))
    assert space.pinned[conv] == "int8"
    assert all(set(options) <= {"int4", "int8"} for options in space.choices.values())
