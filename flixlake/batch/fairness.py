"""Fairness and exposure of recommendations: the measures, and the two requirements the publish
gate and the daily audit check (thresholds in ``audit.requirements``, ``conf/base.yaml``).

* **System requirement (item exposure).** What users are shown reaches beyond the most popular
  movies: of the slots shown (each list's top ``serving.results``), long-tail movies fill at
  least ``system.min_long_tail_share``. The short head is the most-watched ``audit.head_share``
  (20 %) of the catalog, as in Abdollahpouri et al. ("Controlling Popularity Bias in
  Learning-to-Rank Recommendation", RecSys 2017); the long tail is the rest. The gate measures
  it on the candidate's batch view (what it would show), the audit on what was really served
  (trending/popular fill-ins included: the system, not just the model).
* **Model requirement (quality per user group).** No group of users gets a markedly worse model:
  for each segment of ``model.attributes`` (gender, age, occupation by default) with at least
  ``model.min_segment_users`` evaluated users, the Wilson interval of the segment's offline hit
  rate@k (share of its users with a relevant movie in their top k) must reach
  ``model.min_quality_ratio`` x the overall hit rate. A segment fails only when even its upper
  bound is below, so a small segment's noise does not block a model.

Exposure measures beside the requirement, over the catalog (movies never shown count as zero):
catalog coverage (share of movies shown at least once), the Gini coefficient of the slots per
movie (0: every movie shown equally often; (n-1)/n: one movie gets everything), long-tail share,
and the average recommended popularity (Yin et al. 2012; Abdollahpouri et al.): the mean share
of users who watched a shown movie, over the slots shown. Calibration (Steck, "Calibrated
Recommendations", RecSys 2018) compares a user's genre mix p(g|u) -- each watched movie adds
1/|genres| to each of its genres -- with the mix q(g|u) of their list: KL(p || (1-a) q + a p)
with a = ``audit.calibration_alpha`` (0.01, Steck's smoothing, so a genre missing from the list
costs a finite amount), in nats, and the Hellinger distance (0..1); both averaged over users.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from flixlake.config import ModelRequirement, Settings, SystemRequirement
from flixlake.lake.registry import recommender_of
from flixlake.lake.spark_io import read_table
from flixlake.lake.store import Lake
from flixlake.lake.tables import BATCH_RECOMMENDATIONS, MODEL_EVALUATIONS

SYSTEM = "system"
MODEL = "model"
OVERALL = "all"
QUALITY_METRIC = "hit_rate"  # per user 0/1: a binomial (Wilson) interval per segment


# -- pure measures -------------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) without observations."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (NaN when all are zero)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = x.size, float(x.sum())
    if n == 0 or total <= 0:
        return math.nan
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(((2 * ranks - n - 1) * x).sum() / (n * total))


def short_head(watchers: np.ndarray, head_share: float) -> np.ndarray:
    """Mask of the head: the ``head_share`` of movies with the most watchers (ties: array order)."""
    watchers = np.asarray(watchers)
    n_head = min(watchers.size, math.floor(head_share * watchers.size + 0.5))
    order = np.argsort(-watchers, kind="stable")
    head = np.zeros(watchers.size, dtype=bool)
    head[order[:n_head]] = True
    return head


@dataclass(frozen=True)
class Exposure:
    """How the slots shown spread over the catalog."""

    slots: int  # movie slots shown (lists x their lengths)
    movies_shown: int
    catalog_size: int
    coverage: float  # movies shown at least once / catalog
    gini: float
    long_tail_share: float  # slots on long-tail movies / slots
    avg_popularity: float  # mean over slots of the share of users who watched the movie
    # slots per catalog movie, ascending (a Lorenz curve's points); not a measure
    sorted_counts: np.ndarray = field(
        default_factory=lambda: np.zeros(0), repr=False, compare=False
    )

    def as_dict(self) -> dict[str, float]:
        return {
            "slots": float(self.slots),
            "movies_shown": float(self.movies_shown),
            "catalog_size": float(self.catalog_size),
            "coverage": self.coverage,
            "gini": self.gini,
            "long_tail_share": self.long_tail_share,
            "avg_popularity": self.avg_popularity,
        }


def exposure(shown: np.ndarray, popularity: np.ndarray, head: np.ndarray) -> Exposure:
    """Exposure measures from slots per catalog movie, its popularity (0..1) and the head mask."""
    shown = np.asarray(shown, dtype=np.float64)
    slots = float(shown.sum())
    nan = math.nan
    return Exposure(
        slots=int(slots),
        movies_shown=int((shown > 0).sum()),
        catalog_size=int(shown.size),
        coverage=float((shown > 0).sum() / shown.size) if shown.size else nan,
        gini=gini(shown),
        long_tail_share=float(shown[~head].sum() / slots) if slots else nan,
        avg_popularity=float((shown * popularity).sum() / slots) if slots else nan,
        sorted_counts=np.sort(shown),
    )


def lists_exposure(
    lists: Iterable[np.ndarray],
    watchers: np.ndarray,
    history_users: int,
    head_share: float,
    results: int,
) -> Exposure:
    """Exposure of recommendation lists of movie indices (each list's first ``results``: what
    would be shown), over a catalog indexed 0..n-1 whose ``watchers`` per index give the head."""
    watchers = np.asarray(watchers, dtype=np.float64)
    shown_idx = [np.asarray(lst[:results], dtype=np.int64) for lst in lists]
    flat = np.concatenate(shown_idx) if shown_idx else np.zeros(0, np.int64)
    size = max(watchers.size, int(flat.max(initial=-1)) + 1)
    shown = np.bincount(flat, minlength=size).astype(np.float64)
    watched = np.zeros(size)
    watched[: watchers.size] = watchers
    popularity = watched / history_users if history_users > 0 else np.zeros(size)
    return exposure(shown, popularity, short_head(watched, head_share))


def kl_miscalibration(p: np.ndarray, q: np.ndarray, alpha: float) -> float:
    """Steck's C_KL: KL(p || (1 - alpha) q + alpha p) in nats, over the genres where p > 0."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    q_smooth = (1 - alpha) * q + alpha * p
    keep = p > 0
    return float((p[keep] * np.log(p[keep] / q_smooth[keep])).sum())


