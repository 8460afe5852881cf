"""Train the implicit-feedback ALS model of one run date, with a cheap hyperparameter search.

``run_train(spark, lake, settings, run_date)`` (batch step "train"):

1. reads ``watch_sessions`` and ``ratings`` at the Delta versions pinned by the "compact"
   manifest, leaves out the accounts the "detect" step suspected
   (:mod:`flixlake.batch.screening`) and turns them into per-window confidences
   (:mod:`flixlake.batch.features`);
2. search: for each ``batch.als.grid`` entry, fits ALS on the data before the validation window
   of a deterministic sample of at most ``search_max_users`` users (users with history and with
   new liked movies in the validation window) and scores NDCG@k on their validation movies;
3. fits the *eval* model with the best params on everything before the test window (what
   "evaluate" measures) and, when ``refit_on_full_history``, the *final* model on everything up
   to ``D`` (what "publish" serves; without refit the eval model is the final one);
4. saves both models' factors as parquet and writes the manifest.

Factors (``id int, features array<float>``) live under ``runs.run_dir(settings, D)/model``:
``{eval,final}/{user_factors,item_factors}`` (without refit "final" points at the eval files).

Manifest "train" (stable; read by evaluate, register and publish)::

    {"model_version": "als-20261122-1a2b3c4d",      # als-{D:%Y%m%d}-{sha256(inputs+params)[:8]}
     "run_date": "2026-11-22", "algorithm": "als-implicit",
     "params": {"rank", "reg_param", "alpha", "max_iter", "seed", "implicit_prefs",
                "nonnegative", "minutes_cap", "rating_weight", "refit_on_full_history",
                "screening": flixlake.batch.screening.Exclusions.record()},
     "search": [{"rank", "reg_param", "alpha", "ndcg", "n_users", "seconds"}, ...],
     "windows": TimeWindows.to_dict(),              # ISO dates, see flixlake.batch.features
     "input_versions": {"watch_sessions": v, "ratings": v, "movies": v, "bronze_events": v,
                        "suspected_accounts": v (when the detect step ran)},
     "refit_on_full_history": bool,
     "artifact_path": ".../runs/2026-11-22/model",
     "factors": {"final": {"users": path, "items": path}, "eval": {"users": path, "items": path}},
     "counts": {"search_users", "search_train_interactions", "validation_relevant",
                "eval_train_interactions", "final_train_interactions", "eval_users",
                "eval_items", "final_users", "final_items"},
     "timings": {"prepare_s", "search_s", "fit_eval_s", "fit_final_s", "total_s"}}
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from pyspark import StorageLevel
from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from flixlake.batch.errors import GateFailedError
from flixlake.batch.evaluation import (
    collect_seen_and_relevant,
    factor_arrays,
    load_windowed_inputs,
    recommend_from_factors,
)
from flixlake.batch.features import (
    TimeWindows,
    deterministic_sample,
    new_liked_pairs,
    user_window_summary,
    window_interactions,
    windowed_interactions,
)
from flixlake.batch.metrics import ndcg_at_k
from flixlake.batch.screening import exclusions_df, load_exclusions, without_accounts
from flixlake.batch.topn import ItemIndex
from flixlake.config import AlsParams, Settings
from flixlake.lake import runs
from flixlake.lake.store import Lake

log = logging.getLogger(__name__)

ALGORITHM = "als-implicit"
PINNED_TABLES = ("watch_sessions", "ratings", "movies")


def pinned_input_versions(compact_manifest: dict[str, Any]) -> dict[str, int]:
    """Delta versions the compact step produced: train must read exactly these."""
    outputs = compact_manifest.get("output_versions") or {}
    missing = [name for name in PINNED_TABLES if outputs.get(name) is None]
    if missing:
        raise runs.MissingStepError(f"compact manifest has no output version for {missing}")
    versions = {name: int(outputs[name]) for name in PINNED_TABLES}
    if compact_manifest.get("bronze_version") is not None:
        versions["bronze_events"] = int(compact_manifest["bronze_version"])
    return versions


def model_version_for(
    run_date: dt.date, input_versions: dict[str, int], params: dict[str, Any]
) -> str:
    """Same inputs and params on the same date give the same version: reruns overwrite, not add."""
    payload = json.dumps({"input_versions": input_versions, "params": params}, sort_keys=True)
    return f"als-{run_date:%Y%m%d}-{hashlib.sha256(payload.encode()).hexdigest()[:8]}"


def build_als(params: AlsParams, max_iter: int, seed: int, blocks: int = 10) -> ALS:
    """The one ALS configuration used for search, evaluation and the final model.

    ``blocks`` (user and item blocks) is best about the number of cores: each block is one task
    per iteration, and more blocks than cores only add shuffle overhead.
    """
    return ALS(
        numUserBlocks=blocks,
        numItemBlocks=blocks,
        rank=params.rank,
        regParam=params.reg_param,
        alpha=params.alpha,
        maxIter=max_iter,
        seed=seed,
        implicitPrefs=True,
        nonnegative=False,
        coldStartStrategy="drop",
        userCol="user_id",
        itemCol="movie_idx",
        ratingCol="confidence",
    )


def als_blocks(spark: SparkSession) -> int:
    """ALS blocks for this cluster: one per core (at least 2), not Spark's fixed 10."""
    return max(2, int(spark.sparkContext.defaultParallelism))


