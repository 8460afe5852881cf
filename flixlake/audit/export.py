"""The audit's results as Prometheus gauges, for alerts on drift and on the requirements.

:func:`audit_registry` builds the gauges of one run in a registry of their own: the job writes
them to ``$FLIXLAKE_HOME/metrics/audit.prom`` (node_exporter's textfile format, replaced
atomically), and the same registry can be pushed to a Pushgateway as it is
(``pushadd_to_gateway(url, job="flixlake_audit", registry=audit_registry(...))``).

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
``flixlake_audit_last_success_timestamp_seconds`` when the audit last finished
================================================  ==========================================
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from flixlake.audit.models import ModelAudit

EXPOSURE_METRICS = ("coverage", "gini", "long_tail_share", "avg_popularity")


def _set(gauge: Gauge, value: float | None, *labels: str) -> None:
    if value is not None and math.isfinite(value):
        (gauge.labels(*labels) if labels else gauge).set(value)


def audit_registry(
    run_date: dt.date,
    drift: Mapping[str, Mapping[str, Any]],
    models: Iterable[ModelAudit],
    finished_at: float,
) -> CollectorRegistry:
    """Gauges of one audit run (``drift``: :func:`flixlake.audit.drift.drift_summary`)."""
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
    for name, entry in sorted(drift.items()):
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
    for audit in models:
        version = audit.model_version
        for check in audit.checks:
            labels = (check.requirement, check.evidence, version)
            _set(met, float(check.passed), *labels)
            _set(observed, check.observed, *labels)
            _set(required, check.threshold, *labels)
        for scope, measured in audit.exposures.items():
            values = measured.as_dict()
            for metric in EXPOSURE_METRICS:
                _set(exposure, values[metric], version, scope, metric)
        for scope, entries in audit.calibration.items():
            for segment, _, kl, hellinger in entries:
                if segment == "all":
                    _set(calibration, kl, version, scope, "kl")
                    _set(calibration, hellinger, version, scope, "hellinger")

    midnight = dt.datetime.combine(run_date, dt.time(0), tzinfo=dt.UTC)
    gauge("flixlake_audit_run_date_seconds", "The audited day (midnight UTC).").set(
        midnight.timestamp()
    )
    gauge("flixlake_audit_last_success_timestamp_seconds", "When the audit last finished.").set(
        finished_at
    )
    return registry


def write_metrics(registry: CollectorRegistry, path: Path) -> Path:
    """Write the gauges in the textfile format (atomically: a scrape never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
    return path
