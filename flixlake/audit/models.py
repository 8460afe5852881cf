"""Fairness and exposure per model version, on the run date's evidence.

The audited models of run date D: every model version that answered on D
(``served_recommendations``) and the current published one. For each, four kinds of evidence
(``scope`` in ``audit_fairness``), the measures of :mod:`flixlake.batch.fairness`:

* ``offline`` -- the model's offline hit rate@k per user segment (``model_evaluations``, written
  when it was evaluated) with Wilson intervals;
* ``online`` -- per segment, the share of the users it answered on D who watched one of its
  recommendations within the watch window (``online_evaluations``), with Wilson intervals, and
  the watch-through (converted / answers);
* ``batch_view`` -- exposure of its batch view (each user's top ``serving.results``; popularity
  from the history it was trained on) and calibration of its lists to its users' histories;
* ``served`` -- exposure and calibration of what was served for it on D (fill-ins included:
  the system, not just the model; popularity and histories from before D).

Segments are those of the offline evaluation (:func:`flixlake.batch.evaluation.segment_masks`):
``all`` (users with history), ``activity=`` (distinct movies watched before: cold 0, new,
normal, heavy), ``gender=``, ``age=``, ``occupation=``. Calibration is measured on at most
``audit.calibration_max_users`` users per scope (the same ones on every rerun).

Both requirements are checked on each piece of evidence: system on ``batch_view`` and
``served``, model on ``offline`` and ``online``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from flixlake.batch.evaluation import segment_masks, with_user_segments
from flixlake.batch.fairness import (
    Exposure,
    Popularity,
    RequirementCheck,
    SegmentQuality,
    batch_view_exposure,
    calibration_per_user,
    catalog_exposure,
    check_model_requirement,
    check_system_requirement,
    genre_mix,
    history_popularity,
    movie_genre_weights,
    offline_segment_qualities,
    segment_qualities,
    shown_counts,
    shown_lists,
)
from flixlake.batch.features import deterministic_sample
from flixlake.config import Settings
from flixlake.lake.registry import batch_view_rows, current_published_model, model_rows
from flixlake.lake.spark_io import read_table, spark_schema
from flixlake.lake.store import Lake
from flixlake.lake.tables import (
    BATCH_RECOMMENDATIONS,
    MOVIES,
    ONLINE_EVALUATIONS,
    SERVED_RECOMMENDATIONS,
    USERS,
    WATCH_SESSIONS,
)

OFFLINE, ONLINE, BATCH_VIEW, SERVED = "offline", "online", "batch_view", "served"
SCOPES = (OFFLINE, ONLINE, BATCH_VIEW, SERVED)
HIT_RATE = "hit_rate"


@dataclass
class ModelAudit:
    """Everything measured for one model version on one run date."""

    model_version: str
    qualities: dict[str, list[SegmentQuality]] = field(default_factory=dict)  # scope ->
    exposures: dict[str, Exposure] = field(default_factory=dict)  # scope ->
    calibration: dict[str, list[tuple[str, int, float, float]]] = field(default_factory=dict)
    watch_through: list[tuple[str, int, float]] = field(default_factory=list)  # online
    checks: list[RequirementCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- transformations -----------------------------------------------------------------------------
def answers_on(served_df: DataFrame, day: dt.date) -> DataFrame:
    """The day's answers with status 200 and items, once per request id."""
    return (
        served_df.where(
            (F.col("served_date") == F.lit(day)) & (F.col("status") == 200) & (F.size("items") > 0)
        )
        .dropDuplicates(["request_id"])
        .select("request_id", "user_id", "model_version", "items")
    )


def answer_lists(answers_df: DataFrame) -> DataFrame:
    """``(user_id, movie_id)`` per slot shown (a movie in two answers counts twice)."""
    return answers_df.select("user_id", F.explode("items").alias("movie_id"))


