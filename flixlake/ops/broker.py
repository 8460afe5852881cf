"""The embedded broker: Apache Kafka 4.x in KRaft mode (one combined broker + controller).

It runs from the jars ``make`` resolved from ``jvm/pom.xml`` (:mod:`flixlake.ops.jvm`), in its
own JVM, with its log under a folder of its own (``$FLIXLAKE_HOME/kafka`` for
``flixlake broker``): formatted once (``kafka.tools.StorageTool format``), then every start
reuses it, so a restart — also after ``kill -9`` — keeps every acknowledged record and the
offsets the speed layer's checkpoint refers to. The controller's port is chosen once and kept in
``flixlake-broker.json`` beside the data (it is part of the quorum the log was formatted for);
the client port is the caller's.

Everything else talks to Kafka only through bootstrap servers, so the same code runs against a
Kafka cluster.

>>> with running_broker(port=19092, log_dir=Path("var/kafka"), topic="movielog") as broker:
...     produce_lines(broker.bootstrap, "movielog", ["2026-11-22T08:54:03,42,GET /rate/x=5"])
... # doctest: +SKIP
1
"""

from __future__ import annotations

import contextlib
import json
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
from flixlake.ops.jvm import broker_classpath

STATE_FILE = "flixlake-broker.json"
_LOG_TAIL_CHARS = 3000
_JVM_OPTIONS = [
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-Djava.awt.headless=true",
]

# Our own log4j2 config (the broker jar ships none): INFO to <log_dir>/logs/server.log, rolled;
# warnings and errors also on stdout (the process log).
_LOG4J2_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN" shutdownHook="disable">
  <Properties>
    <Property name="logDir">${sys:kafka.logs.dir:-.}</Property>
    <Property name="pattern">[%d] %p %m (%c)%n</Property>
  </Properties>
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT"><PatternLayout pattern="${pattern}"/></Console>
    <RollingFile name="server" fileName="${logDir}/server.log" filePattern="${logDir}/server.log.%i">
      <PatternLayout pattern="${pattern}"/>
      <Policies><SizeBasedTriggeringPolicy size="20 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="server"/><AppenderRef ref="STDOUT" level="WARN"/></Root>
    <Logger name="org.apache.kafka.raft" level="WARN"/>
    <Logger name="org.apache.kafka.controller" level="WARN"/>
    <Logger name="kafka.log.LogCleaner" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="kafka.request.logger" level="WARN"/>
  </Loggers>
</Configuration>
"""


def java_binary() -> str:
    """``$JAVA_HOME/bin/java`` or ``java`` on ``PATH`` (Java 17)."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise BrokerError("no java: install Java 17 (apt-get install -y openjdk-17-jre-headless)")
    return found


def server_properties(
    host: str, port: int, advertised_port: int, controller_port: int, data_dir: Path
) -> str:
    """One node that is broker and controller, replication 1, loopback only, explicit topics."""
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{host}:{controller_port}",
            f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
            f"advertised.listeners=PLAINTEXT://{host}:{advertised_port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={data_dir}",
            "num.partitions=1",
            "default.replication.factor=1",
            "min.insync.replicas=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "delete.topic.enable=true",
            "log.retention.hours=168",
            "log.segment.bytes=67108864",
            "",
        ]
    )


@dataclass
class BrokerProcess:
    """An Apache Kafka broker this process started; stop it with :func:`stop_broker`."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    advertised_port: int
    controller_port: int
    log_dir: Path
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def bootstrap(self) -> str:
        """Bootstrap servers for clients (the advertised address)."""
        return f"{self.host}:{self.advertised_port}"

    def log_tail(self) -> str:
        tails = []
        for path in (self.log_path, self.log_dir / "logs" / "server.log"):
            with contextlib.suppress(OSError):
                tails.append(path.read_text(errors="replace")[-_LOG_TAIL_CHARS:])
        return "\n".join(t for t in tails if t)


def _java(main: str, *args: str, log_dir: Path) -> subprocess.CompletedProcess[str]:
    command = [java_binary(), *_jvm_options(log_dir), "-cp", broker_classpath(), main, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _jvm_options(log_dir: Path) -> list[str]:
    config = log_dir / "log4j2.xml"
    if not config.exists() or config.read_text() != _LOG4J2_XML:
        config.write_text(_LOG4J2_XML)
    return [
        *_JVM_OPTIONS,
        f"-Dlog4j2.configurationFile={config}",
        f"-Dkafka.logs.dir={log_dir / 'logs'}",
    ]


def prepare_log_dir(
    log_dir: Path, host: str, port: int, advertised_port: int | None = None
) -> tuple[Path, int]:
    """Write this start's ``server.properties``; format the log the first time only.

    Returns the properties file and the controller port (chosen once, kept in the state file).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "logs").mkdir(exist_ok=True)
    data_dir = log_dir / "data"
    state_path = log_dir / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if "controller_port" not in state:
        state["controller_port"] = free_port(host)
    properties = log_dir / "server.properties"
    properties.write_text(
        server_properties(host, port, advertised_port or port, state["controller_port"], data_dir)
    )
    if not (data_dir / "meta.properties").exists():
        cluster = _java("kafka.tools.StorageTool", "random-uuid", log_dir=log_dir)
        if cluster.returncode != 0:
            raise BrokerError(f"kafka-storage random-uuid failed: {cluster.stderr[-2000:]}")
        state["cluster_id"] = cluster.stdout.strip().splitlines()[-1]
        formatted = _java(
            "kafka.tools.StorageTool",
            "format",
            "-t",
            state["cluster_id"],
            "-c",
            str(properties),
            log_dir=log_dir,
        )
        if formatted.returncode != 0:
            raise BrokerError(
                f"formatting the Kafka log in {data_dir} failed:\n"
                f"{(formatted.stdout + formatted.stderr)[-2000:]}"
            )
    tmp = state_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, state_path)
    return properties, int(state["controller_port"])


