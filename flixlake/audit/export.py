"""The audit's results as Prometheus gauges, for alerts on drift and on the requirements.

:func:`audit_registry` builds the gauges of one audited day from its table rows, in a registry
of their own; :func:`registry_from_lake` does the same from the lake (delta-rs only, no Spark:
an exporter or the job plumbing can call it after the run). The job writes them to
``$FLIXLAKE_HOME/metrics/audit.prom`` (node_exporter's textfile format, replaced atomically),
and a registry can be pushed to a Pushgateway as it is
(``pushadd_to_gateway(url, job="flixlake_audit", registry=registry_from_lake(lake))``).

================================================  ==========================================
gauge                                             labels
================================================  ==========================================
``flixlake_audit_drift_distance``                 input: largest drift distance of the day
``flixlake_audit_drift_threshold``                input: ``max_distance`` (alert above)
``flixlake_audit_drift_volume_ratio``             input: events/hour vs the reference, the
                                                  window farthest from 1
``flixlake_audit_drifted``                        input: 1 when any window drifted
``flixlake_audit_drifted_windows``                input
``flixlake_audit_requirement_met``                requirement, evidence, model_version: 1/0
``flixlake_audit_requirement_observed``           same labels: long-tail share; worst
                                                  segment's upper bound / overall hit rate
``flixlake_audit_requirement_threshold``          same labels
``flixlake_audit_exposure``                       model_version, scope, metric (coverage, gini,
                                                  long_tail_share, avg_popularity)
``flixlake_audit_calibration``                    model_version, scope, metric (kl, hellinger)
``flixlake_audit_run_date_seconds``               the audited day (midnight UTC)
``flixlake_audit_last_success_timestamp_seconds`` when the audit of that day finished
================================================  ==========================================
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from flixlake.lake.store import Lake
from flixlake.lake.tables import AUDIT_DRIFT, AUDIT_FAIRNESS, AUDIT_REQUIREMENTS

EXPOSURE_METRICS = ("coverage", "gini", "long_tail_share", "avg_popularity")
CALIBRATION_METRICS = {"calibration_kl": "kl", "calibration_hellinger": "hellinger"}


def drift_summary(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per input: the largest drift distance over the day's judged windows, the volume ratio
    farthest from 1, and the windows that drifted."""
    summary: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = summary.setdefault(
            row["input"],
            {
                "distance": None,
                "max_distance": row["max_distance"],
                "volume_ratio": None,
                "windows": 0,
                "judged": 0,
                "drifted": 0,
                "largest_shift": "",
            },
        )
        entry["windows"] += 1
        entry["drifted"] += int(row["drifted"])
        if row["judged"]:
            entry["judged"] += 1
            if row["distance"] is not None and (
                entry["distance"] is None or row["distance"] > entry["distance"]
            ):
                entry["distance"] = row["distance"]
                entry["largest_shift"] = row["largest_shift"]
        ratio = row["volume_ratio"]
        if ratio is not None and (
            entry["volume_ratio"] is None or _off(ratio) > _off(entry["volume_ratio"])
        ):
            entry["volume_ratio"] = ratio
    return summary


def _off(ratio: float) -> float:
    return abs(math.log(ratio)) if ratio > 0 else math.inf


def _set(gauge: Gauge, value: float | None, *labels: str) -> None:
    if value is not None and math.isfinite(value):
        (gauge.labels(*labels) if labels else gauge).set(value)


