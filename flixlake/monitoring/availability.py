"""Availability as the course measures it: the ``recommendation request`` lines on the topic.

Each line is one call the course's infrastructure made to the service, with its status and the
response time it measured; a refused or timed-out call is a line with status 0. A call is
*available* when it got status 200 within ``deadline_ms`` (800 ms). :class:`AvailabilityMeter`
counts calls by outcome (``ok``, ``slow``, ``failed``) and keeps a histogram of the logged
response times, so Prometheus computes availability over any window
(``monitoring/rules/flixlake.yml``); it also keeps per-minute shares by the lines' own time, for
the last complete minute (``flixlake_availability_minute_ratio``).

:class:`TopicFollower` consumes the topic with kafka-python: no consumer group (every exporter
sees every line, nothing is committed), starting a few minutes back by timestamp, so a restarted
exporter fills its per-minute view again. It only parses lines that mention a recommendation
request, with the one parser.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import OrderedDict
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from flixlake.contract.logformat import EventType, as_utc, parse_line

log = logging.getLogger(__name__)

RECO_MARKER = b"recommendation request"
OUTCOMES = ("ok", "slow", "failed")
RESPONSE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 5.0)
MINUTES_KEPT = 15


class AvailabilityMeter:
    """Counts calls by outcome and per minute of their own time (a bounded window)."""

    def __init__(self, registry: CollectorRegistry, deadline_ms: float = 800.0) -> None:
        self.deadline_ms = deadline_ms
        self._lock = threading.Lock()
        self._minutes: OrderedDict[int, list[int]] = OrderedDict()  # minute -> [ok, total]
        self._newest = 0.0  # newest line time seen (epoch seconds)
        self.requests = Counter(
            "flixlake_availability_requests",
            "Recommendation requests the course's infrastructure logged, by outcome: ok (status "
            "200 within the deadline), slow (200, too late), failed (any other status; 0 = refused "
            "or timed out).",
            ["outcome"],
            registry=registry,
        )
        self._children = {o: self.requests.labels(o) for o in OUTCOMES}
        self.response = Histogram(
            "flixlake_availability_response_seconds",
            "Response times the course's infrastructure logged for its requests (its view).",
            buckets=RESPONSE_BUCKETS,
            registry=registry,
        )
        self.lines = Counter(
            "flixlake_availability_lines",
            "Log lines read from the topic, by kind (reco: recommendation requests; other; bad: "
            "a recommendation-request line that does not parse).",
            ["kind"],
            registry=registry,
        )
        Gauge(
            "flixlake_availability_minute_ratio",
            "Share of the last complete minute's requests (by log time) that were ok (-1: none).",
            registry=registry,
        ).set_function(lambda: self.last_minute()[0])
        Gauge(
            "flixlake_availability_minute_requests",
            "Requests logged in the last complete minute (by log time).",
            registry=registry,
        ).set_function(lambda: self.last_minute()[1])
        Gauge(
            "flixlake_availability_newest_line_timestamp_seconds",
            "Log time of the newest recommendation-request line read (0: none yet).",
            registry=registry,
        ).set_function(lambda: self._newest)

    def outcome(self, status: int, response_ms: float) -> str:
        if status != 200:
            return "failed"
        return "ok" if response_ms <= self.deadline_ms else "slow"

    def observe(self, when: dt.datetime, status: int, response_ms: float) -> str:
        """Count one logged call; returns its outcome."""
        outcome = self.outcome(status, response_ms)
        self._children[outcome].inc()
        self.response.observe(response_ms / 1000.0)
        epoch = as_utc(when).timestamp()
        minute = int(epoch // 60)
        with self._lock:
            self._newest = max(self._newest, epoch)
            counts = self._minutes.get(minute)
            if counts is None:
                if self._minutes and minute < next(iter(self._minutes)):
                    return outcome  # older than the window: counted, not in the per-minute view
                counts = self._minutes[minute] = [0, 0]
                self._minutes = OrderedDict(sorted(self._minutes.items()))
                while len(self._minutes) > MINUTES_KEPT:
                    self._minutes.popitem(last=False)
            counts[0] += outcome == "ok"
            counts[1] += 1
        return outcome

    def observe_line(self, value: bytes) -> str | None:
        """Count one raw log line if it is a recommendation request; its outcome or None."""
        if RECO_MARKER not in value:
            self.lines.labels("other").inc()
            return None
        event = parse_line(value)
        if not event.ok or event.event_type is not EventType.RECO:
            self.lines.labels("bad").inc()
            return None
        self.lines.labels("reco").inc()
        assert event.event_time is not None and event.reco_status is not None
        return self.observe(event.event_time, event.reco_status, event.reco_response_ms or 0.0)

    def last_minute(self) -> tuple[float, int]:
        """(share ok, requests) of the newest minute that has ended by the newest line's time."""
        with self._lock:
            current = int(self._newest // 60)
            done = [(m, c) for m, c in self._minutes.items() if m < current]
        if not done:
            return -1.0, 0
        _, (ok, total) = done[-1]
        return (ok / total if total else -1.0), total


class TopicFollower:
    """Reads every partition of ``topic`` from ``lookback_seconds`` ago on, into a meter."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        meter: AvailabilityMeter,
        errors: Counter,
        lookback_seconds: float = 300.0,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.meter = meter
        self.errors = errors
        self.lookback_seconds = lookback_seconds
        self.connected = False

    def run(self, stop: threading.Event) -> None:
        """Follow the topic until ``stop``; reconnects (with back-off) when Kafka goes away."""
        from kafka.errors import KafkaError

        backoff = 1.0
        while not stop.is_set():
            try:
                self._follow(stop)
                backoff = 1.0
            except (KafkaError, OSError, ValueError) as exc:
                self.connected = False
                self.errors.labels("kafka").inc()
                log.warning("reading %r failed (%s); retrying in %.0fs", self.topic, exc, backoff)
                stop.wait(backoff)
                backoff = min(30.0, backoff * 2)

    def _follow(self, stop: threading.Event) -> None:
        from kafka import KafkaConsumer, TopicPartition

        consumer: Any = KafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            client_id="flixlake-monitor",
            request_timeout_ms=30_000,
        )
        try:
            partitions = None
            while partitions is None and not stop.is_set():
                found = consumer.partitions_for_topic(self.topic)
                if found:
                    partitions = [TopicPartition(self.topic, p) for p in sorted(found)]
                else:
                    stop.wait(1.0)  # the topic does not exist yet
            if partitions is None:
                return
            consumer.assign(partitions)
            since = int((time.time() - self.lookback_seconds) * 1000)
            offsets = consumer.offsets_for_times(dict.fromkeys(partitions, since))
            for tp in partitions:
                found_offset = offsets.get(tp)
                if found_offset is None:
                    consumer.seek_to_end(tp)
                else:
                    consumer.seek(tp, found_offset.offset)
            self.connected = True
            log.info(
                "following %r (%d partitions) at %s",
                self.topic,
                len(partitions),
                self.bootstrap_servers,
            )
            while not stop.is_set():
                for records in consumer.poll(timeout_ms=500, max_records=5000).values():
                    for record in records:
                        if record.value is not None:
                            self.meter.observe_line(record.value)
        finally:
            self.connected = False
            consumer.close()
