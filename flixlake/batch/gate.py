"""The publication gate as pure functions: which candidate is served, and may it replace the current model.

Every run measures four candidates on the same users and test window (NDCG@k,
:mod:`flixlake.batch.evaluation`): ALS and the baselines popularity, item-kNN and EASE. The gate
judges **every** candidate, then serves the best one that is eligible:

1. **Requirements, per candidate** (:func:`judge_candidates`). A candidate is refused, with a
   one-line reason each, when it was not measured, when it fails a fairness requirement of
   ``audit.requirements`` on its own lists (the evaluate step measures both for every candidate:
   the *system* requirement -- long-tail share of the lists it would show -- and the *model*
   requirement -- hit rate per user segment; :mod:`flixlake.batch.fairness`), or when its NDCG
   regresses more than ``max_regression`` from the current model re-scored on the same window.
2. **Preference among the eligible**, simplest first (``batch.publish`` in ``conf/base.yaml``):
   a learned recommender (item-kNN, EASE, ALS) is served instead of an eligible popularity only
   when its NDCG beats popularity's x ``min_lift_over_popularity``; ALS instead of the best
   eligible baseline only when it beats that baseline's x ``min_lift_over_baseline``; ties go to
   the simpler candidate (popularity, then item-kNN, then EASE, then ALS). A margin is the price
   of complexity over a simpler candidate that could be served instead: against a refused one it
   does not apply (a head-only popularity list that the long-tail requirement refuses is no
   alternative to serve).

With both margins at 1.0 the eligible candidate with the highest NDCG is served; nothing is
served only when no candidate is eligible, and then every candidate's reason is listed.
:func:`choose_recommender` is the choice on NDCG alone; :func:`publish_decision` is the whole
gate the publish step applies (with the requirement verdicts the evaluate step recorded).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from flixlake.batch.recommenders import ALS, BASELINES, CANDIDATES
from flixlake.config import PublishConfig

POPULARITY = "popularity"


@dataclass(frozen=True)
class Verdict:
    """One candidate judged: its NDCG, whether it may be served, and why not (if not)."""

    candidate: str
    ndcg: float | None
    eligible: bool
    refusals: tuple[str, ...] = ()  # requirements it fails, one line each
    note: str = ""  # eligible but not served: why another one is

    def describe(self) -> str:
        score = f"NDCG {self.ndcg:.4f}" if self.ndcg is not None else "NDCG not measured"
        if not self.eligible:
            return f"{self.candidate} ({score}) refused: {'; '.join(self.refusals)}"
        return f"{self.candidate} ({score}) eligible" + (f", {self.note}" if self.note else "")

    def as_dict(self) -> dict[str, object]:
        return {
            "ndcg": self.ndcg,
            "eligible": self.eligible,
            "refusals": list(self.refusals),
            "note": self.note,
            "verdict": self.describe(),
        }


@dataclass(frozen=True)
class Choice:
    """The candidate to serve (None: none is eligible), the reason, and every candidate's verdict."""

    winner: str | None
    ndcg: float | None
    reason: str
    verdicts: dict[str, Verdict] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """The whole gate: publish?, which candidate, and why (either way)."""

    published: bool
    winner: str | None
    reason: str
    verdicts: dict[str, Verdict] = field(default_factory=dict)