def _fit(als: ALS, data: DataFrame) -> tuple[ALSModel, float]:
    start = time.perf_counter()
    model = als.fit(data)
    return model, time.perf_counter() - start


def _save_factors(model: ALSModel, folder: Path) -> dict[str, str]:
    paths = {"users": str(folder / "user_factors"), "items": str(folder / "item_factors")}
    model.userFactors.write.mode("overwrite").parquet(paths["users"])
    model.itemFactors.write.mode("overwrite").parquet(paths["items"])
    return paths


def search_params(
    spark: SparkSession, settings: Settings, pairs: DataFrame
) -> tuple[AlsParams, list[dict[str, Any]], dict[str, int]]:
    """Score every grid entry by mean NDCG@k on the validation window of sampled users.

    ``pairs`` has the "search" (before validation) and "validation" windows of
    :func:`flixlake.batch.features.windowed_interactions`. ALS is fitted on the sampled users' search
    history only: small fits that rank the candidates, not the model that is published.
    """
    batch = settings.batch
    als_cfg = batch.als
    eligible = user_window_summary(pairs, "validation", "search").where(
        (F.col("n_movies") > 0) & (F.col("n_relevant") > 0)
    )
    sample = deterministic_sample(eligible, batch.search_max_users, als_cfg.seed).persist()
    train_sample = (
        window_interactions(pairs, "search")
        .join(F.broadcast(sample), "user_id", "left_semi")
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    seen, relevant_by_user = collect_seen_and_relevant(
        train_sample, new_liked_pairs(pairs, "validation", "search"), sample
    )
    users = np.array(sorted(relevant_by_user), dtype=np.int64)
    counts = {
        "search_users": int(users.size),
        "search_train_interactions": int(sum(v.size for v in seen.values())),
        "validation_relevant": int(sum(v.size for v in relevant_by_user.values())),
    }
    results: list[dict[str, Any]] = []
    if users.size == 0:
        log.warning("hyperparameter search skipped: no user has history and validation activity")
        for params in als_cfg.grid:
            results.append({**params.model_dump(), "ndcg": None, "n_users": 0, "seconds": 0.0})
    else:
        for params in als_cfg.grid:
            als = build_als(params, als_cfg.max_iter, als_cfg.seed, als_blocks(spark))
            model, seconds = _fit(als, train_sample)
            item_ids, item_matrix = factor_arrays(model.itemFactors)
            user_ids, user_matrix = factor_arrays(model.userFactors)
            index = ItemIndex.build(item_ids, item_matrix, batch.k)
            recs = recommend_from_factors(users, user_ids, user_matrix, index, seen)
            ndcg = float(
                np.mean(
                    [
                        ndcg_at_k(recs[i], relevant_by_user[int(u)], batch.k)
                        for i, u in enumerate(users)
                    ]
                )
            )
            log.info("search %s: ndcg@%d=%.4f (%.1fs)", params.model_dump(), batch.k, ndcg, seconds)
            results.append(
                {
                    **params.model_dump(),
                    "ndcg": ndcg,
                    "n_users": int(users.size),
                    "seconds": round(seconds, 3),
                }
            )
    train_sample.unpersist()
    sample.unpersist()
    best_i = max(range(len(results)), key=lambda i: (results[i]["ndcg"] or 0.0, -i))
    return als_cfg.grid[best_i], results, counts


def run_train(
    spark: SparkSession, lake: Lake, settings: Settings, run_date: dt.date
) -> dict[str, Any]:
    """Batch step "train": search, fit eval + final ALS on pinned inputs, save factors, manifest."""
    t_total = time.perf_counter()
    batch = settings.batch
    als_cfg = batch.als
    versions = pinned_input_versions(runs.read_manifest(settings, run_date, "compact"))
    windows = TimeWindows.for_run_date(run_date, batch)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    watch_sessions, ratings = load_windowed_inputs(spark, lake, versions, windows)
    exclusions = load_exclusions(lake, settings, run_date)  # suspected attackers stay out
    if exclusions.version is not None:
        versions["suspected_accounts"] = exclusions.version
    if exclusions.user_ids:
        excluded = exclusions_df(spark, exclusions)
        watch_sessions = without_accounts(watch_sessions, excluded)
        ratings = without_accounts(ratings, excluded)
    pairs = windowed_interactions(
        watch_sessions,
        ratings,
        batch.confidence,
        {
            "search": (None, windows.search_train_end),
            "validation": (windows.validation_start, windows.validation_end),
            "eval": (None, windows.eval_train_end),
            "final": (None, windows.test_end),
        },
    ).persist(StorageLevel.MEMORY_AND_DISK)
    eval_train = window_interactions(pairs, "eval")
    counts: dict[str, int] = {"eval_train_interactions": int(eval_train.count())}
    if counts["eval_train_interactions"] == 0:
        raise GateFailedError(
            f"no interactions before the test window ({windows.test_start}): nothing to train on"
        )
    timings["prepare_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    best, search, search_counts = search_params(spark, settings, pairs)
    counts.update(search_counts)
    timings["search_s"] = time.perf_counter() - t0

    params: dict[str, Any] = {
        **best.model_dump(),
        "max_iter": als_cfg.max_iter,
        "seed": als_cfg.seed,
        "implicit_prefs": True,
        "nonnegative": False,
        "minutes_cap": batch.confidence.minutes_cap,
        "rating_weight": batch.confidence.rating_weight,
        "refit_on_full_history": batch.refit_on_full_history,
        "screening": exclusions.record(),
    }
    model_version = model_version_for(run_date, versions, params)
    model_dir = runs.run_dir(settings, run_date) / "model"
    als = build_als(best, als_cfg.max_iter, als_cfg.seed, als_blocks(spark))

    eval_model, timings["fit_eval_s"] = _fit(als, eval_train)
    factors = {"eval": _save_factors(eval_model, model_dir / "eval")}
    counts["eval_users"] = int(eval_model.userFactors.count())
    counts["eval_items"] = int(eval_model.itemFactors.count())

    if batch.refit_on_full_history:
        final_train = window_interactions(pairs, "final")
        counts["final_train_interactions"] = int(final_train.count())
        final_model, timings["fit_final_s"] = _fit(als, final_train)
        factors["final"] = _save_factors(final_model, model_dir / "final")
        counts["final_users"] = int(final_model.userFactors.count())
        counts["final_items"] = int(final_model.itemFactors.count())
    else:
        factors["final"] = dict(factors["eval"])
        counts["final_train_interactions"] = counts["eval_train_interactions"]
        counts["final_users"], counts["final_items"] = counts["eval_users"], counts["eval_items"]
        timings["fit_final_s"] = 0.0
    pairs.unpersist()
    timings["total_s"] = time.perf_counter() - t_total

    summary: dict[str, Any] = {
        "model_version": model_version,
        "run_date": run_date.isoformat(),
        "algorithm": ALGORITHM,
        "params": params,
        "search": search,
        "windows": windows.to_dict(),
        "input_versions": versions,
        "refit_on_full_history": batch.refit_on_full_history,
        "artifact_path": str(model_dir),
        "factors": factors,
        "counts": counts,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    runs.write_manifest(settings, run_date, "train", summary)
    return summary
