"""The daily audit: drift of every input and fairness per model version, for one run date.

``run_audit(spark, lake, settings, run_date)`` (``jobs/audit.py``, the daily ``flixlake_audit``
DAG) measures the run date's windows against the reference days before it
(:mod:`flixlake.audit.drift`) and every model version served that day or current
(:mod:`flixlake.audit.models`), then replaces the run date's rows of ``audit_drift``,
``audit_fairness`` and ``audit_requirements`` (reruns replace, never duplicate), writes the
gauges to ``$FLIXLAKE_HOME/metrics/audit.prom`` (:mod:`flixlake.audit.export`) and the report to
``$FLIXLAKE_HOME/artifacts/audit/<run-date>/audit.html``.

A drifted input or an unmet requirement does not fail the job: it is a finding, for the alerts
and the report; the job fails only when it cannot measure (no ``bronze_events``).
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyspark.sql import SparkSession

from flixlake.audit.drift import DriftWindows, drift_rows, input_counts
from flixlake.audit.export import audit_registry, drift_summary, write_metrics
from flixlake.audit.models import (
    audit_day,
    audit_model,
    audited_models,
    fairness_rows,
    requirement_rows,
    served_versions,
)
from flixlake.audit.report import write_audit_report
from flixlake.config import Settings
from flixlake.lake.store import Lake, MissingTableError
from flixlake.lake.tables import AUDIT_DRIFT, AUDIT_FAIRNESS, AUDIT_REQUIREMENTS, BRONZE_EVENTS

METRICS_FILE = Path("metrics") / "audit.prom"


def audit_dir(settings: Settings, run_date: dt.date) -> Path:
    """Where the run date's report goes."""
    return settings.artifacts_root / "audit" / run_date.isoformat()


def metrics_path(settings: Settings) -> Path:
    """The gauges' textfile (one file, replaced by every run)."""
    return settings.home / METRICS_FILE


def _replace(
    lake: Lake, name: str, rows: list[dict[str, Any]], schema: pa.Schema, day: dt.date
) -> None:
    lake.replace_where(
        name, pa.Table.from_pylist(rows, schema=schema), f"run_date = '{day.isoformat()}'"
    )


def run_audit(
    spark: SparkSession, lake: Lake, settings: Settings, run_date: dt.date
) -> dict[str, Any]:
    """Audit ``run_date``: drift, fairness and exposure per model; tables, metrics, report."""
    started = time.perf_counter()
    if not lake.exists(BRONZE_EVENTS.name):
        raise MissingTableError(
            f"nothing to audit: table {BRONZE_EVENTS.name!r} does not exist under {lake.root}"
        )
    cfg = settings.audit
    computed_at = dt.datetime.now(dt.UTC)  # bookkeeping only; no result depends on it
    windows = DriftWindows(run_date, cfg.drift.window_seconds, cfg.drift.reference_days)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    counts, notes = input_counts(spark, lake, windows)
    drift = drift_rows(counts, windows, cfg.drift, computed_at)
    timings["drift_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    day = audit_day(spark, lake, run_date)
    models, unknown = audited_models(lake, served_versions(day.answers))
    notes += unknown
    audits = [audit_model(spark, lake, settings, m, day) for m in models]
    timings["models_s"] = time.perf_counter() - t0
    fairness = [row for a in audits for row in fairness_rows(a, run_date, computed_at)]
    checks = [row for a in audits for row in requirement_rows(a, run_date, computed_at)]

    t0 = time.perf_counter()
    _replace(lake, AUDIT_DRIFT.name, drift, AUDIT_DRIFT.schema, run_date)
    _replace(lake, AUDIT_FAIRNESS.name, fairness, AUDIT_FAIRNESS.schema, run_date)
    _replace(lake, AUDIT_REQUIREMENTS.name, checks, AUDIT_REQUIREMENTS.schema, run_date)

    per_input = drift_summary(drift)
    metrics = write_metrics(
        audit_registry(run_date, drift, fairness, checks, time.time()), metrics_path(settings)
    )
    report = write_audit_report(
        settings, run_date, drift, audits, notes, audit_dir(settings, run_date)
    )
    timings["write_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - started
    return {
        "run_date": run_date.isoformat(),
        "window": cfg.drift.window,
        "reference": [windows.reference_start.isoformat(), windows.day_start.isoformat()],
        "drift": per_input,
        "drifted_inputs": sorted(name for name, e in per_input.items() if e["drifted"]),
        "models": [a.model_version for a in audits],
        "requirements": {a.model_version: [c.describe() for c in a.checks] for a in audits},
        "unmet_requirements": sum(not row["passed"] for row in checks),
        "rows": {
            "audit_drift": len(drift),
            "audit_fairness": len(fairness),
            "audit_requirements": len(checks),
        },
        "notes": notes + [n for a in audits for n in a.notes],
        "metrics": str(metrics),
        "report": str(report),
        "timings": {key: round(value, 1) for key, value in timings.items()},
    }
