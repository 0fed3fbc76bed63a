"""search.study.pareto: numbers in, numbers out, checked against literals."""

import pytest

from search.study.pareto import dominates, hypervolume_2d, non_dominated, objective_vector


def test_dominates_needs_strictly_better_somewhere() -> None:
    assert dominates((1.0, 2.0), (1.0, 3.0))
    assert not dominates((1.0, 2.0), (1.0, 2.0))
    assert not dominates((0.0, 3.0), (1.0, 2.0))


def test_non_dominated_indices_in_input_order() -> None:
    vectors = [(3.0, 1.0), (1.0, 3.0), (2.0, 2.0), (2.5, 2.5), (1.0, 4.0)]
    assert non_dominated(vectors) == [0, 1, 2]


def test_identical_vectors_are_all_kept_or_the_first_one() -> None:
    vectors = [(2.0, 2.0), (1.0, 3.0), (2.0, 2.0), (3.0, 3.0)]
    assert non_dominated(vectors) == [0, 1, 2]
    assert non_dominated(vectors, keep_duplicates=False) == [0, 1]


def test_non_dominated_in_three_objectives() -> None:
    vectors = [(1.0, 1.0, 5.0), (1.0, 1.0, 4.0), (0.0, 9.0, 9.0), (2.0, 2.0, 2.0), (2.0, 2.0, 3.0)]
    assert non_dominated(vectors) == [1, 2, 3]


def test_objective_vector_negates_a_maximised_quality() -> None:
    assert objective_vector(0.9, [10.0, 2.0], higher_is_better=True) == (-0.9, 10.0, 2.0)
    assert objective_vector(0.1, [10.0], higher_is_better=False) == (0.1, 10.0)


def test_hypervolume_2d_staircase() -> None:
    assert hypervolume_2d([(0.0, 1.0), (1.0, 0.0)], (2.0, 2.0)) == 3.0
    # a dominated point and one beyond the reference add nothing
    assert hypervolume_2d([(0.0, 1.0), (1.0, 0.0), (1.5, 1.5), (3.0, -1.0)], (2.0, 2.0)) == 3.0
    assert hypervolume_2d([], (1.0, 1.0)) == 0.0


def test_hypervolume_2d_rejects_other_dimensions() -> None:
    with pytest.raises(ValueError, match="2-D"):
        hypervolume_2d([(0.0, 1.0, 2.0)], (2.0, 2.0, 2.0))
