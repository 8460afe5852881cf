"""``flixlake monitor``: the long-running exporter Prometheus scrapes for what no part exports.

Availability is measured from the course's log lines (:mod:`~flixlake.monitoring.availability`),
not by the service about itself: a service that is down, or refuses connections, cannot count
its own failures, while the course's infrastructure logs every call it made. Model staleness and
online quality come from the lake (:mod:`~flixlake.monitoring.lake_metrics`). One process, one
scrape endpoint; it holds a bounded per-minute window and a few hundred series at most.

>>> run_exporter(settings, stop=threading.Event())                   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from flixlake.config import Settings
from flixlake.lake.store import lake_from_settings
from flixlake.monitoring.availability import AvailabilityMeter, TopicFollower
from flixlake.monitoring.lake_metrics import LakeCollector

log = logging.getLogger(__name__)


class Exporter:
    """The exporter's parts, started by :meth:`start` (tests run it in-process)."""

    def __init__(self, settings: Settings, bootstrap_servers: str | None = None) -> None:
        monitoring = settings.monitoring
        self.registry = CollectorRegistry()
        self.errors = Counter(
            "flixlake_exporter_errors",
            "Failed reads by source (kafka, lake); the last figures keep being served.",
            ["source"],
            registry=self.registry,
        )
        self.meter = AvailabilityMeter(self.registry, monitoring.availability_deadline_ms)
        self.topic = monitoring.availability_topic or settings.kafka.topic
        self.follower = TopicFollower(
            bootstrap_servers or settings.kafka.bootstrap_servers,
            self.topic,
            self.meter,
            self.errors,
        )
        Gauge(
            "flixlake_exporter_kafka_connected",
            "1 while the exporter follows the log topic.",
            registry=self.registry,
        ).set_function(lambda: 1.0 if self.follower.connected else 0.0)
        self.lake = LakeCollector(
            lake_from_settings(settings), monitoring.lake_poll_seconds, self.errors
        )
        self.registry.register(self.lake)
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port), then follow Kafka and the lake; the port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        for target, name in (
            (lambda: self.follower.run(self.stop_event), "kafka"),
            (lambda: self.lake.run(self.stop_event, time.time), "lake"),
        ):
            thread = threading.Thread(target=target, name=f"flixlake-monitor-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)
        return int(server.server_address[1])

    def stop(self) -> None:
        self.stop_event.set()
        self._server.shutdown()
        for thread in self.threads:
            thread.join(10)


def run_exporter(
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    bootstrap_servers: str | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serve the exporter until ``stop`` is set or Ctrl-C."""
    exporter = Exporter(settings, bootstrap_servers)
    host = host or settings.monitoring.exporter_host
    bound = exporter.start(host, settings.monitoring.exporter_port if port is None else port)
    print(
        f"flixlake monitor: metrics on http://{host}:{bound}/metrics; availability from "
        f"{exporter.topic!r}, models and online quality from the lake",
        flush=True,
    )
    try:
        (stop or threading.Event()).wait()
    except KeyboardInterrupt:
        pass
    finally:
        exporter.stop()
