"""The publication gate as pure functions: which candidate is served, and may it replace the current model.

Every run measures four candidates on the same users and test window (NDCG@k,
:mod:`flixlake.batch.evaluation`): ALS and the baselines popularity, item-kNN and EASE. The gate
serves the best of them, preferring the simpler one unless the more complex one earns its margin
(``batch.publish`` in ``conf/base.yaml``):

* a learned recommender (item-kNN, EASE, ALS) is served instead of popularity only when its NDCG
  beats popularity's x ``min_lift_over_popularity``;
* ALS is served instead of the best baseline only when its NDCG beats that baseline's x
  ``min_lift_over_baseline``;
* ties go to the simpler candidate (popularity, then item-kNN, then EASE, then ALS).

With both margins at 1.0 the candidate with the highest NDCG is served. :func:`choose_recommender`
makes that choice (the evaluate step records it, the register step names the model after it);
:func:`publish_decision` adds what the publish step checks: something was measured, and the
chosen candidate is not worse than the current model re-scored on the same window by more than
``max_regression``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from flixlake.batch.recommenders import ALS, BASELINES, CANDIDATES
from flixlake.config import PublishConfig

POPULARITY = "popularity"


@dataclass(frozen=True)
class Choice:
    """The candidate to serve (None: nothing was measured) and the reason an engineer reads."""

    winner: str | None
    ndcg: float | None
    reason: str


@dataclass(frozen=True)
class Decision:
    """The whole gate: publish?, which candidate, and why (either way)."""

    published: bool
    winner: str | None
    reason: str


def _measured(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def _best(scores: Mapping[str, float]) -> str:
    """Highest NDCG; ties to the simpler candidate (the order of ``CANDIDATES``)."""
    return max(scores, key=lambda name: (scores[name], -CANDIDATES.index(name)))


def choose_recommender(ndcg: Mapping[str, float | None], cfg: PublishConfig) -> Choice:
    """The candidate to serve from each candidate's NDCG@k on the same users and window.

    ``ndcg`` maps ``als``, ``popularity``, ``itemknn``, ``ease`` to their NDCG (None or NaN:
    not measured, e.g. EASE on a catalog too large for it, or ALS without factors).
    """
    scores = {
        name: float(value)
        for name in CANDIDATES
        if (value := ndcg.get(name)) is not None and _measured(value)
    }
    baselines = {name: scores[name] for name in BASELINES if name in scores}
    if not baselines:
        return Choice(None, None, "no baseline NDCG was measured for this run")
    pop = baselines.get(POPULARITY)
    pop_floor = pop * cfg.min_lift_over_popularity if pop is not None else None
    pop_text = (
        f"popularity {pop:.4f} x {cfg.min_lift_over_popularity:g} = {pop_floor:.4f}"
        if pop is not None and pop_floor is not None
        else "popularity (not measured)"
    )

    def beats_popularity(value: float) -> bool:
        return pop_floor is None or value > pop_floor

    # the baseline served when ALS is not: learned ones must beat popularity's margin
    eligible = {
        name: value
        for name, value in baselines.items()
        if name == POPULARITY or beats_popularity(value)
    }
    fallback = _best(eligible)
    best = _best(baselines)
    best_floor = baselines[best] * cfg.min_lift_over_baseline
    best_text = f"{best} {baselines[best]:.4f} x {cfg.min_lift_over_baseline:g} = {best_floor:.4f}"
    listed = ", ".join(f"{name} {value:.4f}" for name, value in scores.items())

    als = scores.get(ALS)
    if als is not None and beats_popularity(als) and als > best_floor:
        reason = f"ALS is served: NDCG {als:.4f} > {pop_text}"
        if best != POPULARITY:
            reason += f" and > best baseline {best_text}"
        return Choice(ALS, als, reason)

    if als is None:
        why_not_als = "ALS was not measured"
    elif not beats_popularity(als):
        why_not_als = f"ALS NDCG {als:.4f} does not beat {pop_text}"
    else:
        why_not_als = f"ALS NDCG {als:.4f} does not beat {best_text}"
    reason = f"{fallback} is served (NDCG {eligible[fallback]:.4f}): {why_not_als}"
    if fallback != best:  # the best baseline did not clear popularity's margin
        reason += f"; {best} {baselines[best]:.4f} does not beat {pop_text}"
    return Choice(fallback, eligible[fallback], f"{reason} ({listed})")


def publish_decision(
    ndcg: Mapping[str, float | None],
    incumbent_ndcg: float | None,
    cfg: PublishConfig,
    *,
    n_users: int | None = None,
) -> Decision:
    """The gate: the chosen candidate, and whether it may replace the current model.

    ``incumbent_ndcg`` is the published model's NDCG re-scored on the same users and window
    (None: nothing published, or it could not be re-scored).
    """
    if n_users == 0:
        return Decision(
            False, None, "no user with history was active in the test window: nothing was measured"
        )
    choice = choose_recommender(ndcg, cfg)
    if choice.winner is None or choice.ndcg is None:
        return Decision(False, None, choice.reason)
    if not _measured(incumbent_ndcg):
        return Decision(
            True,
            choice.winner,
            f"{choice.reason}; no published model re-scored on this window to compare with",
        )
    assert incumbent_ndcg is not None
    floor = incumbent_ndcg * (1.0 - cfg.max_regression)
    if choice.ndcg < floor:
        return Decision(
            False,
            choice.winner,
            f"{choice.reason}; but its NDCG {choice.ndcg:.4f} regresses more than "
            f"{cfg.max_regression:.0%} from the current model's {incumbent_ndcg:.4f} on the same "
            f"window (floor {floor:.4f})",
        )
    return Decision(
        True,
        choice.winner,
        f"{choice.reason}; >= current model's {incumbent_ndcg:.4f} on the same window "
        f"x (1 - {cfg.max_regression:g}) = {floor:.4f}",
    )
