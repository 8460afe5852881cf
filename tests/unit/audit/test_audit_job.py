"""The audit step over a small hand-made lake: every table, the gauges and the report, with
values worked out by hand, and a rerun that replaces instead of adding."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from pyspark.sql import SparkSession

from flixlake.audit.export import registry_from_lake
from flixlake.audit.job import run_audit
from flixlake.config import Settings, load_settings
from flixlake.contract.kafka import free_port
from flixlake.lake.registry import upsert_model
from flixlake.lake.store import Lake, MissingTableError
from flixlake.lake.tables import (
    BATCH_RECOMMENDATIONS,
    BRONZE_EVENTS,
    MODEL_EVALUATIONS,
    MOVIES,
    ONLINE_EVALUATIONS,
    SERVED_RECOMMENDATIONS,
    USERS,
    WATCH_SESSIONS,
)
from flixlake.monitoring.push import push, push_audit_gauges
from flixlake.ops.http import http_request
from flixlake.ops.monitoring_stack import start_pushgateway
from flixlake.ops.supervise import Supervisor

UTC = dt.UTC
DAY = dt.date(2026, 11, 22)
BEFORE = dt.datetime(2026, 11, 20, 20, tzinfo=UTC)
NOON = dt.datetime(2026, 11, 22, 12, tzinfo=UTC)
MODEL = "als-20261121-aaaa1111"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GENRES = ["Drama", "Drama", "Drama", "Comedy", "Comedy", "Comedy", "Comedy", "Horror", "Horror", "Horror"]  # fmt: skip
USER_IDS = range(1, 41)  # 1-20 women, 21-40 men


def _table(spec: Any, rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=spec.schema)


def _watch(user: int, movie: int) -> dict[str, Any]:
    return {
        "user_id": user,
        "movie_id": f"m{movie}",
        "movie_idx": movie,
        "minutes_watched": 30,
        "max_minute": 29,
        "first_time": BEFORE,
        "last_time": BEFORE,
        "event_date": BEFORE.date(),
    }


def _answer(i: int, user: int, model: str, items: list[str], source: str) -> dict[str, Any]:
    return {
        "source": "served_recommendations",
        "source_partition": 0,
        "source_offset": i,
        "request_id": f"r-{i}",
        "served_at": NOON,
        "user_id": user,
        "experiment": "default",
        "variant": "control",
        "model_version": model,
        "items": items,
        "status": 200,
        "latency_ms": 1.0,
        "server": "test",
        "ingest_batch": "b",
        "ingested_at": NOON,
        "served_date": DAY,
        "answer_source": source,
    }


def _bronze(i: int, when: dt.datetime) -> dict[str, Any]:
    return {
        "source": "test",
        "source_partition": 0,
        "source_offset": i,
        "raw": "line",
        "parse_status": "ok",
        "event_type": "watch",
        "event_time": when,
        "user_id": 1,
        "movie_id": "m0",
        "minute": i,
        "ingest_batch": "b",
        "ingested_at": when,
        "event_date": when.date(),
    }


@pytest.fixture
def small_lake(lake: Lake, settings: Settings) -> Settings:
    """40 users; everyone watched m0 and the women m1 too (the head: m0, m1 of 10 movies); the
    published model's view shows m2, m3, m4 to everyone; on the day the service served m0, m1
    (fallbacks) to everyone, and 2 of 20 women and 18 of 20 men watched one."""
    lake.append(
        MOVIES.name,
        _table(
            MOVIES,
            [{"movie_idx": i, "movie_id": f"m{i}", "genres": [g]} for i, g in enumerate(GENRES)],
        ),
    )
    lake.append(
        USERS.name,
        _table(
            USERS,
            [
                {"user_id": u, "age": 30, "gender": "F" if u <= 20 else "M", "occupation": "writer"}
                for u in USER_IDS
            ],
        ),
    )
    watches = [_watch(u, 0) for u in USER_IDS] + [_watch(u, 1) for u in range(1, 21)]
    lake.append(WATCH_SESSIONS.name, _table(WATCH_SESSIONS, watches))
    upsert_model(
        lake,
        {
            "model_version": MODEL,
            "run_date": dt.date(2026, 11, 21),
            "algorithm": "als",
            "params": {},
            "metrics": {},
            "input_versions": {
                "watch_sessions": lake.version(WATCH_SESSIONS.name),
                "movies": lake.version(MOVIES.name),
            },
            "git_commit": None,
            "library_versions": {},
            "artifact_path": "/x",
            "status": "published",
            "status_reason": "test",
            "registered_at": BEFORE,
            "published_at": BEFORE,
        },
    )
    lake.append(
        MODEL_EVALUATIONS.name,
        _table(
            MODEL_EVALUATIONS,
            [
                {
                    "model_version": MODEL,
                    "run_date": dt.date(2026, 11, 21),
                    "recommender": "als",
                    "segment": segment,
                    "metric": "hit_rate",
                    "value": 0.5,
                    "n_users": n,
                }
                for segment, n in (("all", 40), ("gender=F", 20), ("gender=M", 20))
            ],
        ),
    )
    lake.append(
        BATCH_RECOMMENDATIONS.name,
        _table(
            BATCH_RECOMMENDATIONS,
            [
                {"user_id": u, "rank": r, "movie_id": f"m{m}", "score": 1.0, "model_version": MODEL}
                for u in USER_IDS
                for r, m in ((1, 2), (2, 3), (3, 4))
            ],
        ),
    )
    answers = [_answer(u, u, MODEL, ["m0", "m1"], "fallback") for u in USER_IDS]
    answers.append(_answer(99, 1, "ghost-model", ["m9"], "batch"))
    lake.append(SERVED_RECOMMENDATIONS.name, _table(SERVED_RECOMMENDATIONS, answers))
    converted = {*range(1, 3), *range(21, 39)}
    lake.append(
        ONLINE_EVALUATIONS.name,
        _table(
            ONLINE_EVALUATIONS,
            [
                {
                    "served_hour": NOON,
                    "experiment": "default",
                    "model_version": MODEL,
                    "variant": "control",
                    "user_id": u,
                    "served": 1,
                    "converted": int(u in converted),
                    "window_seconds": 3600,
                    "computed_at": NOON,
                    "served_date": DAY,
                }
                for u in USER_IDS
            ],
        ),
    )
    lake.append(
        BRONZE_EVENTS.name,
        _table(BRONZE_EVENTS, [_bronze(i, BEFORE + dt.timedelta(hours=i * 3)) for i in range(20)]),
    )
    return load_settings(
        "test",
        home=settings.home,
        overrides={
            "audit": {
                "drift": {"reference_days": 2},
                "requirements": {"model": {"min_segment_users": 10}},
            }
        },
    )


def _fairness(lake: Lake) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {
        (r["scope"], r["segment"], r["metric"]): r
        for r in lake.read("audit_fairness").to_pylist()
        if r["model_version"] == MODEL
    }


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    """A real Pushgateway on a free port (Debian's prometheus-pushgateway; .ci/run installs it)."""
    port = free_port()
    with Supervisor(tmp_path / "logs") as supervisor:
        start_pushgateway(supervisor, tmp_path / "pushgateway", port)
        yield f"http://127.0.0.1:{port}"


def test_the_audit_writes_every_measure_check_gauge_and_plot(
    spark: SparkSession, lake: Lake, small_lake: Settings, pushgateway: str
) -> None:
    summary = run_audit(spark, lake, small_lake, DAY)

    assert summary["models"] == [MODEL]
    assert "ghost-model: served but not in the models table" in summary["notes"]

    got = _fairness(lake)
    view = {m: got[("batch_view", "all", m)]["value"] for m in ("long_tail_share", "coverage", "gini", "avg_popularity")}  # fmt: skip
    # 40 users x m2, m3, m4 (tail, never watched): 3 of 10 movies, 40 slots each
    assert view == {
        "long_tail_share": 1.0,
        "coverage": pytest.approx(0.3),
        "gini": pytest.approx(0.7),  # (5 + 7 + 9) x 40 / (10 x 120)
        "avg_popularity": 0.0,
    }
    served = {m: got[("served", "all", m)]["value"] for m in ("long_tail_share", "coverage", "gini", "avg_popularity")}  # fmt: skip
    # m0 (watched by all 40) and m1 (by 20) to everyone: head only
    assert served == {
        "long_tail_share": 0.0,
        "coverage": pytest.approx(0.2),
        "gini": pytest.approx(0.8),  # (7 + 9) x 40 / (10 x 80)
        "avg_popularity": pytest.approx(0.75),  # (40 x 1 + 40 x 0.5) / 80
    }
    # calibration: histories are all Drama; the view shows Drama, Comedy, Comedy:
    # KL = ln(1 / (0.99 / 3 + 0.01)) = ln(1 / 0.34) = 1.0788097;
    # Hellinger = sqrt(1 - sqrt(1/3)) = sqrt(0.4226497) = 0.6501152
    kl = got[("batch_view", "all", "calibration_kl")]
    assert kl["value"] == pytest.approx(1.0788097) and kl["n_users"] == 40
    assert got[("batch_view", "all", "calibration_hellinger")]["value"] == pytest.approx(0.6501152)
    assert got[("served", "all", "calibration_kl")]["value"] == pytest.approx(0.0)
    # online: 2 of 20 women (Wilson 95% [0.0279, 0.3010]) and 18 of 20 men hit; overall 20/40
    women = got[("online", "gender=F", "hit_rate")]
    assert (women["value"], women["n_users"]) == (pytest.approx(0.1), 20)
    assert (women["ci_low"], women["ci_high"]) == (
        pytest.approx(0.0279, abs=1e-4),
        pytest.approx(0.3010, abs=1e-4),
    )
    assert got[("online", "all", "hit_rate")]["value"] == pytest.approx(0.5)
    assert got[("online", "gender=M", "watch_through")]["value"] == pytest.approx(0.9)
    assert got[("offline", "gender=F", "hit_rate")]["value"] == pytest.approx(0.5)

    checks = {
        (r["requirement"], r["evidence"]): r for r in lake.read("audit_requirements").to_pylist()
    }
    assert {k: v["passed"] for k, v in checks.items()} == {
        ("system", "batch_view"): True,
        ("system", "served"): False,  # fallbacks of head movies only
        ("model", "offline"): True,
        ("model", "online"): False,  # women: upper bound 0.301 < 0.8 x 0.5
    }
    assert checks[("model", "online")]["observed"] == pytest.approx(0.3010 / 0.5, abs=1e-3)
    assert summary["unmet_requirements"] == 2

    drift = {r["input"] for r in lake.read("audit_drift").to_pylist()}
    assert {"event_mix", "answer_sources", "movie_activity", "ratings"} <= drift

    metrics = Path(summary["metrics"]).read_text()
    labels = f'evidence="served",model_version="{MODEL}",requirement="system"'
    assert f"flixlake_audit_requirement_met{{{labels}}} 0.0" in metrics
    labels = f'metric="long_tail_share",model_version="{MODEL}",scope="batch_view"'
    assert f"flixlake_audit_exposure{{{labels}}} 1.0" in metrics
    assert 'flixlake_audit_drift_threshold{input="ratings"} 0.15' in metrics  # base.yaml
    from_lake = registry_from_lake(lake)  # what an exporter or a push builds after the run
    assert from_lake is not None
    rebuilt = generate_latest(from_lake).decode().splitlines()
    assert sorted(line for line in rebuilt if "last_success" not in line) == sorted(
        line for line in metrics.splitlines() if "last_success" not in line
    )

    # the same gauges reach the Pushgateway as one group that replaces the last day's
    url = pushgateway
    config = small_lake.monitoring.model_copy(update={"pushgateway_url": url})
    stale = CollectorRegistry()
    Gauge("flixlake_audit_drifted", "", ["input"], registry=stale).labels("retired").set(1)
    assert push(config, "flixlake_audit", {}, stale)
    assert push_audit_gauges(config, lake)
    _, body, _ = http_request("GET", f"{url}/metrics")
    pushed = [line for line in body.decode().splitlines() if 'job="flixlake_audit"' in line]
    labels = f'evidence="served",instance="",job="flixlake_audit",model_version="{MODEL}",requirement="system"'
    assert f"flixlake_audit_requirement_met{{{labels}}} 0" in pushed
    assert not any('input="retired"' in line for line in pushed)

    report = Path(summary["report"])
    html = report.read_text()
    assert f"Model {MODEL}" in html and "NOT" not in html.split("<h2>Model")[0]
    for png in (f"{MODEL}_segments.png", f"{MODEL}_exposure.png"):
        assert f"src='{png}'" in html
        assert (report.parent / png).read_bytes().startswith(PNG_MAGIC)

    rows = {name: lake.read(name).num_rows for name in summary["rows"]}
    run_audit(spark, lake, small_lake, DAY)  # a rerun replaces the day's rows
    assert {name: lake.read(name).num_rows for name in summary["rows"]} == rows


def test_nothing_to_audit_without_bronze(
    spark: SparkSession, lake: Lake, settings: Settings
) -> None:
    with pytest.raises(MissingTableError, match="bronze_events"):
        run_audit(spark, lake, settings, DAY)
