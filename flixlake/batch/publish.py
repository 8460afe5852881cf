"""The publication gate and the batch view: the best candidate of the run reaches users.

``run_publish`` serves the candidate the gate chose on the run's test window
(:mod:`flixlake.batch.gate`: ALS, popularity, item-kNN or EASE -- every candidate judged, the
best eligible NDCG served, the simpler one unless the more complex one beats it by
``batch.publish.min_lift_over_popularity`` / ``min_lift_over_baseline``) when the quality gate of
its run passed. Eligible: it meets the fairness requirements on its own evaluation lists (as the
evaluate step recorded them) and is not worse than the model it replaces by more than
``batch.publish.max_regression`` (relative) -- the incumbent re-scored on the candidate's users
and test window, never its own older figure. Nothing is published only when no candidate is
eligible; the refusal then lists every candidate's reason. Then it writes
the top-N movies of every user into its own ``batch_recommendations`` partition (same schema
for every kind, so the service needs no change):

* ALS: from the final factors (fitted on everything up to the run date);
* popularity, item-kNN, EASE: fitted here on the liked pairs of everything up to the run date
  at the pinned input versions (:func:`baseline_top_n`), ranked in Spark tasks.

Movies the user already watched or rated are excluded for every kind. It then checks the
fairness requirements again on the served candidate's view (every user, not a sample) (:func:`~flixlake.batch.fairness.publish_requirements`:
long-tail exposure of the view, the served kind's hit rate per user segment; enforced unless
``audit.requirements.enforce_in_publish`` is false) and marks the model published, which makes
it the one the service loads. A refusal marks the model rejected with the reason and raises
:class:`~flixlake.batch.errors.GateFailedError` (exit code 3 in the job); a view refused for
the requirements stays in its partition for the audit, unserved.

spark-submit jobs/publish_batch_view.py --run-date 2026-11-22
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from flixlake.batch.baselines import fit_item_scorer
from flixlake.batch.debias import relative_popularity, with_popularity_penalty
from flixlake.batch.errors import GateFailedError
from flixlake.batch.evaluation import (
    FIT_WINDOW,
    build_evaluation_set,
    find_incumbent,
    fit_pairs,
    liked_df,
    pair_arrays,
    rescore_incumbent,
    score_lists,
)
from flixlake.batch.fairness import publish_requirements
from flixlake.batch.features import TimeWindows, watch_popularity, window_interactions
from flixlake.batch.gate import publish_decision
from flixlake.batch.recommenders import ALS, CANDIDATES, POPULARITY, recommender_of
from flixlake.batch.report import write_evaluation_report
from flixlake.batch.topn import top_n_from_histories, top_n_per_user
from flixlake.config import Settings
from flixlake.lake.registry import (
    PUBLISHED,
    REJECTED,
    UnknownModelError,
    get_model,
    rollback_to,
    set_model_status,
)
from flixlake.lake.runs import MissingStepError, read_manifest, run_dir, write_manifest
from flixlake.lake.spark_io import read_table, write_table
from flixlake.lake.store import Lake

__all__ = [
    "baseline_top_n",
    "publish_decision",
    "rollback_to",
    "run_publish",
    "seen_pairs",
    "with_movie_ids",
    "write_batch_view",
]

BATCH_VIEW = "batch_recommendations"


# -- transformations -----------------------------------------------------------------------------
def seen_pairs(watch_sessions_df: DataFrame, ratings_df: DataFrame) -> DataFrame:
    """(user_id, movie_idx) a user watched or rated: never recommend those again."""
    return (
        watch_sessions_df.select("user_id", "movie_idx")
        .unionByName(ratings_df.select("user_id", "movie_idx"))
        .distinct()
    )


def with_movie_ids(movies_df: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """Transform: top-N rows keyed by ``movie_idx`` -> the slugs the service answers with."""

    def transform(recs_df: DataFrame) -> DataFrame:
        slugs = movies_df.select("movie_idx", "movie_id")
        return recs_df.join(F.broadcast(slugs), "movie_idx", "inner").drop("movie_idx")

    return transform


def with_model_version(model_version: str) -> Callable[[DataFrame], DataFrame]:
    """Transform: stamp every row with the model that produced it (provenance in serving)."""

    def transform(recs_df: DataFrame) -> DataFrame:
        return recs_df.withColumn("model_version", F.lit(model_version))

    return transform


def _factors(spark: SparkSession, path: str) -> DataFrame:
    """Saved factors ``(id, features)``: user ids for users, ``movie_idx`` for items."""
    return spark.read.parquet(str(path)).select("id", "features")


def baseline_top_n(
    spark: SparkSession,
    kind: str,
    params: Mapping[str, Any],
    pairs_df: DataFrame,
    seen_df: DataFrame,
    catalog_size: int,
    n: int,
) -> DataFrame:
    """Every user's top ``n`` unseen movies from a baseline fitted on ``pairs_df``'s fit window.

    Popularity ranks the most-watched movies for every user of the window (a rank-1 "factor
    model": score = distinct watchers, ties by movie index, exactly as evaluated); item-kNN and
    EASE score the users with a liked movie from their liked movies, fitted on the driver (the
    liked pairs are collected: 16 bytes a pair) and broadcast (:func:`top_n_from_histories`).
    ``pairs_df`` is read twice: persist it. Rows as :func:`top_n_per_user`.
    """
    if kind == POPULARITY:
        items = watch_popularity(pairs_df, FIT_WINDOW).select(
            F.col("movie_idx").alias("id"),
            F.array(F.col("n_users").cast("float")).alias("features"),
        )
        users = (
            window_interactions(pairs_df, FIT_WINDOW)
            .select(F.col("user_id").alias("id"))
            .distinct()
            .withColumn("features", F.array(F.lit(1.0).cast("float")))
        )
        return top_n_per_user(spark, users, items, seen_df, n)
    liked = liked_df(pairs_df)
    users_arr, movies_arr = pair_arrays(liked)
    n_items = max(int(catalog_size), int(movies_arr.max(initial=-1)) + 1)
    scorer = fit_item_scorer(kind, users_arr, movies_arr, n_items, params)
    return top_n_from_histories(spark, scorer, liked, seen_df, n)


def write_batch_view(
    spark: SparkSession,
    lake: Lake,
    settings: Settings,
    model: dict[str, Any],
    train: Mapping[str, Any],
) -> tuple[int, dict[str, float]]:
    """Write the model's top-N per user (seen movies excluded) into its batch view partition.

    Returns (rows written, timings). ALS ranks from its final factors; a baseline is fitted on
    everything up to the run date at the model's input versions first. With
    ``batch.debias.popularity_weight`` > 0 the lists are re-ranked against popularity
    (:mod:`flixlake.batch.debias`).
    """
    versions = model["input_versions"]
    top_n = settings.batch.top_n
    watch_sessions = read_table(spark, lake, "watch_sessions", versions.get("watch_sessions"))
    seen = seen_pairs(watch_sessions, read_table(spark, lake, "ratings", versions.get("ratings")))
    movies = read_table(spark, lake, "movies", versions.get("movies"))
    kind = recommender_of(model)
    timings: dict[str, float] = {}
    cached: DataFrame | None = None
    started = time.perf_counter()
    if kind == ALS:
        factors = train["factors"]["final"]
        recs = top_n_per_user(
            spark, _factors(spark, factors["users"]), _factors(spark, factors["items"]), seen, top_n
        )
    else:
        windows = TimeWindows.from_dict(train["windows"])
        cached = fit_pairs(
            spark, lake, settings, versions, windows.history_start, windows.test_end
        ).persist(StorageLevel.MEMORY_AND_DISK)
        catalog = lake.read("movies", versions.get("movies"), columns=["movie_idx"]).num_rows
        recs = baseline_top_n(spark, kind, model["params"], cached, seen, catalog, top_n)
    timings["fit_s"] = time.perf_counter() - started
    weight = settings.batch.debias.popularity_weight
    if weight > 0:
        recs = with_popularity_penalty(recs, relative_popularity(watch_sessions), weight)
    view = recs.transform(with_movie_ids(movies)).transform(
        with_model_version(model["model_version"])
    )
    started = time.perf_counter()
    try:
        rows = write_table(
            view,
            lake,
            BATCH_VIEW,
            mode="overwrite",
            replace_partitions={"model_version": model["model_version"]},
        )
    finally:
        if cached is not None:
            cached.unpersist()
    timings["top_n_s"] = time.perf_counter() - started  # ranking every user happens here
    return rows, timings


# -- the batch step ------------------------------------------------------------------------------
def _ndcg(metrics: Mapping[str, Any] | None) -> float | None:
    value = (metrics or {}).get("ndcg")
    return float(value) if isinstance(value, int | float) else None


def candidate_ndcg(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """Each candidate's NDCG@k from a ``models`` row's metrics (ALS and every baseline)."""
    baselines = metrics.get("baselines") or {POPULARITY: metrics.get(POPULARITY)}
    found = {ALS: _ndcg(metrics.get(ALS))}
    found.update({name: _ndcg(values) for name, values in baselines.items()})
    return {name: found[name] for name in CANDIDATES if name in found}


def recorded_unmet(metrics: Mapping[str, Any]) -> dict[str, list[str]]:
    """The requirements each candidate failed on its own lists, as the evaluate step judged them."""
    unmet = (metrics.get("selection") or {}).get("unmet") or {}
    return {str(name): [str(line) for line in lines] for name, lines in unmet.items()}


def incumbent_on_this_window(
    spark: SparkSession,
    lake: Lake,
    settings: Settings,
    train: dict[str, Any],
    metrics: Mapping[str, Any],
    incumbent: Mapping[str, Any] | None,
) -> tuple[float | None, str]:
    """The incumbent's NDCG on the candidate's users and test window, and how it was obtained.

    The evaluate step re-scored the model published then; if another one was published since,
    it is re-scored now on the same (rebuilt) evaluation set.
    """
    if incumbent is None:
        return None, "no published model"
    scored = metrics.get("incumbent") or {}
    if scored.get("model_version") == incumbent["model_version"]:
        if scored.get("scored"):
            return _ndcg(scored), f"{incumbent['model_version']} re-scored by evaluate"
        return None, f"{incumbent['model_version']} not re-scored: {scored.get('why')}"
    windows = TimeWindows.from_dict(train["windows"])
    eval_set = build_evaluation_set(spark, lake, settings, train)
    lists, note = rescore_incumbent(spark, lake, settings, eval_set, windows, incumbent)
    if lists is None:
        return None, f"{incumbent['model_version']} not re-scored: {note['why']}"
    segments = score_lists(eval_set, {"incumbent": lists}, settings.batch.k)
    return float(segments[0]["incumbent"]["ndcg"]), (
        f"{incumbent['model_version']} re-scored at publish time"
    )


def _refuse(
    lake: Lake, settings: Settings, run_date: dt.date, version: str, reason: str
) -> NoReturn:
    set_model_status(lake, version, REJECTED, reason)
    (run_dir(settings, run_date) / "publish.json").unlink(missing_ok=True)  # no stale "published"
    write_evaluation_report(lake, settings, version, run_dir(settings, run_date))  # the verdict
    raise GateFailedError(f"model {version} not published: {reason}")


def run_publish(
    spark: SparkSession, lake: Lake, settings: Settings, run_date: dt.date
) -> dict[str, Any]:
    """Gate the run's model; on pass write its batch view partition and make it current."""
    quality = read_manifest(settings, run_date, "quality")
    train = read_manifest(settings, run_date, "train")
    evaluate = read_manifest(settings, run_date, "evaluate")
    model_version = str(evaluate.get("model_version") or train["model_version"])
    try:
        model = get_model(lake, model_version)
    except UnknownModelError:
        raise MissingStepError(
            f"model {model_version} of {run_date} is not registered; run register_model first"
        ) from None
    kind = recommender_of(model)
    # on a rerun compare with the model this one replaced back then, not with itself or later ones
    already = model["status"] == PUBLISHED and model["published_at"] is not None
    baseline = find_incumbent(lake, model_version)
    if quality.get("passed") is not True:
        _refuse(
            lake, settings, run_date, model_version, f"the quality gate of {run_date} did not pass"
        )
    metrics = model["metrics"]
    incumbent_ndcg, incumbent_how = incumbent_on_this_window(
        spark, lake, settings, train, metrics, baseline
    )
    decision = publish_decision(
        candidate_ndcg(metrics),
        incumbent_ndcg,
        settings.batch.publish,
        n_users=(metrics.get(ALS) or {}).get("n_users"),
        unmet=recorded_unmet(metrics) if settings.audit.requirements.enforce_in_publish else None,
    )
    reason = decision.reason
    reason = f"{reason} (incumbent: {incumbent_how})" if baseline is not None else reason
    if not decision.published:
        _refuse(lake, settings, run_date, model_version, reason)
    if decision.winner != kind:
        _refuse(
            lake,
            settings,
            run_date,
            model_version,
            f"the gate now chooses {decision.winner} but the registered model is {kind} "
            "(batch.publish changed since evaluate?): rerun evaluate_model and register_model",
        )

    rows, timings = write_batch_view(spark, lake, settings, model, train)
    if rows == 0:
        _refuse(lake, settings, run_date, model_version, "the batch view came out empty")
    requirements = publish_requirements(spark, lake, settings, model)
    unmet = [check.describe() for check in requirements if not check.passed]
    if unmet and settings.audit.requirements.enforce_in_publish:
        _refuse(lake, settings, run_date, model_version, "; ".join(unmet))
    published_at = model["published_at"] if already else dt.datetime.now(dt.UTC)
    set_model_status(lake, model_version, PUBLISHED, reason, published_at=published_at)
    report = write_evaluation_report(lake, settings, model_version, run_dir(settings, run_date))
    summary = {
        "model_version": model_version,
        "recommender": kind,
        "published": True,
        "reason": reason,
        "replaces": baseline["model_version"] if baseline else None,
        "rows": rows,
        "requirements": [check.describe() for check in requirements],
        "top_n": settings.batch.top_n,
        "batch_view_version": lake.version(BATCH_VIEW),
        "published_at": published_at,
        "input_versions": {
            name: model["input_versions"].get(name)
            for name in ("watch_sessions", "ratings", "movies")
        },
        "timings": {key: round(value, 3) for key, value in timings.items()},
        "report": str(report),
    }
    write_manifest(settings, run_date, "publish", summary)
    return summary
