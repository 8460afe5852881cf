"""Integration fixtures: a real Apache Kafka broker on a free loopback port, and a cuttable TCP proxy."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from flixlake.contract.kafka import create_topic, free_port
from flixlake.ops.broker import BrokerProcess, running_broker

_topic_numbers = itertools.count()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One broker per test module (tests use their own topics), stopped afterwards."""
    log_dir = tmp_path_factory.mktemp("broker") / "kafka"
    with running_broker(free_port(), log_dir=log_dir) as running:
        yield running
    assert running.process.returncode is not None  # really stopped


@pytest.fixture
def topic(broker: BrokerProcess) -> str:
    """A fresh 3-partition topic on the shared broker."""
    name = f"movielog-{next(_topic_numbers)}"
    assert create_topic(broker.bootstrap, name, partitions=3) == 3
    return name


class TcpProxy:
    """Forwards ``listen_port`` to ``target_port``; ``cut()`` makes the broker unreachable."""

    def __init__(self, listen_port: int, target_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.listen_port = listen_port
        self.target_port = target_port
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._server: socket.socket | None = None
        self._closed = False
        self.restore()

    def restore(self) -> None:
        """Accept connections again."""
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((self.host, self.listen_port))
        server.listen(64)
        server.settimeout(0.2)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def cut(self) -> None:
        """Drop every open connection and refuse new ones (until ``restore``)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._closed = True
        self.cut()

    def _accept(self, server: socket.socket) -> None:
        while self._server is server and not self._closed:
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection((self.host, self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxied_broker(tmp_path: Path) -> Iterator[tuple[BrokerProcess, TcpProxy]]:
    """A broker that advertises a proxy in front of it, so clients can be cut off from it."""
    broker_port, proxy_port = free_port(), free_port()
    proxy = TcpProxy(proxy_port, broker_port)
    try:
        with running_broker(
            broker_port, advertised_port=proxy_port, log_dir=tmp_path / "kafka"
        ) as running:
            yield running, proxy
    finally:
        proxy.close()