def history_before(watch_sessions_df: DataFrame, day: dt.date) -> DataFrame:
    """``(user_id, movie_id)`` watched before ``day``, once per pair."""
    return (
        watch_sessions_df.where(F.col("event_date") < F.lit(day))
        .select("user_id", "movie_id")
        .distinct()
    )


def movies_per_user(history_df: DataFrame) -> DataFrame:
    """``(user_id, n_movies)``: distinct movies in a history (the activity segment)."""
    return history_df.groupBy("user_id").agg(F.countDistinct("movie_id").alias("n_movies"))


def per_user_online(online_df: DataFrame, model_version: str, day: dt.date) -> DataFrame:
    """A model's answers and conversions per user over the day's served hours."""
    return (
        online_df.where(
            (F.col("served_date") == F.lit(day)) & (F.col("model_version") == model_version)
        )
        .groupBy("user_id")
        .agg(
            F.sum("served").cast("long").alias("served"),
            F.sum("converted").cast("long").alias("converted"),
        )
    )


# -- segments ------------------------------------------------------------------------------------
def with_segments(
    audited_df: DataFrame, users_df: DataFrame, history_df: DataFrame, settings: Settings
) -> DataFrame:
    """``audited_df`` (one row per ``user_id``) with the evaluation's segment labels, from the
    users table and the number of distinct movies in ``history_df`` (0: cold)."""
    counts = movies_per_user(history_df)
    labels = (
        audited_df.select("user_id")
        .join(counts, "user_id", "left")
        .fillna(0, subset=["n_movies"])
        .transform(with_user_segments, users_df, settings.batch)
    )
    return audited_df.join(labels, "user_id").orderBy("user_id")


def segment_sums(segments: pa.Table, values: np.ndarray) -> list[tuple[str, int, float]]:
    """``(segment, users, sum of the users' values)`` for every segment of the evaluation."""
    if segments.num_rows == 0:
        return []
    return [
        (name, int(mask.sum()), float(values[mask].sum()))
        for name, mask in segment_masks(segments).items()
    ]


def _values(table: pa.Table, column: str) -> np.ndarray:
    return np.asarray(table[column].to_numpy(zero_copy_only=False), np.float64)


# -- what a day's audit shares between its models ------------------------------------------------
@dataclass
class AuditDay:
    """The run date's inputs every audited model is measured against (read once)."""

    day: dt.date
    answers: DataFrame | None  # the day's answers (None: no served table yet)
    history: DataFrame  # (user_id, movie_id) watched before the day
    users: DataFrame  # the users table (empty without one)
    genres: DataFrame | None  # (movie_id, genre, weight); None without a movies table
    catalog: list[str]
    online: DataFrame | None
    _popularity: Popularity | None = None

    def popularity(self) -> Popularity:
        """Who watched what before the day (computed on first use)."""
        if self._popularity is None:
            self._popularity = history_popularity(self.history)
        return self._popularity


def audit_day(spark: SparkSession, lake: Lake, day: dt.date) -> AuditDay:
    """Read what every model of the day is audited against."""
    watch_sessions = read_table(spark, lake, WATCH_SESSIONS.name)
    users = (
        read_table(spark, lake, USERS.name)
        if lake.exists(USERS.name)
        else spark.createDataFrame([], spark_schema(USERS))
    )
    has_movies = lake.exists(MOVIES.name)
    online = None
    if lake.exists(ONLINE_EVALUATIONS.name):
        online = read_table(
            spark,
            lake,
            ONLINE_EVALUATIONS.name,
            partition_filter=f"served_date = '{day.isoformat()}'",
        )
    return AuditDay(
        day=day,
        answers=day_answers(spark, lake, day),
        history=history_before(watch_sessions, day),
        users=users,
        genres=movie_genre_weights(read_table(spark, lake, MOVIES.name)) if has_movies else None,
        catalog=lake.read(MOVIES.name, columns=["movie_id"])["movie_id"].to_pylist()
        if has_movies
        else [],
        online=online,
    )


