"""Telemetry: every answer to Kafka, without ever slowing or failing a request.

Each answer becomes two Kafka messages, both keyed by user id: the MLiP line (``<time>,<userid>,
recommendation request <server>, status <code>, result: <ids>, <n> ms``, rendered by
:func:`flixlake.contract.logformat.format_reco`) on the log topic, and a JSON record
(request_id, user_id, variant, model_version, items, latency_ms, time, status, server,
experiment) on the served-recommendations topic.

The producer is librdkafka (``confluent-kafka``): an idempotent producer (``acks=all``, retries
without duplicates or reordering) whose own background threads batch, compress and send. The
request path only appends a tuple to a bounded buffer; one thread of the service encodes the
buffered answers and hands them to librdkafka, and counts the delivery reports.

Bounds while Kafka is slow or down (nothing blocks a request): at most
``serving.telemetry.buffer_records`` answers wait, in the service's buffer and librdkafka's queue
together (``queue.buffering.max.messages`` = 2 per answer; the gauge
``flixlake_serving_telemetry_buffered``). librdkafka retries each message for
``message.timeout.ms`` (5 min); one it gives up on is counted
``flixlake_serving_telemetry_records_total{outcome="failed"}``. Past the bound, an answer's
telemetry is dropped and counted ``flixlake_serving_telemetry_dropped_total{reason="buffer_full"}``;
at shutdown, what is still unsent after ``stop(timeout)`` is counted ``{reason="shutdown"}``.
Delivered messages are counted ``{outcome="sent"}``.
"""

from __future__ import annotations

import collections
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

# when, user_id, status, latency_ms, request_id, variant, model_version, body
Answer = tuple[float, int, int, float, str, str, str, bytes]

_ENCODE_BATCH = 500  # answers encoded per round (the GIL is shared with the request path)


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
) -> tuple[bytes, bytes, bytes]:
    """One answer -> (key, MLiP log line, JSON record), as they go to Kafka."""
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
            f',"server":{json.dumps(server)},"experiment":{json.dumps(experiment)}}}'.encode()
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
        ) + b'"items":["%s"],"latency_ms":%s,"time":"%s.%03dZ","status":%d%s' % (
            body.replace(b",", b'","'),
            repr(latency_ms).encode(),
            self._stamp,
            micro // 1000,
            status,
            self._tail,
        )
        return key, mlip, record


def producer_config(bootstrap_servers: str, capacity: int) -> dict[str, Any]:
    """librdkafka settings: idempotent, batched, bounded (``capacity`` answers = 2 messages each)."""
    return {
        "bootstrap.servers": bootstrap_servers,
        "client.id": "flixlake-serving-telemetry",
        "enable.idempotence": True,  # acks=all, retries keep order and never duplicate
        "delivery.report.only.error": True,  # delivered = handed over - in queue - failed
        "linger.ms": 20,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 2 * capacity,
        "queue.buffering.max.kbytes": 256 * 1024,
        "message.timeout.ms": 300_000,  # then a message counts as failed
        "reconnect.backoff.max.ms": 2_000,
        "log_level": 3,  # errors only: a broker that is down is reported by our counters
    }


