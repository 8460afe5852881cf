"""Prometheus, Alertmanager and the Pushgateway (Debian packages), configured from ``monitoring/``.

The repository's ``monitoring/prometheus.yml`` and ``monitoring/alertmanager.yml`` name the
default loopback ports; :func:`render_configs` writes copies under ``<home>/monitoring`` with the
ports and intervals of this run (a demo, a test on free ports) and the rules of
``monitoring/rules/`` by absolute path. :func:`start_stack` starts the three servers as children
of a :class:`~flixlake.ops.supervise.Supervisor`, each listening on 127.0.0.1 only, and waits
until each answers ``/-/ready``; :func:`start_pushgateway` starts the Pushgateway alone.

Install them with ``apt-get install -y prometheus prometheus-alertmanager prometheus-pushgateway``
(``.ci/run`` does); :func:`missing_binaries` says which are not there.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flixlake.config import PROJECT_ROOT
from flixlake.ops.http import http_request
from flixlake.ops.supervise import Child, Supervisor

MONITORING_DIR = PROJECT_ROOT / "monitoring"
BINARIES = {
    "prometheus": "prometheus",
    "alertmanager": "prometheus-alertmanager",
    "pushgateway": "prometheus-pushgateway",
}
ALL_BINARIES = tuple(BINARIES.values())
INSTALL_HINT = "apt-get install -y prometheus prometheus-alertmanager prometheus-pushgateway"


class MonitoringStackError(RuntimeError):
    """The stack cannot start (not installed, a bad config); the message says what to do."""


def missing_binaries(binaries: Iterable[str] = ALL_BINARIES) -> list[str]:
    """The Debian binaries of the stack (or of ``binaries``) that are not on PATH."""
    return [binary for binary in binaries if shutil.which(binary) is None]


def require_binaries(binaries: Iterable[str] = ALL_BINARIES) -> None:
    missing = missing_binaries(binaries)
    if missing:
        raise MonitoringStackError(
            f"{', '.join(missing)} not installed: run `{INSTALL_HINT}` (Debian packages)"
        )


@dataclass(frozen=True)
class StackPorts:
    """Where each part listens (all on 127.0.0.1)."""

    prometheus: int
    alertmanager: int
    pushgateway: int
    service: int
    exporter: int
    receiver: int
    stream: int = 9109  # the speed layer's driver (streaming.metrics_port)


@dataclass(frozen=True)
class Intervals:
    """How often Prometheus scrapes and evaluates, and how Alertmanager groups notifications."""

    scrape: str = "15s"
    evaluation: str = "15s"
    group_wait: str = "10s"
    group_interval: str = "1m"
    critical_group_wait: str = "5s"


DEMO_INTERVALS = Intervals(scrape="5s", evaluation="5s", group_wait="5s", group_interval="30s")
DRILL_INTERVALS = Intervals(
    scrape="1s", evaluation="1s", group_wait="1s", group_interval="2s", critical_group_wait="1s"
)


def render_configs(out_dir: Path, ports: StackPorts, intervals: Intervals = Intervals()) -> Path:
    """Write prometheus.yml and alertmanager.yml for these ports into ``out_dir``; the folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    prometheus: dict[str, Any] = yaml.safe_load((MONITORING_DIR / "prometheus.yml").read_text())
    prometheus["global"]["scrape_interval"] = intervals.scrape
    prometheus["global"]["evaluation_interval"] = intervals.evaluation
    prometheus["rule_files"] = [
        str((MONITORING_DIR / rule).resolve()) for rule in prometheus["rule_files"]
    ]
    targets = {
        "flixlake-service": ports.service,
        "flixlake-exporter": ports.exporter,
        "flixlake-stream": ports.stream,
        "pushgateway": ports.pushgateway,
        "prometheus": ports.prometheus,
        "alertmanager": ports.alertmanager,
    }
    for job in prometheus["scrape_configs"]:
        port = targets[job["job_name"]]
        job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    prometheus["alerting"]["alertmanagers"] = [
        {"static_configs": [{"targets": [f"127.0.0.1:{ports.alertmanager}"]}]}
    ]
    (out_dir / "prometheus.yml").write_text(yaml.safe_dump(prometheus, sort_keys=False))

    alertmanager: dict[str, Any] = yaml.safe_load((MONITORING_DIR / "alertmanager.yml").read_text())
    route = alertmanager["route"]
    route["group_wait"], route["group_interval"] = intervals.group_wait, intervals.group_interval
    for child in route.get("routes", []):
        child["group_wait"] = intervals.critical_group_wait
    for receiver in alertmanager["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"http://127.0.0.1:{ports.receiver}/alerts"
    (out_dir / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager, sort_keys=False))
    return out_dir


def _ready(port: int) -> bool:
    try:
        status, _, _ = http_request("GET", f"http://127.0.0.1:{port}/-/ready")
    except OSError:
        return False
    return status == 200


def pushgateway_command(out_dir: Path, port: int) -> list[str]:
    """The Pushgateway on 127.0.0.1, its pushes persisted under ``out_dir``."""
    return [
        BINARIES["pushgateway"],
        f"--web.listen-address=127.0.0.1:{port}",
        # Debian's default is a machine-wide /var/lib/prometheus/pushgateway.data: keep this
        # run's pushes with this run (they survive a restart of the stack)
        f"--persistence.file={out_dir / 'pushgateway.data'}",
        "--persistence.interval=30s",
    ]


def _start_part(
    supervisor: Supervisor, name: str, command: list[str], port: int, out_dir: Path, timeout: float
) -> Child:
    """Start one server of the stack; returns it once it answers ``/-/ready`` on ``port``."""
    child = supervisor.start(name, command, signal_to="child", cwd=out_dir)
    supervisor.wait_ready(child, lambda: _ready(port), timeout, what="ready")
    return child


def start_pushgateway(
    supervisor: Supervisor, out_dir: Path, port: int, timeout: float = 60.0
) -> Child:
    """The Pushgateway alone (what a job's or a DAG run's push needs), once it is ready."""
    require_binaries([BINARIES["pushgateway"]])
    out_dir.mkdir(parents=True, exist_ok=True)
    command = pushgateway_command(out_dir, port)
    return _start_part(supervisor, "pushgateway", command, port, out_dir, timeout)


def start_stack(
    supervisor: Supervisor,
    out_dir: Path,
    ports: StackPorts,
    intervals: Intervals = Intervals(),
    timeout: float = 60.0,
) -> list[Child]:
    """Start the Pushgateway, Alertmanager and Prometheus; returns them once each is ready."""
    require_binaries()
    render_configs(out_dir, ports, intervals)
    commands = {
        "pushgateway": (pushgateway_command(out_dir, ports.pushgateway), ports.pushgateway),
        "alertmanager": (
            [
                BINARIES["alertmanager"],
                f"--config.file={out_dir / 'alertmanager.yml'}",
                f"--storage.path={out_dir / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{ports.alertmanager}",
                "--cluster.listen-address=",  # one instance: no gossip port
            ],
            ports.alertmanager,
        ),
        "prometheus": (
            [
                BINARIES["prometheus"],
                f"--config.file={out_dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={out_dir / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{ports.prometheus}",
                "--storage.tsdb.retention.time=2d",
            ],
            ports.prometheus,
        ),
    }
    return [
        _start_part(supervisor, name, command, port, out_dir, timeout)
        for name, (command, port) in commands.items()
    ]