def hellinger(p: np.ndarray, q: np.ndarray) -> float:
    """Hellinger distance of two distributions: 0 equal, 1 disjoint."""
    bc = float(np.sqrt(np.asarray(p, np.float64) * np.asarray(q, np.float64)).sum())
    return math.sqrt(max(0.0, 1.0 - bc))


# -- requirements --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentQuality:
    """A segment's per-user hit rate with its interval."""

    segment: str  # "all", "gender=F", "activity=heavy", ...
    n_users: int
    hits: int
    rate: float
    low: float
    high: float

    @property
    def attribute(self) -> str:
        return self.segment.partition("=")[0]


def segment_qualities(
    counts: Iterable[tuple[str, int, int]], confidence: float
) -> list[SegmentQuality]:
    """``(segment, users, users hit)`` -> hit rates with Wilson intervals."""
    out = []
    for segment, n, hits in counts:
        low, high = wilson_interval(hits, n, confidence)
        out.append(SegmentQuality(segment, n, hits, hits / n if n else math.nan, low, high))
    return out


@dataclass(frozen=True)
class RequirementCheck:
    """One requirement checked against one piece of evidence."""

    requirement: str  # system | model
    evidence: str  # batch_view | eval_lists | served | offline | online
    passed: bool
    observed: float  # long-tail share; worst segment's upper bound / overall
    threshold: float
    details: str

    def describe(self) -> str:
        verdict = "met" if self.passed else "NOT met"
        return f"{self.requirement} requirement {verdict} ({self.evidence}): {self.details}"


def check_system_requirement(
    measured: Exposure, cfg: SystemRequirement, evidence: str
) -> RequirementCheck:
    """Long-tail movies fill at least ``min_long_tail_share`` of the slots shown."""
    share = measured.long_tail_share
    if measured.slots == 0:
        return RequirementCheck(
            SYSTEM, evidence, False, math.nan, cfg.min_long_tail_share, "no movie was shown"
        )
    passed = share >= cfg.min_long_tail_share
    return RequirementCheck(
        SYSTEM,
        evidence,
        passed,
        share,
        cfg.min_long_tail_share,
        f"long-tail share {share:.3f} {'>=' if passed else '<'} {cfg.min_long_tail_share:g} "
        f"of {measured.slots:,} slots (coverage {measured.coverage:.3f}, Gini "
        f"{measured.gini:.3f})",
    )