class TelemetryShipper:
    """A bounded buffer on the request path, one encoding thread, librdkafka behind it."""

    def __init__(
        self,
        bootstrap_servers: str,
        log_topic: str,
        served_topic: str,
        server: str,
        metrics: ServingMetrics,
        experiment: str = "default",
        capacity: int = 100_000,
        flush_interval: float = 0.05,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.log_topic = log_topic
        self.served_topic = served_topic
        self.server = server
        self.experiment = experiment
        self.metrics = metrics
        self.capacity = capacity
        self.flush_interval = flush_interval
        self._queue: collections.deque[Answer] = collections.deque()
        self._held: list[
            tuple[str, bytes, bytes]
        ] = []  # encoded messages librdkafka had no room for
        self._stop = threading.Event()
        self._stop_timeout = 5.0
        self._thread: threading.Thread | None = None
        self._producer: Producer | None = None
        self._encoder = AnswerEncoder(server, experiment)
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
    ) -> None:
        """Buffer one answer (constant time; drops and counts when the bound is reached)."""
        if self.buffered() >= self.capacity:
            self.metrics.dropped_full.inc()
            return
        self._queue.append(
            (when, user_id, status, latency_ms, request_id, variant, model_version, body)
        )

    def buffered(self) -> int:
        """Answers not yet handed to librdkafka, plus messages librdkafka has not delivered."""
        producer = self._producer
        in_kafka = len(producer) // 2 if producer is not None else 0
        return len(self._queue) + (len(self._held) + 1) // 2 + in_kafka

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._producer = Producer(
            producer_config(self.bootstrap_servers, self.capacity),
            error_cb=self._error,
            logger=log,  # librdkafka's errors (e.g. broker down) into the service's log
        )
        self._thread = threading.Thread(target=self._run, name="flixlake-telemetry", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ship what is buffered (for up to ``timeout`` seconds), then close the producer."""
        self._stop_timeout = timeout
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2 * timeout + 5)
            self._thread = None

    @property
    def shipper_pid(self) -> int | None:
        """No child process any more: librdkafka's threads run inside the service."""
        return None

    @property
    def last_error(self) -> str:
        """The last error librdkafka reported (e.g. all brokers down), for /health."""
        return self._last_error

    # -- the shipping thread --------------------------------------------------------------------
    def _error(self, error: KafkaError) -> None:
        self._last_error = str(error)
        if error.fatal():
            log.error("telemetry producer: fatal error %s", error)

    def _delivered(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:  # only failures are reported (delivery.report.only.error)
            self._failed += 1
            self._last_error = str(error)

    def _run(self) -> None:
        producer = self._producer
        assert producer is not None
        deadline: float | None = None
        while True:
            if self._stop.is_set() and deadline is None:
                deadline = time.monotonic() + self._stop_timeout
            handed = self._hand_over(producer)
            producer.poll(0)  # delivery reports -> counters
            self._report()
            idle = not self._queue and not self._held
            if deadline is not None and (idle or time.monotonic() > deadline):
                break
            if not handed:
                self._stop.wait(self.flush_interval) if deadline is None else time.sleep(0.01)
        remaining = deadline - time.monotonic() if deadline is not None else 0.0
        unsent = producer.flush(max(0.0, remaining))
        self._report()
        lost = len(self._queue) + (len(self._held) + unsent + 1) // 2
        if lost:
            self.metrics.telemetry_dropped.labels("shutdown").inc(lost)
            log.warning("telemetry: %d answers not shipped at shutdown (Kafka down?)", lost)

    def _hand_over(self, producer: Producer) -> int:
        """Encode buffered answers into librdkafka until it is full; returns how many."""
        handed = 0
        queue, held = self._queue, self._held
        while handed < _ENCODE_BATCH and (held or queue):
            if not held:
                fields = queue.popleft()
                try:
                    key, line, record = self._encoder.encode(*fields)
                except (ValueError, UnicodeDecodeError) as exc:
                    log.error("telemetry: cannot encode an answer: %s", exc)
                    self._failed += 2
                    continue
                held += [(self.log_topic, line, key), (self.served_topic, record, key)]
            while held:
                topic, value, key = held[0]
                try:
                    producer.produce(topic, value, key, on_delivery=self._delivered)
                except BufferError:  # librdkafka is full (Kafka slow or down): next round
                    return handed
                except KafkaException as exc:  # e.g. a fatal producer error: count, go on
                    self._failed += 1
                    self._last_error = str(exc)
                else:
                    self._handed += 1
                held.pop(0)
            handed += 1
        return handed

    def _report(self) -> None:
        in_queue = len(self._producer) if self._producer is not None else 0
        failed = self._failed
        sent = max(self._reported[0], self._handed - in_queue - failed)
        old_sent, old_failed = self._reported
        if sent > old_sent:
            self.metrics.telemetry_records.labels("sent").inc(sent - old_sent)
        if failed > old_failed:
            self.metrics.telemetry_records.labels("failed").inc(failed - old_failed)
        self._reported = (sent, failed)
