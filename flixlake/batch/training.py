"""Train the implicit-feedback ALS model of one run date, after a hyperparameter search.

``run_train(spark, lake, settings, run_date)`` (batch step "train"):

1. reads ``watch_sessions`` and ``ratings`` at the Delta versions pinned by the "compact"
   manifest and turns them into per-window confidences (:mod:`flixlake.batch.features`);
2. search (:func:`search_params`): a seeded Optuna TPE study over confidence mode (log /
   binary), alpha, rank and regularisation (ranges in ``batch.als.search``), the
   ``batch.als.grid`` points tried first. Each trial fits ALS on the data before the validation
   window of at most ``search_max_users`` users (hash-ordered: first those with history and new
   liked movies in the validation window, then other users with history) and scores NDCG@k on
   the former's validation movies. No
   trial starts after ``search.budget_seconds``; a trial whose fit fails is recorded and skipped;
3. chooses the best trial whose eval + final fits, projected from its search fit, fit in
   ``als.fit_budget_seconds``; fits the *eval* model with it on everything before the test window
   (what "evaluate" measures) and, when ``refit_on_full_history``, the *final* model on everything
   up to ``D`` (what "publish" serves). If a fit fails, the next-best trial is tried;
4. saves both models' factors as parquet and writes the manifest.

ALS is fitted only on users and movies with a positive pair
(:func:`flixlake.batch.features.with_positive_signal`): the others would make Spark's normal
equations singular; they get no factors and are served like new users.

If no candidate trains, :class:`~flixlake.batch.errors.TrainingError` ends the step with a one-line
reason (exit code 4 in the job); every failure's full trace is in ``runs/<D>/train.log``.

Factors (``id int, features array<float>``) live under ``runs.run_dir(settings, D)/model``:
``{eval,final}/{user_factors,item_factors}`` (without refit "final" points at the eval files).

Manifest "train" (stable; read by evaluate, register and publish)::

    {"model_version": "als-20261122-1a2b3c4d",      # als-{D:%Y%m%d}-{sha256(inputs+params)[:8]}
     "run_date": "2026-11-22", "algorithm": "als-implicit",
     "params": {"rank", "reg_param", "alpha", "confidence", "max_iter", "seed", "implicit_prefs",
                "nonnegative", "minutes_cap", "rating_weight", "refit_on_full_history"},
     "search": [{"trial", "source": "grid" | "tpe", "rank", "reg_param", "alpha", "confidence",
                 "status": "ok" | "failed", "ndcg", "n_users", "seconds", "projected_fit_s",
                 "error"}, ...],
     "search_summary": {"method", "trials", "trials_run", "failed", "budget_seconds",
                        "stopped_by_budget", "fit_budget_seconds", "chosen_trial", "chosen",
                        "skipped"},
     "windows": TimeWindows.to_dict(),              # ISO dates, see flixlake.batch.features
     "input_versions": {"watch_sessions": v, "ratings": v, "movies": v, "bronze_events": v},
     "refit_on_full_history": bool,
     "artifact_path": ".../runs/2026-11-22/model",
     "factors": {"final": {"users": path, "items": path}, "eval": {"users": path, "items": path}},
     "fit_failures": [{"trial", "model", "error"}, ...],
     "counts": {"search_users", "search_train_users", "search_train_interactions",
                "validation_relevant",
                "eval_train_interactions", "final_train_interactions", "eval_users",
                "eval_items", "final_users", "final_items", "final_window_users",
                "final_window_items"},
     "timings": {"prepare_s", "search_s", "fit_eval_s", "fit_final_s", "total_s"}}
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from pyspark import StorageLevel
from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from flixlake.batch.errors import TrainingError
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
    with_confidence_mode,
    with_positive_signal,
)
from flixlake.batch.metrics import ndcg_at_k
from flixlake.batch.topn import ItemIndex
from flixlake.config import AlsParams, SearchConfig, Settings
from flixlake.lake import runs
from flixlake.lake.store import Lake

log = logging.getLogger(__name__)

ALGORITHM = "als-implicit"
SEARCH_METHOD = "optuna-tpe"
PINNED_TABLES = ("watch_sessions", "ratings", "movies")
TRACE_LOG = "train.log"
# Spark's loggers that print a failed task's Java stack trace on the console
_TASK_ERROR_LOGGERS = (
    "org.apache.spark.executor.Executor",
    "org.apache.spark.scheduler.TaskSetManager",
    "org.apache.spark.ml.util.Instrumentation",
)


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


def fit_input(interactions_df: DataFrame, params: AlsParams) -> DataFrame:
    """What ALS is fitted on for ``params``: its confidence mode, only users/movies it can solve."""
    return interactions_df.transform(with_confidence_mode(params.confidence)).transform(
        with_positive_signal
    )


def one_line_error(exc: BaseException) -> str:
    """The root cause of a (Spark) failure in one short line, e.g.
    ``SingularMatrixException: LAPACK.dppsv returned 5 because A is not positive definite.``"""
    text = str(exc)
    causes = re.findall(r"Caused by: (?:[\w$]+\.)*([\w$]+(?:Exception|Error): [^\n]*)", text)
    if causes:
        line = causes[-1]
    else:
        named = re.findall(r"(?:[\w$]+\.)*([\w$]+(?:Exception|Error): [^\n]*)", text)
        line = (
            named[-1] if named else f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
        )
    line = line.split(" Is A derived from")[0].strip()
    return line if len(line) <= 240 else line[:237] + "..."


@contextmanager
def quiet_task_errors(spark: SparkSession) -> Iterator[None]:
    """Keep Spark's per-task error logs (Java stack traces) off the console while fitting.

    A failed fit surfaces as a Python exception that we record with its trace in ``train.log``.
    """
    jvm = spark.sparkContext._jvm
    if jvm is None:  # pragma: no cover - classic sessions always have one
        yield
        return
    log_manager = jvm.org.apache.logging.log4j.LogManager
    configurator = jvm.org.apache.logging.log4j.core.config.Configurator
    levels = {name: log_manager.getLogger(name).getLevel() for name in _TASK_ERROR_LOGGERS}
    off = jvm.org.apache.logging.log4j.Level.OFF
    for name in _TASK_ERROR_LOGGERS:
        configurator.setLevel(name, off)
    try:
        yield
    finally:
        for name, level in levels.items():
            configurator.setLevel(name, level)


def _append_trace(trace_log: Path, what: str, exc: BaseException) -> None:
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    trace = "".join(traceback.format_exception(exc))
    with trace_log.open("a", encoding="utf-8") as fh:
        fh.write(f"--- {stamp} {what} failed: {one_line_error(exc)}\n{trace}\n")


def _fit(
    spark: SparkSession, als: ALS, data: DataFrame, trace_log: Path, what: str
) -> tuple[ALSModel | None, float, str | None]:
    """Fit, or record why not: ``(model or None, seconds, one-line error or None)``."""
    start = time.perf_counter()
    try:
        with quiet_task_errors(spark):
            model = als.fit(data)
    except Exception as exc:  # one failed fit is recorded and skipped; the caller decides
        _append_trace(trace_log, what, exc)
        log.warning("%s failed: %s (trace in %s)", what, one_line_error(exc), trace_log)
        return None, time.perf_counter() - start, one_line_error(exc)
    return model, time.perf_counter() - start, None


def _save_factors(model: ALSModel, folder: Path) -> dict[str, str]:
    paths = {"users": str(folder / "user_factors"), "items": str(folder / "item_factors")}
    model.userFactors.write.mode("overwrite").parquet(paths["users"])
    model.itemFactors.write.mode("overwrite").parquet(paths["items"])
    return paths


# -- the search ----------------------------------------------------------------------------------
def search_space(cfg: SearchConfig) -> dict[str, optuna.distributions.BaseDistribution]:
    """Optuna distributions of the four searched hyperparameters (log scales)."""
    dists = optuna.distributions
    return {
        "confidence": dists.CategoricalDistribution(list(cfg.confidence)),
        "alpha": dists.FloatDistribution(cfg.alpha[0], cfg.alpha[1], log=True),
        "rank": dists.IntDistribution(cfg.rank[0], cfg.rank[1], log=True),
        "reg_param": dists.FloatDistribution(cfg.reg_param[0], cfg.reg_param[1], log=True),
    }


def _as_params(values: dict[str, Any]) -> AlsParams:
    """A trial's values as ALS params (floats to 4 significant digits, readable in reports)."""
    return AlsParams(
        rank=int(values["rank"]),
        reg_param=float(f"{float(values['reg_param']):.4g}"),
        alpha=float(f"{float(values['alpha']):.4g}"),
        confidence=values.get("confidence", "log"),
    )


