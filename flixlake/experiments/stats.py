"""Experiment statistics over ``online_evaluations``: each variant's watch-through with a Wilson
interval, and a pooled two-proportion z-test against the control (scipy).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from scipy.stats import binomtest, norm

from flixlake.contract.logformat import as_utc
from flixlake.lake.store import Lake, MissingTableError
from flixlake.lake.tables import ONLINE_EVALUATIONS

ONLINE = ONLINE_EVALUATIONS.name
RUN_FIRST = (
    "run the online evaluation first: spark-submit jobs/online_evaluation.py or the "
    "flixlake_online DAG (or flixlake experiment evaluate)"
)


# -- statistics ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """A variant against the control: the difference of rates, its interval, the z-test."""

    diff: float
    diff_low: float
    diff_high: float
    z: float
    p_value: float


def wilson_interval(converted: int, served: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a rate (stays inside [0, 1] and works for small counts)."""
    ci = binomtest(converted, served).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def two_proportion_test(
    converted: int, served: int, control_converted: int, control_served: int, confidence: float
) -> Comparison:
    """Two-sided pooled two-proportion z-test, and an unpooled interval for the difference."""
    rate, control_rate = converted / served, control_converted / control_served
    diff = rate - control_rate
    pooled = (converted + control_converted) / (served + control_served)
    pooled_se = math.sqrt(pooled * (1 - pooled) * (1 / served + 1 / control_served))
    if pooled_se == 0:  # both rates 0 or both 1: identical, nothing to test
        z, p_value = 0.0, 1.0
    else:
        z = diff / pooled_se
        p_value = float(2 * norm.sf(abs(z)))
    se = math.sqrt(rate * (1 - rate) / served + control_rate * (1 - control_rate) / control_served)
    half = float(norm.ppf((1 + confidence) / 2)) * se
    return Comparison(diff, diff - half, diff + half, z, p_value)


def significance_label(confidence: float) -> str:
    """The verdict of a significant difference, e.g. ``significant at 95%``."""
    return f"significant at {confidence * 100:g}%"


@dataclass(frozen=True)
class VariantResult:
    """One variant's answers over a range of hours and its comparison with the control."""

    variant: str
    model_versions: tuple[str, ...]
    served: int
    converted: int
    ci_low: float
    ci_high: float
    comparison: Comparison | None  # None for the control and when there are too few answers
    verdict: str  # control | significant at 95% | not significant | too few answers

    @property
    def rate(self) -> float:
        return self.converted / self.served


def compare_variants(
    rows: Iterable[Mapping[str, Any]], control: str, confidence: float, min_served: int
) -> list[VariantResult]:
    """Sum ``online_evaluations`` rows per variant and test each variant against ``control``.

    Control first, then the others by name. A variant is tested only when it and the control
    each have at least ``min_served`` answers; otherwise its verdict is ``too few answers``.
    """
    served: dict[str, int] = {}
    converted: dict[str, int] = {}
    versions: dict[str, set[str]] = {}
    for row in rows:
        name = str(row["variant"])
        served[name] = served.get(name, 0) + int(row["served"])
        converted[name] = converted.get(name, 0) + int(row["converted"])
        versions.setdefault(name, set()).add(str(row["model_version"]))
    if not served.get(control):
        raise LookupError(
            f"control variant {control!r} has no answers here; variants: {sorted(served)}"
        )
    results = []
    for name in [control, *sorted(set(served) - {control})]:
        comparison = None
        if name == control:
            verdict = "control"
        elif min(served[name], served[control]) < min_served:
            verdict = "too few answers"
        else:
            comparison = two_proportion_test(
                converted[name], served[name], converted[control], served[control], confidence
            )
            significant = comparison.p_value < 1 - confidence
            verdict = significance_label(confidence) if significant else "not significant"
        low, high = wilson_interval(converted[name], served[name], confidence)
        results.append(
            VariantResult(
                variant=name,
                model_versions=tuple(sorted(versions[name])),
                served=served[name],
                converted=converted[name],
                ci_low=low,
                ci_high=high,
                comparison=comparison,
                verdict=verdict,
            )
        )
    return results


class NoEvaluationsError(LookupError):
    """There are no online evaluations to report on (yet, or for this experiment and range)."""


def experiment_rows(
    lake: Lake,
    experiment: str,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """The experiment's ``online_evaluations`` rows with ``since <= served_hour < until``."""
    try:
        table = lake.read(ONLINE)
    except MissingTableError:
        raise NoEvaluationsError(f"table {ONLINE!r} does not exist yet: {RUN_FIRST}") from None
    if table.num_rows == 0:
        raise NoEvaluationsError(f"table {ONLINE!r} is empty: {RUN_FIRST}")
    all_rows = table.to_pylist()
    rows = [
        r
        for r in all_rows
        if r["experiment"] == experiment
        and (since is None or r["served_hour"] >= as_utc(since))
        and (until is None or r["served_hour"] < as_utc(until))
    ]
    if not rows:
        evaluated = sorted({str(r["experiment"]) for r in all_rows})
        hours = sorted(r["served_hour"] for r in all_rows if r["experiment"] == experiment)
        span = ""
        if hours:
            span = f" (its hours: {hours[0]:%Y-%m-%d %H:%M} to {hours[-1]:%Y-%m-%d %H:%M} UTC)"
        raise NoEvaluationsError(
            f"no online evaluations of experiment {experiment!r} in the range{span}; "
            f"experiments evaluated: {evaluated}"
        )
    return rows
