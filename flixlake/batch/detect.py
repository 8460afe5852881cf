"""Batch step "detect": score the run's active accounts and record the suspected ones.

``run_detect(spark, lake, settings, run_date)`` reads ``watch_sessions``, ``ratings`` and
``reco_requests`` at the versions the "compact" manifest pinned, builds one profile per account
active in the last ``attacks.detection.lookback_days`` (:mod:`flixlake.batch.profiles`), scores
every profile with an isolation forest (scikit-learn) and applies three rules:

* ``request_flood`` — at least ``flood_requests_per_hour`` recommendation requests in one hour;
* ``rating_burst`` — the account, while new, gave a movie the same stars as many other new
  accounts within one window (the per-movie burst signal, see :func:`rating_bursts_df`);
* ``profile_outlier`` — at least ``min_ratings`` ratings and an anomaly score of at least
  ``outlier_score``; the reason names the features outside the population's 1-99 % range.

The suspects go to ``suspected_accounts`` (this run date's rows replaced, so reruns replace) with
``excluded`` = ``attacks.mitigation.exclude_from_training``; the training filter
(:mod:`flixlake.batch.screening`) leaves their events out. When more than
``mitigation.max_excluded_fraction`` of the scored accounts are suspected, the manifest says
``passed: false`` and the step fails the run (exit 3): training on data that odd needs a person.

Manifest "detect"::

    {"run_date", "passed", "input_versions", "scored_accounts", "suspected", "by_kind",
     "excluded", "bursts": [{"movie_id", "stars", "window", "new_accounts", "raters", "start"}],
     "table_version", "thresholds", "mitigation", "timings"}

A rerun with the same inputs and settings while ``suspected_accounts`` is still at the version it
wrote returns that summary and writes nothing (like compaction), so reruns are cheap and a
retrained model keeps its version.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from sklearn.ensemble import IsolationForest

from flixlake.batch.errors import GateFailedError
from flixlake.batch.profiles import (
    account_activity_df,
    account_profiles_df,
    active_accounts_df,
    burst_accounts_df,
    degree_of_similarity_df,
    rating_bursts_df,
    rating_deviation_df,
    request_peaks_df,
)
from flixlake.config import DetectionConfig, Settings, duration_seconds
from flixlake.lake import runs
from flixlake.lake.spark_io import read_table
from flixlake.lake.store import Lake
from flixlake.lake.tables import SUSPECTED_ACCOUNTS

log = logging.getLogger(__name__)

INPUT_TABLES = ("watch_sessions", "ratings", "reco_requests")
FLOOD, BURST, OUTLIER = "request_flood", "rating_burst", "profile_outlier"
# What the isolation forest sees: how an account rates and how fast, not how much. Volume
# (movies, minutes, requests) made the heaviest genuine users the oddest profiles (6 of ~2,000
# flagged at 0.6 on the seed-7 drill, none with these features; rates on a log scale).
MODEL_FEATURES = (
    "rdma",
    "mean_deviation",
    "extreme_share",
    "degsim",
    "ratings_per_active_hour",
    "account_age_days",
)
_LOG_FEATURES = frozenset(("ratings_per_active_hour",))
REPORTED_FEATURES = (
    *MODEL_FEATURES,
    "n_ratings",
    "n_watched",
    "minutes_watched",
    "n_requests",
    "wdma",
    "burst_ratings",
    "max_requests_per_hour",
)


def run_window(run_date: dt.date, lookback_days: int) -> tuple[dt.datetime, dt.datetime]:
    """``(since, end)``: the scored period, ``lookback_days`` whole days up to the run date."""
    end = dt.datetime.combine(run_date + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
    return end - dt.timedelta(days=lookback_days), end


def pinned_versions(compact_manifest: dict[str, Any]) -> dict[str, int]:
    """The silver versions the compact step produced (detect reads exactly these)."""
    outputs = compact_manifest.get("output_versions") or {}
    missing = [name for name in INPUT_TABLES if outputs.get(name) is None]
    if missing:
        raise runs.MissingStepError(f"compact manifest has no output version for {missing}")
    return {name: int(outputs[name]) for name in INPUT_TABLES}


def profiles_and_bursts(
    spark: SparkSession,
    lake: Lake,
    versions: dict[str, int],
    config: DetectionConfig,
    run_date: dt.date,
) -> tuple[DataFrame, DataFrame, list[DataFrame]]:
    """The scored accounts' profiles, the lookback's rating bursts, and what to unpersist after."""
    since, end = run_window(run_date, config.lookback_days)
    watch_sessions = read_table(spark, lake, "watch_sessions", versions["watch_sessions"]).where(
        F.col("event_date") <= F.lit(run_date)
    )
    ratings = (
        read_table(spark, lake, "ratings", versions["ratings"])
        .select("user_id", "movie_idx", "rating", "rated_at")
        .where(F.col("rated_at") < F.lit(end))
    )
    requests = (
        read_table(spark, lake, "reco_requests", versions["reco_requests"])
        .select("user_id", "event_time", "event_date")
        .where(F.col("event_date") <= F.lit(run_date))
    )
    new_seconds = config.new_account_days * 86_400
    activity = account_activity_df(watch_sessions, ratings, requests).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    accounts = active_accounts_df(activity, since).persist()
    windows = {label: duration_seconds(label) for label in config.burst_windows}
    bursts = rating_bursts_df(
        ratings,
        activity,
        windows,
        new_seconds,
        config.burst_min_accounts,
        config.burst_min_share,
        since,
    ).persist()
    profiles = account_profiles_df(
        accounts,
        activity,
        rating_deviation_df(ratings),
        degree_of_similarity_df(  # over the lookback's ratings: bounds the self-join
            ratings.where(F.col("rated_at") >= F.lit(since)),
            accounts,
            config.neighbours,
            config.max_raters_per_group,
            config.seed,
        ),
        burst_accounts_df(ratings, activity, bursts, new_seconds),
        request_peaks_df(requests, since),
        end,
    )
    return profiles, bursts, [activity, accounts, bursts]


def anomaly_scores(features: NDArray[np.float64], trees: int, seed: int) -> NDArray[np.float64]:
    """Isolation-forest anomaly scores in [0, 1] (0.5 = unremarkable, near 1 = isolated fast)."""
    if features.shape[0] < 2:
        return np.zeros(features.shape[0])
    forest = IsolationForest(n_estimators=trees, random_state=seed)
    forest.fit(features)
    return np.asarray(-forest.score_samples(features), dtype=np.float64)


def model_matrix(columns: dict[str, NDArray[np.float64]]) -> NDArray[np.float64]:
    """The isolation forest's input: :data:`MODEL_FEATURES`, counts as ``log1p``."""
    return np.column_stack(
        [np.log1p(columns[f]) if f in _LOG_FEATURES else columns[f] for f in MODEL_FEATURES]
    )


