"""Telemetry: every answer to Kafka, without ever slowing or failing a request.

Each answer becomes two Kafka messages: the MLiP line (``<time>,<userid>,recommendation request
<server>, status <code>, result: <ids>, <n> ms``, rendered by
:func:`flixlake.contract.logformat.format_reco`)
on the log topic, and a JSON record (request_id, user_id, variant, model_version, items,
latency_ms, time, status, server, experiment, answer_source) on the served-recommendations topic,
both keyed by user id.

The request path only appends a tuple to a bounded in-memory buffer (full: the record is dropped
and counted). A background thread of the service encodes the buffer and writes it to a pipe read
by a *shipper* child process (``python -m flixlake.serving.telemetry``) that runs the Kafka producer:
kafka-python spends ~40 us of Python per message, which in-process would compete with requests for
the GIL. While Kafka is down or slow the shipper stops reading (it bounds its in-flight messages),
the pipe fills, and the service's buffer absorbs the gap and then drops, counted; the shipper is
restarted if it dies. The shipper reports ``stats <sent> <failed>`` lines back for the metrics.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import subprocess
import sys
import threading
import time
from typing import IO, Any

from flixlake.config import PROJECT_ROOT
from flixlake.contract.logformat import format_reco
from flixlake.serving.monitoring import ServingMetrics

log = logging.getLogger(__name__)

_F_SETPIPE_SZ = 1031  # Linux fcntl: grow a pipe's buffer
_PIPE_BYTES = 256 * 1024  # records in the pipe to the shipper (beyond ``capacity``)
_MAX_PENDING_BYTES = 1 << 20  # encoded per round before writing to the shipper
_MAX_IN_FLIGHT = 5_000  # messages the shipper holds unacknowledged before it stops reading


def _clean(text: str) -> str:
    return text.replace("\t", " ").replace("\n", " ")


class TelemetryShipper:
    """The service side: a bounded buffer, a writer thread and the shipper child process."""

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
        python: str = sys.executable,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.log_topic = log_topic
        self.served_topic = served_topic
        self.server = server
        self.experiment = experiment
        self.metrics = metrics
        self.capacity = capacity
        self.flush_interval = flush_interval
        self.python = python
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._pending = bytearray()
        self._pending_records = 0
        self._progressed = False
        self._stats_buffer = b""
        self._reported = (0, 0)
        self._child: subprocess.Popen[bytes] | None = None
        self._next_spawn = 0.0
        self._spawn_backoff = 0.5
        self._stop = threading.Event()
        self._stop_timeout = 5.0
        self._thread: threading.Thread | None = None
        metrics.telemetry_buffered.set_function(lambda: len(self._queue) + self._pending_records)

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
        """Buffer one answer (constant time; drops and counts when the buffer is full).

        ``source`` is where its movies came from (batch, batch_filtered, batch_filled, fallback, explore).
        """
        if len(self._queue) + self._pending_records >= self.capacity:
            self.metrics.dropped_full.inc()
            return
        self._queue.append(
            (when, user_id, status, latency_ms, request_id, variant, model_version, source, body)
        )

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="flixlake-telemetry", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ship what is buffered (for up to ``timeout`` seconds), then stop the shipper."""
        self._stop_timeout = timeout
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2 * timeout + 5)
            self._thread = None

    @property
    def shipper_pid(self) -> int | None:
        child = self._child
        return child.pid if child is not None and child.poll() is None else None

    # -- the writer thread ----------------------------------------------------------------------
    def _run(self) -> None:
        deadline: float | None = None
        while True:
            if self._stop.is_set() and deadline is None:
                deadline = time.monotonic() + self._stop_timeout
            child = self._ensure_child()
            if child is not None:
                self._encode()
                self._write(child)
                self._read_stats(child)
            idle = not self._queue and not self._pending
            if deadline is not None and (idle or time.monotonic() > deadline or child is None):
                break
            if deadline is not None or (self._pending and self._progressed):
                time.sleep(0.005)  # more to write and the shipper is reading: keep going
            else:
                self._stop.wait(self.flush_interval)
        self._close_child()
        lost = len(self._queue) + self._pending_records
        if lost:
            self.metrics.telemetry_dropped.labels("shutdown").inc(lost)
            log.warning("telemetry: %d records not shipped at shutdown", lost)

    def _ensure_child(self) -> subprocess.Popen[bytes] | None:
        child = self._child
        if child is not None and child.poll() is None:
            return child
        if child is not None:
            self._read_stats(child)
            log.error("telemetry shipper exited with code %s; restarting", child.returncode)
            if self._pending_records:
                self.metrics.telemetry_dropped.labels("shipper_lost").inc(self._pending_records)
            self._pending.clear()
            self._pending_records = 0
            self._child = None
        if time.monotonic() < self._next_spawn:
            return None
        try:
            self._child = self._spawn()
            self._spawn_backoff = 0.5
        except OSError as exc:
            log.error("cannot start the telemetry shipper: %s", exc)
            self._next_spawn = time.monotonic() + self._spawn_backoff
            self._spawn_backoff = min(30.0, self._spawn_backoff * 2)
            return None
        self._next_spawn = time.monotonic() + 1.0  # a crash loop restarts at most once a second
        return self._child

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
        )
        child = subprocess.Popen(
            [
                self.python,
                "-m",
                "flixlake.serving.telemetry",
                "--bootstrap-servers",
                self.bootstrap_servers,
                "--log-topic",
                self.log_topic,
                "--served-topic",
                self.served_topic,
                "--server",
                self.server,
                "--experiment",
                self.experiment,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=str(PROJECT_ROOT),
        )
        assert child.stdin is not None and child.stdout is not None
        with contextlib.suppress(OSError):
            fcntl.fcntl(child.stdin.fileno(), _F_SETPIPE_SZ, _PIPE_BYTES)
        os.set_blocking(child.stdin.fileno(), False)
        os.set_blocking(child.stdout.fileno(), False)
        self._stats_buffer = b""
        self._reported = (0, 0)
        log.info("telemetry shipper started (pid %d) for %s", child.pid, self.bootstrap_servers)
        return child

    def _encode(self) -> None:
        queue, pending = self._queue, self._pending
        while queue and len(pending) < _MAX_PENDING_BYTES:
            when, user_id, status, latency, request_id, variant, model, source, body = (
                queue.popleft()
            )
            pending += (
                f"{when:.3f}\t{user_id}\t{status}\t{latency:.3f}\t{request_id}\t"
                f"{_clean(variant)}\t{_clean(model)}\t{_clean(source)}\t"
            ).encode()
            pending += body
            pending += b"\n"
            self._pending_records += 1

    def _write(self, child: subprocess.Popen[bytes]) -> None:
        if not self._pending or child.stdin is None:
            return
        self._progressed = False
        try:
            written = os.write(child.stdin.fileno(), self._pending)
        except BlockingIOError:
            return  # the shipper is behind (Kafka slow or down): keep it for the next round
        except OSError:
            return  # the shipper died (broken pipe); _ensure_child counts and restarts
        self._progressed = written > 0
        shipped = self._pending[:written].count(b"\n")
        del self._pending[:written]
        self._pending_records -= shipped
        if not self._pending:
            self._pending_records = 0

    def _read_stats(self, child: subprocess.Popen[bytes]) -> None:
        if child.stdout is not None:
            with contextlib.suppress(BlockingIOError, OSError, ValueError):
                while chunk := os.read(child.stdout.fileno(), 65536):
                    self._stats_buffer += chunk
        self._parse_stats()

    def _parse_stats(self) -> None:
        *lines, self._stats_buffer = self._stats_buffer.split(b"\n")
        for line in lines:
            parts = line.split()
            if len(parts) != 3 or parts[0] != b"stats":
                continue
            sent, failed = int(parts[1]), int(parts[2])
            old_sent, old_failed = self._reported
            if sent > old_sent:
                self.metrics.telemetry_records.labels("sent").inc(sent - old_sent)
            if failed > old_failed:
                self.metrics.telemetry_records.labels("failed").inc(failed - old_failed)
            self._reported = (max(sent, old_sent), max(failed, old_failed))

    def _close_child(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        with contextlib.suppress(OSError):
            if child.stdin is not None:
                child.stdin.close()  # EOF: the shipper flushes Kafka and exits
        try:
            child.wait(timeout=self._stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("telemetry shipper did not finish in time (Kafka down?); stopping it")
            child.terminate()
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=5)
        if child.stdout is not None:
            with contextlib.suppress(OSError, ValueError):
                os.set_blocking(child.stdout.fileno(), True)
                self._stats_buffer += (child.stdout.read() or b"") + b"\n"
            child.stdout.close()
        self._parse_stats()


# -- the shipper child process ------------------------------------------------------------------
def _iso(when: float) -> str:
    stamp = dt.datetime.fromtimestamp(when, dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def messages(line: bytes, server: str, experiment: str) -> tuple[bytes, bytes, bytes]:
    """One buffered record -> (key, MLiP log line, JSON record).

    A record is ``when, user, status, latency, request id, variant, model, source, body``
    separated by tabs; one without the source field ships without ``answer_source``.
    """
    fields = line.rstrip(b"\n").split(b"\t", 8)
    if len(fields) == 8:  # no source field
        fields.insert(7, b"")
    when_s, user_s, status_s, latency_s, request_id, variant, model, source, body = fields
    when, user_id, status, latency = float(when_s), int(user_s), int(status_s), float(latency_s)
    items = body.decode().split(",") if body else []
    stamp = dt.datetime.fromtimestamp(when, dt.UTC)
    mlip = format_reco(stamp, user_id, server, status, items, round(latency))
    record = {
        "request_id": request_id.decode(),
        "user_id": user_id,
        "variant": variant.decode(),
        "model_version": model.decode(),
        "items": items,
        "latency_ms": latency,
        "time": _iso(when),
        "status": status,
        "server": server,
        "experiment": experiment,
    }
    if source:
        record["answer_source"] = source.decode()
    return user_s, mlip.encode(), json.dumps(record, separators=(",", ":")).encode()


class _Shipper:
    def __init__(self, args: argparse.Namespace, out: IO[bytes]) -> None:
        self.args = args
        self.out = out
        self.lock = threading.Lock()
        self.sent = 0
        self.failed = 0
        self.submitted = 0
        self.producer: Any = None
        self.parent = os.getppid()

    def orphaned(self) -> bool:
        """The service died (we were re-parented): nothing more will arrive."""
        return os.getppid() != self.parent

    def ok(self, _: Any) -> None:
        with self.lock:
            self.sent += 1

    def error(self, exc: Any) -> None:
        with self.lock:
            self.failed += 1
        log.warning("telemetry message not delivered: %s", exc)

    def in_flight(self) -> int:
        with self.lock:
            return self.submitted - self.sent - self.failed

    def report(self) -> None:
        with self.lock:
            line = f"stats {self.sent} {self.failed}\n".encode()
        with contextlib.suppress(OSError, ValueError):
            self.out.write(line)
            self.out.flush()

    def connect(self) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        backoff = 0.5
        while self.producer is None and not self.orphaned():
            try:
                self.producer = KafkaProducer(
                    bootstrap_servers=self.args.bootstrap_servers,
                    client_id="flixlake-serving-telemetry",
                    acks=1,
                    linger_ms=20,
                    batch_size=256 * 1024,
                    max_block_ms=5000,
                    request_timeout_ms=10_000,
                    delivery_timeout_ms=30_000,
                    reconnect_backoff_max_ms=2000,
                    bootstrap_timeout_ms=5000,
                )
            except (KafkaError, OSError) as exc:
                log.warning(
                    "Kafka at %s not reachable (%s); retrying", self.args.bootstrap_servers, exc
                )
                time.sleep(backoff)
                backoff = min(10.0, backoff * 2)

    def ship(self, line: bytes) -> None:
        from kafka.errors import KafkaError

        while self.in_flight() > _MAX_IN_FLIGHT and not self.orphaned():
            time.sleep(0.05)  # Kafka is behind: stop reading; the service buffers, then drops
        try:
            key, mlip, record = messages(line, self.args.server, self.args.experiment)
        except (ValueError, UnicodeDecodeError) as exc:
            log.error("telemetry: unreadable record %r: %s", line[:200], exc)
            with self.lock:
                self.failed += 1
            return
        for topic, value in ((self.args.log_topic, mlip), (self.args.served_topic, record)):
            with self.lock:
                self.submitted += 1
            try:
                future = self.producer.send(topic, key=key, value=value)
            except KafkaError as exc:
                self.error(exc)
                continue
            future.add_callback(self.ok)
            future.add_errback(self.error)


def child_main(argv: list[str] | None = None) -> int:
    """The shipper process: records on stdin -> Kafka; ``stats`` lines on stdout."""
    parser = argparse.ArgumentParser(description="flixlake serving telemetry shipper")
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--log-topic", required=True)
    parser.add_argument("--served-topic", required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--experiment", default="default")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s telemetry-shipper %(levelname)s %(message)s"
    )
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # connection noise; we log outcomes
    shipper = _Shipper(args, sys.stdout.buffer)
    done = threading.Event()

    def reporter() -> None:
        while not done.wait(1.0):
            shipper.report()

    threading.Thread(target=reporter, daemon=True).start()
    shipper.connect()
    if shipper.producer is None:  # the service went away while Kafka was unreachable
        return 1
    for line in sys.stdin.buffer:
        if line.strip():
            shipper.ship(line)
    if shipper.producer is not None:
        with contextlib.suppress(Exception):
            shipper.producer.flush(timeout=10)
        with contextlib.suppress(Exception):
            shipper.producer.close(timeout=5)
    done.set()
    shipper.report()
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
