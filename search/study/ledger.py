"""The study's ledger of QAT work: trials, longer runs at higher rungs, extra-seed re-evaluations,
and the QAT steps they spent.

Rung results and re-evaluations live in study user attributes (``mixq:rung:<rung>:<number>``,
``mixq:reeval:<number>``), so every process sharing the study reads the same ledger; a record with
``quality``/``qualities`` still None is claimed and running (its steps count as spent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.study.multifidelity import promotable
from search.study.objective import RungResult
from search.study.pareto import objective_vector

ATTR_REEVAL = "mixq:reeval:"  # + trial number -> {"rung", "qat_steps", "qualities" (None while running)}
ATTR_RUNG = "mixq:rung:"  # + "<rung>:<trial number>" -> {"qat_steps", "worker", "quality", "qconfig"}


def rung_key(rung: int, number: int) -> str:
    return f"{ATTR_RUNG}{rung}:{number}"


def reeval_key(number: int) -> str:
    return f"{ATTR_REEVAL}{number}"


@dataclass
class Ledger:
    """One read of the study: trials, rung results, re-evaluations and the QAT steps spent."""

    trials: list[FrozenTrial]
    attrs: dict[str, Any]
    rungs: dict[tuple[int, int], dict[str, Any]]  # (rung, trial number) -> record
    reevals: dict[int, dict[str, Any]]  # trial number -> record
    qat_steps_used: int

    @classmethod
    def read(cls, study: optuna.Study, first_rung_steps: int) -> Ledger:
        """Read the study once; a RUNNING trial that has not recorded its steps yet reserves
        ``first_rung_steps`` (it may be about to train)."""
        trials = study.get_trials(deepcopy=False)
        attrs = dict(study.user_attrs)
        rungs: dict[tuple[int, int], dict[str, Any]] = {}
        reevals: dict[int, dict[str, Any]] = {}
        for key, value in attrs.items():
            if key.startswith(ATTR_RUNG):
                rung, number = key.removeprefix(ATTR_RUNG).split(":")
                rungs[(int(rung), int(number))] = value
            elif key.startswith(ATTR_REEVAL):
                # an older study stored the bare list of qualities
                rec = value if isinstance(value, dict) else {"rung": 0, "qat_steps": 0, "qualities": value}
                reevals[int(key.removeprefix(ATTR_REEVAL))] = rec
        used = 0
        for t in trials:
            if t.user_attrs.get("cached"):
                continue
            if t.state is TrialState.RUNNING and "qat_steps" not in t.user_attrs:
                used += first_rung_steps
            else:
                used += int(t.user_attrs.get("qat_steps", 0))
        used += sum(int(rec.get("qat_steps", 0)) for rec in rungs.values())
        used += sum(int(rec.get("qat_steps", 0)) for rec in reevals.values())
        return cls(trials, attrs, rungs, reevals, used)

    def completed(self) -> list[FrozenTrial]:
        """First-rung trials that trained (repeats served from the cache are not evaluations)."""
        return [t for t in self.trials if t.state is TrialState.COMPLETE and not t.user_attrs.get("cached")]

    def top(self, number: int) -> RungResult | None:
        """The highest rung above the first with a finished result for trial ``number``."""
        done = [(r, rec) for (r, n), rec in self.rungs.items() if n == number and rec.get("quality") is not None]
        if not done:
            return None
        rung, rec = max(done, key=lambda item: item[0])
        return RungResult(rung, float(rec["quality"]), int(rec["qat_steps"]), rec.get("qconfig"))

    def reevaluations(self, number: int, rung: int) -> list[float]:
        """The extra-seed qualities of trial ``number`` measured at ``rung`` (none at another rung)."""
        rec = self.reevals.get(number)
        if rec is None or not rec.get("qualities") or rec.get("rung", 0) != rung:
            return []
        return [float(q) for q in rec["qualities"]]

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
                    if rec is None or rec.get("quality") is None:
                        continue
                    quality = float(rec["quality"])
                members[number] = objective_vector(quality, list(t.values[1:]), higher_is_better)
                if all(c <= 0.0 for c in t.constraints.values()):
                    feasible.add(number)
            if feasible:
                members = {n: v for n, v in members.items() if n in feasible}
            for number in promotable(members, eta):
                if (rung + 1, number) not in self.rungs:
                    return number, rung + 1
        return None
