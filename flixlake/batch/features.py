"""Implicit-feedback features for ALS and the time windows that split them, as pure transforms.

Confidence of one (user, movie) pair over a window (``conf/base.yaml`` ``batch.confidence``):

* watching: ``ln(1 + min(minutes watched in the window, minutes_cap))`` -- the first minutes
  say the most, a re-watch or a long film adds little;
* rating 3-5 stars: ``+ rating_weight * (stars - 2)`` on top of the watch time;
* rating 1-2 stars: the pair becomes ``-rating_weight * (3 - stars)`` whatever was watched.
  Spark's implicit ALS reads a negative value as preference 0 with confidence
  ``1 + alpha * |value|``: the dislike is suppressed, not merely ignored.

Pairs with confidence <= 0 still count as *seen* (never recommended again), but only pairs with
confidence > 0 count as *relevant* in a later evaluation window.

Users and movies without any pair of confidence > 0 (a user who only gave 1-2 stars, a movie only
disliked) are left out of ALS (:func:`with_positive_signal`): Spark regularises each of them by
``reg_param x (their positive pairs)`` = 0, so their normal equations are positive definite only
if the other side's factors span every dimension -- on real data they often do not
(``SingularMatrixException: LAPACK.dppsv ... not positive definite``). Such users get no
factors (they are served like new users) and their pairs still count as seen.

:class:`TimeWindows` fixes the windows relative to the run date ``D`` (all inclusive):
test = the last ``eval_days`` days up to ``D``; validation = ``validation_days`` before it;
training data starts ``history_days`` before ``D``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from flixlake.config import BatchConfig, ConfidenceConfig

INTERACTION_COLUMNS = ("user_id", "movie_idx", "confidence")


@dataclass(frozen=True)
class TimeWindows:
    """Inclusive date ranges of one run: search training, validation, evaluation, final fit."""

    history_start: dt.date
    validation_start: dt.date
    validation_end: dt.date
    test_start: dt.date
    test_end: dt.date

    @classmethod
    def for_run_date(cls, run_date: dt.date, batch: BatchConfig) -> TimeWindows:
        """The windows of run date ``D`` (eval_days, validation_days, history_days of ``batch``)."""
        test_start = run_date - dt.timedelta(days=batch.eval_days - 1)
        validation_start = test_start - dt.timedelta(days=batch.validation_days)
        return cls(
            history_start=run_date - dt.timedelta(days=batch.history_days - 1),
            validation_start=validation_start,
            validation_end=test_start - dt.timedelta(days=1),
            test_start=test_start,
            test_end=run_date,
        )

    @property
    def search_train_end(self) -> dt.date:
        return self.validation_start - dt.timedelta(days=1)

    @property
    def eval_train_end(self) -> dt.date:
        return self.test_start - dt.timedelta(days=1)

    def to_dict(self) -> dict[str, str]:
        """ISO dates for manifests (derived ends included for readers)."""
        out = {k: v.isoformat() for k, v in asdict(self).items()}
        out["search_train_end"] = self.search_train_end.isoformat()
        out["eval_train_end"] = self.eval_train_end.isoformat()
        out["final_train_end"] = self.test_end.isoformat()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TimeWindows:
        """Inverse of :meth:`to_dict` (extra keys ignored)."""
        return cls(**{k: dt.date.fromisoformat(str(data[k])) for k in cls.__dataclass_fields__})


def with_rating_date(ratings_df: DataFrame) -> DataFrame:
    """Give ratings an ``event_date`` (UTC day of ``rated_at``): windows cut them like watches."""
    return ratings_df.withColumn("event_date", F.to_date("rated_at"))


def between_dates(
    df: DataFrame, start: dt.date | None, end: dt.date | None, column: str = "event_date"
) -> DataFrame:
    """Rows whose ``column`` lies in ``[start, end]`` (open side when None)."""
    return df.where(_in_range(F.col(column), start, end))


def _in_range(column: Column, start: dt.date | None, end: dt.date | None) -> Column:
    condition: Column = F.lit(True)
    if start is not None:
        condition = condition & (column >= F.lit(start))
    if end is not None:
        condition = condition & (column <= F.lit(end))
    return condition


def _confidence(minutes: Column, rating: Column, confidence_cfg: ConfidenceConfig) -> Column:
    weight = float(confidence_cfg.rating_weight)
    capped = F.least(F.coalesce(minutes, F.lit(0)), F.lit(confidence_cfg.minutes_cap))
    watch_confidence = F.log1p(capped.cast("double"))
    return F.when(rating <= 2, -weight * (3 - rating)).otherwise(
        watch_confidence + F.coalesce(weight * (rating - 2), F.lit(0.0))
    )


def windowed_interactions(
    watch_sessions_df: DataFrame,
    ratings_df: DataFrame,
    confidence_cfg: ConfidenceConfig,
    windows: Mapping[str, tuple[dt.date | None, dt.date | None]],
) -> DataFrame:
    """Confidences of every (user, movie) pair in several date windows, in one aggregation.

    ``windows`` maps a name to an inclusive ``(start, end)`` (None = open). Columns:
    ``user_id int, movie_idx int`` and per window ``confidence_<name> float`` (null when the
    pair had no watch or rating in that window) and ``watched_<name> boolean``. A rating counts
    in the window of its ``rated_at`` day. Rows with a null user or movie are dropped.
    """
    keys = ["user_id", "movie_idx"]
    watches = watch_sessions_df.where(F.col("user_id").isNotNull() & F.col("movie_idx").isNotNull())
    minutes = F.greatest(F.coalesce(F.col("minutes_watched"), F.lit(0)), F.lit(0))
    watched = watches.groupBy(*keys).agg(
        *[
            F.sum(F.when(_in_range(F.col("event_date"), *bounds), minutes)).alias(f"_m_{name}")
            for name, bounds in windows.items()
        ]
    )
    rated_day = F.to_date("rated_at")
    rated = (
        ratings_df.where(
            F.col("user_id").isNotNull()
            & F.col("movie_idx").isNotNull()
            & F.col("rating").isNotNull()
        )
        .groupBy(*keys)
        .agg(
            *[
                F.max_by(
                    F.when(_in_range(rated_day, *bounds), F.col("rating")),
                    F.when(_in_range(rated_day, *bounds), F.struct("rated_at", "rating")),
                ).alias(f"_r_{name}")
                for name, bounds in windows.items()
            ]
        )
    )
    columns = [
        F.col("user_id").cast("int").alias("user_id"),
        F.col("movie_idx").cast("int").alias("movie_idx"),
    ]
    for name in windows:
        m, r = F.col(f"_m_{name}"), F.col(f"_r_{name}")
        active = m.isNotNull() | r.isNotNull()
        confidence = F.when(active, _confidence(m, r, confidence_cfg))
        columns.append(confidence.cast("float").alias(f"confidence_{name}"))
        columns.append(m.isNotNull().alias(f"watched_{name}"))
    return watched.join(rated, keys, "full").select(*columns)


def window_interactions(pairs_df: DataFrame, window: str) -> DataFrame:
    """One window of :func:`windowed_interactions` as ``(user_id, movie_idx, confidence)``."""
    confidence = F.col(f"confidence_{window}")
    return pairs_df.where(confidence.isNotNull()).select(
        "user_id", "movie_idx", confidence.alias("confidence")
    )


def interactions_df(
    watch_sessions_df: DataFrame, ratings_df: DataFrame, confidence_cfg: ConfidenceConfig
) -> DataFrame:
    """One implicit-feedback row per user and movie, the input ALS is trained on.

    Columns ``(user_id int, movie_idx int, confidence float)``; the inputs are already cut to
    the window; rows with a null user or movie are dropped.
    """
    windowed = windowed_interactions(
        watch_sessions_df, ratings_df, confidence_cfg, {"all": (None, None)}
    )
    return window_interactions(windowed, "all")


def with_positive_signal(interactions_df: DataFrame) -> DataFrame:
    """Pairs of users and movies that have at least one pair with confidence > 0.

    What ALS may be fitted on: every user and movie left has a positive regularisation term.
    Removing users cannot take a movie's positive pair (it belongs to a kept user) and vice
    versa, so one pass each is enough.
    """
    positive = interactions_df.where(F.col("confidence") > 0)
    return interactions_df.join(positive.select("user_id").distinct(), "user_id", "left_semi").join(
        positive.select("movie_idx").distinct(), "movie_idx", "left_semi"
    )


def with_confidence_mode(mode: str) -> Callable[[DataFrame], DataFrame]:
    """Transform: ``"log"`` keeps the confidence, ``"binary"`` keeps only its sign (+1 / -1 / 0)."""
    if mode not in ("log", "binary"):
        raise ValueError(f"confidence mode must be 'log' or 'binary', got {mode!r}")

    def transform(interactions_df: DataFrame) -> DataFrame:
        if mode == "log":
            return interactions_df
        return interactions_df.withColumn("confidence", F.signum("confidence").cast("float"))

    return transform


def new_liked_pairs(pairs_df: DataFrame, later: str, earlier: str) -> DataFrame:
    """Pairs liked in window ``later`` and never active in ``earlier``: what counts as relevant.

    ``earlier`` is a cumulative window (from the start of history), so "not active" means never
    seen before. Returns ``(user_id, movie_idx)``.
    """
    return pairs_df.where(
        (F.col(f"confidence_{later}") > 0) & F.col(f"confidence_{earlier}").isNull()
    ).select("user_id", "movie_idx")


def user_window_summary(pairs_df: DataFrame, later: str, earlier: str) -> DataFrame:
    """Per user: movies active in ``earlier`` (history) and new liked ones in ``later``.

    Returns ``(user_id, n_movies, n_relevant)`` for every user of ``pairs_df``; ``n_movies``
    decides the activity segment, ``n_relevant > 0`` whether the user can be evaluated.
    """
    seen_before = F.col(f"confidence_{earlier}").isNotNull()
    new_like = (F.col(f"confidence_{later}") > 0) & ~seen_before
    return pairs_df.groupBy("user_id").agg(
        F.count(F.when(seen_before, 1)).alias("n_movies"),
        F.count(F.when(new_like, 1)).alias("n_relevant"),
    )


def watch_popularity(pairs_df: DataFrame, window: str) -> DataFrame:
    """Distinct watchers per movie in a window of :func:`windowed_interactions`.

    Returns ``(movie_idx, n_users)``: the popularity baseline's score.
    """
    return (
        pairs_df.where(F.col(f"watched_{window}"))
        .groupBy("movie_idx")
        .agg(F.count(F.lit(1)).alias("n_users"))
    )


def deterministic_sample(users_df: DataFrame, max_users: int, seed: int) -> DataFrame:
    """At most ``max_users`` distinct users, the same ones on every rerun (hash order, not rand)."""
    return (
        users_df.select("user_id")
        .distinct()
        .withColumn("_order", F.xxhash64(F.col("user_id").cast("long"), F.lit(seed)))
        .orderBy("_order", "user_id")
        .limit(max_users)
        .drop("_order")
    )