def start_broker(
    port: int | None = None,
    host: str = "127.0.0.1",
    advertised_port: int | None = None,
    log_dir: Path | None = None,
    log_path: Path | None = None,
    ready_timeout: float = 90.0,
) -> BrokerProcess:
    """Start Kafka on ``host:port`` with its log in ``log_dir`` and wait until it serves metadata.

    ``log_dir`` (default: a new temporary folder) keeps the records across restarts;
    ``advertised_port`` (default ``port``) is what clients are told to connect to, e.g. a proxy;
    ``log_path`` receives the JVM's stdout (default ``<log_dir>/logs/broker.out``).
    """
    port = port or free_port(host)
    advertised_port = advertised_port or port
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix=f"kafka-{port}-")).resolve()
    properties, controller_port = prepare_log_dir(log_dir, host, port, advertised_port)
    log_path = log_path or log_dir / "logs" / "broker.out"
    command = [
        java_binary(),
        *_jvm_options(log_dir),
        "-cp",
        broker_classpath(),
        "kafka.Kafka",
        str(properties),
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    broker = BrokerProcess(process, host, port, advertised_port, controller_port, log_dir, log_path)
    try:
        wait_until_ready(f"{host}:{port}", timeout=ready_timeout, broker=broker)
    except BaseException:
        stop_broker(broker)
        raise
    return broker


def wait_until_ready(
    bootstrap: str, timeout: float = 60.0, broker: BrokerProcess | None = None
) -> None:
    """Block until a broker at ``bootstrap`` answers a metadata request, or raise BrokerError.

    Kafka listens before it serves metadata, so an open port is not enough.
    """
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if broker is not None and broker.process.poll() is not None:
            raise BrokerError(
                f"Kafka exited with code {broker.process.returncode} before it was ready "
                f"(port {broker.port} or controller port {broker.controller_port} in use?); "
                f"log:\n{broker.log_tail()}"
            )
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap, bootstrap_timeout_ms=1000, request_timeout_ms=2000
            )
        except (KafkaError, OSError) as exc:
            last_error = exc
            time.sleep(0.2)
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


def stop_broker(broker: BrokerProcess, timeout: float = 30.0) -> int:
    """Stop the broker we started (by its PID): SIGTERM is a controlled shutdown; kill if stuck."""
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
    log_dir: Path | None = None,
    log_path: Path | None = None,
    ready_timeout: float = 90.0,
) -> Iterator[BrokerProcess]:
    """A broker for the duration of a ``with`` block, with ``topic`` created; always stopped."""
    broker = start_broker(port, host, advertised_port, log_dir, log_path, ready_timeout)
    try:
        if topic is not None:
            create_topic(f"{host}:{broker.port}", topic, partitions, timeout=ready_timeout)
        yield broker
    finally:
        stop_broker(broker)


def serve_broker(
    port: int,
    topic: str,
    partitions: int,
    log_dir: Path,
    host: str = "127.0.0.1",
    stop: threading.Event | None = None,
    more_topics: Sequence[str] = (),
) -> None:
    """Run the broker until ``stop`` is set or Ctrl-C (what ``flixlake broker`` calls).

    ``topic`` and ``more_topics`` (e.g. the served-recommendations topic) get ``partitions``
    (existing topics are kept as they are).
    """
    stop = stop or threading.Event()
    with running_broker(port, topic, partitions, host=host, log_dir=log_dir) as broker:
        for extra in more_topics:
            create_topic(broker.bootstrap, extra, partitions)
        names = ", ".join(repr(t) for t in (topic, *more_topics))
        print(
            f"broker ready at {broker.bootstrap} (Apache Kafka, pid {broker.pid}), topics {names} "
            f"with {partitions} partitions each; log {broker.log_dir}; Ctrl-C stops it",
            flush=True,
        )
        try:
            while not stop.wait(0.5):
                if broker.process.poll() is not None:
                    raise BrokerError(f"Kafka exited unexpectedly; log:\n{broker.log_tail()}")
        except KeyboardInterrupt:
            pass