# -- the measures per scope ----------------------------------------------------------------------
def calibration(
    settings: Settings, ctx: AuditDay, history_df: DataFrame, lists_df: DataFrame
) -> list[tuple[str, int, float, float]]:
    """``(segment, users, mean KL, mean Hellinger)`` of (sampled) users with both mixes."""
    if ctx.genres is None:
        return []
    users = deterministic_sample(
        lists_df.select("user_id"), settings.audit.calibration_max_users, settings.batch.als.seed
    )
    history = history_df.join(users, "user_id", "left_semi")
    lists = lists_df.join(users, "user_id", "left_semi")
    per_user = calibration_per_user(
        genre_mix(history, ctx.genres),
        genre_mix(lists, ctx.genres),
        settings.audit.calibration_alpha,
    )
    segments = with_segments(per_user, ctx.users, history, settings).toArrow()
    kl_sums = segment_sums(segments, _values(segments, "kl"))
    hellinger_sums = segment_sums(segments, _values(segments, "hellinger"))
    return [
        (name, n, kl_total / n, hellinger_total / n)
        for (name, n, kl_total), (_, _, hellinger_total) in zip(
            kl_sums, hellinger_sums, strict=True
        )
        if n
    ]


def online_quality(
    settings: Settings, ctx: AuditDay, version: str
) -> tuple[list[SegmentQuality], list[tuple[str, int, float]]]:
    """Per segment: users hit (converted at least once) with intervals, and watch-through."""
    if ctx.online is None:
        return [], []
    per_user = per_user_online(ctx.online, version, ctx.day)
    segments = with_segments(per_user, ctx.users, ctx.history, settings).toArrow()
    if segments.num_rows == 0:
        return [], []
    served, converted = _values(segments, "served"), _values(segments, "converted")
    hits = [(n, u, round(h)) for n, u, h in segment_sums(segments, (converted > 0) * 1.0)]
    served_sums = {n: total for n, _, total in segment_sums(segments, served)}
    watch_through = [
        (n, u, c / served_sums[n] if served_sums.get(n) else math.nan)
        for n, u, c in segment_sums(segments, converted)
    ]
    return segment_qualities(hits, settings.audit.confidence), watch_through


def audit_model(
    spark: SparkSession,
    lake: Lake,
    settings: Settings,
    model: Mapping[str, Any],
    ctx: AuditDay,
) -> ModelAudit:
    """Every measure and requirement check of one model version on the audited day."""
    version = str(model["model_version"])
    cfg = settings.audit
    requirements = cfg.requirements
    result = ModelAudit(version)

    offline = offline_segment_qualities(lake, version, cfg.confidence)
    result.qualities[OFFLINE] = offline
    result.checks.append(check_model_requirement(offline, requirements.model, OFFLINE))

    if batch_view_rows(lake, version) > 0 and model.get("input_versions"):
        exposure = batch_view_exposure(spark, lake, settings, model)
        result.exposures[BATCH_VIEW] = exposure
        result.checks.append(check_system_requirement(exposure, requirements.system, BATCH_VIEW))
        view = read_table(
            spark,
            lake,
            BATCH_RECOMMENDATIONS.name,
            partition_filter=f"model_version = '{version}'",
        ).where(F.col("model_version") == version)
        trained_on = read_table(
            spark, lake, WATCH_SESSIONS.name, model["input_versions"].get("watch_sessions")
        ).select("user_id", "movie_id")
        lists = shown_lists(view, settings.serving.results)
        result.calibration[BATCH_VIEW] = calibration(settings, ctx, trained_on, lists)
    else:
        result.notes.append(f"{version}: no batch view rows (never published)")

    if ctx.answers is not None:
        lists = answer_lists(ctx.answers.where(F.col("model_version") == version))
        popularity = ctx.popularity()
        exposure = catalog_exposure(
            shown_counts(lists).toArrow(),
            popularity.watchers,
            ctx.catalog,
            popularity.users,
            cfg.head_share,
        )
        if exposure.slots:
            result.exposures[SERVED] = exposure
            result.checks.append(check_system_requirement(exposure, requirements.system, SERVED))
            result.calibration[SERVED] = calibration(settings, ctx, ctx.history, lists)
        else:
            result.notes.append(f"{version}: nothing served on {ctx.day}")

    qualities, result.watch_through = online_quality(settings, ctx, version)
    if qualities:
        result.qualities[ONLINE] = qualities
        result.checks.append(check_model_requirement(qualities, requirements.model, ONLINE))
    else:
        result.notes.append(f"{version}: no online evaluation of answers served on {ctx.day}")
    return result


