"""The speed layer's metrics: what a batch report adds, and the offset lag from Spark's progress."""

from __future__ import annotations

import json
import urllib.request

import pyarrow as pa
from prometheus_client import generate_latest

from flixlake.contract.kafka import free_port
from flixlake.streaming.harness import BatchReport, count_reasons
from flixlake.streaming.metrics import StreamMetrics, offset_lag, serve_metrics


def report(events: int, reasons: dict[str, int], written: bool = True) -> BatchReport:
    return BatchReport(
        batch_id=0,
        events=events,
        rejected=sum(reasons.values()),
        written=written,
        seconds=0.8,
        lag_seconds=3.5,
        committed_at=1_700_000_000.0,
        kafka_timestamps_ms=pa.array([], pa.int64()),
        rejected_by_reason=reasons,
    )


def sample(metrics: StreamMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_reasons_are_counted_per_rejected_line() -> None:
    reasons = pa.chunked_array([["bad_rating", None, "duplicate"], [None, "bad_rating"]])
    assert count_reasons(reasons) == {"bad_rating": 2, "duplicate": 1}
    assert count_reasons(pa.array([None, None], pa.string())) == {}


def test_batches_add_up_per_query_outcome_and_reason() -> None:
    metrics = StreamMetrics()
    metrics.observe("speed_layer", report(100, {"bad_rating": 3, "duplicate": 1}))
    metrics.observe("speed_layer", report(50, {"bad_rating": 2}, written=False))
    metrics.observe("speed_layer", report(0, {}))  # an empty trigger: counted as a batch only
    metrics.observe("speed_layer_served", report(10, {}))

    q = {"query": "speed_layer"}
    assert sample(metrics, "flixlake_stream_events_total", outcome="ok", **q) == 144
    assert sample(metrics, "flixlake_stream_events_total", outcome="rejected", **q) == 6
    assert sample(metrics, "flixlake_stream_quarantined_total", reason="bad_rating", **q) == 5
    assert sample(metrics, "flixlake_stream_quarantined_total", reason="duplicate", **q) == 1
    assert sample(metrics, "flixlake_stream_batches_total", written="true", **q) == 2
    assert sample(metrics, "flixlake_stream_batches_total", written="false", **q) == 1
    assert sample(metrics, "flixlake_stream_batch_duration_seconds_count", **q) == 3
    assert sample(metrics, "flixlake_stream_lag_seconds", **q) == 3.5
    assert sample(metrics, "flixlake_stream_last_batch_timestamp_seconds", **q) == 1.7e9
    served = {"query": "speed_layer_served", "outcome": "ok"}
    assert sample(metrics, "flixlake_stream_events_total", **served) == 10


def test_offset_lag_sums_what_each_partition_has_not_read() -> None:
    progress = {
        "sources": [
            {
                # Spark's progress gives offsets as JSON text
                "endOffset": json.dumps({"movielog": {"0": 100, "1": 40, "2": 7}}),
                "latestOffset": json.dumps({"movielog": {"0": 130, "1": 40, "2": 9}}),
            }
        ]
    }
    assert offset_lag(progress) == {"movielog": 32}
    assert offset_lag(None) == {}
    # a partition missing from the end offsets (just added) is not counted until a batch reads it
    fresh = {"sources": [{"endOffset": {"t": {"0": 5}}, "latestOffset": {"t": {"0": 5, "1": 3}}}]}
    assert offset_lag(fresh) == {"t": 0}
    metrics = StreamMetrics()
    metrics.observe_progress("speed_layer", progress)
    assert (
        sample(metrics, "flixlake_stream_offset_lag", query="speed_layer", topic="movielog") == 32
    )


def test_the_metrics_are_served_over_http_and_a_taken_port_is_not_fatal() -> None:
    metrics = StreamMetrics()
    metrics.observe("speed_layer", report(7, {"bad_rating": 1}))
    port = free_port()
    assert serve_metrics(metrics, "127.0.0.1", port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    assert body == generate_latest(metrics.registry).decode()
    assert 'flixlake_stream_events_total{outcome="ok",query="speed_layer"} 6.0' in body
    assert not serve_metrics(StreamMetrics(), "127.0.0.1", port)  # taken: logged, not raised


def test_attack_alert_counters_catch_up_with_the_running_totals() -> None:
    metrics = StreamMetrics()
    metrics.observe_alerts("speed_layer", {"rating_burst": 2})
    metrics.observe_alerts("speed_layer", {"rating_burst": 2, "account_rate": 1})  # no new burst
    metrics.observe_alerts("speed_layer", {"rating_burst": 5, "account_rate": 1})

    name = "flixlake_stream_attack_alerts_total"
    assert sample(metrics, name, query="speed_layer", rule="rating_burst") == 5
    assert sample(metrics, name, query="speed_layer", rule="account_rate") == 1
    assert sample(metrics, name, query="speed_layer", rule="request_rate") is None