def check_model_requirement(
    qualities: list[SegmentQuality], cfg: ModelRequirement, evidence: str
) -> RequirementCheck:
    """Each judged segment's hit-rate upper bound reaches ``min_quality_ratio`` x overall."""
    overall = next((q for q in qualities if q.segment == OVERALL), None)
    if overall is None or overall.n_users == 0:
        return RequirementCheck(
            MODEL, evidence, False, math.nan, cfg.min_quality_ratio, "no overall hit rate measured"
        )
    judged = [
        q for q in qualities if q.attribute in cfg.attributes and q.n_users >= cfg.min_segment_users
    ]
    if overall.rate <= 0 or not judged:
        why = (
            "overall hit rate is 0"
            if overall.rate <= 0
            else f"no segment of {', '.join(cfg.attributes)} has {cfg.min_segment_users} users"
        )
        return RequirementCheck(MODEL, evidence, True, math.nan, cfg.min_quality_ratio, why)
    worst = min(judged, key=lambda q: (q.high / overall.rate, q.segment))
    ratio = worst.high / overall.rate
    failing = [q.segment for q in judged if q.high < cfg.min_quality_ratio * overall.rate]
    details = (
        f"worst {worst.segment}: hit rate {worst.rate:.3f} [{worst.low:.3f}, {worst.high:.3f}] "
        f"(n={worst.n_users}) vs overall {overall.rate:.3f}: upper bound {ratio:.2f}x, "
        f"required {cfg.min_quality_ratio:g}x; {len(judged)} segments judged"
    )
    if failing:
        details += f"; below: {', '.join(failing)}"
    return RequirementCheck(MODEL, evidence, not failing, ratio, cfg.min_quality_ratio, details)


# -- Spark transformations ---------------------------------------------------------------------
def shown_lists(batch_view_df: DataFrame, results: int) -> DataFrame:
    """``(user_id, movie_id)`` of the top ``results`` per user: what the service would show."""
    return batch_view_df.where(F.col("rank") <= results).select("user_id", "movie_id")


def shown_counts(lists_df: DataFrame) -> DataFrame:
    """Slots per movie over all lists ``(user_id, movie_id)`` rows: ``(movie_id, shown)``."""
    return lists_df.groupBy("movie_id").agg(F.count(F.lit(1)).alias("shown"))


def watchers_per_movie(watch_sessions_df: DataFrame) -> DataFrame:
    """Distinct users who watched each movie: ``(movie_id, watchers)``."""
    return watch_sessions_df.groupBy("movie_id").agg(
        F.countDistinct("user_id").cast("long").alias("watchers")
    )


def movie_genre_weights(movies_df: DataFrame) -> DataFrame:
    """``(movie_id, genre, weight)``: a movie spreads 1 over its genres (none: no rows)."""
    return (
        movies_df.where(F.size("genres") > 0)
        .select("movie_id", F.explode(F.array_distinct("genres")).alias("genre"), "genres")
        .select("movie_id", "genre", (1.0 / F.size(F.array_distinct("genres"))).alias("weight"))
    )


def genre_mix(pairs_df: DataFrame, genre_weights_df: DataFrame) -> DataFrame:
    """Each user's genre distribution over ``(user_id, movie_id)`` rows: ``(user_id, genre, share)``.

    A row counts once per occurrence (a movie shown in two answers weighs twice).
    """
    weighted = (
        pairs_df.join(genre_weights_df, "movie_id")
        .groupBy("user_id", "genre")
        .agg(F.sum("weight").alias("mass"))
    )
    return weighted.select(
        "user_id",
        "genre",
        (F.col("mass") / F.sum("mass").over(Window.partitionBy("user_id"))).alias("share"),
    )


def calibration_per_user(history_mix: DataFrame, list_mix: DataFrame, alpha: float) -> DataFrame:
    """Steck's KL miscalibration and the Hellinger distance per user with both mixes.

    ``(user_id, kl, hellinger)``; see :func:`kl_miscalibration` and :func:`hellinger`.
    """
    users = (
        history_mix.select("user_id")
        .distinct()
        .join(list_mix.select("user_id").distinct(), "user_id")
    )
    p = history_mix.select("user_id", "genre", F.col("share").alias("p"))
    q = list_mix.select("user_id", "genre", F.col("share").alias("q"))
    both = (
        p.join(q, ["user_id", "genre"], "full")
        .join(users, "user_id", "left_semi")
        .fillna(0.0, subset=["p", "q"])
    )
    q_smooth = (1 - alpha) * F.col("q") + alpha * F.col("p")
    kl_term = F.when(F.col("p") > 0, F.col("p") * F.log(F.col("p") / q_smooth)).otherwise(0.0)
    return both.groupBy("user_id").agg(
        F.sum(kl_term).alias("kl"),
        F.sqrt(F.greatest(F.lit(0.0), 1 - F.sum(F.sqrt(F.col("p") * F.col("q"))))).alias(
            "hellinger"
        ),
    )


