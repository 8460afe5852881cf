"""Offline evaluation of every candidate -- ALS, popularity, item-kNN, EASE -- per user segment, and
the choice of the one to serve.

``run_evaluate(spark, lake, settings, run_date)`` (batch step "evaluate") scores the *eval*
model of the "train" manifest (trained on everything before the test window) and the baselines
(fitted on the same pairs) on the test window of the same Delta versions:

* users: active in the test window with at least one *relevant* movie (liked -- confidence > 0
  -- and not seen before the test window); those with training history and those without
  ("cold") are sampled separately, at most ``eval_max_users`` each, by hash order (reruns pick
  the same users);
* ALS lists: the model's best unseen movies; cold users (and any user without factors) get the
  popularity list, as the service would serve them; the same fallback for every baseline;
* popularity: movies by distinct watchers in the training period, seen ones skipped;
  item-kNN and EASE (:mod:`flixlake.batch.baselines`): from the user's liked movies;
* the incumbent (the published model) re-scored on the same users: ALS from its saved factors,
  a baseline refitted on its recorded input versions (:func:`rescore_incumbent`);
* metrics @k (:mod:`flixlake.batch.metrics`): ndcg, precision, recall, map, plus catalog coverage
  (distinct recommended movies / movies in the catalog version).

The gate (:func:`flixlake.batch.gate.judge_candidates`) judges every candidate -- both fairness
requirements on its own lists (:func:`candidate_requirements`), no regression from the incumbent
-- and chooses the best eligible one on the ``all`` segment's NDCG. The lists judged are those
that would be served (:class:`ServedLists`: re-ranked as the batch view when ``batch.debias`` is
on). The choice names the run's model: ALS keeps the train step's version, a baseline gets
``<kind>-<D>-<hash>`` (:func:`flixlake.batch.recommenders.model_version_for`); when none is
eligible the run's model is ALS's, and publish refuses it with every candidate's reason.

Segments: ``all`` (users with training history: the model comparison the publish gate uses),
``activity=cold|new|normal|heavy`` (distinct training movies: 0, <= new_user_max_movies,
>= heavy_user_min_movies, otherwise normal), and ``gender=``, ``age=`` (``<18``, ``18-24``,
``25-34``, ``35-44``, ``45-54``, ``55+``), ``occupation=`` over users with history; a user missing
from the ``users`` table falls in ``unknown``.

Rows go to ``model_evaluations`` (this model_version's rows are replaced, so reruns replace).
Manifest "evaluate" (stable; read by register and publish)::

    {"model_version": str (the chosen candidate's), "recommender": "als" | "popularity" | ...,
     "als_model_version": str (the train step's), "run_date": "2026-11-22", "k": 20,
     "selection": {"winner" (None: no candidate eligible), "reason", "ndcg": {candidate: ndcg},
                   "verdicts": {candidate: {"eligible", "refusals", "note", "verdict"}},
                   "requirements" / "unmet": {candidate: [one line per check]},
                   "long_tail_share": {candidate: share of its lists},
                   "popularity_weight": the re-rank the lists were judged with},
     "params": {the chosen candidate's}, "candidates": {candidate: params},
     "als": {"ndcg", "precision", "recall", "map", "coverage", "n_users"},
     "popularity": {same keys}, "baselines": {"popularity" | "itemknn" | "ease": {...}},
     "best_baseline": str, "lift_ndcg": als.ndcg / popularity.ndcg (inf when only popularity
     scores 0, 0.0 if both), "lift_ndcg_best_baseline": ..., "incumbent": {"model_version",
     "recommender", "scored", "why", + metrics when scored},
     "segments": [{"segment": "all" | "activity=heavy" | ..., "n_users": n,
                   "als": {...}, "popularity": {...}, ...}, ...],
     "windows": {...}, "input_versions": {... + "users": v or None}, "counts": {...},
     "timings": {...}}

The module also holds the driver-side scoring helpers the search in :mod:`flixlake.batch.training`
shares (collecting factors and per-user lists, ranking with :class:`flixlake.batch.topn.ItemIndex`).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from flixlake.batch.baselines import ItemScorer, fit_item_scorer, history_rows
from flixlake.batch.debias import rerank_rows
from flixlake.batch.fairness import (
    RequirementCheck,
    check_model_requirement,
    check_system_requirement,
    lists_exposure,
    segment_qualities,
)
from flixlake.batch.features import (
    TimeWindows,
    between_dates,
    deterministic_sample,
    new_liked_pairs,
    user_window_summary,
    watch_popularity,
    window_interactions,
    windowed_interactions,
    with_rating_date,
)
from flixlake.batch.gate import judge_candidates
from flixlake.batch.metrics import METRICS, catalog_coverage, ranking_metrics
from flixlake.batch.recommenders import (
    ALS,
    BASELINES,
    CANDIDATES,
    EASE,
    ITEMKNN,
    POPULARITY,
    baseline_params,
    model_version_for,
    recommender_of,
)
from flixlake.batch.topn import ItemIndex
from flixlake.config import BatchConfig, Settings
from flixlake.lake import runs
from flixlake.lake.registry import (
    PUBLISHED,
    UnknownModelError,
    current_published_model,
    get_model,
)
from flixlake.lake.spark_io import read_table, spark_schema
from flixlake.lake.store import Lake
from flixlake.lake.tables import MODEL_EVALUATIONS, USERS

log = logging.getLogger(__name__)

ACTIVITY_LEVELS = ("cold", "new", "normal", "heavy")
INCUMBENT = "incumbent"
RECOMMENDER_ORDER = {"als": 0, "popularity": 1, "itemknn": 2, "ease": 3, INCUMBENT: 4}
_EMPTY = np.zeros(0, np.int64)
# The driver's BLAS may run several threads; bigger blocks than a worker's amortise them.
_DRIVER_BLOCK_USERS = 256
FIT_WINDOW = "fit"


# -- reading pinned inputs and collecting small results ----------------------------------------
def read_pinned(
    spark: SparkSession,
    lake: Lake,
    versions: Mapping[str, int | None],
    start: dt.date | None,
    end: dt.date | None,
) -> tuple[DataFrame, DataFrame]:
    """Watch sessions and ratings at their pinned versions, cut to ``[start, end]``."""
    watch_sessions = (
        read_table(spark, lake, "watch_sessions", versions["watch_sessions"])
        .select("user_id", "movie_idx", "minutes_watched", "event_date")
        .transform(between_dates, start, end)
    )
    ratings = (
        read_table(spark, lake, "ratings", versions["ratings"])
        .select("user_id", "movie_idx", "rating", "rated_at")
        .transform(with_rating_date)
        .transform(between_dates, start, end)
    )
    return watch_sessions, ratings


def fit_pairs(
    spark: SparkSession,
    lake: Lake,
    settings: Settings,
    versions: Mapping[str, int | None],
    start: dt.date | None,
    end: dt.date,
) -> DataFrame:
    """The pairs a baseline learns from: :func:`windowed_interactions` with one ``fit`` window."""
    watch_sessions, ratings = read_pinned(spark, lake, versions, start, end)
    return windowed_interactions(
        watch_sessions, ratings, settings.batch.confidence, {FIT_WINDOW: (start, end)}
    )


def liked_df(pairs_df: DataFrame, window: str = FIT_WINDOW) -> DataFrame:
    """``(user_id, movie_idx)`` liked (confidence > 0) in a window of ``pairs_df``."""
    return (
        window_interactions(pairs_df, window)
        .where(F.col("confidence") > 0)
        .select("user_id", "movie_idx")
    )


def pair_arrays(pairs: DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(user_id, movie_idx)`` rows collected as two aligned int64 arrays."""
    table = pairs.select("user_id", "movie_idx").toArrow()
    return (
        np.asarray(table.column("user_id").to_numpy(zero_copy_only=False), np.int64),
        np.asarray(table.column("movie_idx").to_numpy(zero_copy_only=False), np.int64),
    )


