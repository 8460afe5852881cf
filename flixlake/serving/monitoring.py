"""Prometheus metrics of the service, in a registry of its own (one per app instance).

Request-path updates use pre-bound label children so a request costs a few dictionary-free
increments; gauges that describe state (view ages, loaded users) are computed at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    0.8,
    2.0,
)
FALLBACK_REASONS = ("unknown_user", "new_user", "no_batch_view", "short_list", "error")
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServingMetrics:
    """Every metric the service exports (``flixlake_serving_*``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "flixlake_serving_requests",
            "HTTP requests answered, by endpoint and status code.",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "flixlake_serving_request_latency_seconds",
            "Time spent answering a request inside the service, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.answers = Counter(
            "flixlake_serving_answers",
            "Recommendation answers by experiment variant and source "
            "(batch, batch_filtered, batch_filled, fallback, explore).",
            ["variant", "source"],
            registry=r,
        )
        self.fallbacks = Counter(
            "flixlake_serving_fallbacks",
            "Answers that used trending/popular movies, by reason.",
            ["reason"],
            registry=r,
        )
        self.model = Gauge(
            "flixlake_serving_model",
            "1 for the model version each experiment variant serves (none: no batch view).",
            ["variant", "model_version"],
            registry=r,
        )
        self.loaded_users = Gauge(
            "flixlake_serving_loaded_users",
            "Users in each batch view held in memory.",
            ["model_version"],
            registry=r,
        )
        self.view_loads = Counter(
            "flixlake_serving_view_loads",
            "Batch-view loads by outcome (loaded, empty, failed).",
            ["outcome"],
            registry=r,
        )
        self.view_load_seconds = Gauge(
            "flixlake_serving_view_load_seconds",
            "Duration of the last successful batch-view load.",
            registry=r,
        )
        self.swaps = Counter(
            "flixlake_serving_view_swaps",
            "Times a new set of batch views replaced the served one.",
            registry=r,
        )
        self.view_available = Gauge(
            "flixlake_serving_view_available",
            "1 when the view was read successfully at least once (0: serving without it).",
            ["view"],
            registry=r,
        )
        self.view_age = Gauge(
            "flixlake_serving_view_age_seconds",
            "Seconds since the view was last confirmed current in the lake (-1: never).",
            ["view"],
            registry=r,
        )
        self.speed_staleness = Gauge(
            "flixlake_serving_speed_view_staleness_seconds",
            "Seconds since the newest update the speed layer wrote into the view (-1: unknown).",
            ["view"],
            registry=r,
        )
        self.refresh_errors = Counter(
            "flixlake_serving_refresh_errors",
            "Failed reads of a view from the lake (the previous copy keeps being served).",
            ["view"],
            registry=r,
        )
        self.telemetry_dropped = Counter(
            "flixlake_serving_telemetry_dropped",
            "Telemetry records dropped (buffer_full: Kafka slow or down; shutdown: unsent at stop).",
            ["reason"],
            registry=r,
        )
        self.telemetry_records = Counter(
            "flixlake_serving_telemetry_records",
            "Telemetry messages (two per answer) by outcome: sent (delivered), failed (given up).",
            ["outcome"],
            registry=r,
        )
        self.telemetry_buffered = Gauge(
            "flixlake_serving_telemetry_buffered",
            "Answers whose telemetry librdkafka has not delivered yet.",
            registry=r,
        )
        self.ready = Gauge(
            "flixlake_serving_ready",
            "1 when /health/ready says ready (batch views loaded, speed views read lately).",
            registry=r,
        )
        self.catalog_movies = Gauge(
            "flixlake_serving_catalog_movies",
            "Movies in the service's catalog (bounded by serving.max_catalog_movies).",
            registry=r,
        )
        self.errors = Counter(
            "flixlake_serving_internal_errors",
            "Unexpected errors while answering (the answer fell back, never a 5xx).",
            registry=r,
        )

        # pre-bound children for the request path
        self.recommend_ok = self.requests.labels("recommend", "200")
        self.recommend_latency = self.latency.labels("recommend")
        self._fallback_children = {
            reason: self.fallbacks.labels(reason) for reason in FALLBACK_REASONS
        }
        self._answer_children: dict[tuple[str, str], Counter] = {}
        self.dropped_full = self.telemetry_dropped.labels("buffer_full")

    def fallback(self, reason: str) -> None:
        child = self._fallback_children.get(reason)
        if child is None:
            child = self._fallback_children[reason] = self.fallbacks.labels(reason)
        child.inc()

    def answer(self, variant: str, source: str) -> None:
        key = (variant, source)
        child = self._answer_children.get(key)
        if child is None:
            child = self._answer_children[key] = self.answers.labels(variant, source)
        child.inc()

    def watch(self, gauge: Gauge, label: str, fn: Callable[[], float]) -> None:
        """Compute ``gauge{label}`` at scrape time."""
        gauge.labels(label).set_function(fn)

    def render(self) -> bytes:
        return generate_latest(self.registry)