def _score(
    model: ALSModel,
    users: np.ndarray,
    seen: dict[int, np.ndarray],
    relevant_by_user: dict[int, np.ndarray],
    k: int,
) -> float:
    item_ids, item_matrix = factor_arrays(model.itemFactors)
    user_ids, user_matrix = factor_arrays(model.userFactors)
    recs = recommend_from_factors(
        users, user_ids, user_matrix, ItemIndex.build(item_ids, item_matrix, k), seen
    )
    return float(
        np.mean([ndcg_at_k(recs[i], relevant_by_user[int(u)], k) for i, u in enumerate(users)])
    )


def search_params(
    spark: SparkSession,
    settings: Settings,
    pairs: DataFrame,
    trace_log: Path,
    full_interactions: int,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, int]]:
    """Run the search; returns ``(trials, summary, counts)`` (trials in the order they ran).

    ``pairs`` has the "search" (before validation) and "validation" windows of
    :func:`flixlake.batch.features.windowed_interactions`. ALS is fitted on the sampled users'
    search history only: small fits that rank the candidates, not the model that is published.
    ``full_interactions`` (the eval fit's pairs) scales each trial's fit time into the projected
    cost of the real fits.
    """
    batch = settings.batch
    als_cfg = batch.als
    cfg = als_cfg.search
    summary_df = user_window_summary(pairs, "validation", "search").persist()
    eligible = summary_df.where((F.col("n_movies") > 0) & (F.col("n_relevant") > 0))
    sample = deterministic_sample(eligible, batch.search_max_users, als_cfg.seed).persist()
    n_scored = int(sample.count())
    # the fits learn from the scored users and, up to search_max_users in all, other users with
    # history: on a small history the search model sees (almost) everyone, like the real fits
    others = deterministic_sample(
        summary_df.where(F.col("n_movies") > 0).join(sample, "user_id", "left_anti"),
        max(0, batch.search_max_users - n_scored),
        als_cfg.seed,
    )
    fit_users = sample.unionByName(others).persist()
    train_sample = (
        window_interactions(pairs, "search")
        .join(F.broadcast(fit_users), "user_id", "left_semi")
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    seen, relevant_by_user = collect_seen_and_relevant(
        train_sample, new_liked_pairs(pairs, "validation", "search"), sample
    )
    users = np.array(sorted(relevant_by_user), dtype=np.int64)
    counts = {
        "search_users": int(users.size),
        "search_train_users": int(fit_users.count()),
        "search_train_interactions": int(train_sample.count()),
        "validation_relevant": int(sum(v.size for v in relevant_by_user.values())),
    }
    summary: dict[str, Any] = {
        "method": SEARCH_METHOD,
        "trials": cfg.trials,
        "budget_seconds": cfg.budget_seconds,
        "fit_budget_seconds": als_cfg.fit_budget_seconds,
        "space": {
            "rank": list(cfg.rank),
            "reg_param": list(cfg.reg_param),
            "alpha": list(cfg.alpha),
            "confidence": list(cfg.confidence),
        },
        "stopped_by_budget": False,
        "skipped": None,
    }
    trials: list[dict[str, Any]] = []
    if users.size == 0:
        summary["skipped"] = "no user has history and new liked movies in the validation window"
        log.warning("hyperparameter search skipped: %s", summary["skipped"])
    else:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(
                seed=als_cfg.seed, n_startup_trials=max(3, cfg.trials // 3)
            ),
        )
        for point in als_cfg.grid[: cfg.trials]:
            study.enqueue_trial(point.model_dump(), skip_if_exists=True)
        space = search_space(cfg)
        scale = full_interactions / max(1, counts["search_train_interactions"])
        fits = 2 if batch.refit_on_full_history else 1
        started = time.perf_counter()
        blocks = als_blocks(spark)
        for number in range(cfg.trials):
            if time.perf_counter() - started > cfg.budget_seconds:
                summary["stopped_by_budget"] = True
                break
            trial = study.ask(space)
            params = _as_params(trial.params)
            row: dict[str, Any] = {
                "trial": number,
                "source": "grid" if number < len(als_cfg.grid) else "tpe",
                **params.model_dump(),
            }
            als = build_als(params, als_cfg.max_iter, als_cfg.seed, blocks)
            model, seconds, error = _fit(
                spark, als, fit_input(train_sample, params), trace_log, f"search trial {number}"
            )
            row["seconds"] = round(seconds, 3)
            if model is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                row.update(status="failed", ndcg=None, n_users=int(users.size), error=error)
            else:
                ndcg = _score(model, users, seen, relevant_by_user, batch.k)
                study.tell(trial, ndcg)
                row.update(status="ok", ndcg=ndcg, n_users=int(users.size), error=None)
                log.info("search %s: ndcg@%d=%.4f (%.1fs)", params, batch.k, ndcg, seconds)
            trials.append(row)
        project_fit_seconds(trials, scale, fits)
    train_sample.unpersist()
    fit_users.unpersist()
    sample.unpersist()
    summary_df.unpersist()
    summary["trials_run"] = len(trials)
    summary["failed"] = sum(1 for t in trials if t["status"] == "failed")
    return trials, summary, counts


def project_fit_seconds(trials: list[dict[str, Any]], scale: float, fits: int) -> None:
    """Set each trial's ``projected_fit_s``: the eval (+ final) fit on ``scale`` x its data.

    Fit time ~ a + c x rank^2 x pairs: ``a`` (job overhead) does not grow with the data. With
    two or more ranks among the successful trials, ``a`` and ``c`` are least-squares estimates;
    otherwise the whole trial time is scaled (an overestimate on small samples).
    """
    ok = [t for t in trials if t["status"] == "ok"]
    ranks = np.array([t["rank"] for t in ok], np.float64)
    seconds = np.array([t["seconds"] for t in ok], np.float64)
    overhead, per_rank2 = 0.0, None
    if len(set(ranks.tolist())) >= 2:
        design = np.stack([np.ones_like(ranks), ranks**2], axis=1)
        (overhead, per_rank2), *_ = np.linalg.lstsq(design, seconds, rcond=None)
        if overhead < 0 or per_rank2 <= 0:
            overhead, per_rank2 = 0.0, None
    for trial in trials:
        if per_rank2 is None:
            cost = trial["seconds"] * scale
        else:
            cost = max(overhead, 0.0) + per_rank2 * trial["rank"] ** 2 * scale
        trial["projected_fit_s"] = round(fits * float(cost), 1)


def ranked_candidates(
    trials: list[dict[str, Any]], default: AlsParams, fit_budget_seconds: float
) -> list[tuple[int | None, AlsParams]]:
    """Candidates for the real fits, best first: ``(trial number or None, params)``.

    Successful trials within the fit budget by validation NDCG (earlier trial on ties), then
    those over budget by projected cost. Without any trial (search skipped) the default point.
    Failed trials are never candidates. An empty list means every trial failed.
    """
    if not trials:
        return [(None, default)]
    ok = [t for t in trials if t["status"] == "ok"]
    within = sorted(
        (t for t in ok if t["projected_fit_s"] <= fit_budget_seconds),
        key=lambda t: (-t["ndcg"], t["trial"]),
    )
    over = sorted(
        (t for t in ok if t["projected_fit_s"] > fit_budget_seconds),
        key=lambda t: (t["projected_fit_s"], t["trial"]),
    )
    return [(t["trial"], _as_params(t)) for t in within + over]


# -- the batch step ------------------------------------------------------------------------------
def run_train(
    spark: SparkSession, lake: Lake, settings: Settings, run_date: dt.date
) -> dict[str, Any]:
    """Batch step "train": search, fit eval + final ALS on pinned inputs, save factors, manifest."""
    t_total = time.perf_counter()
    batch = settings.batch
    als_cfg = batch.als
    versions = pinned_input_versions(runs.read_manifest(settings, run_date, "compact"))
    windows = TimeWindows.for_run_date(run_date, batch)
    folder = runs.run_dir(settings, run_date)
    trace_log = folder / TRACE_LOG
    trace_log.unlink(missing_ok=True)  # this run's failures only
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    watch_sessions, ratings = load_windowed_inputs(spark, lake, versions, windows)
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
        pairs.unpersist()
        raise TrainingError(
            f"no interactions before the test window ({windows.test_start}): nothing to train on"
        )
    if eval_train.where(F.col("confidence") > 0).limit(1).count() == 0:
        pairs.unpersist()
        raise TrainingError(
            f"no watch or 3-5 star rating before the test window ({windows.test_start}): "
            "nothing positive to train on"
        )
    timings["prepare_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    search, search_summary, search_counts = search_params(
        spark, settings, pairs, trace_log, counts["eval_train_interactions"]
    )
    counts.update(search_counts)
    timings["search_s"] = time.perf_counter() - t0
    candidates = ranked_candidates(search, als_cfg.grid[0], als_cfg.fit_budget_seconds)
    if not candidates:
        pairs.unpersist()
        raise TrainingError(
            f"all {len(search)} search trials failed (first: {search[0]['error']}); "
            f"traces in {trace_log}"
        )

    model_dir = folder / "model"
    blocks = als_blocks(spark)
    fit_failures: list[dict[str, Any]] = []
    chosen: tuple[int | None, AlsParams] | None = None
    factors: dict[str, dict[str, str]] = {}
    final_train = window_interactions(pairs, "final")
    for trial, best in candidates:
        als = build_als(best, als_cfg.max_iter, als_cfg.seed, blocks)
        label = f"trial {trial}" if trial is not None else "default point"
        eval_model, seconds, error = _fit(
            spark, als, fit_input(eval_train, best), trace_log, f"eval fit ({label})"
        )
        if eval_model is None:
            fit_failures.append({"trial": trial, "model": "eval", "error": error})
            continue
        final_model = None
        if batch.refit_on_full_history:
            final_model, timings["fit_final_s"], error = _fit(
                spark, als, fit_input(final_train, best), trace_log, f"final fit ({label})"
            )
            if final_model is None:
                fit_failures.append({"trial": trial, "model": "final", "error": error})
                continue
        timings["fit_eval_s"] = seconds
        chosen = (trial, best)
        factors["eval"] = _save_factors(eval_model, model_dir / "eval")
        counts["eval_users"] = int(eval_model.userFactors.count())
        counts["eval_items"] = int(eval_model.itemFactors.count())
        if final_model is not None:
            factors["final"] = _save_factors(final_model, model_dir / "final")
            counts["final_train_interactions"] = int(final_train.count())
            counts["final_users"] = int(final_model.userFactors.count())
            counts["final_items"] = int(final_model.itemFactors.count())
        else:
            factors["final"] = dict(factors["eval"])
            counts["final_train_interactions"] = counts["eval_train_interactions"]
            counts["final_users"] = counts["eval_users"]
            counts["final_items"] = counts["eval_items"]
            timings["fit_final_s"] = 0.0
        break
    if chosen is None:
        pairs.unpersist()
        raise TrainingError(
            f"no candidate could be fitted ({len(fit_failures)} tried; first: "
            f"{fit_failures[0]['error']}); traces in {trace_log}"
        )
    final_window = final_train.agg(
        F.countDistinct("user_id").alias("users"), F.countDistinct("movie_idx").alias("items")
    )
    window_counts = final_window.first()
    counts["final_window_users"] = int(window_counts["users"]) if window_counts else 0
    counts["final_window_items"] = int(window_counts["items"]) if window_counts else 0
    pairs.unpersist()
    timings["total_s"] = time.perf_counter() - t_total

    trial, best = chosen
    search_summary["chosen_trial"] = trial
    search_summary["chosen"] = best.model_dump()
    params: dict[str, Any] = {
        **best.model_dump(),
        "max_iter": als_cfg.max_iter,
        "seed": als_cfg.seed,
        "implicit_prefs": True,
        "nonnegative": False,
        "minutes_cap": batch.confidence.minutes_cap,
        "rating_weight": batch.confidence.rating_weight,
        "refit_on_full_history": batch.refit_on_full_history,
        # the windows shape the eval model: another config, another version
        "window_days": {
            "history": batch.history_days,
            "validation": batch.validation_days,
            "eval": batch.eval_days,
        },
    }
    summary: dict[str, Any] = {
        "model_version": model_version_for(run_date, versions, params),
        "run_date": run_date.isoformat(),
        "algorithm": ALGORITHM,
        "params": params,
        "search": search,
        "search_summary": search_summary,
        "windows": windows.to_dict(),
        "input_versions": versions,
        "refit_on_full_history": batch.refit_on_full_history,
        "artifact_path": str(model_dir),
        "factors": factors,
        "fit_failures": fit_failures,
        "counts": counts,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    runs.write_manifest(settings, run_date, "train", summary)
    return summary
