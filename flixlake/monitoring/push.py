"""Batch jobs and DAG runs push their metrics to the Pushgateway when they end.

A spark-submit job lives for minutes and is gone before Prometheus would scrape it, so the job
plumbing (:func:`flixlake.ops.jobs.run_job`) and the DAGs' run callbacks push one group each
(``job=flixlake_job, task=<step>`` and ``job=flixlake_dag, dag_id=<id>``). A push never fails or
slows a job beyond ``monitoring.push_timeout_seconds``: an unreachable gateway is logged.

Pushes use POST (``pushadd``): a failed run replaces the duration and outcome of its group but
keeps its ``..._last_success_timestamp_seconds``, which is what the staleness alerts need.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

from flixlake.config import MonitoringConfig

log = logging.getLogger(__name__)
MAX_SUMMARY_VALUES = 60  # numeric summary values pushed per job
RECOMMENDERS = ("als", "popularity")


def summary_values(summary: Mapping[str, Any]) -> dict[str, float]:
    """Numeric leaves of a job's summary, one level deep (``rows``, ``als.ndcg``, ...)."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        if isinstance(value, bool | int | float):
            out[key] = float(value)
        elif isinstance(value, Mapping):
            for inner, number in value.items():
                if isinstance(number, int | float) and not isinstance(number, bool):
                    out[f"{key}.{inner}"] = float(number)
    return dict(sorted(out.items())[:MAX_SUMMARY_VALUES])


def job_registry(
    task: str,
    ok: bool,
    seconds: float,
    finished_at: float,
    exit_code: int,
    summary: Mapping[str, Any] | None = None,
) -> CollectorRegistry:
    """The metrics one finished job run pushes (group ``job=flixlake_job, task=<task>``)."""
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, value: float, **labels: str) -> None:
        g = Gauge(name, doc, list(labels), registry=registry)
        (g.labels(**labels) if labels else g).set(value)

    gauge("flixlake_job_success", "1 when the job's last run succeeded, else 0.", float(ok))
    gauge("flixlake_job_exit_code", "Exit code of the job's last run.", float(exit_code))
    gauge("flixlake_job_duration_seconds", "Wall time of the job's last run.", seconds)
    gauge("flixlake_job_last_run_timestamp_seconds", "When the job last ended.", finished_at)
    if ok:
        gauge(
            "flixlake_job_last_success_timestamp_seconds",
            "When the job last ended successfully.",
            finished_at,
        )
    if summary:
        values = Gauge(
            "flixlake_job_summary",
            "Numeric results of the job's last successful run (rows written, counts, ...).",
            ["key"],
            registry=registry,
        )
        for key, value in summary_values(summary).items():
            values.labels(key).set(value)
        model = Gauge(
            "flixlake_job_model_metric",
            "Offline metrics the evaluation step computed, per recommender (als, popularity).",
            ["model_version", "recommender", "metric"],
            registry=registry,
        )
        version = str(summary.get("model_version", ""))
        for recommender in RECOMMENDERS:
            metrics = summary.get(recommender)
            if isinstance(metrics, Mapping):
                for metric, value in metrics.items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        model.labels(version, recommender, metric).set(float(value))
    return registry


def dag_registry(
    dag_id: str, ok: bool, seconds: float | None, finished_at: float
) -> CollectorRegistry:
    """The metrics one finished DAG run pushes (group ``job=flixlake_dag, dag_id=<id>``)."""
    registry = CollectorRegistry()
    Gauge(
        "flixlake_dag_run_success",
        "1 when the DAG's last run succeeded, else 0.",
        registry=registry,
    ).set(float(ok))
    Gauge(
        "flixlake_dag_run_last_timestamp_seconds",
        "When the DAG's last run ended.",
        registry=registry,
    ).set(finished_at)
    if seconds is not None:
        Gauge(
            "flixlake_dag_run_duration_seconds",
            "Wall time of the DAG's last run.",
            registry=registry,
        ).set(seconds)
    if ok:
        Gauge(
            "flixlake_dag_run_last_success_timestamp_seconds",
            "When the DAG last ended successfully.",
            registry=registry,
        ).set(finished_at)
    return registry


def push(
    config: MonitoringConfig,
    job: str,
    grouping: dict[str, str],
    registry: CollectorRegistry,
) -> bool:
    """POST ``registry`` to the Pushgateway (when configured); False if not pushed."""
    if not config.pushgateway_url:
        return False
    try:
        pushadd_to_gateway(
            config.pushgateway_url,
            job=job,
            grouping_key=grouping,
            registry=registry,
            timeout=config.push_timeout_seconds,
        )
    except OSError as exc:  # unreachable or refused: metrics are lost, the job is not
        log.warning("metrics not pushed to %s: %s", config.pushgateway_url, exc)
        return False
    return True
