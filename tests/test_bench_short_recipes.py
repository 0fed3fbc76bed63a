"""bench/short_recipes.py's within-level pair agreement, on literal numbers."""

from bench.short_recipes import pair_agreement


def test_only_pairs_at_one_level_and_apart_enough_count() -> None:
    short = [1.0, 2.0, 3.0, 0.0, 5.0]
    long = [10.0, 9.0, 9.02, 4.0, 6.0]
    level = [1, 1, 1, 2, 2]
    # level 1: (0,1) long 10 > 9 but short 1 < 2: disagree; (0,2) disagree; (1,2) 0.02 apart: not counted
    # level 2: (3,4) agree
    assert pair_agreement(short, long, level, min_gap=0.05) == (1, 3)
    assert pair_agreement(short, long, level, min_gap=0.0) == (2, 4)  # (1,2) now counts and agrees