# -- the measures of one model, as the publish gate and the audit take them ----------------------
def catalog_exposure(
    shown: pa.Table,
    watchers: pa.Table,
    catalog: Iterable[str],
    history_users: int,
    head_share: float,
) -> Exposure:
    """Exposure over the catalog (plus any shown movie it lacks) from collected counts.

    ``shown``: ``(movie_id, shown)``; ``watchers``: ``(movie_id, watchers)`` in the history the
    popularity is taken from, of ``history_users`` distinct users. A null movie id (a list
    entry without one) is not a movie: its slots are not counted.
    """
    shown_by_id = {
        movie: count
        for movie, count in zip(
            shown["movie_id"].to_pylist(), shown["shown"].to_pylist(), strict=True
        )
        if movie is not None
    }
    watchers_by_id = dict(
        zip(watchers["movie_id"].to_pylist(), watchers["watchers"].to_pylist(), strict=True)
    )
    ids = sorted(set(catalog) | set(shown_by_id))
    counts = np.array([shown_by_id.get(i, 0) for i in ids], dtype=np.float64)
    watched = np.array([watchers_by_id.get(i, 0) for i in ids], dtype=np.float64)
    popularity = watched / history_users if history_users > 0 else np.zeros_like(watched)
    return exposure(counts, popularity, short_head(watched, head_share))


@dataclass(frozen=True)
class Popularity:
    """Who watched what in a history: the reference of the head and of recommended popularity."""

    watchers: pa.Table  # movie_id, watchers
    users: int  # distinct users in the history


def history_popularity(watch_sessions_df: DataFrame) -> Popularity:
    """Watchers per movie and the number of distinct users in a watch history, in one job (the
    users ride along as the row without a movie)."""
    total = watch_sessions_df.agg(
        F.lit(None).cast("string").alias("movie_id"),
        F.countDistinct("user_id").cast("long").alias("watchers"),
    )
    both = watchers_per_movie(watch_sessions_df).unionByName(total).toArrow()
    is_total = both["movie_id"].is_null()
    users = both.filter(is_total)["watchers"].to_pylist()
    return Popularity(both.filter(pc.invert(is_total)), int(users[0] or 0) if users else 0)


def batch_view_exposure(
    spark: SparkSession, lake: Lake, settings: Settings, model: Mapping[str, Any]
) -> Exposure:
    """Exposure of a model's written batch view (each user's top ``serving.results``),
    popularity from the watch history the model was trained on."""
    version = str(model["model_version"])
    inputs = model["input_versions"]
    view = read_table(
        spark,
        lake,
        BATCH_RECOMMENDATIONS.name,
        partition_filter=f"model_version = '{version}'",
    ).where(F.col("model_version") == version)
    shown = shown_counts(shown_lists(view, settings.serving.results)).toArrow()
    popularity = history_popularity(
        read_table(spark, lake, "watch_sessions", inputs.get("watch_sessions"))
    )
    catalog = lake.read("movies", inputs.get("movies"), columns=["movie_id"])["movie_id"]
    return catalog_exposure(
        shown,
        popularity.watchers,
        catalog.to_pylist(),
        popularity.users,
        settings.audit.head_share,
    )


def offline_segment_qualities(
    lake: Lake, model_version: str, confidence: float, recommender: str = "als"
) -> list[SegmentQuality]:
    """The offline hit rate@k per segment (``model_evaluations``) of the recommender a model
    serves (``recommender``: als, popularity, itemknn or ease; its evaluate step measured them
    all under its version), with intervals."""
    if not lake.exists(MODEL_EVALUATIONS.name):
        return []
    rows = lake.read(
        MODEL_EVALUATIONS.name,
        columns=["segment", "value", "n_users"],
        filters=[
            ("model_version", "=", model_version),
            ("recommender", "=", recommender),
            ("metric", "=", QUALITY_METRIC),
        ],
    ).sort_by("segment")
    counts = [
        (segment, int(n), round(float(value) * int(n)))
        for segment, value, n in zip(
            rows["segment"].to_pylist(),
            rows["value"].to_pylist(),
            rows["n_users"].to_pylist(),
            strict=True,
        )
    ]
    return segment_qualities(counts, confidence)


def publish_requirements(
    spark: SparkSession, lake: Lake, settings: Settings, model: Mapping[str, Any]
) -> list[RequirementCheck]:
    """Both requirements for a candidate model whose batch view is written (the publish gate)."""
    requirements = settings.audit.requirements
    qualities = offline_segment_qualities(
        lake, str(model["model_version"]), settings.audit.confidence, recommender_of(model)
    )
    return [
        check_system_requirement(
            batch_view_exposure(spark, lake, settings, model), requirements.system, "batch_view"
        ),
        check_model_requirement(qualities, requirements.model, "offline"),
    ]
