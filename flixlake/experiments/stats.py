"""Experiment statistics over ``online_evaluations``: users are the unit, and every hourly look is
allowed.

**The user is the unit of analysis.** Routing randomises users, not requests
(:mod:`flixlake.experiments.routing`), and one user's answers are correlated (the same taste, the
same visit), so counting answers as independent trials makes intervals too narrow and p-values
too small. A variant's watch-through is still the ratio ``R = sum(converted) / sum(served)`` over
its answers, but its variance is the delta-method (cluster-robust) variance over users ``i``::

    V(R) = n / (n - 1) * sum_i (converted_i - R * served_i)^2 / (sum_i served_i)^2

(Deng, Knoblich & Lu 2018, "Applying the Delta Method in Metric Analytics"; it is the CR1
sandwich variance of a regression of each answer's conversion on the variant, clustered by
user). With one answer per user it is the binomial ``R (1 - R) / (n - 1)``; the *design effect*
``V(R) / (R (1 - R) / answers)`` says how much the clustering widens the interval.

**Hourly looks: an always-valid sequential test (mSPRT).** The ``flixlake_online`` DAG refreshes
the numbers every hour and anyone may run the report at any time; a fixed-horizon z-test read at
every look rejects a true null far more often than its level. So the difference of a variant
and the control, ``d = R_variant - R_control`` with variance ``V = V_variant + V_control``, is
tested with the normal-mixture sequential probability ratio test (mSPRT: Robbins 1970; Johari,
Koomen, Pekelis & Walsh, "Peeking at A/B Tests", KDD 2017), mixing over effects ``N(0, tau^2)``::

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2)))

at every served hour (a *look*: the cumulative per-user totals up to that hour). The
always-valid p-value is ``min(1, min over looks of 1 / Lambda)``: at most ``alpha`` under the null
however many looks are taken and whenever one stops (asymptotically, as ``V`` is estimated; the
seeded A/A simulations in the tests and ``bench/experiment_stats.py`` measure 0.5 %). Its confidence sequence, intersected over
looks, is ``d +- sqrt(V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2) / V)))``; it
excludes 0 exactly when the p-value is below ``alpha``. ``tau`` is ``online.mixture_sd``: the
interval is narrowest when the standard error of ``d`` is about ``tau / 2.9``. A look counts only
once both arms have ``online.min_users`` users (the plug-in variance needs some).

Why sequential rather than a fixed horizon: a power analysis needs the clustered variance, which
is unknown before the data, and the refusal to read the result early relies on discipline that
an hourly job and a report anyone can run do not give. The price is a wider interval than a
single planned look; the gain is that stopping as soon as it is significant is allowed.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flixlake.contract.logformat import as_utc
from flixlake.lake.store import Lake, MissingTableError
from flixlake.lake.tables import ONLINE_EVALUATIONS

ONLINE = ONLINE_EVALUATIONS.name
RUN_FIRST = (
    "run the online evaluation first: spark-submit jobs/online_evaluation.py or the "
    "flixlake_online DAG (or flixlake experiment evaluate)"
)
ROW_COLUMNS = ["served_hour", "variant", "model_version", "user_id", "served", "converted"]


# -- one arm: per-user totals, look by look --------------------------------------------------------
@dataclass(frozen=True)
class Moments:
    """Sums over users of their cumulative totals ``(n_i, y_i)`` = (served, converted), one entry
    per look: enough for the ratio and its delta-method variance at every look."""

    users: np.ndarray
    served: np.ndarray  # sum n_i
    converted: np.ndarray  # sum y_i
    served_sq: np.ndarray  # sum n_i^2
    converted_sq: np.ndarray  # sum y_i^2
    cross: np.ndarray  # sum n_i y_i


def user_moments(converted: Sequence[float], served: Sequence[float]) -> Moments:
    """The moments of one look from per-user totals (one entry per user)."""
    y = np.asarray(converted, dtype=np.float64)
    n = np.asarray(served, dtype=np.float64)
    return Moments(
        users=np.array([float(n.shape[0])]),
        served=np.array([n.sum()]),
        converted=np.array([y.sum()]),
        served_sq=np.array([(n * n).sum()]),
        converted_sq=np.array([(y * y).sum()]),
        cross=np.array([(n * y).sum()]),
    )


def running_moments(
    look: np.ndarray, user: np.ndarray, served: np.ndarray, converted: np.ndarray, n_looks: int
) -> Moments:
    """Moments after each look ``0 .. n_looks-1`` of rows ``(look, user, served, converted)``.

    ``look`` and ``user`` are small non-negative integer codes; a user's totals accumulate over
    the looks (rows of one user and look are added up). One pass over the rows sorted by look.
    """
    order = np.argsort(look, kind="stable")
    look, user = look[order], user[order]
    dn, dy = served[order].astype(np.float64), converted[order].astype(np.float64)
    size = int(user.max()) + 1 if user.shape[0] else 0
    n_tot, y_tot = np.zeros(size), np.zeros(size)
    out = np.zeros((6, n_looks))
    sums = np.zeros(6)  # users, n, y, n^2, y^2, n*y
    bounds = np.searchsorted(look, np.arange(n_looks + 1))
    for k in range(n_looks):
        lo, hi = bounds[k], bounds[k + 1]
        if hi > lo:
            ids, inverse = np.unique(user[lo:hi], return_inverse=True)
            add_n = np.bincount(inverse, weights=dn[lo:hi])
            add_y = np.bincount(inverse, weights=dy[lo:hi])
            old_n, old_y = n_tot[ids], y_tot[ids]
            new_n, new_y = old_n + add_n, old_y + add_y
            n_tot[ids], y_tot[ids] = new_n, new_y
            sums += (
                np.count_nonzero((old_n == 0) & (new_n > 0)),
                add_n.sum(),
                add_y.sum(),
                (new_n * new_n - old_n * old_n).sum(),
                (new_y * new_y - old_y * old_y).sum(),
                (new_n * new_y - old_n * old_y).sum(),
            )
        out[:, k] = sums
    return Moments(*out)


def ratio_and_variance(m: Moments) -> tuple[np.ndarray, np.ndarray]:
    """Watch-through ``sum y / sum n`` and its delta-method (cluster-robust) variance.

    ``inf`` variance with fewer than two users; ``nan`` rate without answers.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = m.converted / m.served
        residual_sq = m.converted_sq - 2 * rate * m.cross + rate * rate * m.served_sq
        residual_sq = np.maximum(residual_sq, 0.0)  # rounding can dip below 0 when all fit
        variance = m.users / (m.users - 1) * residual_sq / (m.served * m.served)
    return rate, np.where(m.users >= 2, variance, np.inf)


