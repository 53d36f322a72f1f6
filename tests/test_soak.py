"""`make soak`'s memory-flatness measure by hand (the soak itself is a benchmark, bench/soak.py)."""

import pytest

from bench.soak import drift


def test_drift_compares_the_ends_of_the_last_half():
    warm = [500.0, 400.0, 100.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0]  # the first half is warm-up
    assert drift(warm + [10, 10, 10, 10, 10, 10, 10, 10, 11, 11]) == pytest.approx(0.1)  # 10 -> 11
    assert drift(warm + [20, 20, 15, 15, 15, 15, 15, 15, 10, 10]) == pytest.approx(-0.5)  # 20 -> 10
    assert drift([5.0] * 7) == 0.0  # an odd count: the last half is the longer one