@dataclass(frozen=True)
class Suspect:
    user_id: int
    kind: str
    score: float
    reason: str
    features: dict[str, float]
    first_seen: dt.datetime | None
    last_seen: dt.datetime | None


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def classify(
    profiles: pa.Table,
    scores: NDArray[np.float64],
    config: DetectionConfig,
    movie_ids: dict[int, str],
) -> list[Suspect]:
    """Apply the three rules to scored profiles; each suspect gets every reason that fired."""
    n = profiles.num_rows
    columns = {
        f: np.nan_to_num(profiles.column(f).to_numpy(zero_copy_only=False).astype(np.float64))
        for f in REPORTED_FEATURES
    }
    low = {f: float(np.percentile(v, 1)) if n else 0.0 for f, v in columns.items()}
    high = {f: float(np.percentile(v, 99)) if n else 0.0 for f, v in columns.items()}
    rows = profiles.select(
        [
            "user_id",
            "first_seen",
            "last_seen",
            "burst_movie_idx",
            "burst_rating",
            "burst_window",
            "burst_new_accounts",
        ]
    ).to_pylist()
    suspects: list[Suspect] = []
    for i, row in enumerate(rows):
        kinds: list[str] = []
        reasons: list[str] = []
        peak = columns["max_requests_per_hour"][i]
        if peak >= config.flood_requests_per_hour:
            kinds.append(FLOOD)
            reasons.append(
                f"{int(peak)} recommendation requests in one hour "
                f"(limit {config.flood_requests_per_hour})"
            )
        if columns["burst_ratings"][i] >= 1:
            kinds.append(BURST)
            movie = movie_ids.get(int(row["burst_movie_idx"]), f"movie #{row['burst_movie_idx']}")
            reasons.append(
                f"as a new account rated {movie} {row['burst_rating']} stars with "
                f"{int(row['burst_new_accounts']) - 1} other new accounts within "
                f"{row['burst_window']} ({int(columns['burst_ratings'][i])} burst rating(s))"
            )
        if columns["n_ratings"][i] >= config.min_ratings and scores[i] >= config.outlier_score:
            kinds.append(OUTLIER)
            odd = [
                f"{f} {_fmt(columns[f][i])} (population 1-99%: {_fmt(low[f])}-{_fmt(high[f])})"
                for f in MODEL_FEATURES
                if columns[f][i] > high[f] or columns[f][i] < low[f]
            ]
            reasons.append(
                f"odd profile, anomaly score {scores[i]:.3f} >= {config.outlier_score}"
                + (": " + ", ".join(odd) if odd else "")
            )
        if kinds:
            suspects.append(
                Suspect(
                    user_id=int(row["user_id"]),
                    kind=kinds[0],
                    score=float(scores[i]),
                    reason="; ".join(reasons),
                    features={f: round(float(columns[f][i]), 4) for f in REPORTED_FEATURES},
                    first_seen=row["first_seen"],
                    last_seen=row["last_seen"],
                )
            )
    return suspects