def design_effect(rate: float, variance: float, served: float) -> float:
    """How many times the per-user variance exceeds the per-answer (binomial) one."""
    binomial = rate * (1 - rate) / served
    return variance / binomial if binomial > 0 else float("nan")


# -- the sequential test ----------------------------------------------------------------------------
def msprt_log_likelihood_ratio(
    diff: np.ndarray | float, variance: np.ndarray | float, tau: float
) -> np.ndarray:
    """``log Lambda`` of the normal-mixture SPRT of ``d = 0`` (mixture ``N(0, tau^2)``)."""
    d = np.asarray(diff, dtype=np.float64)
    v = np.asarray(variance, dtype=np.float64)
    t2 = tau * tau
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lr = 0.5 * np.log(v / (v + t2)) + t2 * d * d / (2 * v * (v + t2))
    # V = 0 (every user converted all or none of their answers): certain unless d = 0
    degenerate = np.where(d == 0, -np.inf, np.inf)
    log_lr = np.where(v == 0, degenerate, log_lr)
    return np.where(np.isinf(v), -np.inf, log_lr)  # no variance estimate yet: no evidence


def always_valid_p_values(
    diff: np.ndarray, variance: np.ndarray, tau: float, counted: np.ndarray | None = None
) -> np.ndarray:
    """The always-valid p-value after each look: ``min(1, min over looks so far of 1/Lambda)``.

    Looks where ``counted`` is False (too few users) leave the p-value as it was.
    """
    log_lr = msprt_log_likelihood_ratio(diff, variance, tau)
    if counted is not None:
        log_lr = np.where(counted, log_lr, -np.inf)
    return np.minimum(1.0, np.exp(-np.maximum.accumulate(log_lr)))


