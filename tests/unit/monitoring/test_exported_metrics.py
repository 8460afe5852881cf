"""Availability from log lines, lake figures and pushed job metrics, on hand-made inputs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
from prometheus_client import CollectorRegistry, Counter, generate_latest

from flixlake.contract.logformat import format_rate, format_reco
from flixlake.lake.store import Lake
from flixlake.lake.tables import ONLINE_EVALUATIONS
from flixlake.monitoring.availability import AvailabilityMeter
from flixlake.monitoring.lake_metrics import LakeCollector, read_figures
from flixlake.monitoring.push import job_registry, summary_values
from flixlake.testing import record_published_model

T = dt.datetime(2026, 11, 22, 8, 0, 0)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    value = registry.get_sample_value(name, labels)
    return value


def test_availability_counts_ok_slow_and_failed_calls_and_whole_minutes() -> None:
    registry = CollectorRegistry()
    meter = AvailabilityMeter(registry, deadline_ms=800)
    lines = [
        format_reco(T, 1, "s:8082", 200, ["a+1"], 120),  # ok
        format_reco(T + dt.timedelta(seconds=5), 2, "s:8082", 200, ["a+1"], 800),  # ok: at 800
        format_reco(T + dt.timedelta(seconds=9), 3, "s:8082", 200, ["a+1"], 801),  # slow
        format_reco(
            T + dt.timedelta(seconds=30),
            4,
            "s:8082",
            0,
            ["java.net.ConnectException: Connection refused"],
            2,
        ),
        format_rate(T, 5, "a+1", 4),  # not a request
        "2026-11-22T08:00:40,6,recommendation request s:8082, status 200, result: ?!, 3 ms",  # bad
        format_reco(T + dt.timedelta(seconds=61), 7, "s:8082", 200, ["a+1"], 50),  # next minute
    ]
    outcomes = [meter.observe_line(line.encode()) for line in lines]
    assert outcomes == ["ok", "ok", "slow", "failed", None, None, "ok"]
    assert sample(registry, "flixlake_availability_requests_total", outcome="ok") == 3
    assert sample(registry, "flixlake_availability_requests_total", outcome="slow") == 1
    assert sample(registry, "flixlake_availability_requests_total", outcome="failed") == 1
    assert sample(registry, "flixlake_availability_lines_total", kind="bad") == 1
    # 08:00 is complete once a line of 08:01 was read: 2 ok of 4
    assert sample(registry, "flixlake_availability_minute_ratio") == 0.5
    assert sample(registry, "flixlake_availability_minute_requests") == 4


def test_lake_figures_give_staleness_and_watch_through_per_variant(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    published = dt.datetime(2026, 11, 20, 3, tzinfo=dt.UTC)
    record_published_model(lake, "m1", published.date(), published)
    hour = dt.datetime(2026, 11, 22, 10, tzinfo=dt.UTC)
    rows = [  # one row per user and hour (users are what experiments randomise)
        (hour, "control", "m1", 1, 60, 10),
        (hour, "control", "m1", 2, 40, 20),
        (hour - dt.timedelta(hours=1), "control", "m1", 1, 100, 50),
        (hour - dt.timedelta(hours=30), "control", "m1", 1, 100, 90),  # outside the 24 h
        (hour, "treatment", "m2", 3, 10, 5),
    ]
    lake.append(
        "online_evaluations",
        pa.Table.from_pylist(
            [
                {
                    "served_hour": h,
                    "experiment": "default",
                    "model_version": m,
                    "variant": v,
                    "user_id": u,
                    "served": n,
                    "converted": c,
                    "window_seconds": 3600,
                    "computed_at": hour,
                    "served_date": h.date(),
                }
                for h, v, m, u, n, c in rows
            ],
            schema=ONLINE_EVALUATIONS.schema,
        ),
    )
    figures = read_figures(lake, now=1.0)
    assert figures.published_at == published.timestamp() and figures.model_version == "m1"
    assert figures.hour[("default", "control", "m1")] == (100, 30)
    assert figures.day[("default", "control", "m1")] == (200, 80)
    registry = CollectorRegistry()
    collector = LakeCollector(lake, 30, Counter("e", "e", ["source"], registry=registry))
    collector.figures = figures
    registry.register(collector)
    labels = {"experiment": "default", "variant": "control", "model_version": "m1"}
    assert sample(registry, "flixlake_online_watch_through_ratio", **labels) == 0.3
    assert sample(registry, "flixlake_online_watch_through_24h_ratio", **labels) == 0.4
    assert (
        sample(registry, "flixlake_model_last_published_timestamp_seconds") == published.timestamp()
    )
    assert b'flixlake_models{status="published"} 1.0' in generate_latest(registry)


def test_a_failed_job_pushes_its_outcome_but_not_a_new_last_success() -> None:
    summary = {
        "rows": 12,
        "published": True,
        "als": {"ndcg": 0.2},
        "model_version": "m1",
        "x": "text",
    }
    assert summary_values(summary) == {"rows": 12.0, "published": 1.0, "als.ndcg": 0.2}
    ok = job_registry("evaluate_model", True, 3.5, 1000.0, 0, summary)
    failed = job_registry("train_model", False, 2.0, 1100.0, 3)
    assert ok.get_sample_value("flixlake_job_last_success_timestamp_seconds") == 1000.0
    assert (
        ok.get_sample_value(
            "flixlake_job_model_metric",
            {"model_version": "m1", "recommender": "als", "metric": "ndcg"},
        )
        == 0.2
    )
    assert failed.get_sample_value("flixlake_job_success") == 0.0
    assert failed.get_sample_value("flixlake_job_exit_code") == 3.0
    assert failed.get_sample_value("flixlake_job_last_success_timestamp_seconds") is None
