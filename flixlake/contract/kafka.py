"""The contract's transport: Kafka addresses, topics, and producing log lines onto them.

Everything talks to Kafka only through bootstrap servers (``kafka.bootstrap_servers``), so the
same calls work against the embedded broker and a Kafka cluster.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterable


class BrokerError(RuntimeError):
    """The broker could not be started, reached or written to; the message says why."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for tests and ``flixlake broker`` without --port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_of(bootstrap_servers: str) -> int:
    """The port of the first ``host:port`` in a bootstrap list (``flixlake broker``'s default)."""
    first = bootstrap_servers.split(",")[0].strip()
    host, sep, port = first.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise BrokerError(f"kafka.bootstrap_servers={bootstrap_servers!r}: expected host:port")
    return int(port)


def create_topic(bootstrap: str, topic: str, partitions: int, timeout: float = 30.0) -> int:
    """Create ``topic`` with ``partitions`` partitions (keeps an existing one); returns count."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    deadline = time.monotonic() + timeout
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            bootstrap_timeout_ms=int(timeout * 1000),
            request_timeout_ms=int(min(timeout, 30.0) * 1000),
        )
    except (KafkaError, OSError) as exc:
        raise BrokerError(f"no Kafka broker answered at {bootstrap}: {exc}") from exc
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(topic, partitions, 1)])
        while True:
            try:
                described = admin.describe_topics([topic])
            except KafkaError:
                described = []
            found = [t for t in described if t.get("name") == topic and not t.get("error_code")]
            if found and found[0].get("partitions"):
                return len(found[0]["partitions"])
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"topic {topic!r} not visible at {bootstrap} after {timeout:.0f}s"
                )
            time.sleep(0.1)
    finally:
        admin.close()


def produce_lines(
    bootstrap: str,
    topic: str,
    lines: Iterable[str | bytes],
    partitions: int | None = None,
    timeout: float = 60.0,
) -> int:
    """Send each line as one message (acks=all) and wait until all are acknowledged.

    With ``partitions`` the lines go round-robin to partitions ``0..partitions-1``; otherwise
    the client's partitioner chooses. Returns the number of lines sent; raises BrokerError if any
    was not acknowledged.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=5,
            batch_size=256 * 1024,
            bootstrap_timeout_ms=int(timeout * 1000),
        )
    except KafkaError as exc:
        raise BrokerError(f"cannot produce to {bootstrap}: {exc}") from exc
    futures = []
    try:
        for i, line in enumerate(lines):
            value = line.encode("utf-8") if isinstance(line, str) else line
            partition = i % partitions if partitions else None
            futures.append(producer.send(topic, value=value, partition=partition))
        producer.flush(timeout=timeout)
        failed = [f for f in futures if not f.is_done or f.failed()]
        if failed:
            first = failed[0].exception if failed[0].is_done else "not acknowledged in time"
            raise BrokerError(f"{len(failed)} of {len(futures)} lines not acknowledged: {first}")
    except KafkaError as exc:
        raise BrokerError(f"producing to {topic!r} at {bootstrap} failed: {exc}") from exc
    finally:
        producer.close(timeout=timeout)
    return len(futures)