def confidence_sequence(
    diff: np.ndarray,
    variance: np.ndarray,
    tau: float,
    alpha: float,
    counted: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The mSPRT's always-valid interval for ``d`` after each look, intersected over looks."""
    d = np.asarray(diff, dtype=np.float64)
    v = np.asarray(variance, dtype=np.float64)
    t2 = tau * tau
    with np.errstate(divide="ignore", invalid="ignore"):
        half = np.sqrt(v * (v + t2) / t2 * (2 * math.log(1 / alpha) + np.log((v + t2) / v)))
    half = np.where(v == 0, 0.0, half)
    low, high = d - half, d + half
    if counted is not None:
        low, high = np.where(counted, low, -np.inf), np.where(counted, high, np.inf)
    low = np.nan_to_num(low, nan=-np.inf)
    high = np.nan_to_num(high, nan=np.inf)
    return np.maximum.accumulate(low), np.minimum.accumulate(high)


# -- comparing an experiment's variants ---------------------------------------------------------------
@dataclass(frozen=True)
class Looks:
    """A variant against the control at every served hour (for the report's plot)."""

    hours: tuple[dt.datetime, ...]
    diff: np.ndarray
    low: np.ndarray  # always-valid interval, intersected over looks
    high: np.ndarray
    p_value: np.ndarray  # always-valid
    counted: np.ndarray  # both arms had min_users users


@dataclass(frozen=True)
class Comparison:
    """A variant against the control at the last look."""

    diff: float
    diff_low: float  # always-valid interval
    diff_high: float
    z: float  # the difference over its per-user standard error at this look
    p_value: float  # always-valid over all looks
    looks: Looks


@dataclass(frozen=True)
class VariantResult:
    """One variant's answers over a range of hours and its comparison with the control."""

    variant: str
    model_versions: tuple[str, ...]
    users: int
    served: int
    converted: int
    ci_low: float  # per-user (delta-method) interval of the rate
    ci_high: float
    design_effect: float
    comparison: Comparison | None  # None for the control and when there are too few users
    verdict: str  # control | higher/lower: significant at 95% | not significant yet | too few users

    @property
    def rate(self) -> float:
        return self.converted / self.served


@dataclass(frozen=True)
class ExperimentAnalysis:
    """All variants (control first) and the facts the report states about the data."""

    results: list[VariantResult]
    hours: tuple[dt.datetime, ...]
    users_in_several_variants: int


def significance_label(diff: float, confidence: float) -> str:
    """The verdict of a significant difference, e.g. ``higher: significant at 95%``."""
    return f"{'higher' if diff > 0 else 'lower'}: significant at {confidence * 100:g}%"


def _codes(values: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list]:
    """Dense integer codes of a column and the distinct values, sorted."""
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    distinct = pc.unique(array).sort()
    codes = pc.index_in(array, value_set=distinct).to_numpy(zero_copy_only=False)
    return codes.astype(np.int64), distinct.to_pylist()


def analyse_experiment(
    rows: pa.Table, control: str, confidence: float, min_users: int, mixture_sd: float
) -> ExperimentAnalysis:
    """Per-user watch-through of every variant and its sequential test against ``control``.

    ``rows``: ``online_evaluations`` rows of one experiment (per served hour, variant, model
    version and user). Control first, then the other variants by name.
    """
    alpha = 1 - confidence
    z_crit = NormalDist().inv_cdf(1 - alpha / 2)
    hour_codes, hours = _codes(rows["served_hour"])
    user_codes, _ = _codes(rows["user_id"])
    variants = rows["variant"].to_pylist()
    names = sorted(set(variants))
    if control not in names:
        raise LookupError(f"control variant {control!r} has no answers here; variants: {names}")
    variant_arr = np.array(variants, dtype=object)
    served = rows["served"].to_numpy().astype(np.float64)
    converted = rows["converted"].to_numpy().astype(np.float64)
    versions = rows["model_version"].to_pylist()
    moments: dict[str, Moments] = {}
    for name in names:
        mask = variant_arr == name
        moments[name] = running_moments(
            hour_codes[mask], user_codes[mask], served[mask], converted[mask], len(hours)
        )
    variant_codes = np.unique(variant_arr, return_inverse=True)[1]
    user_variants = np.unique(user_codes * len(names) + variant_codes) // len(names)
    several = int(np.count_nonzero(np.bincount(user_variants) > 1))

    control_rate, control_var = ratio_and_variance(moments[control])
    results = []
    for name in [control, *[n for n in names if n != control]]:
        m = moments[name]
        rate, var = ratio_and_variance(m)
        last_var = float(var[-1])
        half = z_crit * math.sqrt(last_var) if math.isfinite(last_var) else math.inf
        comparison = None
        if name == control:
            verdict = "control"
        else:
            counted = (m.users >= min_users) & (moments[control].users >= min_users)
            diff = rate - control_rate
            diff_var = var + control_var
            p_values = always_valid_p_values(diff, diff_var, mixture_sd, counted)
            low, high = confidence_sequence(diff, diff_var, mixture_sd, alpha, counted)
            if not counted[-1]:
                verdict = "too few users"
            else:
                d, v = float(diff[-1]), float(diff_var[-1])
                z = d / math.sqrt(v) if v > 0 else (0.0 if d == 0 else math.copysign(math.inf, d))
                comparison = Comparison(
                    diff=d,
                    diff_low=float(low[-1]),
                    diff_high=float(high[-1]),
                    z=z,
                    p_value=float(p_values[-1]),
                    looks=Looks(tuple(hours), diff, low, high, p_values, counted),
                )
                significant = comparison.p_value < alpha
                verdict = (
                    significance_label(d, confidence) if significant else "not significant yet"
                )
        users, n, y = int(m.users[-1]), int(m.served[-1]), int(m.converted[-1])
        results.append(
            VariantResult(
                variant=name,
                model_versions=tuple(
                    sorted({v for v, of in zip(versions, variants, strict=True) if of == name})
                ),
                users=users,
                served=n,
                converted=y,
                ci_low=max(0.0, float(rate[-1]) - half),
                ci_high=min(1.0, float(rate[-1]) + half),
                design_effect=design_effect(float(rate[-1]), last_var, n),
                comparison=comparison,
                verdict=verdict,
            )
        )
    return ExperimentAnalysis(results, tuple(hours), several)


# -- reading the table --------------------------------------------------------------------------------
class NoEvaluationsError(LookupError):
    """There are no online evaluations to report on (yet, or for this experiment and range)."""


def experiment_rows(
    lake: Lake,
    experiment: str,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> pa.Table:
    """The experiment's ``online_evaluations`` rows with ``since <= served_hour < until``."""
    try:
        table = lake.table(ONLINE)
    except MissingTableError:
        raise NoEvaluationsError(f"table {ONLINE!r} does not exist yet: {RUN_FIRST}") from None
    if "user_id" not in table.schema().to_arrow().names:
        raise NoEvaluationsError(
            f"table {ONLINE!r} under {lake.root} has the old hourly schema (no user_id); delete "
            f"that folder and {RUN_FIRST} (it recomputes the table from served_recommendations)"
        )
    filters: list[tuple[str, str, object]] = [("experiment", "=", experiment)]
    if since is not None:
        filters.append(("served_hour", ">=", as_utc(since)))
    if until is not None:
        filters.append(("served_hour", "<", as_utc(until)))
    rows = table.to_pyarrow_table(
        columns=[*ROW_COLUMNS, "window_seconds", "computed_at"], filters=filters
    )
    if rows.num_rows == 0:
        everything = table.to_pyarrow_table(columns=["experiment", "served_hour"])
        if everything.num_rows == 0:
            raise NoEvaluationsError(f"table {ONLINE!r} is empty: {RUN_FIRST}")
        evaluated = sorted(set(everything["experiment"].to_pylist()))
        mine = everything.filter(pc.equal(everything["experiment"], experiment))["served_hour"]
        span = ""
        if len(mine):
            first, last = pc.min(mine).as_py(), pc.max(mine).as_py()
            span = f" (its hours: {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC)"
        raise NoEvaluationsError(
            f"no online evaluations of experiment {experiment!r} in the range{span}; "
            f"experiments evaluated: {evaluated}"
        )
    return rows
