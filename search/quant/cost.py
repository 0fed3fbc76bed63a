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
"""

from __future__ import annotations

from typing import Protocol

from search.profiles import TargetProfile
from search.quant.formats import FormatMap, LayerFormat, as_formats
from search.quant.layers import LayerGraph, LayerInfo
from search.spec import CostObjective


class CostModel(Protocol):
    name: str

    def layer_cost(self, layer: LayerInfo, fmt: LayerFormat) -> float: ...


class BitOps:
    name = CostObjective.BITOPS.value

    def layer_cost(self, layer: LayerInfo, fmt: LayerFormat) -> float:
        return float(layer.macs * fmt.weight.bits * fmt.activation.bits)


class WeightBytes:
    name = CostObjective.WEIGHT_BYTES.value

    def layer_cost(self, layer: LayerInfo, fmt: LayerFormat) -> float:
        return layer.num_params * fmt.weight.bits / 8.0


class ActivationBytes:
    name = CostObjective.ACTIVATION_BYTES.value

    def layer_cost(self, layer: LayerInfo, fmt: LayerFormat) -> float:
        return layer.input_numel * fmt.activation.bits / 8.0


class ProfileLatency:
    name = CostObjective.LATENCY_MS.value

    def __init__(self, profile: TargetProfile) -> None:
        self.profile = profile

    def layer_cost(self, layer: LayerInfo, fmt: LayerFormat) -> float:
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


def model_costs(
    objectives: tuple[CostObjective, ...], profile: TargetProfile, graph: LayerGraph, assignment: FormatMap
) -> dict[str, float]:
    formats = as_formats(assignment)
    return {str(o): model_cost(cost_model(o, profile), graph, formats) for o in objectives}
