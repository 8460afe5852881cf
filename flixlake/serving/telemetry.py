"""Telemetry: every answer to Kafka, without ever slowing or failing a request.

Each answer becomes two Kafka messages, both keyed by user id: the MLiP line (``<time>,<userid>,
recommendation request <server>, status <code>, result: <ids>, <n> ms``, rendered by
:func:`flixlake.contract.logformat.format_reco`) on the log topic, and a JSON record
(request_id, user_id, variant, model_version, items, latency_ms, time, status, server,
experiment, answer_source) on the served-recommendations topic.

The producer is librdkafka (``confluent-kafka``): an idempotent producer (``acks=all``, retries
without duplicates or reordering) whose own background threads batch and send. The request path
encodes the two messages (:class:`AnswerEncoder`, a few microseconds) and hands them to
librdkafka's queue, which never blocks; one thread of the service serves librdkafka's error
reports and keeps the counters.

Bounds while Kafka is slow or down (nothing blocks a request): at most
``serving.telemetry.buffer_records`` answers wait, in librdkafka's queue
(``queue.buffering.max.messages`` = 2 per answer; the gauge ``flixlake_serving_telemetry_buffered``).
librdkafka retries each message for ``message.timeout.ms`` (5 min); one it gives up on is counted
``flixlake_serving_telemetry_records_total{outcome="failed"}``. Past the bound, an answer's
telemetry is dropped and counted ``flixlake_serving_telemetry_dropped_total{reason="buffer_full"}``;
at shutdown, what is still unsent after ``stop(timeout)`` is counted ``{reason="shutdown"}``.
Delivered messages are counted ``{outcome="sent"}``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from flixlake.contract.logformat import format_reco
from flixlake.serving.monitoring import ServingMetrics

log = logging.getLogger(__name__)


def _iso(when: float) -> str:
    stamp = dt.datetime.fromtimestamp(when, dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def encode_answer(
    when: float,
    user_id: int,
    status: int,
    latency_ms: float,
    request_id: str,
    variant: str,
    model_version: str,
    body: bytes,
    server: str,
    experiment: str,
    source: str = "",
) -> tuple[bytes, bytes, bytes]:
    """One answer -> (key, MLiP log line, JSON record), as they go to Kafka.

    ``answer_source`` is in the record only when ``source`` is given.
    """
    items = body.decode().split(",") if body else []
    stamp = dt.datetime.fromtimestamp(when, dt.UTC)
    mlip = format_reco(stamp, user_id, server, status, items, round(latency_ms))
    record = {
        "request_id": request_id,
        "user_id": user_id,
        "variant": variant,
        "model_version": model_version,
        "items": items,
        "latency_ms": latency_ms,
        "time": _iso(when),
        "status": status,
        "server": server,
        "experiment": experiment,
    }
    if source:
        record["answer_source"] = source
    return str(user_id).encode(), mlip.encode(), json.dumps(record, separators=(",", ":")).encode()


_NEEDS_ESCAPE = re.compile(rb'[^\x20-\x7e]|["\\]')  # what JSON (ensure_ascii) would escape


class AnswerEncoder:
    """:func:`encode_answer`, byte for byte, at a few microseconds an answer.

    It runs on the service's GIL, so it avoids datetime and dict work: the second's time stamp
    is cached, the items (the response body: movie ids joined by commas) are spliced in as bytes
    when they need no JSON escaping, short repeated strings are JSON-encoded once.
    """

    def __init__(self, server: str, experiment: str) -> None:
        self.server = server
        self.experiment = experiment
        self._server_mlip = server.encode()
        self._tail = (
            f',"server":{json.dumps(server)},"experiment":{json.dumps(experiment)}'.encode()
        )
        self._second = -1
        self._stamp = b""
        self._strings: dict[str, bytes] = {}

    def _json(self, text: str) -> bytes:
        encoded = self._strings.get(text)
        if encoded is None:
            encoded = json.dumps(text).encode()
            if len(self._strings) < 10_000:  # variants and model versions: a handful
                self._strings[text] = encoded
        return encoded

    def encode(
        self,
        when: float,
        user_id: int,
        status: int,
        latency_ms: float,
        request_id: str,
        variant: str,
        model_version: str,
        body: bytes,
        source: str = "",
    ) -> tuple[bytes, bytes, bytes]:
        """One answer -> (key, MLiP log line, JSON record)."""
        if not body or _NEEDS_ESCAPE.search(body) or _NEEDS_ESCAPE.search(request_id.encode()):
            return encode_answer(
                when,
                user_id,
                status,
                latency_ms,
                request_id,
                variant,
                model_version,
                body,
                self.server,
                self.experiment,
                source,
            )
        fraction, whole = math.modf(when)  # as datetime.fromtimestamp rounds: to the microsecond
        second, micro = int(whole), round(fraction * 1e6)
        if micro >= 1_000_000:
            second, micro = second + 1, micro - 1_000_000
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        key = b"%d" % user_id
        mlip = b"%s,%s,recommendation request %s, status %d, result: %s, %d ms" % (
            self._stamp,
            key,
            self._server_mlip,
            status,
            body.replace(b",", b", "),
            round(latency_ms),
        )
        record = b'{"request_id":%s,"user_id":%s,"variant":%s,"model_version":%s,' % (
            b'"' + request_id.encode() + b'"',
            key,
            self._json(variant),
            self._json(model_version),
        ) + b'"items":["%s"],"latency_ms":%s,"time":"%s.%03dZ","status":%d%s%s}' % (
            body.replace(b",", b'","'),
            repr(latency_ms).encode(),
            self._stamp,
            micro // 1000,
            status,
            self._tail,
            b',"answer_source":' + self._json(source) if source else b"",
        )
        return key, mlip, record


def producer_config(bootstrap_servers: str, capacity: int) -> dict[str, Any]:
    """librdkafka settings: idempotent, batched, bounded (``capacity`` answers = 2 messages each)."""
    return {
        "bootstrap.servers": bootstrap_servers,
        "client.id": "flixlake-serving-telemetry",
        "enable.idempotence": True,  # acks=all, retries keep order and never duplicate
        "delivery.report.only.error": True,  # delivered = handed over - in queue - failed
        "linger.ms": 100,  # bigger batches: half the CPU per message here and in the broker
        "batch.num.messages": 100_000,
        "queue.buffering.max.messages": 2 * capacity,
        "queue.buffering.max.kbytes": 256 * 1024,
        "message.timeout.ms": 300_000,  # then a message counts as failed
        "reconnect.backoff.max.ms": 2_000,
        "log_level": 3,  # errors only: a broker that is down is reported by our counters
    }


class TelemetryShipper:
    """librdkafka's bounded queue on the request path, one thread for its reports and counters."""

    def __init__(
        self,
        bootstrap_servers: str,
        log_topic: str,
        served_topic: str,
        server: str,
        metrics: ServingMetrics,
        experiment: str = "default",
        capacity: int = 100_000,
        flush_interval: float = 0.5,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.log_topic = log_topic
        self.served_topic = served_topic
        self.server = server
        self.experiment = experiment
        self.metrics = metrics
        self.capacity = capacity
        self.flush_interval = flush_interval
        self._encoder = AnswerEncoder(server, experiment)
        self._max_messages = 2 * capacity
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Producer | None = None
        self._handed = 0  # messages handed to librdkafka
        self._failed = 0
        self._reported = (0, 0)
        self._last_error = ""
        metrics.telemetry_buffered.set_function(self.buffered)

    # -- the request path -----------------------------------------------------------------------
    def record(
        self,
        when: float,
        user_id: int,
        status: int,
        latency_ms: float,
        request_id: str,
        variant: str,
        model_version: str,
        body: bytes,
        source: str = "",
    ) -> None:
        """Hand one answer's two messages to librdkafka (never blocks; full: dropped, counted).

        ``source`` is where its movies came from (batch, batch_filtered, batch_filled, fallback, explore).
        """
        producer = self._producer
        if producer is None or len(producer) + 2 > self._max_messages:
            self.metrics.dropped_full.inc()
            return
        try:
            key, line, record = self._encoder.encode(
                when, user_id, status, latency_ms, request_id, variant, model_version, body, source
            )
            producer.produce(self.log_topic, line, key)
            producer.produce(self.served_topic, record, key)
        except BufferError:  # the byte bound (256 MB) rather than the message bound
            self.metrics.dropped_full.inc()
            return
        except (KafkaException, ValueError, UnicodeDecodeError) as exc:
            self._failed += 2
            self._last_error = str(exc)
            return
        self._handed += 2

    def buffered(self) -> int:
        """Answers librdkafka has not delivered yet (two messages each)."""
        producer = self._producer
        return (len(producer) + 1) // 2 if producer is not None else 0

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._producer = Producer(
            producer_config(self.bootstrap_servers, self.capacity),
            error_cb=self._error,
            on_delivery=self._delivered,  # only failures (delivery.report.only.error)
            logger=log,  # librdkafka's errors (e.g. broker down) into the service's log
        )
        self._thread = threading.Thread(target=self._run, name="flixlake-telemetry", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (for up to ``timeout`` seconds), then stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.flush_interval + 5)
            self._thread = None
        producer, self._producer = self._producer, None
        if producer is None:
            return
        unsent = producer.flush(timeout)
        self._report(producer)
        if unsent:
            self.metrics.telemetry_dropped.labels("shutdown").inc((unsent + 1) // 2)
            log.warning("telemetry: %d messages not delivered at shutdown (Kafka down?)", unsent)

    @property
    def last_error(self) -> str:
        """The last error librdkafka reported (e.g. all brokers down), for /health."""
        return self._last_error

    # -- librdkafka's reports -------------------------------------------------------------------
    def _error(self, error: KafkaError) -> None:
        self._last_error = str(error)
        if error.fatal():
            log.error("telemetry producer: fatal error %s", error)

    def _delivered(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self._failed += 1
            self._last_error = str(error)

    def _run(self) -> None:
        while not self._stop.is_set():
            producer = self._producer
            if producer is None:
                break
            producer.poll(self.flush_interval)  # waits without the GIL; serves the reports
            self._report(producer)

    def _report(self, producer: Producer) -> None:
        failed = self._failed
        sent = max(self._reported[0], self._handed - len(producer) - failed)
        old_sent, old_failed = self._reported
        if sent > old_sent:
            self.metrics.telemetry_records.labels("sent").inc(sent - old_sent)
        if failed > old_failed:
            self.metrics.telemetry_records.labels("failed").inc(failed - old_failed)
        self._reported = (sent, failed)
