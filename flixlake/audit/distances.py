"""Distances between a window's distribution and the reference's, on counts per category.

Drift is judged on the size of the change, not on a test: at the lake's volumes every p-value is
tiny, while the distance says how far a distribution moved.

* **Jensen-Shannon distance** (base 2): the square root of the JS divergence, a metric in
  [0, 1] (0: same shares, 1: no category in common); symmetric, finite with empty categories.
  The alert is on it (``audit.drift.inputs.<input>.max_distance``).
* **Population stability index**: sum of (a - e) ln(a / e) over the shares a (window) and e
  (reference), empty shares floored at 1e-4; the credit-scoring rule of thumb reads < 0.1 as
  stable and > 0.25 as a major shift. Reported beside the distance.

A window of n observations drawn from the reference itself is still some distance away: its
JS divergence is about (k - 1) (1/n + 1/m) / (8 ln 2) for k categories and m reference
observations (the chi-square approximation: a distance of 0.09 for 100 categories and 2,000
observations).
So :func:`measure` reports the raw distance, that expected noise, and the **drift distance**
sqrt(max(0, JS^2 - noise^2)): divergences of independent noise and of a real shift add, so
subtracting the expected noise gives a distance that reads the same on a small demo and at
course scale, for 5 star values and for 27,000 movies. Categories expected fewer than
``min_expected`` times in the window are pooled (:func:`pool`), which keeps the approximation
valid (and the noise at most about 1 / sqrt(5.5 min_expected)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import jensenshannon

OTHER = "(other)"
PSI_FLOOR = 1e-4


def shares(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / total if total > 0 else np.zeros_like(counts)


def js_distance(window: np.ndarray, reference: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2) of two count vectors; NaN if either is empty."""
    a, e = np.asarray(window, np.float64), np.asarray(reference, np.float64)
    if a.sum() <= 0 or e.sum() <= 0:
        return math.nan
    return float(max(0.0, jensenshannon(a, e, base=2)))


def psi(window: np.ndarray, reference: np.ndarray, floor: float = PSI_FLOOR) -> float:
    """Population stability index of the window's shares against the reference's."""
    a, e = np.asarray(window, np.float64), np.asarray(reference, np.float64)
    if a.sum() <= 0 or e.sum() <= 0:
        return math.nan
    a, e = np.maximum(shares(a), floor), np.maximum(shares(e), floor)
    return float(((a - e) * np.log(a / e)).sum())


def expected_noise(categories: int, n: float, m: float) -> float:
    """JS distance a window of ``n`` observations from the reference itself would show."""
    if n <= 0 or m <= 0 or categories < 2:
        return 0.0
    return math.sqrt((categories - 1) * (1 / n + 1 / m) / (8 * math.log(2)))


@dataclass(frozen=True)
class Pooled:
    """Aligned counts of a window and its reference after pooling rare categories."""

    categories: list[str]
    window: np.ndarray
    reference: np.ndarray


def pool(
    window: Mapping[str, float], reference: Mapping[str, float], min_expected: float
) -> Pooled:
    """Keep a category when it is seen or expected at least ``min_expected`` times in the
    window; pool the rest into ``(other)``.

    Expected = its reference share x the window's total. A category rare in the reference that
    bursts in the window (a pushed movie) keeps its own slot.
    """
    n = float(sum(window.values()))
    m = float(sum(reference.values()))
    keys = sorted(set(window) | set(reference))
    kept: list[str] = []
    for key in keys:
        expected = reference.get(key, 0.0) / m * n if m > 0 else 0.0
        if key != OTHER and max(expected, window.get(key, 0.0)) >= min_expected:
            kept.append(key)
    rest = [k for k in keys if k not in set(kept)]
    categories = kept + ([OTHER] if rest else [])
    w = [window.get(k, 0.0) for k in kept]
    r = [reference.get(k, 0.0) for k in kept]
    if rest:
        w.append(sum(window.get(k, 0.0) for k in rest))
        r.append(sum(reference.get(k, 0.0) for k in rest))
    return Pooled(categories, np.asarray(w, np.float64), np.asarray(r, np.float64))


def largest_shift(pooled: Pooled) -> str:
    """The category whose share moved most, e.g. ``"5: 0.210 -> 0.550"`` ('' when empty)."""
    if not pooled.categories or pooled.window.sum() <= 0 or pooled.reference.sum() <= 0:
        return ""
    a, e = shares(pooled.window), shares(pooled.reference)
    i = int(np.argmax(np.abs(a - e)))
    return f"{pooled.categories[i]}: {e[i]:.3f} -> {a[i]:.3f}"


@dataclass(frozen=True)
class DriftMeasure:
    """How far one window's distribution is from the reference's."""

    categories: int  # after pooling
    observations: float  # n, the window's total
    reference_observations: float  # m
    js_distance: float  # raw
    expected_noise: float
    distance: float  # sqrt(max(0, js^2 - noise^2)): what the alert reads
    psi: float
    largest_shift: str


def measure(
    window: Mapping[str, float], reference: Mapping[str, float], min_expected: float
) -> DriftMeasure:
    """Pool rare categories, then every distance between the window and the reference."""
    pooled = pool(window, reference, min_expected)
    n, m = float(pooled.window.sum()), float(pooled.reference.sum())
    raw = js_distance(pooled.window, pooled.reference)
    noise = expected_noise(len(pooled.categories), n, m)
    distance = math.sqrt(max(0.0, raw * raw - noise * noise)) if math.isfinite(raw) else math.nan
    return DriftMeasure(
        categories=len(pooled.categories),
        observations=n,
        reference_observations=m,
        js_distance=raw,
        expected_noise=noise,
        distance=distance,
        psi=psi(pooled.window, pooled.reference),
        largest_shift=largest_shift(pooled),
    )
