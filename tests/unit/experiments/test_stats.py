"""Experiment statistics with known answers: hand-computed examples, the textbook sandwich, and
simulated A/A and A/B experiments (seeded) with users who make many requests."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pyarrow as pa
import pytest

from flixlake.experiments.stats import (
    always_valid_p_values,
    analyse_experiment,
    confidence_sequence,
    msprt_log_likelihood_ratio,
    ratio_and_variance,
    running_moments,
    user_moments,
)
from flixlake.testing import clustered_arm, simulated_verdicts

ALPHA = 0.05
TAU = 0.03
HOURS = 24
USERS = 400
MIN_USERS = 100


# -- the delta-method variance, by hand ------------------------------------------------------------
def test_per_user_variance_of_a_ratio_by_hand() -> None:
    # users (served, converted): (4, 4), (4, 0), (2, 1) -> R = 5/10 = 0.5
    # residuals y - R n: 2, -2, 0 -> sum of squares 8; V = 3/2 * 8 / 10^2 = 0.12
    rate, variance = ratio_and_variance(user_moments([4, 0, 1], [4, 4, 2]))
    assert rate[0] == pytest.approx(0.5)
    assert variance[0] == pytest.approx(0.12)
    # counting the 10 answers as independent would claim 0.5 * 0.5 / 10 = 0.025: 4.8x too small


def test_with_one_answer_per_user_it_is_the_binomial_variance() -> None:
    # 3 of 10 users converted their single answer: R (1 - R) / (n - 1) = 0.21 / 9
    rate, variance = ratio_and_variance(user_moments([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], [1] * 10))
    assert rate[0] == pytest.approx(0.3)
    assert variance[0] == pytest.approx(0.21 / 9)


def test_a_single_user_has_no_variance_estimate() -> None:
    _, variance = ratio_and_variance(user_moments([1], [3]))
    assert variance[0] == math.inf


def test_running_moments_accumulate_each_users_totals_look_by_look() -> None:
    # look 0: user 0 (1 served, 0 converted), user 1 (2, 1)
    # look 1: user 0 +(2, 1) -> (3, 1); user 2 (1, 1)
    # look 2: user 1 in two rows (two model versions) +(1, 1) +(1, 0) -> (4, 2)
    look = np.array([2, 0, 1, 0, 1, 2])
    user = np.array([1, 0, 0, 1, 2, 1])
    served = np.array([1, 1, 2, 2, 1, 1])
    converted = np.array([1, 0, 1, 1, 1, 0])
    m = running_moments(look, user, served, converted, 4)
    # totals (n, y): look 0 {0: (1,0), 1: (2,1)}; look 1 {0: (3,1), 1: (2,1), 2: (1,1)};
    # look 2 {0: (3,1), 1: (4,2), 2: (1,1)}; look 3: no rows, the same
    assert m.users.tolist() == [2, 3, 3, 3]
    assert m.served.tolist() == [3, 6, 8, 8]
    assert m.converted.tolist() == [1, 3, 4, 4]
    assert m.served_sq.tolist() == [1 + 4, 9 + 4 + 1, 9 + 16 + 1, 26]
    assert m.converted_sq.tolist() == [0 + 1, 1 + 1 + 1, 1 + 4 + 1, 6]
    assert m.cross.tolist() == [0 + 2, 3 + 2 + 1, 3 + 8 + 1, 12]


def test_it_is_the_cluster_robust_sandwich_of_the_answers() -> None:
    """The textbook CR1 sandwich of ``y_ij = b + e_ij`` clustered by user, from answer rows."""
    rng = np.random.default_rng(3)
    hour, user, served, converted = clustered_arm(rng, 200, HOURS)
    answers_user = np.repeat(user, served)
    answers_y = np.concatenate(
        [np.r_[np.ones(c), np.zeros(s - c)] for s, c in zip(served, converted, strict=True)]
    )
    b = answers_y.mean()
    scores = np.bincount(answers_user, weights=answers_y - b)  # X_g' e_g per cluster
    g, n = len(np.unique(answers_user)), len(answers_y)
    sandwich = g / (g - 1) * (scores**2).sum() / n**2  # (X'X)^-1 meat (X'X)^-1, X = 1
    rate, variance = ratio_and_variance(running_moments(hour, user, served, converted, HOURS))
    assert rate[-1] == pytest.approx(b)
    assert variance[-1] == pytest.approx(sandwich, rel=1e-9)


def test_it_matches_the_spread_of_the_rate_over_repeated_experiments() -> None:
    """Monte Carlo: the per-user variance estimates the rate's real variance; the per-answer
    (binomial) one is far too small on clustered data."""
    rng = np.random.default_rng(11)
    rates, estimates, binomial = [], [], []
    for _ in range(1500):
        hour, user, served, converted = clustered_arm(rng, 300, HOURS)
        m = running_moments(hour, user, served, converted, HOURS)
        rate, variance = ratio_and_variance(m)
        rates.append(rate[-1])
        estimates.append(variance[-1])
        binomial.append(rate[-1] * (1 - rate[-1]) / m.served[-1])
    real = np.var(rates, ddof=1)
    assert 0.85 * real < np.mean(estimates) < 1.2 * real  # 1.11x in this run
    assert np.mean(binomial) < 0.5 * real  # 0.33x


# -- the mSPRT, by hand ----------------------------------------------------------------------------
def test_msprt_likelihood_ratio_and_interval_by_hand() -> None:
    # d = 0.05 with standard error 0.02 (V = 0.0004), tau = 0.03 (tau^2 = 0.0009):
    # Lambda = sqrt(0.0004 / 0.0013) * exp(0.0009 * 0.05^2 / (2 * 0.0004 * 0.0013))
    #        = 0.554700 * exp(2.163462) = 0.554700 * 8.701205 = 4.826560; p = 1 / Lambda
    log_lr = msprt_log_likelihood_ratio(0.05, 0.0004, TAU)
    assert math.exp(float(log_lr)) == pytest.approx(4.826560, rel=1e-6)
    p = always_valid_p_values(np.array([0.05]), np.array([0.0004]), TAU)
    assert p[0] == pytest.approx(0.207187, rel=1e-5)
    # half-width sqrt(V (V + tau^2) / tau^2 * (2 log 20 + log 3.25)) = sqrt(5.7778e-4 * 7.170120)
    low, high = confidence_sequence(np.array([0.05]), np.array([0.0004]), TAU, ALPHA)
    assert (low[0], high[0]) == (
        pytest.approx(0.05 - 0.064364, abs=1e-6),
        pytest.approx(0.05 + 0.064364, abs=1e-6),
    )
    # the fixed-horizon z-test would call z = 2.5 significant (p = 0.0124); one look at d = 0.05
    # is not enough evidence for a test that allows every look


def test_the_always_valid_p_value_is_the_running_minimum_over_looks() -> None:
    diff = np.array([0.0, 0.05, 0.01, 0.08])
    variance = np.array([0.0004, 0.0004, 0.0002, 0.0001])
    single = np.minimum(1.0, np.exp(-msprt_log_likelihood_ratio(diff, variance, TAU)))
    p = always_valid_p_values(diff, variance, TAU)
    assert p.tolist() == pytest.approx(np.minimum.accumulate(single).tolist())
    assert p[2] == pytest.approx(single[1])  # weaker evidence later does not undo a look
    assert p[0] == 1.0  # d = 0 is no evidence: Lambda < 1
    # looks that do not count (too few users) leave it as it was
    counted = np.array([True, False, True, True])
    assert always_valid_p_values(diff, variance, TAU, counted)[1] == 1.0


def test_significant_exactly_when_the_interval_excludes_zero() -> None:
    rng = np.random.default_rng(2)
    for _ in range(200):
        diff = rng.normal(0, 0.03, 10)
        variance = rng.uniform(1e-5, 1e-3, 10)
        p = always_valid_p_values(diff, variance, TAU)
        low, high = confidence_sequence(diff, variance, TAU, ALPHA)
        assert ((p < ALPHA) == ((low > 0) | (high < 0))).all()


# -- simulated experiments: false positives and power -----------------------------------------------


def rejection_rates(seed: int, runs: int, lift: float) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    outcomes = [
        simulated_verdicts(rng, USERS, HOURS, lift, TAU, MIN_USERS, ALPHA) for _ in range(runs)
    ]
    return {key: float(np.mean([o[key] for o in outcomes])) for key in outcomes[0]}


def test_an_aa_test_keeps_its_false_positive_rate_at_the_level() -> None:
    runs = 1000
    rates = rejection_rates(seed=20261122, runs=runs, lift=0.0)
    band = 3 * math.sqrt(ALPHA * (1 - ALPHA) / runs)  # 0.021
    # the always-valid test over 24 hourly looks stays below 5 %
    assert rates["always_valid"] <= ALPHA
    # the per-user z-test read once, at the planned end, is at the level
    assert abs(rates["per_user_once"] - ALPHA) <= band
    # what the report must not do: read that z-test every hour, or count answers, not users
    assert rates["per_user_every_hour"] > 2 * ALPHA
    assert rates["per_answer_once"] > 2 * ALPHA


def test_the_sequential_test_finds_a_real_difference() -> None:
    rates = rejection_rates(seed=7, runs=200, lift=0.10)
    assert rates["always_valid"] >= 0.8


# -- analyse_experiment on online_evaluations rows --------------------------------------------------
def t(hour: int) -> dt.datetime:
    return dt.datetime(2026, 11, 22, hour, tzinfo=dt.UTC)


def rows(spec: list[tuple[int, str, str, int, int, int]]) -> pa.Table:
    """``(hour, variant, model_version, user_id, served, converted)`` -> rows."""
    return pa.table(
        {
            "served_hour": pa.array([t(h) for h, *_ in spec], pa.timestamp("us", tz="UTC")),
            "variant": [s[1] for s in spec],
            "model_version": [s[2] for s in spec],
            "user_id": pa.array([s[3] for s in spec], pa.int64()),
            "served": pa.array([s[4] for s in spec], pa.int64()),
            "converted": pa.array([s[5] for s in spec], pa.int64()),
        }
    )


def test_analyse_experiment_sums_per_user_over_hours_and_model_versions() -> None:
    table = rows(
        [
            (9, "control", "m1", 1, 2, 2),
            (10, "control", "m1", 1, 2, 2),  # user 1: (4, 4)
            (9, "control", "m1", 2, 4, 0),  # user 2: (4, 0)
            (10, "control", "m1", 3, 2, 1),  # user 3: (2, 1)
            (9, "treatment", "m2", 4, 1, 1),
            (10, "treatment", "m3", 4, 1, 0),  # user 4: (2, 1) over two model versions
            (10, "treatment", "m3", 5, 2, 2),
            (10, "treatment", "m3", 3, 1, 1),  # user 3 again, in the other variant
        ]
    )
    analysis = analyse_experiment(table, "control", 0.95, min_users=2, mixture_sd=TAU)
    control, treatment = analysis.results
    assert analysis.hours == (t(9), t(10))
    assert analysis.users_in_several_variants == 1
    # control: the hand example above, R = 0.5, V = 0.12 -> interval 0.5 +- 1.96 * 0.3464
    assert (control.users, control.served, control.converted) == (3, 10, 5)
    assert (control.ci_low, control.ci_high) == (0.0, 1.0)  # 0.5 +- 0.679, clipped to [0, 1]
    assert control.design_effect == pytest.approx(0.12 / 0.025)
    assert (control.verdict, control.comparison) == ("control", None)
    # treatment: users 4 (2, 1), 5 (2, 2), 3 (1, 1): R = 4/5, residuals -0.6, 0.4, 0.2
    assert (treatment.users, treatment.served, treatment.converted) == (3, 5, 4)
    assert treatment.model_versions == ("m2", "m3")
    v_treatment = 3 / 2 * (0.36 + 0.16 + 0.04) / 25
    c = treatment.comparison
    assert c is not None
    assert c.diff == pytest.approx(0.3)
    assert c.z == pytest.approx(0.3 / math.sqrt(0.12 + v_treatment))
    assert c.looks.counted.tolist() == [False, True]  # at 9:00 control had 2 users, treatment 1
    # V = 0.1488: Lambda = sqrt(0.1488 / 0.1497) * exp(0.0009 * 0.09 / (2 * 0.1488 * 0.1497))
    # = 0.99699 * 1.00182 < 1: three users each are no evidence at all
    assert c.p_value == 1.0
    assert (c.diff_low, c.diff_high) == (pytest.approx(-c.diff_high + 0.6), c.diff_high)
    assert c.diff_low < 0 < c.diff_high
    assert treatment.verdict == "not significant yet"

    strict = analyse_experiment(table, "control", 0.95, min_users=4, mixture_sd=TAU)
    assert (strict.results[1].verdict, strict.results[1].comparison) == ("too few users", None)
    with pytest.raises(LookupError, match="'nobody'"):
        analyse_experiment(table, "nobody", 0.95, min_users=2, mixture_sd=TAU)
