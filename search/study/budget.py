"""What a search process does next, and what the budget still affords: pure functions of the spec,
a few counts read from the study's ledger, and the clock (no study, no training), tested with
literals in ``tests/search/test_budget.py``.

The budget is ``n_trials`` first-rung trials, or ``budget_qat_steps`` QAT steps over every rung and
re-evaluation; ``timeout_s`` bounds either in wall time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from search.spec import SearchSpec


@dataclass(frozen=True)
class NewTrial:
    """Train a new map at the first rung."""


@dataclass(frozen=True)
class Promote:
    """Train trial ``number``'s map again, longer, at ``rung``."""

    number: int
    rung: int


@dataclass(frozen=True)
class Wait:
    """The budget is held by trials running elsewhere (they may finish, or turn out stale)."""


@dataclass(frozen=True)
class Done:
    """Stop searching, for ``reason``."""

    reason: str


Work = NewTrial | Promote | Wait | Done  # one unit of a search process's loop
TRIAL, WAIT = NewTrial(), Wait()


@dataclass(frozen=True)
class StudyCounts:
    """What :func:`next_work` needs of the study's ledger."""

    completed: int  # first-rung trials that trained (cached repeats excluded)
    running: int  # trials running anywhere
    distinct_maps: int  # maps with a completed trial
    trials: int  # every trial, failed and repeated ones included
    qat_steps_used: int  # every rung and re-evaluation, claimed runs included
    promotion: tuple[int, int] | None = None  # (trial number, rung) the ledger would promote next


def steps_at(spec: SearchSpec, rung: int) -> int:
    """QAT steps of one run at ``rung``."""
    return spec.qat_steps * spec.rungs[rung]


