"""Drift distances against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flixlake.audit.distances import (
    OTHER,
    expected_noise,
    js_distance,
    largest_shift,
    measure,
    pool,
    psi,
)


def test_psi_of_a_two_bin_shift() -> None:
    # reference 50/50, window 70/30: 0.2 ln(0.7/0.5) + (-0.2) ln(0.3/0.5)
    assert psi(np.array([70, 30]), np.array([50, 50])) == pytest.approx(0.1694596, abs=1e-7)
    assert psi(np.array([5, 5]), np.array([50, 50])) == 0.0  # shares, not counts
    assert math.isnan(psi(np.array([0, 0]), np.array([1, 1])))


def test_psi_floors_an_empty_share() -> None:
    # window (1, 0) vs (0.5, 0.5): (1 - 0.5) ln(1 / 0.5) + (1e-4 - 0.5) ln(1e-4 / 0.5)
    expected = 0.5 * math.log(2) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    assert psi(np.array([10, 0]), np.array([5, 5])) == pytest.approx(expected)


def test_jensen_shannon_distance_in_bits() -> None:
    assert js_distance(np.array([1, 0]), np.array([0, 1])) == pytest.approx(1.0)  # disjoint
    assert js_distance(np.array([3, 3]), np.array([1, 1])) == pytest.approx(0.0)
    # p = (0.5, 0.5), q = (1, 0), m = (0.75, 0.25):
    # KL(p||m) = 0.5 log2(2/3) + 0.5 log2(2) = 0.2075187; KL(q||m) = log2(4/3) = 0.4150375
    # JSD = 0.3112781, distance = sqrt = 0.5579230
    assert js_distance(np.array([1, 1]), np.array([4, 0])) == pytest.approx(0.5579230, abs=1e-6)
    assert math.isnan(js_distance(np.array([0, 0]), np.array([1, 0])))


def test_expected_noise_follows_the_chi_square_approximation() -> None:
    # (k - 1) (1/n + 1/m) / (8 ln 2) = 4 x (1/100 + 1/400) / 5.5452 = 0.0090168 -> sqrt
    assert expected_noise(5, 100, 400) == pytest.approx(math.sqrt(0.05 / (8 * math.log(2))))
    assert expected_noise(1, 100, 400) == 0.0  # one category cannot move
    assert expected_noise(5, 0, 400) == 0.0


def test_pooling_keeps_frequent_and_bursting_categories() -> None:
    reference = {"a": 500.0, "b": 300.0, "c": 10.0, "d": 10.0, "e": 180.0}
    window = {"a": 50.0, "b": 30.0, "c": 1.0, "d": 8.0, "f": 1.0}  # n = 90
    pooled = pool(window, reference, min_expected=5)
    # expected in the window: a 45, b 27, c 0.9, d 0.9 (but seen 8), e 16.2, f 0 (seen 1)
    assert pooled.categories == ["a", "b", "d", "e", OTHER]
    assert pooled.window.tolist() == [50, 30, 8, 0, 2]  # other = c + f
    assert pooled.reference.tolist() == [500, 300, 10, 180, 10]


def test_measure_removes_the_noise_a_resample_of_the_reference_shows() -> None:
    rng = np.random.default_rng(3)
    shares = rng.dirichlet(np.ones(300))
    reference = dict(enumerate(rng.multinomial(200_000, shares).astype(float)))
    same = dict(enumerate(rng.multinomial(3_000, shares).astype(float)))
    got = measure(
        {str(k): v for k, v in same.items()}, {str(k): v for k, v in reference.items()}, 5
    )
    assert got.js_distance > 0.1  # sampling alone looks like drift on the raw distance...
    assert got.distance < 0.05  # ...and is gone once the expected noise is removed
    moved = np.roll(shares, 1)  # the same popularity curve on other movies: real drift
    shifted = dict(enumerate(rng.multinomial(3_000, moved).astype(float)))
    got = measure(
        {str(k): v for k, v in shifted.items()}, {str(k): v for k, v in reference.items()}, 5
    )
    assert got.distance > 0.3


def test_largest_shift_names_the_category_and_both_shares() -> None:
    pooled = pool({"1": 10.0, "5": 90.0}, {"1": 50.0, "5": 50.0}, 1)
    assert largest_shift(pooled) == "1: 0.500 -> 0.100"