def audited_models(
    lake: Lake, served_versions: Iterable[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The ``models`` rows to audit (served on the day, plus the current one) and notes on
    served versions the registry does not know."""
    wanted = {v for v in served_versions if v}
    current = current_published_model(lake)
    if current is not None:
        wanted.add(current["model_version"])
    rows = {r["model_version"]: r for r in model_rows(lake) if r["model_version"] in wanted}
    notes = [f"{v}: served but not in the models table" for v in sorted(wanted - set(rows))]
    return [rows[v] for v in sorted(rows)], notes


def served_versions(answers_df: DataFrame | None) -> list[str]:
    if answers_df is None:
        return []
    found = answers_df.select("model_version").distinct().toArrow()
    return sorted(str(v) for v in found["model_version"].to_pylist())


def day_answers(spark: SparkSession, lake: Lake, day: dt.date) -> DataFrame | None:
    """The day's answers (None before the service's answers have landed anywhere)."""
    if not lake.exists(SERVED_RECOMMENDATIONS.name):
        return None
    served = read_table(
        spark,
        lake,
        SERVED_RECOMMENDATIONS.name,
        partition_filter=f"served_date = '{day.isoformat()}'",
    )
    return answers_on(served, day)


# -- table rows ----------------------------------------------------------------------------------
def fairness_rows(
    audit: ModelAudit, run_date: dt.date, computed_at: dt.datetime
) -> list[dict[str, Any]]:
    """``audit_fairness`` rows of one model's audit."""
    base = {"run_date": run_date, "model_version": audit.model_version, "computed_at": computed_at}

    def row(
        scope: str,
        segment: str,
        metric: str,
        value: float,
        n: int,
        low: float | None = None,
        high: float | None = None,
    ) -> dict[str, Any]:
        return {
            **base,
            "scope": scope,
            "segment": segment,
            "metric": metric,
            "value": value if math.isfinite(value) else None,
            "ci_low": low,
            "ci_high": high,
            "n_users": n,
        }

    rows = [
        row(scope, q.segment, HIT_RATE, q.rate, q.n_users, q.low, q.high)
        for scope, qualities in audit.qualities.items()
        for q in qualities
    ]
    rows += [row(ONLINE, s, "watch_through", v, n) for s, n, v in audit.watch_through]
    for scope, measured in audit.exposures.items():
        for metric, value in measured.as_dict().items():
            rows.append(row(scope, "all", metric, value, 0))
    for scope, entries in audit.calibration.items():
        for segment, n, kl, hel in entries:
            rows.append(row(scope, segment, "calibration_kl", kl, n))
            rows.append(row(scope, segment, "calibration_hellinger", hel, n))
    return rows


def requirement_rows(
    audit: ModelAudit, run_date: dt.date, computed_at: dt.datetime
) -> list[dict[str, Any]]:
    """``audit_requirements`` rows of one model's audit."""
    return [
        {
            "run_date": run_date,
            "model_version": audit.model_version,
            "requirement": check.requirement,
            "evidence": check.evidence,
            "passed": check.passed,
            "observed": check.observed if math.isfinite(check.observed) else None,
            "threshold": check.threshold,
            "details": check.details,
            "computed_at": computed_at,
        }
        for check in audit.checks
    ]
