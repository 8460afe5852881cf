"""The publication gate and the batch view: only a model that beats the baseline reaches users.

``run_publish`` lets a model out when the quality gate of its run passed, its NDCG@k beats the
popularity baseline by ``batch.publish.min_lift_over_popularity`` and the best baseline of its
evaluation (popularity, item-kNN, EASE) by ``min_lift_over_baseline``, and it is not worse than
the model it replaces by more than ``batch.publish.max_regression`` (relative) -- the incumbent
re-scored on the candidate's users and test window, never its own older figure. When a baseline
is better, the model is rejected with that reason and the current model keeps serving (baselines
are measured, not served: the service only serves ALS factors' batch views). Then it writes the
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
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from flixlake.batch.debias import relative_popularity, with_popularity_penalty
from flixlake.batch.errors import GateFailedError
from flixlake.batch.evaluation import (
    build_evaluation_set,
    find_incumbent,
    rescore_incumbent,
    score_lists,
)
from flixlake.batch.fairness import publish_requirements
from flixlake.batch.features import TimeWindows
from flixlake.batch.topn import top_n_per_user
from flixlake.config import PublishConfig, Settings
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
    "build_batch_view",
    "publish_decision",
    "rollback_to",
    "run_publish",
    "seen_pairs",
    "with_movie_ids",
]

BATCH_VIEW = "batch_recommendations"


def _measured(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def publish_decision(
    als_ndcg: float | None,
    baselines: Mapping[str, float | None],
    incumbent_ndcg: float | None,
    cfg: PublishConfig,
    *,
    n_users: int | None = None,
) -> tuple[bool, str]:
    """The gate as a pure function: (publish?, the reason an engineer reads either way).

    ``baselines`` maps each baseline evaluated on the candidate's test window (popularity,
    item-kNN, EASE) to its NDCG@k; ``incumbent_ndcg`` is the published model's NDCG re-scored on
    the same users and window (None: nothing published, or it could not be re-scored).
    """
    if n_users == 0:
        return False, "no user with history was active in the test window: nothing was measured"
    if not _measured(als_ndcg):
        return False, "no ALS NDCG was measured for this model"
    assert als_ndcg is not None
    pop_ndcg = baselines.get("popularity")
    if not _measured(pop_ndcg):
        return False, "no popularity-baseline NDCG was measured for this model"
    assert pop_ndcg is not None
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
    measured = {name: float(v) for name, v in baselines.items() if v is not None and _measured(v)}
    best = max(measured, key=lambda name: measured[name])
    best_floor = measured[best] * cfg.min_lift_over_baseline
    if not als_ndcg > best_floor:
        return False, (
            f"baseline {best} is better on this window: ALS NDCG {als_ndcg:.4f} does not beat "
            f"{best} {measured[best]:.4f} x {cfg.min_lift_over_baseline:g} = {best_floor:.4f}"
        )
    if best != "popularity":
        reason += (
            f"; > best baseline {best} {measured[best]:.4f} x {cfg.min_lift_over_baseline:g}"
            f" = {best_floor:.4f}"
        )
    if not _measured(incumbent_ndcg):
        return True, f"{reason}; no published model re-scored on this window to compare with"
    assert incumbent_ndcg is not None
    regression_floor = incumbent_ndcg * (1.0 - cfg.max_regression)
    if als_ndcg < regression_floor:
        return False, (
            f"ALS NDCG {als_ndcg:.4f} regresses more than {cfg.max_regression:.0%} from the "
            f"current model's {incumbent_ndcg:.4f} on the same window "
            f"(floor {regression_floor:.4f})"
        )
    return True, (
        f"{reason}; >= current model's {incumbent_ndcg:.4f} on the same window "
        f"x (1 - {cfg.max_regression:g}) = {regression_floor:.4f}"
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
    popularity_weight: float = 0.0,
) -> DataFrame:
    """Top-N per user from a model's final factors, seen movies excluded, as batch view rows;
    re-ranked against popularity when ``popularity_weight`` > 0 (:mod:`flixlake.batch.debias`)."""
    versions = model["input_versions"]
    watch_sessions = read_table(spark, lake, "watch_sessions", versions.get("watch_sessions"))
    seen = seen_pairs(watch_sessions, read_table(spark, lake, "ratings", versions.get("ratings")))
    movies = read_table(spark, lake, "movies", versions.get("movies"))
    recs = top_n_per_user(
        spark,
        _factors(spark, factors["users"]),
        _factors(spark, factors["items"]),
        seen,
        top_n,
    )
    if popularity_weight > 0:
        recs = with_popularity_penalty(recs, relative_popularity(watch_sessions), popularity_weight)
    return recs.transform(with_movie_ids(movies)).transform(
        with_model_version(model["model_version"])
    )


# -- the batch step ------------------------------------------------------------------------------
def _ndcg(metrics: Mapping[str, Any] | None) -> float | None:
    value = (metrics or {}).get("ndcg")
    return float(value) if isinstance(value, int | float) else None


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
    lists, note = rescore_incumbent(spark, settings, eval_set, windows, incumbent)
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
    baseline = find_incumbent(lake, model_version)
    if quality.get("passed") is not True:
        _refuse(
            lake, settings, run_date, model_version, f"the quality gate of {run_date} did not pass"
        )
    metrics = model["metrics"]
    incumbent_ndcg, incumbent_how = incumbent_on_this_window(
        spark, lake, settings, train, metrics, baseline
    )
    baselines = metrics.get("baselines") or {"popularity": metrics.get("popularity")}
    published, reason = publish_decision(
        _ndcg(metrics.get("als")),
        {name: _ndcg(values) for name, values in baselines.items()},
        incumbent_ndcg,
        settings.batch.publish,
        n_users=(metrics.get("als") or {}).get("n_users"),
    )
    reason = f"{reason} (incumbent: {incumbent_how})" if baseline is not None else reason
    if not published:
        _refuse(lake, settings, run_date, model_version, reason)

    view = build_batch_view(
        spark,
        lake,
        model,
        train["factors"]["final"],
        settings.batch.top_n,
        settings.batch.debias.popularity_weight,
    )
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