def suspects_table(
    suspects: list[Suspect], run_date: dt.date, excluded: bool, now: dt.datetime
) -> pa.Table:
    """Rows of ``suspected_accounts`` for one run date."""
    return pa.Table.from_pylist(
        [
            {
                "run_date": run_date,
                "user_id": s.user_id,
                "kind": s.kind,
                "score": s.score,
                "reason": s.reason,
                "features": json.dumps(s.features, sort_keys=True),
                "excluded": excluded,
                "first_seen": s.first_seen,
                "last_seen": s.last_seen,
                "detected_at": now,
            }
            for s in suspects
        ],
        schema=SUSPECTED_ACCOUNTS.schema,
    )


def _movie_ids(spark: SparkSession, lake: Lake, version: int | None) -> dict[int, str]:
    movies = read_table(spark, lake, "movies", version).select("movie_idx", "movie_id").toArrow()
    return dict(
        zip(
            movies.column("movie_idx").to_pylist(),
            movies.column("movie_id").to_pylist(),
            strict=True,
        )
    )


def run_detect(
    spark: SparkSession, lake: Lake, settings: Settings, run_date: dt.date
) -> dict[str, Any]:
    """Batch step "detect": profiles, isolation forest, rules -> ``suspected_accounts``."""
    started = time.perf_counter()
    config = settings.attacks.detection
    mitigation = settings.attacks.mitigation
    compact = runs.read_manifest(settings, run_date, "compact")
    versions = pinned_versions(compact)
    previous = unchanged_detection(lake, settings, run_date, versions)
    if previous is not None:
        log.info("detect %s: inputs, settings and suspected_accounts unchanged", run_date)
        if not previous["passed"]:
            raise GateFailedError(_refusal(previous, mitigation.max_excluded_fraction, run_date))
        return previous
    profiles_df, bursts_df, cached = profiles_and_bursts(spark, lake, versions, config, run_date)
    profiles = profiles_df.orderBy("user_id").toArrow()
    bursts = bursts_df.toArrow()
    for df in cached:
        df.unpersist()
    t_profiles = time.perf_counter() - started

    columns = {
        f: np.nan_to_num(profiles.column(f).to_numpy(zero_copy_only=False).astype(np.float64))
        for f in MODEL_FEATURES
    }
    scores = anomaly_scores(model_matrix(columns), config.trees, config.seed)
    movie_ids = _movie_ids(spark, lake, (compact.get("output_versions") or {}).get("movies"))
    suspects = classify(profiles, scores, config, movie_ids)
    now = dt.datetime.now(dt.UTC)
    table = suspects_table(suspects, run_date, mitigation.exclude_from_training, now)
    lake.replace_where(SUSPECTED_ACCOUNTS.name, table, f"run_date = '{run_date.isoformat()}'")

    scored = profiles.num_rows
    fraction = len(suspects) / scored if scored else 0.0
    passed = fraction <= mitigation.max_excluded_fraction
    by_kind: dict[str, int] = {}
    for s in suspects:
        by_kind[s.kind] = by_kind.get(s.kind, 0) + 1
    summary: dict[str, Any] = {
        "run_date": run_date.isoformat(),
        "passed": passed,
        "input_versions": versions,
        "scored_accounts": scored,
        "suspected": len(suspects),
        "suspected_fraction": round(fraction, 6),
        "by_kind": by_kind,
        "excluded": mitigation.exclude_from_training,
        "bursts": burst_summary(bursts, movie_ids),
        "table_version": lake.version(SUSPECTED_ACCOUNTS.name),
        "thresholds": config.model_dump(mode="json"),
        "mitigation": mitigation.model_dump(mode="json"),
        "timings": {
            "profiles_s": round(t_profiles, 3),
            "total_s": round(time.perf_counter() - started, 3),
        },
    }
    runs.write_manifest(settings, run_date, "detect", summary)
    log.info("detect %s: %d of %d accounts suspected %s", run_date, len(suspects), scored, by_kind)
    if not passed:
        raise GateFailedError(_refusal(summary, mitigation.max_excluded_fraction, run_date))
    return summary


