"""Where the Fisher proxy ordered the search instead of a one-layer sweep, the result's layers carry
the scores that ordered it (issue 20: the dashboard's sensitivity panel was empty for such a job)."""

from __future__ import annotations

import optuna
import pytest

from search import SearchSpec, run_search
from search.study.attrs import StudyKey

TINY = {"pretrain_steps": 30}


def _spec(n_trials: int, storage: str) -> SearchSpec:
    # digits with first/last free: 5 free layers; a 5-run sweep fits 16 trials, not 6
    return SearchSpec(workload="digits", workload_options=TINY, n_trials=n_trials, qat_steps=1, reevaluate_front=0,
                      seed_with_sensitivity=True, formats=("int4", "int8"), pin_first_last=None,
                      storage=storage, study_name="proxy-scores")


@pytest.mark.parametrize(("n_trials", "expected"), [(6, "proxy"), (16, "sensitivity")])
def test_the_layers_carry_the_proxy_scores_only_where_the_proxy_ordered_the_search(
    tmp_path: object, n_trials: int, expected: str
) -> None:
    storage = f"sqlite:///{tmp_path}/study.db"
    result = run_search(_spec(n_trials, storage))
    assert expected in {t.source for t in result.trials}
    scores = {layer.fqn: layer.proxy_score for layer in result.layers}
    as_json = {layer["fqn"]: layer["proxy_score"] for layer in result.to_json()["layers"]}
    assert as_json == scores
    if expected == "sensitivity":
        assert set(scores.values()) == {None}
        return
    assert len(scores) == 5 and all(isinstance(v, float) and v >= 0.0 for v in scores.values()), scores
    assert len(set(scores.values())) > 1, "the layers are told apart"
    # the very numbers the seeding used, kept in the study
    stored = optuna.load_study(study_name="proxy-scores", storage=storage).user_attrs[StudyKey.PROXY_SCORES]
    assert stored == pytest.approx(scores)