def reevaluation_reserve(spec: SearchSpec) -> int:
    """QAT steps a budgeted search keeps for re-evaluating the front: the extra seeds of two
    neighbours at the highest rung (the usual adaptive case), at most a quarter of the budget."""
    budget = spec.budget_qat_steps
    if budget is None or spec.reevaluate_front == 0:
        return 0
    return min(2 * spec.reevaluate_front * steps_at(spec, len(spec.rungs) - 1), budget // 4)


def fits(spec: SearchSpec, qat_steps_used: int, qat_steps: int, reserve: int = 0) -> bool:
    """Does a run of ``qat_steps`` fit in a QAT-step budget (always, without one)?"""
    budget = spec.budget_qat_steps
    return budget is None or qat_steps_used + qat_steps <= budget - reserve


def trial_budget(spec: SearchSpec, durations_s: Sequence[float], elapsed_s: float) -> int:
    """How many first-rung trials the budget affords: ``n_trials``, the QAT-step budget, or what is
    left of ``timeout_s`` at the mean of ``durations_s`` (the trials trained so far)."""
    n_trials = spec.n_trials
    if spec.budget_qat_steps is not None and spec.qat_steps > 0:
        n_trials = spec.budget_qat_steps // spec.qat_steps
    if spec.timeout_s is not None and durations_s:
        per_trial = sum(durations_s) / len(durations_s)
        left_s = spec.timeout_s - elapsed_s
        n_trials = min(n_trials, len(durations_s) + int(max(left_s, 0.0) / max(per_trial, 1e-3)))
    return n_trials


def trials_left(spec: SearchSpec, qat_steps_used: int, completed: int, budget_trials: int) -> int:
    """First-rung trials the budget still affords: of a QAT-step budget, what is left after every
    rung and the re-evaluation reserve; else of ``budget_trials``, those not trained yet."""
    budget = spec.budget_qat_steps
    if budget is not None:
        return max(0, (budget - reevaluation_reserve(spec) - qat_steps_used) // max(steps_at(spec, 0), 1))
    return max(0, budget_trials - completed)


def progress_total(spec: SearchSpec) -> int:
    """The trial count a progress bar runs to."""
    budget = spec.budget_qat_steps
    return spec.n_trials if budget is None else max(1, budget // steps_at(spec, 0))


def next_work(spec: SearchSpec, counts: StudyCounts, *, space_size: int, elapsed_s: float,
              metric_at_best: bool = False) -> Work:
    """What this process does next: promote a trial to a rung, run a new map at the first rung,
    wait (the budget is taken by trials running elsewhere, which may finish or turn out stale), or
    stop with a reason."""
    if spec.timeout_s is not None and elapsed_s >= spec.timeout_s:
        return Done("timeout")
    if metric_at_best:
        return Done("the cheapest map scores the metric's best value")
    reserve = reevaluation_reserve(spec)
    used = counts.qat_steps_used
    if counts.promotion is not None and fits(spec, used, steps_at(spec, counts.promotion[1]), reserve):
        return Promote(number=counts.promotion[0], rung=counts.promotion[1])
    limit = spec.n_trials if spec.budget_qat_steps is None else spec.budget_qat_steps // steps_at(spec, 0)
    hard_cap = 4 * limit + 10  # repeats and failures cannot loop forever
    if counts.distinct_maps >= space_size:
        return WAIT if counts.running else Done("every map in the space was tried")
    if counts.trials >= hard_cap:
        return Done("too many repeated or failed trials")
    if counts.completed >= limit:
        return WAIT if counts.running and spec.budget_qat_steps is not None else Done("budget")
    if spec.budget_qat_steps is None:
        return TRIAL if counts.completed + counts.running < limit else WAIT
    if fits(spec, used, steps_at(spec, 0), reserve):
        return TRIAL
    return WAIT if counts.running else Done("budget")


# -- maps per QAT pass (spec.maps_per_pass) -------------------------------------------------------

# On a CPU batching shares per-operator overhead, not arithmetic (bench/results/batched_qat/default.md, 1
# thread, K = 8 vs one map at a time): corpus kws 2.55x, resnet18 2.36x, espcn 1.92x at 0.02-0.63M MACs per
# layer per training step; digits 0.91x (6.2M), denoise-deep 0.97x (16.8M), denoise 0.88x (51M) gained
# nothing or lost.  So a CPU batches only below BATCHING_PAYS_BELOW_MACS.  GPU: not measured (no device was
# lent); a small model's step there is kernel-launch overhead, so it batches, provisionally.
AUTO_MAPS_CPU = 8
AUTO_MAPS_GPU = 16
BATCHING_PAYS_BELOW_MACS = 2_000_000  # mean MACs per layer of one training step, on a CPU
# above these sizes a map's step is compute, not overhead, and several maps only add memory
SMALL_MODEL_PARAMS_CPU = 2_000_000
SMALL_MODEL_PARAMS_GPU = 50_000_000
# what one map holds while it trains, in float32 values: its weights, their gradients, Adam's two
# moments and the fake-quantized copy (5 per parameter); the activations kept for backward, their
# fake-quantized copies and gradients (3 per activation value of a forward pass)
VALUES_PER_PARAM = 5
VALUES_PER_ACTIVATION = 3
MEMORY_SHARE = 0.25  # the most of the device's free memory the maps of one pass may take


def map_bytes(n_params: int, activation_values: int) -> int:
    """An estimate of the memory one map takes while it trains (bytes, float32)."""
    return 4 * (VALUES_PER_PARAM * n_params + VALUES_PER_ACTIVATION * activation_values)


def auto_maps_per_pass(n_params: int, activation_values: int, device_type: str, free_bytes: int | None,
                       layer_macs_per_step: float = 0.0) -> int:
    """How many maps one QAT pass trains when ``maps_per_pass`` is automatic: on a CPU
    :data:`AUTO_MAPS_CPU` where a training step is overhead-bound (a small model whose layers average
    fewer than :data:`BATCHING_PAYS_BELOW_MACS` MACs per step, ``layer_macs_per_step``), else 1; on a GPU
    :data:`AUTO_MAPS_GPU` below :data:`SMALL_MODEL_PARAMS_GPU`; never more than fit :data:`MEMORY_SHARE` of
    ``free_bytes`` (the device's free memory; None: not known, no cap), and at least 1.
    ``activation_values`` counts the values one forward pass of the training batch produces."""
    gpu = device_type != "cpu"
    if n_params > (SMALL_MODEL_PARAMS_GPU if gpu else SMALL_MODEL_PARAMS_CPU):
        return 1
    if not gpu and layer_macs_per_step >= BATCHING_PAYS_BELOW_MACS:
        return 1
    maps = AUTO_MAPS_GPU if gpu else AUTO_MAPS_CPU
    if free_bytes is not None:
        maps = min(maps, int(MEMORY_SHARE * free_bytes) // max(map_bytes(n_params, activation_values), 1))
    return max(1, maps)


def batch_size(spec: SearchSpec, maps_per_pass: int, counts: StudyCounts, budget_trials: int, space_size: int) -> int:
    """How many new first-rung trials the next pass asks for: up to ``maps_per_pass``, never more than
    the budget still affords (:func:`trials_left`, less the trials running anywhere where the budget is
    in trials: they hold slots) nor more than the maps of the space not tried yet; at least 1 (called
    when :func:`next_work` said :class:`NewTrial`)."""
    left = trials_left(spec, counts.qat_steps_used, counts.completed, budget_trials)
    if spec.budget_qat_steps is None:
        left -= counts.running
    return max(1, min(maps_per_pass, left, space_size - counts.distinct_maps - counts.running))
