"""The study's ledger of QAT work: trials, longer runs at higher rungs, extra-seed re-evaluations,
and the QAT steps they spent.

Rung results and re-evaluations live in study user attributes (``mixq:rung:<rung>:<number>``,
``mixq:reeval:<number>``), so every process sharing the study reads the same ledger; a record with
``quality``/``qualities`` still None is claimed and running (its steps count as spent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.study.attrs import ReevalRecord, RungRecord, StudyKey, TrialAttrs, is_cached
from search.study.multifidelity import promotable
from search.study.objective import RungResult
from search.study.pareto import objective_vector


@dataclass
class Ledger:
    """One read of the study: trials, rung results, re-evaluations and the QAT steps spent."""

    trials: list[FrozenTrial]
    attrs: dict[str, Any]
    rungs: dict[tuple[int, int], RungRecord]  # (rung, trial number) -> record
    reevals: dict[int, ReevalRecord]  # trial number -> record
    qat_steps_used: int

    @classmethod
    def read(cls, study: optuna.Study, first_rung_steps: int) -> Ledger:
        """Read the study once; a RUNNING trial that has not recorded its steps yet reserves
        ``first_rung_steps`` (it may be about to train)."""
        trials = study.get_trials(deepcopy=False)
        attrs = dict(study.user_attrs)
        rungs: dict[tuple[int, int], RungRecord] = {}
        reevals: dict[int, ReevalRecord] = {}
        for key, value in attrs.items():
            if key.startswith(StudyKey.RUNG):
                rung, number = key.removeprefix(StudyKey.RUNG).split(":")
                rungs[(int(rung), int(number))] = value
            elif key.startswith(StudyKey.REEVAL):
                # an older study stored the bare list of qualities
                old: ReevalRecord = {"rung": 0, "qat_steps": 0, "qualities": value}
                rec = cast(ReevalRecord, value) if isinstance(value, dict) else old
                reevals[int(key.removeprefix(StudyKey.REEVAL))] = rec
        used = 0
        for t in trials:
            trial_attrs = TrialAttrs.of(t)
            if trial_attrs.cached:
                continue
            if t.state is TrialState.RUNNING and trial_attrs.qat_steps is None:
                used += first_rung_steps
            else:
                used += trial_attrs.qat_steps or 0
        used += sum(int(rec.get("qat_steps", 0)) for rec in rungs.values())
        used += sum(int(rec.get("qat_steps", 0)) for rec in reevals.values())
        return cls(trials, attrs, rungs, reevals, used)

    def completed(self) -> list[FrozenTrial]:
        """First-rung trials that trained (repeats served from the cache are not evaluations)."""
        return [t for t in self.trials if t.state is TrialState.COMPLETE and not is_cached(t)]

    def top(self, number: int) -> RungResult | None:
        """The highest rung above the first with a finished result for trial ``number``."""
        done = [(r, rec) for (r, n), rec in self.rungs.items() if n == number and rec.get("quality") is not None]
        if not done:
            return None
        rung, rec = max(done, key=lambda item: item[0])
        quality = rec["quality"]
        assert quality is not None
        return RungResult(rung, float(quality), int(rec["qat_steps"]), rec.get("qconfig"))

    def reevaluations(self, number: int, rung: int) -> list[float]:
        """The extra-seed qualities of trial ``number`` measured at ``rung`` (none at another rung)."""
        rec = self.reevals.get(number)
        qualities = None if rec is None else rec.get("qualities")
        if rec is None or not qualities or rec.get("rung", 0) != rung:
            return []
        return [float(q) for q in qualities]

    def next_promotion(self, n_rungs: int, eta: int, higher_is_better: bool) -> tuple[int, int] | None:
        """(trial number, rung) of a map that belongs to the next rung and is not there yet, from the
        highest rung down (finishing a map's climb before screening more at the bottom).  The top
        1/eta of a rung by non-dominated rank belong to the next; an infeasible map is not promoted
        while a feasible one could be."""
        completed = {t.number: t for t in self.completed()}
        for rung in range(n_rungs - 2, -1, -1):
            members: dict[int, tuple[float, ...]] = {}
            feasible: set[int] = set()
            for number, t in completed.items():
                assert t.values is not None
                if rung == 0:
                    quality = t.values[0]
                else:
                    rec = self.rungs.get((rung, number))
                    rung_quality = None if rec is None else rec.get("quality")
                    if rung_quality is None:
                        continue
                    quality = float(rung_quality)
                members[number] = objective_vector(quality, list(t.values[1:]), higher_is_better)
                if all(c <= 0.0 for c in t.constraints.values()):
                    feasible.add(number)
            if feasible:
                members = {n: v for n, v in members.items() if n in feasible}
            for number in promotable(members, eta):
                if (rung + 1, number) not in self.rungs:
                    return number, rung + 1
        return None
