"""An attack drill: inject labelled attacks into a history, run the defences, measure them.

:func:`run_attack_drill` is what ``bench/attacks.py`` and the integration test run, the way the
system runs in production: ``generate`` (with ``attacks``) -> ``ingest`` -> the batch steps
``compact`` -> ``detect`` -> ``train`` (once with the suspects excluded, once without) on one
Spark session, then:

* detection precision and recall per attack kind against the side-file labels
  (:func:`flixlake.audit.measure.detection_report`);
* each rating attack's target: its exposure in the top-k lists the final model gives genuine
  users (share of lists containing it, mean rank), trained with and without the exclusion
  (:func:`flixlake.audit.measure.target_exposure`).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from flixlake.audit.measure import (
    detection_report,
    model_top_lists,
    seen_by_user,
    target_exposure,
)
from flixlake.batch.detect import run_detect
from flixlake.batch.ingest import ingest_paths
from flixlake.batch.silver import run_compact
from flixlake.batch.training import run_train
from flixlake.config import Settings, deep_merge, load_settings
from flixlake.contract.attack_labels import AttackLabels, read_labels
from flixlake.lake.runs import read_manifest
from flixlake.lake.spark_io import read_table
from flixlake.lake.store import lake_from_settings
from flixlake.lake.tables import SUSPECTED_ACCOUNTS
from flixlake.sim.attacks import AttackSpec
from flixlake.sim.generate import generate_history


def run_attack_drill(
    spark: SparkSession,
    home: Path,
    *,
    users: int,
    movies: int,
    days: int,
    seed: int,
    attacks: Sequence[AttackSpec],
    env: str = "test",
    targets: Sequence[str] = (),
    audience: int = 5_000,
    k: int = 20,
    end: dt.date = dt.date(2026, 11, 22),
    models: tuple[bool, ...] = (False, True),
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one drill under ``home``; returns detection figures and target exposures.

    ``targets`` adds movies whose exposure is measured too (e.g. the targets of an attacked
    history, measured in a clean one). ``audience``: at most this many genuine users (ids up to
    ``users``, the same ones each run) get top-``k`` lists. ``models`` says which models to
    train and measure: without the exclusion (False), with it (True), or none (``()``).
    ``overrides`` are merged over the ``env`` config (e.g. a smaller ALS grid for a test).
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = home / "data"
    generate_history(data, users, movies, days, seed, end=end, attacks=attacks, mean_activity=0.3)
    settings = load_settings(env, home=home, overrides=overrides)
    lake = lake_from_settings(settings)
    ingest_paths(lake, [data])
    timings["generate_ingest_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    run_compact(spark, lake, settings, end)
    timings["compact_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    detect = run_detect(spark, lake, settings, end)
    timings["detect_s"] = time.perf_counter() - t0

    labels = read_labels(data) if attacks else AttackLabels()
    suspects = lake.read(
        SUSPECTED_ACCOUNTS.name,
        columns=["user_id", "kind"],
        filters=[("run_date", "=", end)],
    ).to_pylist()
    report = detection_report(labels, [r["user_id"] for r in suspects])
    report["by_rule"] = _rule_precision(labels, suspects)

    movie_ids = [t.target_movie for t in labels.attacks if t.target_movie] + list(targets)
    result: dict[str, Any] = {
        "detect": {k: detect[k] for k in ("scored_accounts", "suspected", "by_kind", "bursts")},
        "detection": report,
        "exposure": {},
        "labels": labels,
        "timings": timings,  # seconds
    }
    if not models:
        return result
    compact_versions = _compact_versions(settings, end)
    movie_index = {
        r["movie_id"]: int(r["movie_idx"])
        for r in read_table(spark, lake, "movies", compact_versions["movies"])
        .where(F.col("movie_id").isin(movie_ids or [""]))
        .collect()
    }
    watch_sessions = read_table(spark, lake, "watch_sessions", compact_versions["watch_sessions"])
    ratings = read_table(spark, lake, "ratings", compact_versions["ratings"])
    audience_ids = _audience(watch_sessions, users, audience, seed)
    seen = seen_by_user(watch_sessions, ratings, audience_ids)

    exposure: dict[str, dict[str, Any]] = result["exposure"]
    for mitigated in models:
        t0 = time.perf_counter()
        mitigation = {"attacks": {"mitigation": {"exclude_from_training": mitigated}}}
        trained = load_settings(env, home=home, overrides=deep_merge(overrides or {}, mitigation))
        train = run_train(spark, lake, trained, end)
        lists = model_top_lists(spark, train["factors"]["final"], audience_ids, seen, k)
        label = "mitigated" if mitigated else "unmitigated"
        timings[f"train_{label}_s"] = time.perf_counter() - t0
        for movie in movie_ids:
            entry = exposure.setdefault(movie, {"movie_idx": movie_index.get(movie)})
            idx = movie_index.get(movie)
            entry[label] = target_exposure(lists, idx, k) if idx is not None else None
            entry["excluded_accounts"] = train["params"]["screening"]["excluded_accounts"]
    for attack in labels.attacks:
        if attack.target_movie in exposure:
            exposure[attack.target_movie]["attack"] = attack.attack_id
    return result


def _compact_versions(settings: Settings, run_date: dt.date) -> dict[str, int]:
    outputs = read_manifest(settings, run_date, "compact")["output_versions"]
    return {name: int(v) for name, v in outputs.items()}


def _audience(watch_sessions: DataFrame, users: int, audience: int, seed: int) -> np.ndarray:
    """Up to ``audience`` genuine users with history, the same ones every run (hash order)."""
    rows = (
        watch_sessions.where(F.col("user_id") <= users)
        .select("user_id")
        .distinct()
        .orderBy(F.xxhash64("user_id", F.lit(seed)), "user_id")
        .limit(audience)
        .toArrow()
    )
    return np.sort(np.asarray(rows.column("user_id").to_numpy(), np.int64))


def _rule_precision(labels: AttackLabels, suspects: list[dict[str, Any]]) -> dict[str, Any]:
    """Per detector rule: how many it flagged and how many of those were attackers."""
    attackers = set().union(*labels.accounts_by_kind().values()) if labels.attacks else set()
    out: dict[str, Any] = {}
    for row in suspects:
        entry = out.setdefault(row["kind"], {"flagged": 0, "attackers": 0})
        entry["flagged"] += 1
        entry["attackers"] += int(row["user_id"] in attackers)
    for entry in out.values():
        entry["precision"] = entry["attackers"] / entry["flagged"]
    return out
