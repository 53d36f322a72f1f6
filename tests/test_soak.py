"""`make soak`'s memory-flatness measure by hand (the soak itself is a benchmark, bench/soak.py)."""

import pytest

from bench.soak import drift


def test_drift_compares_the_last_fifth_with_the_first_fifth_after_warmup():
    warmup = [500.0] * 5  # start-up allocations are not drift
    assert drift(warmup + [10, 10, 10, 10, 10, 10, 10, 10, 11, 11]) == pytest.approx(0.1)  # 10 -> 11
    assert drift(warmup + [20, 20, 15, 15, 15, 15, 15, 15, 10, 10]) == pytest.approx(-0.5)  # 20 -> 10
