"""What both peer scripts share: the workload from the checkout, mixq's cost model, the picks file.

Runs inside a peer tool's virtual environment (bench/peers/setup.sh) with the checkout on PYTHONPATH; imports
only ``search`` and the standard library, so bench/baselines.py can use :func:`picks_under_budgets` too.

The picks file (``--out``), read by ``bench.baselines.read_peer_picks``::

    {"method": "aimet-amp", "tool": "aimet-torch 2.42.0", "formats": ["int8", "int4"], "wall_s": 150.2,
     "budgets": [0.4, 0.6, 0.8], "picks": {"0.4": {"body.0": "int8", ...}, ...},
     "path": [{"bitops_ratio": 0.97, "tool_score": 25.1, "changes": {"body.23": "int4"}}, ...], "note": "..."}

``picks[B]``: every layer's mixq format name; its BitOPs (mixq's own model, ``search.quant.cost``) <= B x
all-int8's.  ``path``: every map the tool scored on its way, with the tool's own score.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search import CostObjective, discover_layers, load_profile, load_workload
from search.quant.cost import model_costs
from search.quant.layers import LayerGraph
from search.workloads import Workload

SPACES = {"int8-int4": ("int8", "int4"), "default": ("int8", "w4a8", "int4")}


@dataclass
class Problem:
    workload: Workload
    graph: LayerGraph
    free: tuple[str, ...]  # first and last layer pinned int8, as mixq's default
    int8_bitops: float

    def ratio(self, assignment: Mapping[str, str]) -> float:
        bitops = model_costs((CostObjective.BITOPS,), load_profile("generic"), self.graph, dict(assignment))["bitops"]
        return bitops / self.int8_bitops

    def full(self, changes: Mapping[str, str]) -> dict[str, str]:
        return {f: changes.get(f, "int8") for f in self.graph.fqns}


def problem(width: int) -> Problem:
    workload = load_workload("denoise-deep", {"width": width})
    graph = discover_layers(workload.model, workload.example_inputs)
    int8 = {f: "int8" for f in graph.fqns}
    int8_bitops = model_costs((CostObjective.BITOPS,), load_profile("generic"), graph, int8)["bitops"]
    return Problem(workload, graph, graph.fqns[1:-1], int8_bitops)


def arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, required=True, help="the picks file (JSON) to write")
    parser.add_argument("--space", choices=sorted(SPACES), default="int8-int4",
                        help="int8-int4: the tool's int8/int4 candidates; default: every candidate of the tool "
                             "that maps to a format of mixq's default space")
    parser.add_argument("--width", type=int, default=16, help="denoise-deep width (channels)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.4, 0.6, 0.8],
                        help="BitOPs ratios to all-int8")
    return parser


def picks_under_budgets(path: Sequence[tuple[float, float, Mapping[str, str]]], budgets: Sequence[float],
                        ) -> dict[float, dict[str, str]]:
    """Per budget, the tool's best-scored map (by its own score) among ``path`` entries (ratio, score, map)
    with ratio <= budget; budgets no entry fits are left out."""
    picks: dict[float, dict[str, str]] = {}
    for budget in budgets:
        fitting = [p for p in path if p[0] <= budget + 1e-9]
        if fitting:
            picks[budget] = dict(max(fitting, key=lambda p: p[1])[2])
    return picks


def write_picks(out: Path, method: str, tool: str, space: str, started: float, budgets: Sequence[float],
                path: Sequence[tuple[float, float, Mapping[str, str]]], note: str, **extra: Any) -> None:
    picks = picks_under_budgets(path, budgets)
    data = {
        "method": method, "tool": tool, "space": space, "formats": list(SPACES[space]),
        "wall_s": time.monotonic() - started, "budgets": list(budgets),
        "picks": {str(b): a for b, a in picks.items()},
        "path": [{"bitops_ratio": r, "tool_score": s, "changes": {f: v for f, v in a.items() if v != "int8"}}
                 for r, s, a in path],
        "note": note, **extra,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    for b, a in picks.items():
        print(f"{method} @ {b:g}: " + " ".join(f"{f}={v}" for f, v in a.items() if v != "int8"), flush=True)
