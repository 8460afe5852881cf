"""The merge rule and experiment routing over one immutable serving state.

Everything a request reads hangs off one immutable :class:`ServingState`; background threads
build a new state and install it with a single reference assignment, so a request sees either the
old or the new state, never a mix, and never waits for a load.

The merge rule for a user routed to a variant (and so to one model's batch view):

1. the model's ranked list for the user, minus movies the user watched or rated since the speed
   views' cutoff (``speed_user_activity``: the oldest run date among the served models, so a
   variant serving the previous model also drops what was watched since *its* run date), best
   first;
2. if fewer than ``results`` remain, or the model does not know the user (unknown or new user) or
   the variant has no batch view at all: trending movies (``speed_trending``, shortest window
   first, by watchers), then the movies most frequent in the model's batch view, then the
   catalog's static list — never one the user has seen or one already listed.

Every fallback movie is a catalog movie (the ``movies`` table), so an answer is never empty once
the catalog is read, even before any batch view has loaded; before that the service says 503.

A user routed to an *exploration* variant (model ``explore``) gets ``results`` movies drawn
uniformly at random, without replacement, from the catalog minus what they watched or rated
since the cutoff, afresh for every request (:func:`explore_pick`); the answer's model version is
``explore`` and its source ``explore``. Uniform rather than popularity-tempered, so every catalog
movie has the same chance to be shown: watches in that variant measure what users pick when the
system's past does not choose for them (the control group of the feedback-loop audit), and
per-movie rates from it need no propensity weights.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flixlake.experiments.routing import Experiment
from flixlake.lake.registry import EXPLORE
from flixlake.serving.views import (
    EMPTY_ACTIVITY,
    BatchView,
    MovieCatalog,
    SpeedActivity,
)

log = logging.getLogger(__name__)
NO_MODEL = "none"


@dataclass(frozen=True, slots=True)
class Answer:
    """One recommendation answer and where it came from."""

    body: bytes  # comma-separated movie ids
    variant: str
    model_version: str  # "explore" for randomised answers
    source: str  # batch | batch_filtered | batch_filled | fallback | explore
    reason: str | None = None  # why trending/popular movies were used


@dataclass(frozen=True, eq=False)
class Fallback:
    """Trending then popular movies for one variant, with the ready answer for a user with no
    recorded activity."""

    candidates: tuple[int, ...]
    body: bytes


@dataclass(frozen=True, eq=False)
class ServingState:
    """Everything a request needs, swapped as one reference."""

    experiment: Experiment
    views: tuple[BatchView | None, ...]  # per variant
    model_versions: tuple[str, ...]  # per variant (NO_MODEL without a batch view; EXPLORE)
    fallbacks: tuple[Fallback, ...]  # per variant
    activity: SpeedActivity
    trending: np.ndarray
    explores: tuple[bool, ...] = ()  # per variant: randomised answers from the catalog
    catalog_pool: Sequence[int] = ()  # catalog indices exploration draws from


def pick(
    ranked: list[int], candidates: tuple[int, ...], seen: set[int] | None, k: int
) -> tuple[list[int], bool]:
    """The merge rule: ``ranked`` minus ``seen``, then filled from ``candidates`` (distinct).

    Returns the chosen movie indices and whether candidates were needed.
    """
    chosen = [m for m in ranked if m not in seen] if seen else list(ranked)
    if len(chosen) > k:
        return chosen[:k], False
    if len(chosen) == k:
        return chosen, False
    taken = set(chosen)
    for m in candidates:
        if m not in taken and not (seen and m in seen):
            chosen.append(m)
            taken.add(m)
            if len(chosen) == k:
                break
    return chosen, True


def explore_pick(
    pool: Sequence[int], seen: set[int] | None, k: int, rng: random.Random
) -> list[int]:
    """``k`` distinct movies drawn uniformly at random from ``pool`` minus ``seen`` (all of them,
    in random order, when fewer are left).

    The first ``k`` unseen movies of a random permutation lie within its first ``k + |seen|``
    positions, so a sample of that size suffices and every unseen ``k``-list is equally likely.
    """
    n = len(pool)
    draw = min(n, k + (len(seen) if seen else 0))
    chosen: list[int] = []
    for i in rng.sample(range(n), draw):
        movie = pool[i]
        if seen and movie in seen:
            continue
        chosen.append(movie)
        if len(chosen) == k:
            break
    return chosen


class Recommender:
    """Answers requests from the current :class:`ServingState`."""

    def __init__(
        self,
        catalog: MovieCatalog,
        experiment: Experiment,
        results: int = 20,
        fallback_candidates: int = 200,
        seed: int | None = None,
    ) -> None:
        self.catalog = catalog
        self.results = results
        self.fallback_candidates = fallback_candidates
        self._random = random.Random(seed)  # exploration draws (seeded only in tests)
        self._lock = threading.Lock()  # serialises writers; readers never lock
        self._views: dict[str, BatchView] = {}
        self._variant_models: tuple[str | None, ...] = tuple(None for _ in experiment.variants)
        self._activity = EMPTY_ACTIVITY
        self._trending = np.zeros(0, np.int32)
        self._static = np.zeros(0, np.int32)
        self._pool: tuple[int, ...] = ()  # the static list as Python ints, for exploration
        self.experiment = experiment
        self.state = self._compose(experiment)

    # -- writers (background threads) -----------------------------------------------------------
    def _compose(self, experiment: Experiment) -> ServingState:
        views = tuple(self._views.get(m) if m else None for m in self._variant_models)
        trending = self._trending[: self.fallback_candidates].tolist()
        static = self._static[: self.fallback_candidates].tolist()
        fallbacks = []
        for view in views:
            popular = view.popular.tolist() if view is not None else []
            candidates = tuple(dict.fromkeys(trending + popular + static))[
                : self.fallback_candidates
            ]
            body = self.catalog.join(list(candidates[: self.results]))
            fallbacks.append(Fallback(candidates, body))
        explores = tuple(v.explores for v in experiment.variants)
        return ServingState(
            experiment=experiment,
            views=views,
            model_versions=tuple(
                EXPLORE if explore else view.model_version if view is not None else NO_MODEL
                for view, explore in zip(views, explores, strict=True)
            ),
            fallbacks=tuple(fallbacks),
            activity=self._activity,
            trending=self._trending,
            explores=explores,
            catalog_pool=self._pool,
        )

    def install_views(
        self, variant_models: tuple[str | None, ...], views: dict[str, BatchView]
    ) -> ServingState:
        """Serve ``views`` (model version -> view) for the variants' resolved model versions."""
        with self._lock:
            self._variant_models = variant_models
            self._views = dict(views)
            self.state = state = self._compose(self.experiment)
        return state

    def install_speed(
        self, activity: SpeedActivity | None = None, trending: np.ndarray | None = None
    ) -> ServingState:
        """Serve new speed views (either one may be left as it is)."""
        with self._lock:
            if activity is not None:
                self._activity = activity
            if trending is not None:
                self._trending = trending
            self.state = state = self._compose(self.experiment)
        return state

    def install_catalog(self, static: np.ndarray) -> ServingState:
        """Serve ``static`` (catalog indices) as the fallback of last resort."""
        with self._lock:
            self._static = static
            self._pool = tuple(static.tolist())
            self.state = state = self._compose(self.experiment)
        return state

    @property
    def loaded_views(self) -> dict[str, BatchView]:
        return dict(self._views)

    # -- the request path -----------------------------------------------------------------------
    def recommend(self, user_id: int) -> Answer:
        """The answer for one user (never raises for a valid id)."""
        state = self.state
        v = state.experiment.index_of(user_id)
        variant = state.experiment.variants[v].name
        view = state.views[v]
        seen = state.activity.seen(user_id)
        k = self.results
        if state.explores[v]:
            chosen = explore_pick(state.catalog_pool, seen, k, self._random)
            if chosen:  # else: no catalog yet (or all of it seen): the fallback below
                return Answer(self.catalog.join(chosen), variant, EXPLORE, "explore")
        if view is not None:
            ranked = view.row(user_id)
            if ranked is not None:
                if seen is None and len(ranked) >= k:
                    return Answer(
                        self.catalog.join(ranked[:k]), variant, view.model_version, "batch"
                    )
                chosen, filled = pick(ranked, state.fallbacks[v].candidates, seen, k)
                body = self.catalog.join(chosen)
                if filled:
                    return Answer(body, variant, view.model_version, "batch_filled", "short_list")
                return Answer(body, variant, view.model_version, "batch_filtered")
            reason = "new_user" if seen is not None else "unknown_user"
        else:
            reason = "no_batch_view"
        fallback = state.fallbacks[v]
        if seen:
            chosen, _ = pick([], fallback.candidates, seen, k)
            body = self.catalog.join(chosen)
        else:
            body = fallback.body
        return Answer(body, variant, state.model_versions[v], "fallback", reason)

    def fallback_answer(self, user_id: int, reason: str = "error") -> Answer:
        """The variant's trending/popular answer (used when something unexpected failed)."""
        state = self.state
        v = state.experiment.index_of(user_id)
        return Answer(
            state.fallbacks[v].body,
            state.experiment.variants[v].name,
            state.model_versions[v],
            "fallback",
            reason,
        )
