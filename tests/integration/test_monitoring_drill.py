"""The incident drill: the service really stops, the alert fires and reaches a person, then the
service comes back and the alert resolves.

Real parts on free loopback ports: Prometheus, Alertmanager and the Pushgateway (Debian packages,
configured from monitoring/ with 1-second intervals), ``flixlake serve`` as a user starts it, and
the webhook receiver that stands for the person on call. The rules are the repository's own, so
FlixlakeServiceDown waits its 30 seconds.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from flixlake.batch.catalog import upsert_movies
from flixlake.config import PROJECT_ROOT
from flixlake.contract.kafka import free_port
from flixlake.lake.store import Lake
from flixlake.ops.alert_receiver import AlertReceiver
from flixlake.ops.http import http_request
from flixlake.ops.monitoring_stack import DRILL_INTERVALS, StackPorts, start_stack
from flixlake.ops.supervise import Child, Supervisor
from flixlake.testing import record_published_model

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prometheus_tools")]
MOVIES = [f"movie-{i:02d}" for i in range(40)]


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(0.5)
    return value


def query(port: int, expr: str) -> list[dict[str, Any]]:
    """An instant query against the real Prometheus; its result vector."""
    url = f"http://127.0.0.1:{port}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    status, body, _ = http_request("GET", url)
    assert status == 200, body[:300]
    data = json.loads(body)
    assert data["status"] == "success", data
    return list(data["data"]["result"])


def write_lake(home: Path) -> None:
    lake = Lake(home / "lake")
    upsert_movies(lake, MOVIES)
    rows = [
        {
            "user_id": u,
            "rank": r + 1,
            "movie_id": MOVIES[(u + r) % 40],
            "score": 1.0,
            "model_version": "m1",
        }
        for u in range(1, 51)
        for r in range(25)
    ]
    lake.append("batch_recommendations", pa.Table.from_pylist(rows))
    record_published_model(lake, "m1", dt.date(2026, 11, 20))


def conf_dir(tmp_path: Path) -> Path:

    conf = tmp_path / "conf"
    shutil.copytree(PROJECT_ROOT / "conf", conf)
    (conf / "drill.yaml").write_text("serving:\n  telemetry:\n    enabled: false\n")
    return conf


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[AlertReceiver, int]]:
    port = free_port()
    alerts = AlertReceiver(tmp_path / "alerts.jsonl")
    server = alerts.server("127.0.0.1", port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield alerts, port
    server.shutdown()
    server.server_close()


def test_the_service_stops_the_alert_reaches_a_person_then_resolves(
    tmp_path: Path, receiver: tuple[AlertReceiver, int]
) -> None:
    alerts, receiver_port = receiver
    home = tmp_path / "home"
    write_lake(home)
    ports = StackPorts(
        prometheus=free_port(),
        alertmanager=free_port(),
        pushgateway=free_port(),
        service=free_port(),
        exporter=free_port(),
        receiver=receiver_port,
    )
    env = {
        **os.environ,
        "FLIXLAKE_CONF_DIR": str(conf_dir(tmp_path)),
        "FLIXLAKE_ENV": "drill",
        "FLIXLAKE_HOME": str(home),
    }
    flixlake = str(Path(sys.executable).parent / "flixlake")
    serve = [flixlake, "serve", "--host", "127.0.0.1", f"--port={ports.service}"]
    up = 'up{job="flixlake-service"}'

    def service_up(value: str) -> Callable[[], bool]:
        return lambda: any(r["value"][1] == value for r in query(ports.prometheus, up))

    def start_service(supervisor: Supervisor) -> Child:
        return supervisor.start("service", serve, env=env, signal_to="child")

    with Supervisor(tmp_path / "logs") as supervisor:
        start_stack(supervisor, tmp_path / "monitoring", ports, DRILL_INTERVALS)
        service = start_service(supervisor)
        wait_for(service_up("1"), 60, "Prometheus scrapes the service")
        assert alerts.events() == []

        # the incident: the service process really stops
        stopped_at = time.monotonic()
        supervisor.stop(service)
        supervisor.children.remove(service)
        wait_for(service_up("0"), 30, "Prometheus sees the service down")
        wait_for(
            lambda: ("firing", "FlixlakeServiceDown") in alerts.events(),
            120,
            "the alert reaches the receiver",
        )
        fired_after = time.monotonic() - stopped_at
        firing = query(
            ports.prometheus, 'ALERTS{alertname="FlixlakeServiceDown", alertstate="firing"}'
        )

        # recovery: the service is started again, the alert resolves
        start_service(supervisor)
        wait_for(service_up("1"), 60, "Prometheus scrapes the service again")
        wait_for(
            lambda: ("resolved", "FlixlakeServiceDown") in alerts.events(),
            120,
            "the resolution reaches the receiver",
        )
    events = [e for e in alerts.events() if e[1] == "FlixlakeServiceDown"]
    print(f"drill: firing notification {fired_after:.0f}s after the stop; events {events}")
    assert events.index(("firing", "FlixlakeServiceDown")) < events.index(
        ("resolved", "FlixlakeServiceDown")
    )
    assert firing and firing[0]["metric"]["instance"] == f"127.0.0.1:{ports.service}"
    notification = next(
        n
        for n in alerts.notifications
        if any(a["labels"]["alertname"] == "FlixlakeServiceDown" for a in n["alerts"])
    )
    alert = notification["alerts"][0]
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["runbook"] == "README.md#flixlakeservicedown"
    assert (tmp_path / "alerts.jsonl").read_text().count("FlixlakeServiceDown") >= 2
