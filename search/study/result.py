"""A search's result from the study's ledger: one outcome per trained map (at its highest rung, with
its extra seeds), the front after the noise merge, the fidelity check, and the untried neighbours of
the front.  It reads the ledger and trains nothing."""

from __future__ import annotations

from collections.abc import Mapping

from optuna.trial import TrialState

from search.results import FidelityCheck, FidelityPoint, SearchLayer, SearchResult, TrialOutcome
from search.study.attrs import Source, StudyKey, is_cached
from search.study.budget import steps_at
from search.study.ledger import Ledger
from search.study.multifidelity import TAU_WARNING_BELOW, rank_agreement, within_noise_of_cheaper
from search.study.objective import SearchSetup, outcome_of
from search.study.pareto import pareto_front
from search.study.seeding import tried_maps
from search.study.seeds import front_neighbours


def outcomes(setup: SearchSetup, ledger: Ledger) -> list[TrialOutcome]:
    """One outcome per trained trial, at its highest rung; repeats served from the cache are not
    evaluations.  Extra seeds count only when run at that same rung."""
    out = []
    for t in ledger.completed():
        top = ledger.top(t.number)
        out.append(outcome_of(t, setup, ledger.reevaluations(t.number, top.rung if top else 0), top))
    return out


def fidelity_check(setup: SearchSetup, front: list[TrialOutcome]) -> FidelityCheck | None:
    """Does the short first rung rank the front as the longest rung reached does?  None for one rung."""
    spec = setup.spec
    if len(spec.rungs) == 1:
        return None
    points = [FidelityPoint(p.number, p.short_quality, p.quality, p.qat_steps)
              for p in front if p.short_quality is not None]
    tau = rank_agreement([p.short_quality for p in points], [p.long_quality for p in points])
    warning = None
    if tau is not None and tau < TAU_WARNING_BELOW:
        warning = (f"the first rung ({steps_at(spec, 0)} QAT steps) ranks the front differently from the longest "
                   f"runs (Kendall tau {tau:.2f} < {TAU_WARNING_BELOW}): trust the long-run qualities")
    return FidelityCheck(steps_at(spec, 0), points, tau, warning)


def search_layers(setup: SearchSetup, proxy_scores: Mapping[str, float] | None = None) -> list[SearchLayer]:
    """Every layer as the search saw it, in execution order; ``proxy_scores`` (fqn -> score): the Fisher
    scores that ordered the search where no one-layer sweep ran (the study's ``mixq:proxy_scores``)."""
    space = setup.space
    scores = proxy_scores or {}
    return [SearchLayer(info=layer, choices=space.options(layer.fqn), pinned_format=space.pinned.get(layer.fqn),
                        costs_by_format=setup.cost_table[layer.fqn], pin_reason=space.pin_reasons.get(layer.fqn),
                        proxy_score=None if scores.get(layer.fqn) is None else float(scores[layer.fqn]))
            for layer in setup.graph.layers]


def assemble_result(setup: SearchSetup, ledger: Ledger, fp32: float, stop_reason: str) -> SearchResult:
    """The result as the ledger stands: the front recomputed on the means, points within noise of a
    cheaper one merged off it."""
    spec, hib = setup.spec, setup.workload.higher_is_better
    trained = outcomes(setup, ledger)
    front = pareto_front(trained, hib)
    merged = within_noise_of_cheaper(
        [p.quality for p in front], [p.quality_std for p in front], [list(p.costs.values()) for p in front],
        hib, spec.min_gain,
    )
    kept = [p for p, m in zip(front, merged, strict=True) if not m]
    untried = front_neighbours(setup.space, [{fqn: p.assignment[fqn] for fqn in setup.space.choices} for p in kept],
                               setup.layer_cost, tried_maps(ledger.trials))
    return SearchResult(
        workload=spec.workload,
        metric_name=setup.workload.metric,
        higher_is_better=hib,
        fp32_quality=fp32,
        layers=search_layers(setup, ledger.attrs.get(StudyKey.PROXY_SCORES)),
        pin_reasons=dict(setup.space.pin_reasons),
        float_layers=list(setup.graph.float_layers),
        trials=sorted(trained, key=lambda o: o.number),
        front=kept,
        study_name=spec.study_name,
        fidelity=fidelity_check(setup, kept),
        fidelity_rungs=spec.rungs,
        promotion_eta=spec.eta,
        qat_steps_used=ledger.qat_steps_used,
        stop_reason=stop_reason,
        merged_within_noise=[p.number for p, m in zip(front, merged, strict=True) if m],
        repeats_skipped=sum(1 for t in ledger.trials if t.state is TrialState.COMPLETE and is_cached(t)),
        neighbour_checks=sum(1 for o in trained if o.source == Source.NEIGHBOUR),
        neighbours_untried=len(untried),
        torch_threads=spec.torch_threads or 0,
    )
