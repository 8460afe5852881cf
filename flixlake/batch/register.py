"""The ``register`` step: record the run's model with its provenance, then write its report.

Provenance is what a model was trained on (every input table's Delta version, bronze included),
with which code (git commit) and libraries, where its factors are and how it scored.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flixlake.batch.report import write_evaluation_report
from flixlake.config import PROJECT_ROOT
from flixlake.lake.registry import BRONZE_TABLE, REGISTERED, model_rows, upsert_model
from flixlake.lake.runs import read_manifest, run_dir, write_manifest
from flixlake.lake.store import Lake
from flixlake.lake.tables import MODELS

if TYPE_CHECKING:  # run_register receives a session; the rest of the module never needs Spark
    from pyspark.sql import SparkSession

    from flixlake.config import Settings


GIT_COMMIT_VAR = "FLIXLAKE_GIT_COMMIT"
LIBRARIES = ("pyspark", "deltalake", "numpy", "pyarrow", "pandas")


# -- provenance ----------------------------------------------------------------------------------
def git_commit(code_dir: Path = PROJECT_ROOT) -> str:
    """The code version: ``$FLIXLAKE_GIT_COMMIT``, else ``git rev-parse HEAD`` (``-dirty`` when
    tracked files changed), else ``"unknown"`` (e.g. an image without ``.git``)."""
    explicit = os.environ.get(GIT_COMMIT_VAR, "").strip()
    if explicit:
        return explicit
    try:
        head = subprocess.run(
            ["git", "-C", str(code_dir), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", str(code_dir), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return f"{head}-dirty" if changes else head


def library_versions(spark_version: str | None = None) -> dict[str, str]:
    """Versions of the libraries that shape a model's numbers (package metadata, no imports)."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    if spark_version is not None:
        versions["spark_runtime"] = spark_version  # the cluster's Spark may differ from the wheel
    return versions


def input_versions_from_manifests(
    compact: dict[str, Any], train: dict[str, Any], evaluate: dict[str, Any]
) -> dict[str, int]:
    """Every table a model depends on -> its Delta version (bronze, silver as trained, eval)."""
    versions: dict[str, Any] = {BRONZE_TABLE: compact.get("bronze_version")}
    versions.update(compact.get("output_versions") or {})
    versions.update(evaluate.get("input_versions") or {})
    versions.update(train.get("input_versions") or {})  # what training actually pinned wins
    return {name: int(v) for name, v in sorted(versions.items()) if v is not None}


def artifact_path(train: dict[str, Any]) -> str:
    """The folder holding a model's files (the train manifest's, else the factors' parent)."""
    if train.get("artifact_path"):
        return str(train["artifact_path"])
    final = (train.get("factors") or {}).get("final") or {}
    paths = [str(p) for p in (final.get("users"), final.get("items")) if p]
    if not paths:
        raise ValueError("train manifest has no factors.final.users/items paths")
    return os.path.commonpath(paths) if len(paths) > 1 else str(Path(paths[0]).parent)


def headline_metrics(evaluate: dict[str, Any]) -> dict[str, Any]:
    """The metrics the publication gate and the report compare (overall, @k)."""
    return {
        "k": evaluate.get("k"),
        "als": evaluate.get("als") or {},
        "popularity": evaluate.get("popularity") or {},
        "baselines": evaluate.get("baselines") or {},
        "best_baseline": evaluate.get("best_baseline"),
        "lift_ndcg": evaluate.get("lift_ndcg"),
        "lift_ndcg_best_baseline": evaluate.get("lift_ndcg_best_baseline"),
        "incumbent": evaluate.get("incumbent") or {},
    }


def params_with_search(train: dict[str, Any]) -> dict[str, Any]:
    """The model's params plus the whole search that chose them (summary and every trial)."""
    params = dict(train.get("params") or {})
    if "search" in train or "search_summary" in train:
        params["search"] = {
            **(train.get("search_summary") or {}),
            "trials": train.get("search") or [],
            "fit_failures": train.get("fit_failures") or [],
        }
    return params


# -- the batch step ------------------------------------------------------------------------------
def run_register(
    spark: SparkSession | None, lake: Lake, settings: Settings, run_date: dt.date
) -> dict[str, Any]:
    """Record the trained model with its provenance (MERGE: a rerun never demotes it) + report."""
    compact = read_manifest(settings, run_date, "compact")
    train = read_manifest(settings, run_date, "train")
    evaluate = read_manifest(settings, run_date, "evaluate")
    model_version = str(train["model_version"])
    if evaluate.get("model_version") != model_version:
        raise ValueError(
            f"evaluate manifest is for model {evaluate.get('model_version')!r} but train produced "
            f"{model_version!r} for {run_date}; rerun evaluate first"
        )
    existing = model_rows(lake, filters=[("model_version", "=", model_version)])
    previous = existing[0] if existing else None
    row = {
        "model_version": model_version,
        "run_date": run_date,
        "algorithm": str(train.get("algorithm", "als")),
        "params": params_with_search(train),
        "metrics": headline_metrics(evaluate),
        "input_versions": input_versions_from_manifests(compact, train, evaluate),
        "git_commit": git_commit(),
        "library_versions": library_versions(spark.version if spark is not None else None),
        "artifact_path": artifact_path(train),
        # a rerun keeps the status history: a published (or rejected) model stays so
        "status": previous["status"] if previous else REGISTERED,
        "status_reason": previous["status_reason"] if previous else None,
        "registered_at": previous["registered_at"] if previous else dt.datetime.now(dt.UTC),
        "published_at": previous["published_at"] if previous else None,
    }
    upsert_model(lake, row)
    report = write_evaluation_report(lake, settings, model_version, run_dir(settings, run_date))
    summary = {
        "model_version": model_version,
        "status": row["status"],
        "input_versions": row["input_versions"],
        "git_commit": row["git_commit"],
        "library_versions": row["library_versions"],
        "artifact_path": row["artifact_path"],
        "models_version": lake.version(MODELS.name),
        "report": str(report),
    }
    write_manifest(settings, run_date, "register", summary)
    return summary