def load_windowed_inputs(
    spark: SparkSession, lake: Lake, versions: Mapping[str, int], windows: TimeWindows
) -> tuple[DataFrame, DataFrame]:
    """Pinned watch sessions and ratings cut to ``[history_start, D]``, only needed columns."""
    return read_pinned(spark, lake, versions, windows.history_start, windows.test_end)


def lists_by_user(users: np.ndarray, movies: np.ndarray) -> dict[int, np.ndarray]:
    """Group aligned ``(user, movie)`` arrays into ``user -> sorted distinct movies``."""
    users = np.asarray(users, dtype=np.int64)
    movies = np.asarray(movies, dtype=np.int64)
    if users.size == 0:  # an empty window: nobody (np.r_ below would invent one boundary)
        return {}
    order = np.lexsort((movies, users))
    users, movies = users[order], movies[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], users.size]
    return {int(users[a]): np.unique(movies[a:b]) for a, b in zip(starts, ends, strict=True)}


def collect_seen_and_relevant(
    seen_df: DataFrame, relevant_df: DataFrame, users_df: DataFrame
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Seen and relevant movies of the (sampled) users in ``users_df``, in one Spark job."""
    pairs = (
        seen_df.select("user_id", "movie_idx", F.lit(False).alias("relevant"))
        .unionByName(relevant_df.select("user_id", "movie_idx", F.lit(True).alias("relevant")))
        .join(F.broadcast(users_df.select("user_id")), "user_id", "left_semi")
        .toArrow()
    )
    users = np.asarray(pairs.column("user_id").to_numpy(zero_copy_only=False), np.int64)
    movies = np.asarray(pairs.column("movie_idx").to_numpy(zero_copy_only=False), np.int64)
    is_relevant = np.asarray(pairs.column("relevant").to_numpy(zero_copy_only=False), bool)
    return (
        lists_by_user(users[~is_relevant], movies[~is_relevant]),
        lists_by_user(users[is_relevant], movies[is_relevant]),
    )


def factor_arrays(factors_df: DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """ALS factors ``(id, features)`` as sorted ids and a float32 matrix (one row per id)."""
    table = factors_df.select(
        F.col("id").cast("long").alias("id"), F.col("features").cast("array<float>")
    ).toArrow()
    ids = np.asarray(table.column("id").to_numpy(), dtype=np.int64)
    features = table.column("features").combine_chunks()
    rank = (
        int(features.value_lengths().to_numpy(zero_copy_only=False).max()) if len(features) else 0
    )
    matrix = np.asarray(features.flatten().to_numpy(zero_copy_only=False), np.float32)
    matrix = matrix.reshape(ids.size, rank)
    order = np.argsort(ids, kind="stable")
    return ids[order], matrix[order]


def _seen_csr(users: np.ndarray, seen: Mapping[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    arrays = [seen.get(int(u), _EMPTY) for u in users]
    lengths = np.array([a.size for a in arrays], dtype=np.int64)
    values = np.concatenate(arrays) if arrays else _EMPTY
    return lengths, values


def _as_lists(movies: np.ndarray) -> list[np.ndarray]:
    return [row[row >= 0].astype(np.int64) for row in movies]


@dataclass(frozen=True)
class ServedLists:
    """What users would be shown from a candidate's ranking, as the publish step writes it: its
    best ``top_n`` re-ranked against popularity (``batch.debias.popularity_weight``,
    :mod:`flixlake.batch.debias`), then the first ``k``. Without a re-rank: its best ``k``."""

    k: int
    top_n: int
    weight: float = 0.0
    relative_popularity: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    @property
    def depth(self) -> int:
        """How many of its best movies a candidate must rank for the list shown."""
        return max(self.k, self.top_n) if self.weight > 0 else self.k

    def __call__(self, movies: np.ndarray, scores: np.ndarray) -> list[np.ndarray]:
        if self.weight > 0:
            movies = rerank_rows(movies, scores, self.relative_popularity, self.weight)
        return [row[row >= 0][: self.k].astype(np.int64) for row in movies]


def recommend_from_factors(
    users: np.ndarray,
    user_ids: np.ndarray,
    user_matrix: np.ndarray,
    index: ItemIndex,
    seen: Mapping[int, np.ndarray],
    served: ServedLists | None = None,
) -> list[np.ndarray]:
    """Best unseen movies per user (empty for users without factors), aligned with ``users``;
    with ``served``, re-ranked as the batch view would be (build ``index`` for its depth)."""
    users = np.asarray(users, dtype=np.int64)
    pos = np.searchsorted(user_ids, users)
    has = (pos < user_ids.size) & (user_ids[np.minimum(pos, max(user_ids.size - 1, 0))] == users)
    if user_ids.size == 0:
        has = np.zeros(users.size, bool)
    out: list[np.ndarray] = [_EMPTY] * users.size
    known = users[has]
    if known.size:
        lengths, values = _seen_csr(known, seen)
        movies, scores = index.recommend(
            user_matrix[pos[has]], lengths, values, _DRIVER_BLOCK_USERS
        )
        found = served(movies, scores) if served is not None else _as_lists(movies)
        for i, recs in zip(np.flatnonzero(has), found, strict=True):
            out[i] = recs
    return out


def popularity_index(popularity: pa.Table, k: int) -> ItemIndex:
    """Popularity as a rank-1 "model": score = -(place in the watcher ranking), no ties."""
    movie_idx = np.asarray(popularity.column("movie_idx").to_numpy(), dtype=np.int64)
    n_users = np.asarray(popularity.column("n_users").to_numpy(), dtype=np.int64)
    order = np.lexsort((movie_idx, -n_users))
    score = np.empty(movie_idx.size, np.float32)
    score[order] = -np.arange(movie_idx.size, dtype=np.float32)
    return ItemIndex.build(movie_idx, score[:, None], k)


def recommend_popular(
    users: np.ndarray,
    index: ItemIndex,
    seen: Mapping[int, np.ndarray],
    served: ServedLists | None = None,
    popularity: pa.Table | None = None,
) -> list[np.ndarray]:
    """The most-watched movies each user has not seen, aligned with ``users``; with ``served``
    (and the ``popularity`` the index was built from), re-ranked as the batch view would be --
    whose popularity score is the number of watchers."""
    lengths, values = _seen_csr(np.asarray(users, dtype=np.int64), seen)
    ones = np.ones((len(users), 1), np.float32)
    movies, _ = index.recommend(ones, lengths, values, _DRIVER_BLOCK_USERS)
    if served is None or popularity is None:
        return _as_lists(movies)
    watchers = _by_movie(popularity, "n_users")
    if watchers.size == 0:
        return _as_lists(movies)
    scores = np.where(movies >= 0, watchers[np.where(movies >= 0, movies, 0)], 0.0)
    return served(movies, scores)


def _by_movie(popularity: pa.Table, column: str) -> np.ndarray:
    """A ``(movie_idx, column)`` table as a dense array by movie index (missing: 0)."""
    idx = np.asarray(popularity.column("movie_idx").to_numpy(), np.int64)
    values = np.asarray(popularity.column(column).to_numpy(), np.float64)
    out = np.zeros(int(idx.max(initial=-1)) + 1, np.float64)
    out[idx] = values
    return out


def served_lists(eval_set: EvaluationSet, settings: Settings) -> ServedLists:
    """How this run's candidates become what users are shown (module :class:`ServedLists`)."""
    watchers = _by_movie(eval_set.popularity, "n_users")
    most = float(watchers.max(initial=0.0))
    return ServedLists(
        k=settings.batch.k,
        top_n=settings.batch.top_n,
        weight=settings.batch.debias.popularity_weight,
        relative_popularity=watchers / most if most > 0 else watchers,
    )


# -- segments ------------------------------------------------------------------------------------
def with_user_segments(sample_df: DataFrame, users_df: DataFrame, batch: BatchConfig) -> DataFrame:
    """Add ``activity``, ``gender``, ``age``, ``occupation`` labels ("unknown" when missing)."""
    n = F.col("n_movies")
    age = F.col("age")
    activity = (
        F.when(n <= 0, "cold")
        .when(n <= batch.new_user_max_movies, "new")
        .when(n >= batch.heavy_user_min_movies, "heavy")
        .otherwise("normal")
    )
    age_bucket = (
        F.when(age.isNull(), "unknown")
        .when(age < 18, "<18")
        .when(age < 25, "18-24")
        .when(age < 35, "25-34")
        .when(age < 45, "35-44")
        .when(age < 55, "45-54")
        .otherwise("55+")
    )

    def label(column: str) -> Any:
        value = F.trim(F.col(column).cast("string"))
        return F.when(value.isNull() | (value == ""), "unknown").otherwise(value)

    return sample_df.join(
        users_df.select(
            F.col("user_id").cast("long").alias("user_id"), "age", "gender", "occupation"
        ),
        "user_id",
        "left",
    ).select(
        "user_id",
        "n_movies",
        activity.alias("activity"),
        label("gender").alias("gender"),
        age_bucket.alias("age"),
        label("occupation").alias("occupation"),
    )


def segment_masks(segments: pa.Table) -> dict[str, np.ndarray]:
    """Boolean user masks per segment name, in a stable reporting order."""
    activity = np.asarray(segments.column("activity").to_pylist(), dtype=object)
    known = activity != "cold"
    masks: dict[str, np.ndarray] = {"all": known}
    for level in ACTIVITY_LEVELS:
        masks[f"activity={level}"] = activity == level
    for column in ("gender", "age", "occupation"):
        values = np.asarray(segments.column(column).to_pylist(), dtype=object)
        for value in sorted(set(values[known].tolist())):
            masks[f"{column}={value}"] = known & (values == value)
    return {name: mask for name, mask in masks.items() if mask.any() or name == "all"}


def summarize(
    per_user: Mapping[str, np.ndarray],
    lists: list[np.ndarray],
    mask: np.ndarray,
    catalog_size: int,
) -> dict[str, Any]:
    """Mean metrics and coverage over the users in ``mask``."""
    n_users = int(mask.sum())
    out: dict[str, Any] = {
        name: float(per_user[name][mask].mean()) if n_users else 0.0 for name in METRICS
    }
    chosen = [lst for lst, keep in zip(lists, mask, strict=True) if keep]
    out["coverage"] = catalog_coverage(chosen, catalog_size) if catalog_size > 0 else 0.0
    out["n_users"] = n_users
    return out


def lift(als_value: float, baseline_value: float) -> float:
    """Relative improvement over the baseline (inf when only the baseline is zero)."""
    if baseline_value > 0:
        return als_value / baseline_value
    return math.inf if als_value > 0 else 0.0


def recommenders_of(segment: Mapping[str, Any]) -> list[str]:
    """The recommenders scored in a segment entry, in a stable order (ALS first)."""
    names = [key for key, value in segment.items() if isinstance(value, dict)]
    return sorted(names, key=lambda name: (RECOMMENDER_ORDER.get(name, 9), name))


def evaluation_rows(
    model_version: str, run_date: dt.date, segments: list[dict[str, Any]]
) -> pa.Table:
    """``model_evaluations`` rows: one per recommender, segment and metric (coverage included)."""
    rows = [
        {
            "model_version": model_version,
            "run_date": run_date,
            "recommender": recommender,
            "segment": seg["segment"],
            "metric": metric,
            "value": float(seg[recommender][metric]),
            "n_users": int(seg["n_users"]),
        }
        for seg in segments
        for recommender in recommenders_of(seg)
        for metric in (*METRICS, "coverage")
    ]
    return pa.Table.from_pylist(rows, schema=MODEL_EVALUATIONS.schema)


# -- the evaluation set: same users, same window for every recommender ---------------------------
@dataclass
class EvaluationSet:
    """Who is evaluated on a model's test window, what they saw before and liked in it."""

    users: np.ndarray  # sampled user ids, sorted
    segments: pa.Table  # user_id, n_movies, activity, gender, age, occupation (aligned)
    cold: np.ndarray  # users without training history
    seen: dict[int, np.ndarray]  # every movie active before the test window (liked or not)
    liked: dict[int, np.ndarray]  # movies liked (confidence > 0) before the test window
    relevant: list[np.ndarray]  # new liked movies in the test window, aligned with users
    popularity: pa.Table  # movie_idx, n_users: distinct watchers before the test window
    train_users: np.ndarray  # every user's liked pairs before the test window (baselines)
    train_movies: np.ndarray
    catalog_size: int
    versions: dict[str, int | None]

    def popular_lists(self, k: int) -> list[np.ndarray]:
        return recommend_popular(self.users, popularity_index(self.popularity, k), self.seen)


def build_evaluation_set(
    spark: SparkSession, lake: Lake, settings: Settings, train: Mapping[str, Any]
) -> EvaluationSet:
    """The users, histories and relevant movies a model of the ``train`` manifest is scored on.

    Deterministic for the same manifest (hash-ordered samples of pinned Delta versions), so a
    later step can rebuild it and score another model on exactly the same users and window.
    """
    batch = settings.batch
    seed = batch.als.seed
    windows = TimeWindows.from_dict(train["windows"])
    versions: dict[str, int | None] = dict(train["input_versions"])
    watch_sessions, ratings = load_windowed_inputs(spark, lake, train["input_versions"], windows)
    pairs = windowed_interactions(
        watch_sessions,
        ratings,
        batch.confidence,
        {
            "train": (None, windows.eval_train_end),
            "test": (windows.test_start, windows.test_end),
        },
    ).persist(StorageLevel.MEMORY_AND_DISK)
    candidates = user_window_summary(pairs, "test", "train").where(F.col("n_relevant") > 0)
    sampled = deterministic_sample(
        candidates.where(F.col("n_movies") > 0), batch.eval_max_users, seed
    ).unionByName(
        deterministic_sample(candidates.where(F.col("n_movies") == 0), batch.eval_max_users, seed)
    )
    users_version = lake.version("users")
    versions["users"] = users_version
    users_df = (
        read_table(spark, lake, "users", users_version)
        if users_version is not None
        else spark.createDataFrame([], spark_schema(USERS))
    )
    sample = (
        sampled.join(candidates, "user_id").transform(with_user_segments, users_df, batch).persist()
    )
    segments_table = sample.orderBy("user_id").toArrow()
    users = np.asarray(segments_table.column("user_id").to_numpy(), dtype=np.int64)
    train_pairs = window_interactions(pairs, "train")
    seen, relevant_by_user = collect_seen_and_relevant(
        train_pairs, new_liked_pairs(pairs, "test", "train"), sample
    )
    liked_table = (
        train_pairs.where(F.col("confidence") > 0).select("user_id", "movie_idx").toArrow()
    )
    train_users = np.asarray(liked_table.column("user_id").to_numpy(), np.int64)
    train_movies = np.asarray(liked_table.column("movie_idx").to_numpy(), np.int64)
    popularity = watch_popularity(pairs, "train").toArrow()
    sample.unpersist()
    pairs.unpersist()
    catalog_size = lake.read("movies", versions["movies"], columns=["movie_idx"]).num_rows
    cold = np.asarray(segments_table.column("activity").to_pylist(), dtype=object) == "cold"
    in_sample = np.isin(train_users, users)
    return EvaluationSet(
        users=users,
        segments=segments_table,
        cold=np.asarray(cold, dtype=bool),
        seen=seen,
        liked=lists_by_user(train_users[in_sample], train_movies[in_sample]),
        relevant=[relevant_by_user.get(int(u), _EMPTY) for u in users],
        popularity=popularity,
        train_users=train_users,
        train_movies=train_movies,
        catalog_size=int(catalog_size),
        versions=versions,
    )


def factor_lists(
    spark: SparkSession,
    eval_set: EvaluationSet,
    paths: Mapping[str, str],
    k: int,
    served: ServedLists | None = None,
) -> list[np.ndarray]:
    """Best unseen movies of the sampled users from saved factors (empty without factors);
    with ``served``, the lists the batch view would show them."""
    known = spark.createDataFrame([(int(u),) for u in eval_set.users[~eval_set.cold]], "id long")
    user_ids, user_matrix = factor_arrays(
        spark.read.parquet(str(paths["users"])).join(F.broadcast(known), "id", "left_semi")
    )
    item_ids, item_matrix = factor_arrays(spark.read.parquet(str(paths["items"])))
    if item_ids.size == 0:
        return [_EMPTY] * eval_set.users.size
    return recommend_from_factors(
        eval_set.users,
        user_ids,
        user_matrix,
        ItemIndex.build(item_ids, item_matrix, served.depth if served is not None else k),
        eval_set.seen,
        served,
    )


def baseline_lists(
    eval_set: EvaluationSet, settings: Settings, k: int, served: ServedLists | None = None
) -> dict[str, list[np.ndarray]]:
    """Lists of the strong baselines for the sampled users: item-kNN, and EASE where it fits
    (with ``served``: as the batch view would show them)."""
    n_items = int(
        max(
            eval_set.catalog_size,
            int(eval_set.train_movies.max(initial=-1)) + 1,
        )
    )
    kinds = [ITEMKNN]
    if n_items <= settings.batch.baselines.ease_max_items:
        kinds.append(EASE)
    else:
        log.info("EASE skipped: %d movies > batch.baselines.ease_max_items", n_items)
    if eval_set.train_users.size == 0 or eval_set.users.size == 0:
        return {name: [_EMPTY] * eval_set.users.size for name in kinds}
    history = history_rows(eval_set.users, eval_set.liked, n_items)
    seen = [eval_set.seen.get(int(u), _EMPTY) for u in eval_set.users]
    return {
        kind: _scorer_lists(
            fit_item_scorer(
                kind,
                eval_set.train_users,
                eval_set.train_movies,
                n_items,
                baseline_params(kind, settings),
            ),
            history,
            seen,
            k,
            served,
        )
        for kind in kinds
    }


def _scorer_lists(
    scorer: ItemScorer,
    history: Any,
    seen: list[np.ndarray],
    k: int,
    served: ServedLists | None,
) -> list[np.ndarray]:
    if served is None:
        return scorer.recommend(history, seen, k)
    lengths = np.array([a.size for a in seen], np.int64)
    values = np.concatenate(seen).astype(np.int64) if seen else _EMPTY
    movies, scores = scorer.top_n(history, lengths, values, served.depth)
    return served(movies, scores)


def _with_fallback(lists: list[np.ndarray], popular: list[np.ndarray]) -> list[np.ndarray]:
    return [pop if lst.size == 0 else lst for lst, pop in zip(lists, popular, strict=True)]


def score_lists(
    eval_set: EvaluationSet, lists: Mapping[str, list[np.ndarray]], k: int
) -> list[dict[str, Any]]:
    """Per segment and recommender: mean metrics @k and coverage (first entry: ``all``)."""
    per_user = {name: ranking_metrics(lst, eval_set.relevant, k) for name, lst in lists.items()}
    return [
        {
            "segment": name,
            "n_users": int(mask.sum()),
            **{
                rec: summarize(per_user[rec], lists[rec], mask, eval_set.catalog_size)
                for rec in lists
            },
        }
        for name, mask in segment_masks(eval_set.segments).items()
    ]


def candidate_requirements(
    eval_set: EvaluationSet,
    lists: Mapping[str, list[np.ndarray]],
    segments: list[dict[str, Any]],
    settings: Settings,
) -> dict[str, list[RequirementCheck]]:
    """Both fairness requirements of ``audit.requirements`` for every candidate, on its own lists.

    System: the long-tail share of what each candidate would show (each list's first
    ``serving.results``) to the evaluated users with history -- the users a batch view serves;
    cold users get the popularity list from every candidate. The head is the most-watched
    ``audit.head_share`` of the catalog before the test window. Model: its hit rate per segment
    (the same figures ``model_evaluations`` gets). The publish step checks the served one again
    on its written batch view (every user).
    """
    requirements = settings.audit.requirements
    watchers = np.zeros(eval_set.catalog_size, np.float64)
    pop_idx = np.asarray(eval_set.popularity.column("movie_idx").to_numpy(), np.int64)
    pop_n = np.asarray(eval_set.popularity.column("n_users").to_numpy(), np.float64)
    if pop_idx.size:
        watchers = np.zeros(max(eval_set.catalog_size, int(pop_idx.max()) + 1), np.float64)
        watchers[pop_idx] = pop_n
    history_users = int(np.unique(eval_set.train_users).size)
    out: dict[str, list[RequirementCheck]] = {}
    for name in CANDIDATES:
        if name not in lists:
            continue
        shown = [lst for lst, cold in zip(lists[name], eval_set.cold, strict=True) if not cold]
        measured = lists_exposure(
            shown, watchers, history_users, settings.audit.head_share, settings.serving.results
        )
        qualities = segment_qualities(
            (
                (seg["segment"], int(seg["n_users"]), round(seg[name]["hit_rate"] * seg["n_users"]))
                for seg in segments
                if name in seg
            ),
            settings.audit.confidence,
        )
        out[name] = [
            check_system_requirement(measured, requirements.system, "eval_lists"),
            check_model_requirement(qualities, requirements.model, "offline"),
        ]
    return out


def training_cutoffs(model: Mapping[str, Any], batch: BatchConfig) -> list[tuple[str, dt.date]]:
    """The two fits of a published model and the last day each saw: final (its run date), then
    eval (before its own test window)."""
    run_date = model["run_date"]
    if isinstance(run_date, str):
        run_date = dt.date.fromisoformat(run_date)
    window_days = (model.get("params") or {}).get("window_days") or {}
    eval_days = int(window_days.get("eval") or batch.eval_days)
    return [("final", run_date), ("eval", run_date - dt.timedelta(days=eval_days))]


def incumbent_factors(
    model: Mapping[str, Any], windows: TimeWindows, batch: BatchConfig
) -> tuple[dict[str, str] | None, str]:
    """Which saved factors of a published ALS model may be scored on ``windows``' test window.

    Its final factors if they were trained before the test window starts, else its eval factors
    if those were, else none (it saw the window: no fair comparison). Returns (paths, why).
    """
    folder = Path(str(model["artifact_path"]))
    for which, trained_until in training_cutoffs(model, batch):
        paths = {"users": str(folder / which / "user_factors"),
                 "items": str(folder / which / "item_factors")}  # fmt: skip
        if trained_until < windows.test_start and all(Path(p).exists() for p in paths.values()):
            return paths, f"{which} factors (trained until {trained_until})"
    return None, (
        f"its factors under {folder} are missing or were trained on this test window "
        f"({windows.test_start}..{windows.test_end})"
    )


def refitted_baseline_lists(
    spark: SparkSession,
    lake: Lake,
    settings: Settings,
    eval_set: EvaluationSet,
    windows: TimeWindows,
    model: Mapping[str, Any],
    served: ServedLists | None = None,
) -> tuple[list[np.ndarray] | None, str]:
    """A published baseline's lists for this evaluation set, and how they were obtained
    (with ``served``: re-ranked as under this run's configuration).

    A baseline has no saved state: it is refitted with its recorded params on its recorded
    input versions (Delta time travel), cut at the last day its final fit saw -- or, if that
    day is in this test window, the day before its own test window -- exactly what it learned
    then. Users are scored from their liked movies up to that day; seen movies are this
    evaluation set's. Returns (None, why) when no fit ends before the test window or its input
    versions cannot be read.
    """
    batch = settings.batch
    kind = recommender_of(model)
    params = dict(model.get("params") or {})
    versions = model.get("input_versions") or {}
    if versions.get("watch_sessions") is None or versions.get("ratings") is None:
        return None, "its models row records no watch_sessions/ratings versions to refit it on"
    cutoff = next(
        ((which, day) for which, day in training_cutoffs(model, batch) if day < windows.test_start),
        None,
    )
    if cutoff is None:
        return None, (
            f"it was fitted on this test window ({windows.test_start}..{windows.test_end})"
        )
    which, until = cutoff
    history_days = int((params.get("window_days") or {}).get("history") or batch.history_days)
    start = until - dt.timedelta(days=history_days - 1)
    k = batch.k
    pairs = fit_pairs(spark, lake, settings, versions, start, until).persist()
    try:
        if kind == POPULARITY:
            watchers = watch_popularity(pairs, FIT_WINDOW).toArrow()
            lists = recommend_popular(
                eval_set.users,
                popularity_index(watchers, served.depth if served is not None else k),
                eval_set.seen,
                served,
                watchers,
            )
        else:
            users, movies = pair_arrays(liked_df(pairs))
            n_items = max(eval_set.catalog_size, int(movies.max(initial=-1)) + 1)
            scorer = fit_item_scorer(kind, users, movies, n_items, params)
            in_sample = np.isin(users, eval_set.users)
            history = history_rows(
                eval_set.users, lists_by_user(users[in_sample], movies[in_sample]), n_items
            )
            seen = [eval_set.seen.get(int(u), _EMPTY) for u in eval_set.users]
            lists = _scorer_lists(scorer, history, seen, k, served)
    except Exception as exc:  # e.g. its versions were vacuumed: recorded, not fatal
        log.warning("could not refit %s %s: %s", kind, model["model_version"], exc)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"its inputs could not be read to refit it: {first_line[:200]}"
    finally:
        pairs.unpersist()
    used = ", ".join(f"{name} v{versions[name]}" for name in ("watch_sessions", "ratings"))
    return lists, f"{kind} refitted on its inputs ({used}) up to {until} ({which} fit)"


def find_incumbent(lake: Lake, model_version: str) -> dict[str, Any] | None:
    """The published model a new one would replace (on a rerun: the one it replaced then)."""
    try:
        this = get_model(lake, model_version)
    except UnknownModelError:
        this = None
    already = this is not None and this["status"] == PUBLISHED and this["published_at"] is not None
    return current_published_model(
        lake,
        exclude=model_version,
        published_before=this["published_at"] if already and this is not None else None,
    )


def rescore_incumbent(
    spark: SparkSession,
    lake: Lake,
    settings: Settings,
    eval_set: EvaluationSet,
    windows: TimeWindows,
    incumbent: Mapping[str, Any] | None,
) -> tuple[list[np.ndarray] | None, dict[str, Any]]:
    """The incumbent's lists on this evaluation set, and a note of what was (not) scored.

    ALS from its saved factors (:func:`incumbent_factors`), a baseline refitted on its inputs
    (:func:`refitted_baseline_lists`), both re-ranked as this run's candidates are
    (:class:`ServedLists`: same configuration, a like-for-like comparison); users it has nothing
    for get the popularity list.
    """
    if incumbent is None:
        return None, {"model_version": None, "scored": False, "why": "no published model"}
    kind = recommender_of(incumbent)
    note: dict[str, Any] = {"model_version": incumbent["model_version"], "recommender": kind}
    served = served_lists(eval_set, settings)
    if kind == ALS:
        paths, why = incumbent_factors(incumbent, windows, settings.batch)
        found = (
            factor_lists(spark, eval_set, paths, settings.batch.k, served)
            if paths is not None
            else None
        )
    else:
        found, why = refitted_baseline_lists(
            spark, lake, settings, eval_set, windows, incumbent, served
        )
    note.update(scored=found is not None, why=why)
    if found is None:
        return None, note
    return _with_fallback(found, eval_set.popular_lists(settings.batch.k)), note


# -- the batch step ------------------------------------------------------------------------------
def candidate_params(
    settings: Settings, train: Mapping[str, Any], kinds: list[str]
) -> dict[str, dict[str, Any]]:
    """Each evaluated candidate's params (ALS's from the train manifest, with its version)."""
    out: dict[str, dict[str, Any]] = {
        ALS: {"model_version": train["model_version"], **(train.get("params") or {})}
    }
    for kind in kinds:
        if kind != ALS:
            out[kind] = baseline_params(kind, settings)
    return out


def run_evaluate(
    spark: SparkSession, lake: Lake, settings: Settings, run_date: dt.date
) -> dict[str, Any]:
    """Batch step "evaluate": ALS vs. popularity, item-kNN, EASE and the incumbent @k; the gate
    chooses the candidate to serve, and the run's model version is named after it."""
    t_total = time.perf_counter()
    batch = settings.batch
    k = batch.k
    train = runs.read_manifest(settings, run_date, "train")
    als_version = str(train["model_version"])
    if not re.fullmatch(r"[A-Za-z0-9._-]+", als_version):
        raise ValueError(f"train manifest has a malformed model_version {als_version!r}")
    windows = TimeWindows.from_dict(train["windows"])
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    eval_set = build_evaluation_set(spark, lake, settings, train)
    timings["prepare_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # what each candidate's batch view would show (re-ranked when batch.debias is on); users
    # without a list get the popularity list, as the service serves them
    served = served_lists(eval_set, settings)
    pop_lists = eval_set.popular_lists(k)
    als_raw = factor_lists(spark, eval_set, train["factors"]["eval"], k, served)
    fallback = np.array([lst.size == 0 for lst in als_raw], dtype=bool) & ~eval_set.cold
    pop_served = recommend_popular(
        eval_set.users,
        popularity_index(eval_set.popularity, served.depth),
        eval_set.seen,
        served,
        eval_set.popularity,
    )
    lists: dict[str, list[np.ndarray]] = {
        ALS: _with_fallback(als_raw, pop_lists),
        # cold users are not in any batch view: the service's popular list, not re-ranked
        POPULARITY: [
            popular if cold else own
            for own, popular, cold in zip(pop_served, pop_lists, eval_set.cold, strict=True)
        ],
    }
    timings["score_als_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for name, found in baseline_lists(eval_set, settings, k, served).items():
        lists[name] = _with_fallback(found, pop_lists)
    timings["baselines_s"] = time.perf_counter() - t0
    segments = score_lists(eval_set, lists, k)

    # the gate: every candidate judged on its requirements and NDCG; the best eligible is chosen
    overall = segments[0]
    ndcg = {name: overall[name]["ndcg"] for name in CANDIDATES if name in overall}
    requirements = candidate_requirements(eval_set, lists, segments, settings)
    unmet = {
        name: [check.describe() for check in checks if not check.passed]
        for name, checks in requirements.items()
    }
    enforced = unmet if settings.audit.requirements.enforce_in_publish else {}
    candidates = candidate_params(settings, train, list(lists))

    def version_of(winner: str | None) -> str:
        if winner is None or winner == ALS:  # none eligible: the run's model is ALS, refused later
            return als_version
        return model_version_for(winner, run_date, train["input_versions"], candidates[winner])

    choice = judge_candidates(ndcg, batch.publish, enforced)
    model_version = version_of(choice.winner)

    t0 = time.perf_counter()
    incumbent_lists, incumbent = rescore_incumbent(
        spark, lake, settings, eval_set, windows, find_incumbent(lake, model_version)
    )
    if incumbent_lists is not None:
        lists[INCUMBENT] = incumbent_lists
        segments = score_lists(eval_set, lists, k)
        overall = segments[0]
        incumbent.update(overall[INCUMBENT])
        # no regression from the current model: judged for every candidate too
        choice = judge_candidates(ndcg, batch.publish, enforced, float(overall[INCUMBENT]["ndcg"]))
        model_version = version_of(choice.winner)
    timings["incumbent_s"] = time.perf_counter() - t0
    recommender = choice.winner or ALS

    baselines = {name: overall[name] for name in BASELINES if name in overall}
    best = max(baselines, key=lambda name: (baselines[name]["ndcg"], -BASELINES.index(name)))
    summary: dict[str, Any] = {
        "model_version": model_version,
        "recommender": recommender,
        "als_model_version": als_version,
        "selection": {
            "winner": choice.winner,
            "reason": choice.reason,
            "ndcg": ndcg,
            "verdicts": {name: v.as_dict() for name, v in choice.verdicts.items()},
            "requirements": {
                name: [check.describe() for check in checks]
                for name, checks in requirements.items()
            },
            "unmet": unmet,
            "long_tail_share": {name: checks[0].observed for name, checks in requirements.items()},
            "popularity_weight": served.weight,  # the re-rank the lists were judged with
        },
        "params": candidates[recommender],
        "candidates": candidates,
        "run_date": run_date.isoformat(),
        "k": k,
        "als": overall[ALS],
        "popularity": overall[POPULARITY],
        "baselines": baselines,
        "best_baseline": best,
        "lift_ndcg": lift(overall[ALS]["ndcg"], overall[POPULARITY]["ndcg"]),
        "lift_ndcg_best_baseline": lift(overall[ALS]["ndcg"], baselines[best]["ndcg"]),
        "incumbent": incumbent,
        "segments": segments,
        "windows": windows.to_dict(),
        "input_versions": eval_set.versions,
        "counts": {
            "users_evaluated": int(eval_set.users.size),
            "users_with_history": int((~eval_set.cold).sum()),
            "cold_users": int(eval_set.cold.sum()),
            "als_fallback_users": int(fallback.sum()),
            "relevant_pairs": int(sum(len(r) for r in eval_set.relevant)),
            "catalog_size": eval_set.catalog_size,
            "popular_movies": int(eval_set.popularity.num_rows),
            "baseline_train_pairs": int(eval_set.train_users.size),
        },
    }
    if overall["n_users"] == 0:
        log.warning("no user with training history was active in the test window %s", windows)
    log.info("evaluate: %s", choice.reason)
    t0 = time.perf_counter()
    lake.replace_where(
        "model_evaluations",
        evaluation_rows(model_version, run_date, segments),
        f"model_version = '{model_version}'",
    )
    timings["write_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_total
    summary["timings"] = {key: round(value, 3) for key, value in timings.items()}
    runs.write_manifest(settings, run_date, "evaluate", summary)
    return summary
