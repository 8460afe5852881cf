"""The publication gate and the batch view: only a model that beats the baseline reaches users.

``run_publish`` lets a model out when the quality gate of its run passed, its NDCG@k beats the
popularity baseline by ``batch.publish.min_lift_over_popularity`` and it is not worse than the
model it replaces by more than ``batch.publish.max_regression`` (relative). Then it writes the
top-N movies of every user (final factors, movies the user already watched or rated excluded)
into its own ``batch_recommendations`` partition, checks the fairness requirements on it
(:func:`~flixlake.batch.fairness.publish_requirements`: long-tail exposure of the view, hit rate
per user segment; enforced unless ``audit.requirements.enforce_in_publish`` is false) and marks
the model published, which makes it the one the service loads. A refusal marks the model
rejected with the reason and raises :class:`~flixlake.batch.errors.GateFailedError` (exit code
3 in the job); a view refused for the requirements stays in its partition for the audit, unserved.

spark-submit jobs/publish_batch_view.py --run-date 2026-11-22
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Any, NoReturn

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from flixlake.batch.errors import GateFailedError
from flixlake.batch.fairness import publish_requirements
from flixlake.batch.topn import top_n_per_user
from flixlake.config import PublishConfig, Settings
from flixlake.lake.registry import (
    PUBLISHED,
    REJECTED,
    UnknownModelError,
    current_published_model,
    get_model,
    rollback_to,
    set_model_status,
)
from flixlake.lake.runs import MissingStepError, read_manifest, run_dir, write_manifest
from flixlake.lake.spark_io import read_table, write_table
from flixlake.lake.store import Lake

__all__ = [
    "build_batch_view",
    "publish_decision",
    "rollback_to",
    "run_publish",
    "seen_pairs",
    "with_movie_ids",
]

BATCH_VIEW = "batch_recommendations"


def publish_decision(
    als_ndcg: float | None,
    pop_ndcg: float | None,
    current_ndcg: float | None,
    cfg: PublishConfig,
) -> tuple[bool, str]:
    """The gate as a pure function: (publish?, the reason an engineer reads either way)."""
    if als_ndcg is None or math.isnan(als_ndcg):
        return False, "no ALS NDCG was measured for this model"
    if pop_ndcg is None or math.isnan(pop_ndcg):
        return False, "no popularity-baseline NDCG was measured for this model"
    lift_floor = pop_ndcg * cfg.min_lift_over_popularity
    if not als_ndcg > lift_floor:
        return False, (
            f"ALS NDCG {als_ndcg:.4f} does not beat popularity {pop_ndcg:.4f} "
            f"x {cfg.min_lift_over_popularity:g} = {lift_floor:.4f}"
        )
    reason = (
        f"ALS NDCG {als_ndcg:.4f} > popularity {pop_ndcg:.4f} "
        f"x {cfg.min_lift_over_popularity:g} = {lift_floor:.4f}"
    )
    if current_ndcg is None or math.isnan(current_ndcg):
        return True, f"{reason}; no published model to compare with"
    regression_floor = current_ndcg * (1.0 - cfg.max_regression)
    if als_ndcg < regression_floor:
        return False, (
            f"ALS NDCG {als_ndcg:.4f} regresses more than {cfg.max_regression:.0%} from the "
            f"current model's {current_ndcg:.4f} (floor {regression_floor:.4f})"
        )
    return True, (
        f"{reason}; >= current model's {current_ndcg:.4f} x (1 - {cfg.max_regression:g}) "
        f"= {regression_floor:.4f}"
    )


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


def build_batch_view(
    spark: SparkSession,
    lake: Lake,
    model: dict[str, Any],
    factors: dict[str, str],
    top_n: int,
) -> DataFrame:
    """Top-N per user from a model's final factors, seen movies excluded, as batch view rows."""
    versions = model["input_versions"]
    seen = seen_pairs(
        read_table(spark, lake, "watch_sessions", versions.get("watch_sessions")),
        read_table(spark, lake, "ratings", versions.get("ratings")),
    )
    movies = read_table(spark, lake, "movies", versions.get("movies"))
    recs = top_n_per_user(
        spark,
        _factors(spark, factors["users"]),
        _factors(spark, factors["items"]),
        seen,
        top_n,
    )
    return recs.transform(with_movie_ids(movies)).transform(
        with_model_version(model["model_version"])
    )


# -- the batch step ------------------------------------------------------------------------------
def _ndcg(metrics: dict[str, Any], recommender: str) -> float | None:
    value = (metrics.get(recommender) or {}).get("ndcg")
    return float(value) if isinstance(value, int | float) else None


def _refuse(
    lake: Lake, settings: Settings, run_date: dt.date, version: str, reason: str
) -> NoReturn:
    set_model_status(lake, version, REJECTED, reason)
    (run_dir(settings, run_date) / "publish.json").unlink(missing_ok=True)  # no stale "published"
    raise GateFailedError(f"model {version} not published: {reason}")


def run_publish(
    spark: SparkSession, lake: Lake, settings: Settings, run_date: dt.date
) -> dict[str, Any]:
    """Gate the run's model; on pass write its batch view partition and make it current."""
    quality = read_manifest(settings, run_date, "quality")
    train = read_manifest(settings, run_date, "train")
    model_version = str(train["model_version"])
    try:
        model = get_model(lake, model_version)
    except UnknownModelError:
        raise MissingStepError(
            f"model {model_version} of {run_date} is not registered; run register_model first"
        ) from None
    # on a rerun compare with the model this one replaced back then, not with itself or later ones
    already = model["status"] == PUBLISHED and model["published_at"] is not None
    baseline = current_published_model(
        lake, exclude=model_version, published_before=model["published_at"] if already else None
    )
    if quality.get("passed") is not True:
        _refuse(
            lake, settings, run_date, model_version, f"the quality gate of {run_date} did not pass"
        )
    published, reason = publish_decision(
        _ndcg(model["metrics"], "als"),
        _ndcg(model["metrics"], "popularity"),
        _ndcg(baseline["metrics"], "als") if baseline else None,
        settings.batch.publish,
    )
    if not published:
        _refuse(lake, settings, run_date, model_version, reason)

    view = build_batch_view(spark, lake, model, train["factors"]["final"], settings.batch.top_n)
    rows = write_table(
        view,
        lake,
        BATCH_VIEW,
        mode="overwrite",
        replace_partitions={"model_version": model_version},
    )
    if rows == 0:
        _refuse(lake, settings, run_date, model_version, "the batch view came out empty")
    requirements = publish_requirements(spark, lake, settings, model)
    unmet = [check.describe() for check in requirements if not check.passed]
    if unmet and settings.audit.requirements.enforce_in_publish:
        _refuse(lake, settings, run_date, model_version, "; ".join(unmet))
    published_at = model["published_at"] if already else dt.datetime.now(dt.UTC)
    set_model_status(lake, model_version, PUBLISHED, reason, published_at=published_at)
    summary = {
        "model_version": model_version,
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
    }
    write_manifest(settings, run_date, "publish", summary)
    return summary
