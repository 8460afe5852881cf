"""Every dashboard panel gets data from a live Prometheus (Grafana itself is not installable here).

A live run on free loopback ports: the broker, ``flixlake serve`` (telemetry on), ``flixlake
monitor``'s exporter following the log topic while course-style recommendation request lines
arrive, Prometheus + Alertmanager + the Pushgateway configured from monitoring/, a batch job's and
a DAG run's metrics pushed the way the job plumbing and the DAG callback push them, the speed
layer (``spark-submit streaming/speed_layer.py``) reading the same topic and serving its
``flixlake_stream_*`` metrics, and a lake with a published model, speed views and online
evaluations. Then each panel's PromQL must return at least one number.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import shutil
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from flixlake.batch.catalog import upsert_movies
from flixlake.config import PROJECT_ROOT, Settings, load_settings
from flixlake.contract.kafka import create_topic, free_port, produce_lines
from flixlake.contract.logformat import format_reco
from flixlake.lake.store import Lake
from flixlake.lake.tables import ONLINE_EVALUATIONS, SPEED_TRENDING, SPEED_USER_ACTIVITY
from flixlake.monitoring.exporter import Exporter
from flixlake.monitoring.push import dag_registry, push
from flixlake.ops.broker import BrokerProcess
from flixlake.ops.http import http_request
from flixlake.ops.jobs import push_job_outcome
from flixlake.ops.monitoring_stack import DRILL_INTERVALS, MONITORING_DIR, StackPorts, start_stack
from flixlake.ops.speed_layer import start_speed_layer_process
from flixlake.ops.supervise import Supervisor
from flixlake.testing import record_published_model

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prometheus_tools")]
DASHBOARD = MONITORING_DIR / "grafana" / "dashboards" / "flixlake.json"
MOVIES = [f"movie-{i:02d}" for i in range(40)]
NOW = dt.datetime.now(dt.UTC)


def panels() -> list[dict[str, Any]]:
    return list(json.loads(DASHBOARD.read_text())["panels"])


def query(port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    status, body, _ = http_request("GET", url)
    assert status == 200, (expr, body[:300])
    return list(json.loads(body)["data"]["result"])


def numbers(result: list[dict[str, Any]]) -> list[float]:
    return [float(r["value"][1]) for r in result if not math.isnan(float(r["value"][1]))]


def write_lake(lake: Lake) -> None:
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
    record_published_model(
        lake, "m1", (NOW - dt.timedelta(days=1)).date(), NOW - dt.timedelta(hours=20)
    )
    lake.append(
        "speed_trending",
        pa.Table.from_pylist(
            [
                {
                    "window": "1h",
                    "window_seconds": 3600,
                    "movie_id": m,
                    "watchers": 9 - i,
                    "as_of": NOW,
                    "updated_batch": 1,
                    "updated_at": NOW,
                }
                for i, m in enumerate(MOVIES[:5])
            ],
            schema=SPEED_TRENDING.schema,
        ),
    )
    lake.append(
        "speed_user_activity",
        pa.Table.from_pylist(
            [
                {
                    "user_id": 3,
                    "watched_movies": MOVIES[:2],
                    "rated_movies": [],
                    "first_seen": NOW,
                    "last_seen": NOW,
                    "since": None,
                    "model_version": "m1",
                    "updated_batch": 1,
                    "updated_at": NOW,
                }
            ],
            schema=SPEED_USER_ACTIVITY.schema,
        ),
    )
    hour = NOW.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=2)
    lake.append(
        "online_evaluations",
        pa.Table.from_pylist(
            [
                {
                    "served_hour": hour - dt.timedelta(hours=h),
                    "experiment": "default",
                    "model_version": "m1",
                    "variant": "control",
                    "user_id": 1,
                    "served": 200,
                    "converted": 90 + h,
                    "window_seconds": 3600,
                    "computed_at": NOW,
                    "served_date": (hour - dt.timedelta(hours=h)).date(),
                }
                for h in range(3)
            ],
            schema=ONLINE_EVALUATIONS.schema,
        ),
    )


def live_service(port: int) -> bool:
    try:
        return http_request("GET", f"http://127.0.0.1:{port}/health/ready")[0] == 200
    except OSError:
        return False


class Traffic:
    """Course-style log lines onto the topic and requests to the service, until stopped."""

    def __init__(self, bootstrap: str, topic: str, service_port: int) -> None:
        self.bootstrap, self.topic, self.port = bootstrap, topic, service_port
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
            lines = [
                format_reco(
                    now - dt.timedelta(seconds=70 - k), 5 + k, "reco:8082", 200, MOVIES[:3], 90 + k
                )
                for k in range(0, 70, 7)
            ]
            lines.append(
                format_reco(
                    now, 9, "reco:8082", 0, ["java.net.SocketTimeoutException: Read timed out"], 800
                )
            )
            # and a bad line, which the speed layer quarantines (the quarantine panel's data)
            lines.append(f"{now.isoformat(timespec='seconds')},{5 + i},GET /rate/{MOVIES[0]}=9")
            produce_lines(self.bootstrap, self.topic, lines)
            for user in (1, 2, 3, 77):
                with contextlib.suppress(OSError):  # not up yet: the panels will say so
                    http_request("GET", f"http://127.0.0.1:{self.port}/recommend/{user + i}")
            i += 1
            self.stop.wait(0.5)


@pytest.fixture
def settings_for(tmp_path: Path, broker: BrokerProcess) -> Settings:
    home = tmp_path / "home"
    topic = f"movielog-dash-{free_port()}"
    for name in (topic, f"{topic}-served", f"{topic}-service"):
        create_topic(broker.bootstrap, name, 2)
    conf = tmp_path / "conf"
    shutil.copytree(PROJECT_ROOT / "conf", conf)
    (conf / "dash.yaml").write_text(
        f"kafka:\n  bootstrap_servers: '{broker.bootstrap}'\n  topic: {topic}\n"
        f"serving:\n  telemetry:\n    served_topic: {topic}-served\n    log_topic: {topic}-service\n"
        "monitoring:\n  lake_poll_seconds: 1\n"
        "spark:\n  driver_memory: 1g\n"
    )
    os.environ["FLIXLAKE_CONF_DIR"] = str(conf)
    try:
        return load_settings("dash", home=home)
    finally:
        del os.environ["FLIXLAKE_CONF_DIR"]


@pytest.fixture
def exporter(settings_for: Settings) -> Iterator[tuple[Exporter, int]]:
    running = Exporter(settings_for)
    port = running.start("127.0.0.1", free_port())
    yield running, port
    running.stop()


def test_every_panel_gets_data_from_a_live_prometheus(
    tmp_path: Path, settings_for: Settings, exporter: tuple[Exporter, int]
) -> None:
    settings = settings_for
    write_lake(Lake(settings.lake_root))
    _, exporter_port = exporter
    ports = StackPorts(
        free_port(), free_port(), free_port(), free_port(), exporter_port, free_port(), free_port()
    )
    conf = tmp_path / "conf" / "dash.yaml"
    conf.write_text(conf.read_text() + f"streaming:\n  metrics_port: {ports.stream}\n")
    env = {
        **os.environ,
        "FLIXLAKE_CONF_DIR": str(tmp_path / "conf"),
        "FLIXLAKE_ENV": "dash",
        "FLIXLAKE_HOME": str(settings.home),
    }
    flixlake = str(Path(sys.executable).parent / "flixlake")
    gateway = settings.model_copy(
        update={
            "monitoring": settings.monitoring.model_copy(
                update={"pushgateway_url": f"http://127.0.0.1:{ports.pushgateway}"}
            )
        }
    )
    with Supervisor(tmp_path / "logs") as supervisor:
        start_stack(supervisor, tmp_path / "monitoring", ports, DRILL_INTERVALS)
        service = supervisor.start(
            "service",
            [flixlake, "serve", "--host", "127.0.0.1", f"--port={ports.service}"],
            env=env,
            signal_to="child",
        )
        supervisor.wait_ready(service, lambda: live_service(ports.service), 60)
        # streaming once its query started, so serving its metrics (it starts them first)
        start_speed_layer_process(supervisor, settings, env)
        # what jobs/*.py and the DAG callback push when they end
        summary = {
            "model_version": "m1",
            "rows": 1250,
            "als": {"ndcg": 0.23},
            "popularity": {"ndcg": 0.09},
        }
        assert push_job_outcome(gateway, "evaluate_model", 0, time.time() - 20, summary)
        assert push(
            gateway.monitoring,
            "flixlake_dag",
            {"dag_id": "flixlake_batch"},
            dag_registry("flixlake_batch", True, 210.0, time.time()),
        )
        traffic = Traffic(settings.kafka.bootstrap_servers, settings.kafka.topic, ports.service)
        traffic.thread.start()
        try:
            missing: dict[str, list[str]] = {}
            deadline = time.monotonic() + 300  # the speed layer's first batches take a while
            live = panels()
            while True:
                missing = {
                    p["title"]: [
                        t["expr"]
                        for t in p["targets"]
                        if not numbers(query(ports.prometheus, t["expr"]))
                    ]
                    for p in live
                }
                missing = {k: v for k, v in missing.items() if v}
                if not missing or time.monotonic() > deadline:
                    break
                time.sleep(2)
        finally:
            traffic.stop.set()
            traffic.thread.join(30)
    assert missing == {}, f"panels without data: {missing}"


def test_the_dashboard_and_its_provisioning_are_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in (
        "availability",
        "latency",
        "throughput",
        "lag",
        "model version",
        "online quality",
    ):
        assert topic in titles, topic
    provisioning = MONITORING_DIR / "grafana" / "provisioning"
    import yaml

    source = yaml.safe_load((provisioning / "datasources" / "flixlake.yml").read_text())
    uids = {d["uid"] for d in source["datasources"]}
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] in uids
    providers = yaml.safe_load((provisioning / "dashboards" / "flixlake.yml").read_text())
    assert providers["providers"][0]["type"] == "file"