def _measured(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def _best(scores: Mapping[str, float]) -> str:
    """Highest NDCG; ties to the simpler candidate (the order of ``CANDIDATES``)."""
    return max(scores, key=lambda name: (scores[name], -CANDIDATES.index(name)))


def _prefer(
    eligible: Mapping[str, float], cfg: PublishConfig, als_absent: str
) -> tuple[str, str, dict[str, str]]:
    """The eligible candidate to serve, why, and why each other eligible one is not served
    (``als_absent``: why ALS is not among the eligible, if it is not)."""
    baselines = {name: eligible[name] for name in BASELINES if name in eligible}
    pop = baselines.get(POPULARITY)
    pop_floor = pop * cfg.min_lift_over_popularity if pop is not None else None
    pop_text = (
        f"popularity {pop:.4f} x {cfg.min_lift_over_popularity:g} = {pop_floor:.4f}"
        if pop is not None and pop_floor is not None
        else ""
    )

    def beats_popularity(value: float) -> bool:
        return pop_floor is None or value > pop_floor

    notes: dict[str, str] = {}
    # the baseline served when ALS is not: learned ones must beat an eligible popularity's margin
    clearing = {
        name: value
        for name, value in baselines.items()
        if name == POPULARITY or beats_popularity(value)
    }
    for name in baselines.keys() - clearing.keys():
        notes[name] = f"not served: {name} {baselines[name]:.4f} does not beat {pop_text}"
    fallback = _best(clearing) if clearing else None
    best_text = ""
    if fallback is not None:
        floor = clearing[fallback] * cfg.min_lift_over_baseline
        best_text = (
            f"{fallback} {clearing[fallback]:.4f} x {cfg.min_lift_over_baseline:g} = {floor:.4f}"
        )
    als = eligible.get(ALS)
    als_wins = (
        als is not None
        and beats_popularity(als)
        and (fallback is None or als > clearing[fallback] * cfg.min_lift_over_baseline)
    )
    if als is not None and als_wins:
        reason = f"ALS is served: NDCG {als:.4f}"
        if pop_text:
            reason += f" > {pop_text}"
        if fallback is not None and fallback != POPULARITY:
            reason += f" and > best baseline {best_text}"
        for name in clearing:
            notes[name] = f"not served: ALS {als:.4f} scores higher"
        return ALS, reason, notes
    assert fallback is not None  # eligible is not empty and ALS did not win
    for name in clearing.keys() - {fallback}:
        notes[name] = f"not served: {fallback} {clearing[fallback]:.4f} scores higher or ties"
    reason = f"{fallback} is served (NDCG {clearing[fallback]:.4f})"
    if als is None:
        why_not_als = als_absent
    elif not beats_popularity(als):
        why_not_als = f"ALS NDCG {als:.4f} does not beat {pop_text}"
    else:
        why_not_als = f"ALS NDCG {als:.4f} does not beat {best_text}"
    if als is not None:
        notes[ALS] = f"not served: {why_not_als}"
    if why_not_als:
        reason += f": {why_not_als}"
    skipped = sorted(baselines.keys() - clearing.keys(), key=CANDIDATES.index)
    for name in skipped:  # a better-scoring baseline that did not clear popularity's margin
        if baselines[name] > clearing[fallback]:
            reason += f"; {name} {baselines[name]:.4f} does not beat {pop_text}"
    return fallback, reason, notes


def judge_candidates(
    ndcg: Mapping[str, float | None],
    cfg: PublishConfig,
    unmet: Mapping[str, Sequence[str]] | None = None,
    incumbent_ndcg: float | None = None,
) -> Choice:
    """Judge every candidate, then choose the best eligible one (module docstring).

    ``ndcg`` maps ``als``, ``popularity``, ``itemknn``, ``ease`` to their NDCG@k (None or NaN:
    not measured, e.g. EASE on a catalog too large for it); ``unmet`` maps a candidate to the
    requirements it fails, one line each (absent: none); ``incumbent_ndcg`` is the current
    model's NDCG on the same users and window (None: nothing to compare with).
    """
    unmet = unmet or {}
    floor = (
        incumbent_ndcg * (1.0 - cfg.max_regression)
        if incumbent_ndcg is not None and _measured(incumbent_ndcg)
        else None
    )
    judged: dict[str, tuple[float | None, list[str]]] = {}
    for name in CANDIDATES:
        if name not in ndcg and name not in unmet:
            continue
        value = ndcg.get(name)
        score = float(value) if value is not None and _measured(value) else None
        refusals = [] if score is not None else ["not measured"]
        refusals += [str(line) for line in unmet.get(name, ())]
        if score is not None and floor is not None and score < floor:
            refusals.append(
                f"NDCG {score:.4f} regresses more than {cfg.max_regression:.0%} from the current "
                f"model's {incumbent_ndcg:.4f} on the same window (floor {floor:.4f})"
            )
        judged[name] = (score, refusals)
    eligible = {
        name: score
        for name, (score, refusals) in judged.items()
        if score is not None and not refusals
    }
    if not any(name in BASELINES and score is not None for name, (score, _) in judged.items()):
        reason = "no baseline NDCG was measured for this run"
        verdicts = {
            name: Verdict(name, score, False, tuple(refusals) or ("no baseline to compare with",))
            for name, (score, refusals) in judged.items()
        }
        return Choice(None, None, reason, verdicts)
    if not eligible:
        verdicts = {
            name: Verdict(name, score, False, tuple(refusals))
            for name, (score, refusals) in judged.items()
        }
        listed = " | ".join(v.describe() for v in verdicts.values())
        return Choice(None, None, f"no candidate is eligible: {listed}", verdicts)
    als_score, als_refusals = judged.get(ALS, (None, ["not measured"]))
    als_absent = (
        "ALS was not measured"
        if als_score is None
        else f"ALS (NDCG {als_score:.4f}) is refused: {'; '.join(als_refusals)}"
    )
    winner, reason, notes = _prefer(eligible, cfg, als_absent)
    verdicts = {
        name: Verdict(
            name,
            score,
            not refusals,
            tuple(refusals),
            "served" if name == winner else notes.get(name, ""),
        )
        for name, (score, refusals) in judged.items()
    }
    refused = [v.describe() for v in verdicts.values() if not v.eligible]
    listed = ", ".join(f"{name} {score:.4f}" for name, score in eligible.items())
    reason = f"{reason} ({listed})"
    if refused:
        reason += "; refused: " + " | ".join(refused)
    return Choice(winner, eligible[winner], reason, verdicts)


def choose_recommender(ndcg: Mapping[str, float | None], cfg: PublishConfig) -> Choice:
    """The candidate to serve on NDCG alone (no requirement, no incumbent): see
    :func:`judge_candidates`."""
    return judge_candidates(ndcg, cfg)


def publish_decision(
    ndcg: Mapping[str, float | None],
    incumbent_ndcg: float | None,
    cfg: PublishConfig,
    *,
    n_users: int | None = None,
    unmet: Mapping[str, Sequence[str]] | None = None,
) -> Decision:
    """The gate: every candidate judged (requirements ``unmet``, regression from the incumbent),
    the best eligible one chosen; nothing published only when none is eligible.

    ``incumbent_ndcg`` is the published model's NDCG re-scored on the same users and window
    (None: nothing published, or it could not be re-scored).
    """
    if n_users == 0:
        return Decision(
            False, None, "no user with history was active in the test window: nothing was measured"
        )
    choice = judge_candidates(ndcg, cfg, unmet, incumbent_ndcg)
    if choice.winner is None or choice.ndcg is None:
        return Decision(False, None, choice.reason, choice.verdicts)
    if not _measured(incumbent_ndcg):
        return Decision(
            True,
            choice.winner,
            f"{choice.reason}; no published model re-scored on this window to compare with",
            choice.verdicts,
        )
    assert incumbent_ndcg is not None
    floor = incumbent_ndcg * (1.0 - cfg.max_regression)
    return Decision(
        True,
        choice.winner,
        f"{choice.reason}; >= current model's {incumbent_ndcg:.4f} on the same window "
        f"x (1 - {cfg.max_regression:g}) = {floor:.4f}",
        choice.verdicts,
    )
