"""The speed layer's own metrics, served for Prometheus by the driver (``flixlake_stream_*``).

A streaming job runs for weeks, so it is scraped like the service: :func:`serve_metrics` starts
prometheus-client's HTTP server on ``streaming.metrics_host:metrics_port`` (9109 by default;
``null`` turns it off) in the driver. Every micro-batch of every query updates:

==============================================  ===============================================
metric                                          labels, meaning
==============================================  ===============================================
``flixlake_stream_events_total``                query, outcome (``ok`` / ``rejected``): lines
``flixlake_stream_quarantined_total``           query, reason: rejected lines by reason
``flixlake_stream_batches_total``               query, written (``true``; ``false`` a replay
                                                whose commits existed)
``flixlake_stream_batch_duration_seconds``      query: processing time of a batch (histogram)
``flixlake_stream_lag_seconds``                 query: now - oldest Kafka timestamp of the last
                                                batch, at its commit
``flixlake_stream_offset_lag``                  query, topic: records on the broker not read
                                                yet (latest - end offset, over partitions)
``flixlake_stream_last_batch_timestamp_seconds``  query: when the last batch with records
                                                committed
``flixlake_stream_attack_alerts_total``         query, rule: attack alerts the events query
                                                appended to ``attack_alerts``
==============================================  ===============================================

The rules in ``monitoring/rules/flixlake.yml`` (stream lag, stalled stream, quarantine rate) and
the dashboard's stream panels read these names.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from flixlake.streaming.harness import BatchReport

log = logging.getLogger(__name__)
DURATION_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)


class StreamMetrics:
    """The ``flixlake_stream_*`` metrics of one driver, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "flixlake_stream_events",
            "Log lines read, by outcome.",
            ["query", "outcome"],
            registry=r,
        )
        self.quarantined = Counter(
            "flixlake_stream_quarantined",
            "Lines quarantined, by reason.",
            ["query", "reason"],
            registry=r,
        )
        self.batches = Counter(
            "flixlake_stream_batches",
            "Micro-batches processed (written=false: a replay whose commits already existed).",
            ["query", "written"],
            registry=r,
        )
        self.duration = Histogram(
            "flixlake_stream_batch_duration_seconds",
            "Processing time of a micro-batch.",
            ["query"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "flixlake_stream_lag_seconds",
            "Seconds from the oldest Kafka timestamp of the last batch to its commit.",
            ["query"],
            registry=r,
        )
        self.offset_lag = Gauge(
            "flixlake_stream_offset_lag",
            "Records on the broker the query has not read yet (latest minus end offset).",
            ["query", "topic"],
            registry=r,
        )
        self.attack_alerts = Counter(
            "flixlake_stream_attack_alerts",
            "Attack alerts appended to attack_alerts, by rule (flixlake.audit.stream).",
            ["query", "rule"],
            registry=r,
        )
        self._alerts_seen: dict[tuple[str, str], int] = {}
        self.last_batch = Gauge(
            "flixlake_stream_last_batch_timestamp_seconds",
            "When the query last committed a batch with records.",
            ["query"],
            registry=r,
        )

    def observe(self, query: str, report: BatchReport) -> None:
        """Count one micro-batch's report."""
        self.batches.labels(query, str(report.written).lower()).inc()
        self.duration.labels(query).observe(report.seconds)
        if not report.events:
            return
        self.events.labels(query, "ok").inc(report.events - report.rejected)
        self.events.labels(query, "rejected").inc(report.rejected)
        for reason, count in report.rejected_by_reason.items():
            self.quarantined.labels(query, reason).inc(count)
        if report.lag_seconds is not None:
            self.lag.labels(query).set(report.lag_seconds)
        self.last_batch.labels(query).set(report.committed_at)

    def observe_alerts(self, query: str, written: Mapping[str, int]) -> None:
        """Catch the alert counters up with a query's running totals of alerts written by rule."""
        for rule, total in dict(written).items():
            seen = self._alerts_seen.get((query, rule), 0)
            if total > seen:
                self.attack_alerts.labels(query, rule).inc(total - seen)
                self._alerts_seen[(query, rule)] = total

    def observe_progress(self, query: str, progress: Any) -> None:
        """The offset lag per topic from a query's ``lastProgress`` (None before its first)."""
        for topic, behind in offset_lag(progress).items():
            self.offset_lag.labels(query, topic).set(behind)


def _offsets(value: Any) -> Mapping[str, Mapping[str, int]]:
    """A source's offsets as ``{topic: {partition: offset}}`` (progress gives JSON text or dicts)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, Mapping) else {}


def offset_lag(progress: Any) -> dict[str, int]:
    """Records not read yet per topic: the sum over partitions of the source's latest offset
    minus the offset the last batch ended at (Spark's Kafka source reports both)."""
    if not progress:
        return {}
    behind: dict[str, int] = {}
    for source in progress["sources"] or ():
        latest, end = _offsets(source["latestOffset"]), _offsets(source["endOffset"])
        for topic, partitions in latest.items():
            done = end.get(topic, {})
            behind[topic] = sum(
                max(0, int(offset) - int(done.get(partition, offset)))
                for partition, offset in partitions.items()
            )
    return behind


def serve_metrics(metrics: StreamMetrics, host: str, port: int) -> bool:
    """Serve the registry on ``host:port``; False (logged) when the port cannot be bound: the
    stream never stops for its metrics."""
    try:
        start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        log.warning("speed-layer metrics not served on %s:%s: %s", host, port, exc)
        return False
    return True