def audit_registry(
    run_date: dt.date,
    drift_rows: Sequence[Mapping[str, Any]],
    fairness_rows: Sequence[Mapping[str, Any]],
    requirement_rows: Sequence[Mapping[str, Any]],
    finished_at: float,
) -> CollectorRegistry:
    """Gauges of one audited day from its ``audit_drift``, ``audit_fairness`` and
    ``audit_requirements`` rows."""
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, list(labels), registry=registry)

    distance = gauge(
        "flixlake_audit_drift_distance",
        "Largest drift distance (Jensen-Shannon, noise removed) of the audited day's windows.",
        ("input",),
    )
    threshold = gauge(
        "flixlake_audit_drift_threshold",
        "Drift distance above which an input counts as drifted (audit.drift.inputs).",
        ("input",),
    )
    volume = gauge(
        "flixlake_audit_drift_volume_ratio",
        "Events per hour in the window farthest from the reference, over the reference's.",
        ("input",),
    )
    drifted = gauge(
        "flixlake_audit_drifted", "1 when any window of the audited day drifted.", ("input",)
    )
    windows = gauge(
        "flixlake_audit_drifted_windows", "Windows of the audited day that drifted.", ("input",)
    )
    for name, entry in sorted(drift_summary(drift_rows).items()):
        _set(distance, entry["distance"], name)
        _set(threshold, entry["max_distance"], name)
        _set(volume, entry["volume_ratio"], name)
        _set(drifted, float(entry["drifted"] > 0), name)
        _set(windows, float(entry["drifted"]), name)

    check_labels = ("requirement", "evidence", "model_version")
    met = gauge(
        "flixlake_audit_requirement_met",
        "1 when the fairness requirement is met on that evidence, else 0.",
        check_labels,
    )
    observed = gauge(
        "flixlake_audit_requirement_observed",
        "The requirement's measure: long-tail share (system), worst segment's hit-rate upper "
        "bound over the overall hit rate (model).",
        check_labels,
    )
    required = gauge(
        "flixlake_audit_requirement_threshold", "The requirement's threshold.", check_labels
    )
    for row in requirement_rows:
        labels = (row["requirement"], row["evidence"], row["model_version"])
        _set(met, float(row["passed"]), *labels)
        _set(observed, row["observed"], *labels)
        _set(required, row["threshold"], *labels)

    exposure = gauge(
        "flixlake_audit_exposure",
        "Exposure of what a model shows (batch_view) or showed on the audited day (served).",
        ("model_version", "scope", "metric"),
    )
    calibration = gauge(
        "flixlake_audit_calibration",
        "Mean miscalibration of users' lists to their genre mix (kl in nats, hellinger 0..1).",
        ("model_version", "scope", "metric"),
    )
    for row in fairness_rows:
        if row["segment"] != "all":
            continue
        version, scope = row["model_version"], row["scope"]
        if row["metric"] in EXPOSURE_METRICS:
            _set(exposure, row["value"], version, scope, row["metric"])
        elif row["metric"] in CALIBRATION_METRICS:
            _set(calibration, row["value"], version, scope, CALIBRATION_METRICS[row["metric"]])

    midnight = dt.datetime.combine(run_date, dt.time(0), tzinfo=dt.UTC)
    gauge("flixlake_audit_run_date_seconds", "The audited day (midnight UTC).").set(
        midnight.timestamp()
    )
    gauge(
        "flixlake_audit_last_success_timestamp_seconds", "When the audit of that day finished."
    ).set(finished_at)
    return registry


def registry_from_lake(lake: Lake, run_date: dt.date | None = None) -> CollectorRegistry | None:
    """The gauges of ``run_date`` (default: the latest audited day) from the audit tables;
    None before any audit ran."""
    if not lake.exists(AUDIT_DRIFT.name):
        return None
    if run_date is None:
        days = lake.read(AUDIT_DRIFT.name, columns=["run_date"])["run_date"]
        if len(days) == 0:
            return None
        run_date = pc.max(days).as_py()
    day = [("run_date", "=", run_date)]

    def rows(name: str) -> list[dict[str, Any]]:
        return lake.read(name, filters=day).to_pylist() if lake.exists(name) else []

    drift = rows(AUDIT_DRIFT.name)
    finished = max((r["computed_at"] for r in drift), default=None)
    return audit_registry(
        run_date,
        drift,
        rows(AUDIT_FAIRNESS.name),
        rows(AUDIT_REQUIREMENTS.name),
        finished.timestamp() if finished is not None else math.nan,
    )


def write_metrics(registry: CollectorRegistry, path: Path) -> Path:
    """Write the gauges in the textfile format (atomically: a scrape never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
    return path
