"""Cost models: numbers in, numbers out.

Every model prices one layer in one format; a model's cost is the sum over its layers.  All obey
the same contract (``tests/search/test_cost.py``): cost >= 0, non-decreasing in bits, and
int4 <= int8 <= fp16 for the same layer.

* ``bitops``: MACs x weight bits x activation bits (the BitOPs measure of HAWQ-V3 and
  "Differentiable Quantization", used as a hardware-agnostic cost).
* ``weight_bytes``: parameters x weight bits / 8.
* ``activation_bytes``: input-activation elements x activation bits / 8 (traffic into the layer).
* ``latency_ms``: a target profile's measured table when it has the (fqn, format) entry, else
  MACs / (peak fp16 MAC rate x relative throughput of the format).

Compute the search cannot quantize (:attr:`~search.quant.layers.LayerGraph.float_layers`: attention
matmuls, parameters a module applies itself, embeddings) is in every map's cost too, at the float
precision it runs at: ``fp32`` where the profile has it, else ``fp16`` (the float path of a device that
has no fp32, e.g. ``npu-int4``).  The same constant for every map of a model, so it moves no map
against another; it keeps the totals honest (a transformer's BitOPs are not only its Linears').
"""

from __future__ import annotations

from typing import Protocol

from search.profiles import TargetProfile
from search.quant.formats import FormatMap, LayerFormat, as_formats, parse_format
from search.quant.layers import FloatLayer, LayerGraph, LayerInfo
from search.spec import CostObjective


class CostModel(Protocol):
    name: str

    def layer_cost(self, layer: LayerInfo | FloatLayer, fmt: LayerFormat) -> float: ...


class BitOps:
    name = CostObjective.BITOPS.value

    def layer_cost(self, layer: LayerInfo | FloatLayer, fmt: LayerFormat) -> float:
        return float(layer.macs * fmt.weight.bits * fmt.activation.bits)


class WeightBytes:
    name = CostObjective.WEIGHT_BYTES.value

    def layer_cost(self, layer: LayerInfo | FloatLayer, fmt: LayerFormat) -> float:
        return layer.num_params * fmt.weight.bits / 8.0


class ActivationBytes:
    name = CostObjective.ACTIVATION_BYTES.value

    def layer_cost(self, layer: LayerInfo | FloatLayer, fmt: LayerFormat) -> float:
        return layer.input_numel * fmt.activation.bits / 8.0


class ProfileLatency:
    name = CostObjective.LATENCY_MS.value

    def __init__(self, profile: TargetProfile) -> None:
        self.profile = profile

    def layer_cost(self, layer: LayerInfo | FloatLayer, fmt: LayerFormat) -> float:
        measured = self.profile.latency_table.get(layer.fqn, {}).get(fmt.name)
        if measured is not None:
            return measured
        return layer.macs / (self.profile.peak_macs_per_ms * self.profile.throughput(fmt.name))


def cost_model(objective: CostObjective | str, profile: TargetProfile) -> CostModel:
    objective = CostObjective(objective)
    if objective is CostObjective.BITOPS:
        return BitOps()
    if objective is CostObjective.WEIGHT_BYTES:
        return WeightBytes()
    if objective is CostObjective.ACTIVATION_BYTES:
        return ActivationBytes()
    return ProfileLatency(profile)


def model_cost(model: CostModel, graph: LayerGraph, assignment: FormatMap) -> float:
    formats = as_formats(assignment)
    total = 0.0  # a running sum in layer order (sum() of floats compensates from Python 3.12 on)
    for layer in graph.layers:
        total += model.layer_cost(layer, formats[layer.fqn])
    return total


def float_format(profile: TargetProfile) -> LayerFormat:
    """The precision float compute is priced at: fp32 where the profile has it, else fp16."""
    return parse_format("fp32" if "fp32" in profile.formats or "fp16" not in profile.formats else "fp16")


def float_costs(objectives: tuple[CostObjective, ...], profile: TargetProfile, graph: LayerGraph) -> dict[str, float]:
    """Each objective's cost of the graph's float compute (the same for every map)."""
    fmt = float_format(profile)
    out = {}
    for o in objectives:
        model = cost_model(o, profile)
        total = 0.0
        for layer in graph.float_layers:
            total += model.layer_cost(layer, fmt)
        out[str(o)] = total
    return out


def model_costs(
    objectives: tuple[CostObjective, ...], profile: TargetProfile, graph: LayerGraph, assignment: FormatMap
) -> dict[str, float]:
    """Each objective's cost of the map, float compute included."""
    formats = as_formats(assignment)
    fixed = float_costs(objectives, profile, graph) if graph.float_layers else {}
    return {str(o): model_cost(cost_model(o, profile), graph, formats) + fixed.get(str(o), 0.0) for o in objectives}
