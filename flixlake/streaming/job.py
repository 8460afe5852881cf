"""The speed-layer job: the events query and the served-records query, run side by side."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyspark.errors import StreamingQueryException

from flixlake.config import Settings
from flixlake.lake.store import Lake
from flixlake.streaming.events import SpeedLayer
from flixlake.streaming.harness import (
    BatchReport,
    SpeedLayerError,
    SpeedLayerRun,
    data_loss_message,
    start_query,
    summarize,
)
from flixlake.streaming.metrics import StreamMetrics, serve_metrics
from flixlake.streaming.served import served_query_name, start_served_landing

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def start_speed_layer(
    spark: SparkSession,
    settings: Settings,
    lake: Lake,
    bootstrap_servers: str | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
    quiet: bool = False,
) -> SpeedLayerRun:
    """Start the events query (log topic -> bronze -> speed views); see :func:`run_speed_layer`."""
    served_models = tuple(v.model for v in settings.serving.experiment.variants)
    # Each micro-batch caches its parsed rows for its jobs; building that cache without choosing
    # an encoding per column and batch saved a tenth of a batch's executor CPU (JFR, README
    # "Performance"). Only the stream's session: batch jobs cache far more and keep compression.
    spark.conf.set("spark.sql.inMemoryColumnarStorage.compressed", "false")
    layer = SpeedLayer(
        lake,
        settings.streaming,
        settings.kafka.topic,
        model_refs=served_models,
        attack_rules=settings.attacks.stream if settings.attacks.stream.enabled else None,
    )
    return start_query(
        spark, settings, layer, settings.kafka.topic, bootstrap_servers, on_batch, quiet
    )


def run_speed_layer(
    spark: SparkSession,
    settings: Settings,
    lake: Lake,
    until: threading.Event | None = None,
    timeout: float | None = None,
    bootstrap_servers: str | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
) -> dict[str, Any]:
    """Run the speed layer until ``until`` is set, ``timeout`` seconds pass, or Ctrl-C.

    Two queries run side by side: the events query, and (with ``streaming.land_served``) the one
    landing the service's served records (:mod:`flixlake.streaming.served`). Raises the first query error;
    returns a summary of the batches each ran. Both queries' batches feed the
    ``flixlake_stream_*`` metrics the driver serves on ``streaming.metrics_port``
    (:mod:`flixlake.streaming.metrics`).
    """
    runs: dict[str, SpeedLayerRun] = {}
    deadline = None if timeout is None else time.monotonic() + timeout
    stop_errors: list[str] = []
    metrics = StreamMetrics()
    config = settings.streaming
    if config.metrics_port is not None and serve_metrics(
        metrics, config.metrics_host, config.metrics_port
    ):
        print(f"speed-layer metrics at http://{config.metrics_host}:{config.metrics_port}/metrics")

    def observed(
        query: str, then: Callable[[BatchReport], None] | None = None
    ) -> Callable[[BatchReport], None]:
        def on_report(report: BatchReport) -> None:
            metrics.observe(query, report)
            if then is not None:
                then(report)

        return on_report

    try:
        runs["events"] = start_speed_layer(
            spark, settings, lake, bootstrap_servers, observed(config.query_name, on_batch)
        )
        if config.land_served:
            served = served_query_name(settings)
            runs["served"] = start_served_landing(
                spark, settings, lake, bootstrap_servers, observed(served)
            )
        while all(run.query.isActive for run in runs.values()):
            if until is not None and until.is_set():
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            for run in runs.values():
                metrics.observe_progress(run.processor.query_name, run.query.lastProgress)
            events = runs["events"].processor
            if isinstance(events, SpeedLayer) and events.alerts is not None:
                metrics.observe_alerts(events.query_name, events.alerts.written)
            try:
                runs["events"].query.awaitTermination(1)
            except StreamingQueryException:
                break  # reported below, with the other query stopped first
    except KeyboardInterrupt:
        pass
    finally:  # also when the second query failed to start: never leave the first running
        for run in runs.values():
            run.request_stop()  # no new batch of any query starts writing from here on
        for name, run in runs.items():
            if run.query.isActive:
                try:
                    run.stop(graceful=True)
                except SpeedLayerError as exc:
                    stop_errors.append(f"{name}: {exc}")
            run.wait_idle(0)  # a query that ended on its own frees its checkpoint too
    for name, run in runs.items():
        error = run.failure()
        if error is not None:
            lost = data_loss_message(error, run.processor.topic)
            raise SpeedLayerError(lost or f"speed layer {name} query failed: {error}") from error
    if stop_errors:
        raise SpeedLayerError("; ".join(stop_errors))
    summary = summarize(runs["events"].reports)
    if "served" in runs:
        summary["served"] = summarize(runs["served"].reports)
    return summary