def _refusal(summary: dict[str, Any], max_fraction: float, run_date: dt.date) -> str:
    return (
        f"detect: {summary['suspected']} of {summary['scored_accounts']} scored accounts "
        f"suspected ({summary['suspected_fraction']:.1%}) > "
        f"attacks.mitigation.max_excluded_fraction {max_fraction:.1%}; refusing to train on "
        f"this data: inspect suspected_accounts for run_date {run_date}"
    )


def unchanged_detection(
    lake: Lake, settings: Settings, run_date: dt.date, versions: dict[str, int]
) -> dict[str, Any] | None:
    """This run date's last detect summary if its inputs, settings and output are unchanged.

    A rerun then writes nothing, so ``suspected_accounts`` keeps its version and a retrained
    model gets the same version as before (training pins the table's version).
    """
    try:
        previous = runs.read_manifest(settings, run_date, "detect")
    except runs.MissingStepError:
        return None
    attacks = settings.attacks
    same = (
        previous.get("input_versions") == versions
        and previous.get("thresholds") == attacks.detection.model_dump(mode="json")
        and previous.get("mitigation") == attacks.mitigation.model_dump(mode="json")
        and previous.get("table_version") is not None
        and previous.get("table_version") == lake.version(SUSPECTED_ACCOUNTS.name)
    )
    return previous if same else None


def burst_summary(bursts: pa.Table, movie_ids: dict[int, str]) -> list[dict[str, Any]]:
    """The per-movie signal: each (movie, stars, window length)'s largest burst, biggest first."""
    best: dict[tuple[int, int, str], dict[str, Any]] = {}
    for row in bursts.to_pylist():
        key = (int(row["movie_idx"]), int(row["rating"]), str(row["window"]))
        if key not in best or row["new_accounts"] > best[key]["new_accounts"]:
            best[key] = {
                "movie_id": movie_ids.get(key[0], f"movie #{key[0]}"),
                "stars": key[1],
                "window": key[2],
                "new_accounts": int(row["new_accounts"]),
                "raters": int(row["raters"]),
                "start": row["window_start"].isoformat() if row["window_start"] else None,
            }
    return sorted(best.values(), key=lambda b: (-b["new_accounts"], b["movie_id"], b["window"]))
